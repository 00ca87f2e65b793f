"""No engine ever lets unauthenticated plaintext into the caller's buffer, not even for an instant.

A reader thread watches the destination of a decrypt whose chunk has a forged tag (the ciphertext is
genuine, so decrypting it in place would show the real plaintext until the final wipe). The C
engine releases the GIL, so the reader runs on another core during the whole call; the Python engine
is preempted by the interpreter's switch interval. Any non-zero byte seen in the forged chunk's
region is a leak. Small spans (decrypted on the calling thread, below the streaming threshold) and
large ones, memory and pread sources, are all covered.
"""

from __future__ import annotations

import os
import threading

import pytest

from sealtensors.engine import backends
from sealtensors.engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, TAG_SIZE
from sealtensors.errors import IntegrityError

KEY, NONCE = bytes(range(32)), bytes(range(100, 112))
TRIES = 300


def _forged_span(chunks: int, forged: int) -> tuple[bytes, bytes]:
    """(plaintext with no zero byte, ciphertext whose chunk `forged` has a flipped tag bit)."""
    plaintext = bytes(b | 1 for b in os.urandom(chunks * CHUNK_SIZE))
    ciphertext = bytearray(chunks * ENCRYPTED_CHUNK_SIZE)
    backends.engine().encrypt_span(KEY, NONCE, 0, plaintext, ciphertext, final=False, threads=1)
    ciphertext[(forged + 1) * ENCRYPTED_CHUNK_SIZE - TAG_SIZE] ^= 1
    return plaintext, bytes(ciphertext)


def _race(decrypt, dst: bytearray, region: slice, tries: int) -> int:
    """Run `decrypt` `tries` times while a thread watches dst[region]; returns how often the
    watcher saw a non-zero byte there."""
    zero = bytes(region.stop - region.start)
    view = memoryview(dst)[region]
    stop = threading.Event()
    seen = [0]

    def watch():
        while not stop.is_set():
            if view.tobytes() != zero:
                seen[0] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(tries):
            with pytest.raises(IntegrityError):
                decrypt()
    finally:
        stop.set()
        watcher.join()
    view.release()
    return seen[0]


@pytest.mark.parametrize("chunks, forged, threads", [(4, 2, 1), (64, 40, 2), (160, 150, 2)],
                         ids=["small-1-thread", "small-2-threads", "large-streamed"])
def test_forged_chunk_never_visible_from_memory(chunks, forged, threads):
    plaintext, ciphertext = _forged_span(chunks, forged)
    dst = bytearray(chunks * CHUNK_SIZE)
    region = slice(forged * CHUNK_SIZE, (forged + 1) * CHUNK_SIZE)

    def decrypt():
        backends.engine().decrypt_span(KEY, NONCE, 0, ciphertext, dst, final=False,
                                       threads=threads)

    tries = TRIES if chunks <= 8 else TRIES // 10
    assert _race(decrypt, dst, region, tries) == 0
    assert dst == bytes(len(dst))


@pytest.mark.parametrize("chunks, forged, threads", [(4, 2, 1), (160, 150, 2)],
                         ids=["small-1-thread", "large-streamed"])
def test_forged_chunk_never_visible_from_fd(tmp_path, chunks, forged, threads):
    plaintext, ciphertext = _forged_span(chunks, forged)
    path = tmp_path / "span"
    path.write_bytes(ciphertext)
    dst = bytearray(chunks * CHUNK_SIZE)
    region = slice(forged * CHUNK_SIZE, (forged + 1) * CHUNK_SIZE)
    with open(path, "rb") as f:
        def decrypt():
            backends.engine().decrypt_span_fd(KEY, NONCE, 0, f.fileno(), 0, len(ciphertext), dst,
                                              final=False, threads=threads)

        tries = TRIES if chunks <= 8 else TRIES // 10
        assert _race(decrypt, dst, region, tries) == 0
    assert dst == bytes(len(dst))
