"""Built-in key providers (AWS KMS, PKCS#11, TPM 2.0), registered by name; each imported only when used."""
