"""Keys and who may open a file: key files, key ids (and, later, recipients and identities)."""
