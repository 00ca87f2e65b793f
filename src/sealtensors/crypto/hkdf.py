"""HKDF-Expand (RFC 5869, section 2.3) over the standard library's hmac.

Only the Expand step: C2SP chunked encryption and sealtensors' own subkeys start from keys that are
already uniformly random, so no Extract is needed.
"""

from __future__ import annotations

import hashlib
import hmac

_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """Return ``length`` bytes of HKDF-Expand(prk, info) with the named hash."""
    digest = _HASHES[hash_name]
    hash_len = digest().digest_size
    if not 0 < length <= 255 * hash_len:
        raise ValueError(f"HKDF-Expand length must be in 1..{255 * hash_len}, got {length}")
    output = bytearray()
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), digest).digest()
        output += block
        counter += 1
    return bytes(output[:length])
