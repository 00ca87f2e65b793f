"""The chunk engines (C and pure Python), the backend switch, plaintext memory and GPU staging."""
