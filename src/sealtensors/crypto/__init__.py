"""Cryptographic building blocks: HKDF, single AES-256-GCM messages, C2SP chunked encryption."""
