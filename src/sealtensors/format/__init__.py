"""The on-disk formats: the sealed container and its encrypted index, dtypes, plain safetensors files."""
