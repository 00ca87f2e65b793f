"""Writing files safely: atomic, crash-safe outputs."""
