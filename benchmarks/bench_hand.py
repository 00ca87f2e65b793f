"""The baseline a competent user would write by hand with ``cryptography``'s AESGCM.

Format: ``u64 header length || JSON header || chunk_0 || chunk_1 || ...``. The header lists the
tensors (dtype, shape, byte offsets in the plaintext, each 64-byte aligned) and the chunk size. The
plaintext is cut into 4 MiB chunks; each is stored as ``nonce (12, random) || ciphertext || tag (16)``
with the header's SHA-256, the chunk index and a final-chunk flag as associated data, so chunks cannot
be reordered, dropped or moved between files.

Loading: mmap the file, allocate one output buffer (``numpy.empty``), and let a ThreadPoolExecutor
with one worker per CPU ``decrypt_into`` each chunk straight from the mapping into its place in the
buffer (``decrypt`` plus a copy where ``decrypt_into`` is missing); the arrays are views of that
buffer. This is what the "hand-written" rows of the benchmarks time.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import bench_model

CHUNK = 4 << 20
NONCE = 12
TAG = 16
ALIGN = 64


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack("<QB", index, final)


def save_file(arrays: dict, path, key: bytes) -> None:
    entries, offset = {}, 0
    for name, array in arrays.items():
        offset = -(-offset // ALIGN) * ALIGN
        dtype = {np.dtype(v): k for k, v in bench_model.DTYPES.items()}[array.dtype]
        entries[name] = {"dtype": dtype, "shape": list(array.shape),
                         "offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    total = offset
    header = json.dumps({"tensors": entries, "chunk_size": CHUNK, "length": total}).encode()
    digest = hashlib.sha256(header).digest()
    plain = np.zeros(total, dtype=np.uint8)
    for name, array in arrays.items():
        begin, end = entries[name]["offsets"]
        plain[begin:end] = array.reshape(-1).view(np.uint8)
    aead = AESGCM(key)
    count = max(1, -(-total // CHUNK))
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        for i in range(count):
            nonce = os.urandom(NONCE)
            piece = plain[i * CHUNK:(i + 1) * CHUNK]
            out.write(nonce + aead.encrypt(nonce, piece, _aad(digest, i, i == count - 1)))


def load_file(path, key: bytes, threads: int | None = None) -> dict[str, np.ndarray]:
    aead = AESGCM(key)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    source = memoryview(mapping)
    try:
        (hlen,) = struct.unpack("<Q", source[:8])
        header_bytes = bytes(source[8:8 + hlen])
        header = json.loads(header_bytes)
        digest = hashlib.sha256(header_bytes).digest()
        total, size = header["length"], header["chunk_size"]
        count = max(1, -(-total // size))
        base = 8 + hlen
        if len(source) != base + total + count * (NONCE + TAG):
            raise ValueError("file length does not match its header")
        out = np.empty(total, dtype=np.uint8)
        decrypt_into = getattr(aead, "decrypt_into", None)

        def work(i: int) -> None:
            start = base + i * (size + NONCE + TAG)
            n = min(size, total - i * size)
            nonce = bytes(source[start:start + NONCE])
            sealed = source[start + NONCE:start + NONCE + n + TAG]
            target = out[i * size:i * size + n]
            aad = _aad(digest, i, i == count - 1)
            if decrypt_into is not None:
                decrypt_into(nonce, sealed, aad, target)
            else:
                target[:] = np.frombuffer(aead.decrypt(nonce, sealed, aad), dtype=np.uint8)

        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(work, range(count)))
    finally:
        source.release()
        mapping.close()
    result = {}
    for name, entry in header["tensors"].items():
        begin, end = entry["offsets"]
        dtype = bench_model.DTYPES[entry["dtype"]]
        result[name] = out[begin:end].view(dtype).reshape(entry["shape"])
    return result
