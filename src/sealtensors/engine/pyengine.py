"""The pure-Python engine: AES-256-GCM from pycryptodome, one chunk at a time, single-threaded.

It is the reference the C engine must agree with byte for byte and error for error.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from Crypto.Cipher import AES

from .spec import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    ENCRYPTED_CHUNK_SIZE,
    TAG_SIZE,
    chunk_digests_view,
    chunk_nonce,
    validate_span,
)
from ..errors import IntegrityError, SignatureError


def _writable_bytes(buffer) -> memoryview:
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError("destination buffer must be writable")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _readable_bytes(buffer) -> memoryview:
    view = memoryview(buffer)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _wipe(view: memoryview) -> None:
    view[:] = bytes(len(view))


def _check_threads(threads) -> None:
    # Single-threaded, but the argument is validated as the C engine validates it.
    if int(threads) < 0:
        raise ValueError("threads must be >= 0 (0 = default)")


class PythonEngine:
    name = "python"

    def info(self) -> dict:
        return {"backend": "python", "provider": "pycryptodome", "cpu_path": "generic",
                "digest": "hashlib", "threads": 1}

    def encrypt_span(self, aead_key, base_nonce, first_chunk, src, dst, *, final, threads=0,
                     digests_out=None):
        _check_threads(threads)
        source = _readable_bytes(src)
        target = _writable_bytes(dst)
        count = validate_span(aead_key, base_nonce, first_chunk, len(source), len(target),
                              final=final, decrypting=False)
        table = chunk_digests_view(digests_out, count, writable=True)
        for i in range(count):
            plain = source[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]
            out = i * ENCRYPTED_CHUNK_SIZE
            cipher = AES.new(aead_key, AES.MODE_GCM, nonce=chunk_nonce(base_nonce, first_chunk + i),
                             mac_len=TAG_SIZE)
            cipher.encrypt(plain, output=target[out:out + len(plain)])
            target[out + len(plain):out + len(plain) + TAG_SIZE] = cipher.digest()
            if table is not None:
                stored = target[out:out + len(plain) + TAG_SIZE]
                table[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE] = hashlib.sha256(stored).digest()

    def decrypt_span(self, aead_key, base_nonce, first_chunk, src, dst, *, final, threads=0,
                     digests=None):
        _check_threads(threads)
        self._decrypt(aead_key, base_nonce, first_chunk, src, dst, final=final, digests=digests)

    def _decrypt(self, aead_key, base_nonce, first_chunk, src, dst, *, final, digests=None):
        source = _readable_bytes(src)
        target = _writable_bytes(dst)
        try:
            count = validate_span(aead_key, base_nonce, first_chunk, len(source), len(target),
                                  final=final, decrypting=True)
        except IntegrityError:
            _wipe(target)
            raise
        table = chunk_digests_view(digests, count, writable=False)
        # Each chunk is decrypted into a private buffer and copied into ``target`` only once its
        # tag verified: another thread reading ``target`` never sees unauthenticated plaintext.
        bounce = bytearray(CHUNK_SIZE)
        private = memoryview(bounce)
        try:
            for i in range(count):
                start = i * ENCRYPTED_CHUNK_SIZE
                end = min(start + ENCRYPTED_CHUNK_SIZE, len(source))
                body = source[start:end - TAG_SIZE]
                tag = source[end - TAG_SIZE:end]
                out = i * CHUNK_SIZE
                if table is not None and not hmac.compare_digest(
                        hashlib.sha256(source[start:end]).digest(),
                        table[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]):
                    _wipe(target)
                    raise SignatureError(f"data chunk {first_chunk + i} does not match the "
                                         f"publisher's signature", chunk_index=first_chunk + i)
                cipher = AES.new(aead_key, AES.MODE_GCM,
                                 nonce=chunk_nonce(base_nonce, first_chunk + i), mac_len=TAG_SIZE)
                try:
                    cipher.decrypt_and_verify(body, tag, output=private[:len(body)])
                except ValueError:
                    _wipe(target)
                    raise IntegrityError("chunk failed authentication",
                                         chunk_index=first_chunk + i) from None
                target[out:out + len(body)] = private[:len(body)]
        finally:
            _wipe(private)
            private.release()

    def decrypt_span_fd(self, aead_key, base_nonce, first_chunk, fd, offset, length, dst, *,
                        final, threads=0, digests=None):
        _check_threads(threads)
        target = _writable_bytes(dst)
        # Read in bounded pieces so memory stays small however large the span is.
        piece_chunks = 256
        try:
            count = validate_span(aead_key, base_nonce, first_chunk, length, len(target),
                                  final=final, decrypting=True)
        except IntegrityError:
            _wipe(target)
            raise
        table = chunk_digests_view(digests, count, writable=False)

        def piece_digests(lo, hi):
            return None if table is None else table[lo * DIGEST_SIZE:hi * DIGEST_SIZE]

        done = 0
        while done < count:
            n = min(piece_chunks, count - done)
            start = done * ENCRYPTED_CHUNK_SIZE
            piece_len = min(n * ENCRYPTED_CHUNK_SIZE, length - start)
            try:
                data = os.pread(fd, piece_len, offset + start)
            except OSError:
                _wipe(target)  # the C engine wipes on a failed read too
                raise
            if len(data) != piece_len:
                # Report the lowest failing chunk: authenticate the whole chunks that did arrive first.
                whole = len(data) // ENCRYPTED_CHUNK_SIZE
                out = done * CHUNK_SIZE
                try:
                    self._decrypt(aead_key, base_nonce, first_chunk + done,
                                      data[:whole * ENCRYPTED_CHUNK_SIZE],
                                      target[out:out + whole * CHUNK_SIZE], final=False,
                                      digests=piece_digests(done, done + whole))
                finally:
                    _wipe(target)
                raise IntegrityError("file ended inside a chunk (truncated)",
                                     chunk_index=first_chunk + done + whole)
            is_last_piece = done + n == count
            out = done * CHUNK_SIZE
            plain_len = len(data) - n * TAG_SIZE
            try:
                self._decrypt(aead_key, base_nonce, first_chunk + done, data,
                                  target[out:out + plain_len], final=final and is_last_piece,
                                  digests=piece_digests(done, done + n))
            except IntegrityError:
                _wipe(target)
                raise
            done += n
