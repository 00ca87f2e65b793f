"""Glue for third-party serving stacks, one module per partner library, imported only when used."""
