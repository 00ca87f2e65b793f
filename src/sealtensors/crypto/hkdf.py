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
    # Key material must not be left behind in freed memory: the output is allocated once and
    # wiped (a growing bytearray leaves its old buffers behind), and T(i-1) is fed to the MAC
    # instead of being copied into a concatenated message. What remains unwiped is what Python
    # cannot wipe: each T(i) that hmac returns as bytes, and the bytes this function returns
    # (SECURITY.md, "What is wiped").
    output = bytearray(length)
    block = b""
    counter = 1
    position = 0
    while position < length:
        mac = hmac.new(prk, digestmod=digest)
        mac.update(block)
        mac.update(info)
        mac.update(bytes([counter]))
        block = mac.digest()
        take = min(len(block), length - position)
        output[position:position + take] = memoryview(block)[:take]
        position += take
        counter += 1
    result = bytes(output)
    output[:] = bytes(length)
    return result
