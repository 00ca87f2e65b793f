"""C2SP chunked encryption v1 with AES-256-GCM and HKDF-SHA-512 ("Cobblestone-256").

Specification: https://c2sp.org/chunked-encryption. A message is
``salt (24) || commitment (32) || chunk_0 || ... || chunk_n``; every chunk is 16 KiB of plaintext plus a
16-byte GCM tag, except the final chunk, which is always shorter than 16 KiB (possibly empty). The
per-message AES key, base nonce and key commitment come from
``HKDF-Expand(key, "c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM" || 0x00 || salt || context)``.

Whole-message calls (:func:`encrypt`, :func:`decrypt`) and the random-access pieces a file reader
needs (:func:`open_message`, :func:`decrypt_chunk_range_into`) live here. The AES-GCM work itself is
done by the engine :mod:`sealtensors.engine.backends` selects (C or pure Python).

Errors: a key that is not 32 bytes raises :class:`~sealtensors.errors.InvalidKeyError`; a wrong key,
wrong context or altered salt/commitment raises :class:`~sealtensors.errors.CommitmentError` before any
chunk is decrypted; a truncated, extended or altered message raises
:class:`~sealtensors.errors.IntegrityError` and returns no plaintext at all.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from ..engine import backends as _backends
from ..engine.spec import (
    CHUNK_SIZE,
    ENCRYPTED_CHUNK_SIZE,
    KEY_SIZE,
    MAX_CHUNKS,
    NONCE_SIZE,
    TAG_SIZE,
    span_ciphertext_length,
    span_plaintext_length,
)
from .hkdf import hkdf_expand
from ..errors import CommitmentError, IntegrityError, InvalidKeyError

AEAD_NAME = b"AEAD_AES_256_GCM"
SALT_SIZE = 24
COMMITMENT_SIZE = 32
HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE
_INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+" + AEAD_NAME + b"\x00"

__all__ = [
    "CHUNK_SIZE", "TAG_SIZE", "KEY_SIZE", "NONCE_SIZE", "SALT_SIZE", "COMMITMENT_SIZE", "HEADER_SIZE",
    "ENCRYPTED_CHUNK_SIZE", "MAX_CHUNKS", "MessageKeys", "derive", "open_message", "new_message",
    "ciphertext_length", "plaintext_length", "chunk_count", "encrypt", "decrypt", "decrypt_into",
    "encrypt_into", "decrypt_chunk_range_into", "decrypt_chunk_range_fd_into", "chunk_range_for_bytes",
]


@dataclass(frozen=True, eq=False)
class MessageKeys:
    """The per-message AES key and base nonce; never printed.

    Both are bytearrays so that :meth:`wipe` can overwrite them once the message is done with
    (Python may still hold copies it made on the way, e.g. inside HKDF; those cannot be reached).
    """

    aead_key: bytearray = field(repr=False)
    base_nonce: bytearray = field(repr=False)

    def wipe(self) -> None:
        """Overwrite the key and nonce with zeros; the keys are unusable afterwards."""
        for secret in (self.aead_key, self.base_nonce):
            secret[:] = bytes(len(secret))


def _check_key(key) -> bytes:
    try:
        key = bytes(key)
    except TypeError:
        raise InvalidKeyError("key must be bytes-like") from None
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def derive(key: bytes, salt: bytes, context: bytes = b"") -> tuple[MessageKeys, bytes]:
    """Derive (message keys, commitment) for ``salt`` and ``context`` under ``key``."""
    key = _check_key(key)
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes")
    okm = memoryview(hkdf_expand(key, _INFO_PREFIX + bytes(salt) + bytes(context),
                                 KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE, "sha512"))
    keys = MessageKeys(bytearray(okm[:KEY_SIZE]), bytearray(okm[KEY_SIZE:KEY_SIZE + NONCE_SIZE]))
    return keys, bytes(okm[KEY_SIZE + NONCE_SIZE:])


def new_message(key: bytes, context: bytes = b"") -> tuple[bytes, MessageKeys]:
    """Start a message: a fresh random salt; returns (the 56-byte message header, its keys)."""
    salt = secrets.token_bytes(SALT_SIZE)
    keys, commitment = derive(key, salt, context)
    return salt + commitment, keys


def open_message(key: bytes, header, context: bytes = b"") -> MessageKeys:
    """Check the 56-byte header's commitment and return the message keys.

    Raises CommitmentError (wrong key, wrong context, altered salt or commitment) or IntegrityError
    (header too short) before anything is decrypted.
    """
    key = _check_key(key)
    header = bytes(header[:HEADER_SIZE])
    if len(header) < HEADER_SIZE:
        raise IntegrityError("message shorter than its 56-byte header (truncated)")
    keys, commitment = derive(key, header[:SALT_SIZE], context)
    if not hmac.compare_digest(commitment, header[SALT_SIZE:]):
        raise CommitmentError("key commitment mismatch: wrong key or context, or the header was altered")
    return keys


def chunk_count(plaintext_len: int) -> int:
    """Number of chunks a message of ``plaintext_len`` bytes is split into (at least one)."""
    return plaintext_len // CHUNK_SIZE + 1


def ciphertext_length(plaintext_len: int) -> int:
    """Total message length (header included) for ``plaintext_len`` bytes of plaintext."""
    if chunk_count(plaintext_len) > MAX_CHUNKS:
        raise ValueError("message too long for C2SP chunked encryption (at most 2**38 chunks)")
    return HEADER_SIZE + span_ciphertext_length(plaintext_len, final=True)


def plaintext_length(message_len: int) -> int:
    """Plaintext length of a message of ``message_len`` bytes; IntegrityError if no message has it."""
    body = span_plaintext_length(message_len - HEADER_SIZE, final=True)
    if body is None:
        raise IntegrityError(f"impossible chunked message length {message_len} (truncated or extended)")
    if chunk_count(body) > MAX_CHUNKS:
        raise IntegrityError("message longer than 2**38 chunks")
    return body


def encrypt_into(key: bytes, plaintext, dst, context: bytes = b"", *, threads: int = 0) -> None:
    """Encrypt ``plaintext`` as one message into ``dst`` (exactly ``ciphertext_length`` bytes)."""
    source = memoryview(plaintext).cast("B")
    target = memoryview(dst).cast("B")
    if len(target) != ciphertext_length(len(source)):
        raise ValueError("destination size does not match ciphertext_length(len(plaintext))")
    header, keys = new_message(key, context)
    target[:HEADER_SIZE] = header
    try:
        _backends.engine().encrypt_span(keys.aead_key, keys.base_nonce, 0, source,
                                        target[HEADER_SIZE:], final=True, threads=threads)
    finally:
        keys.wipe()


def encrypt(key: bytes, plaintext, context: bytes = b"", *, threads: int = 0) -> bytes:
    """Encrypt ``plaintext`` (bytes-like) under ``key`` (32 bytes) and ``context``; returns the message."""
    source = memoryview(plaintext).cast("B")
    out = bytearray(ciphertext_length(len(source)))
    encrypt_into(key, source, out, context, threads=threads)
    return bytes(out)


def decrypt_into(key: bytes, ciphertext, dst, context: bytes = b"", *, threads: int = 0) -> None:
    """Decrypt a whole message into ``dst`` (exactly ``plaintext_length`` bytes).

    On failure ``dst`` is wiped and the error raised; nothing unauthenticated is left behind.
    """
    source = memoryview(ciphertext).cast("B")
    target = memoryview(dst).cast("B")
    try:
        keys = open_message(key, source, context)
        expected = plaintext_length(len(source))
    except IntegrityError:
        target[:] = bytes(len(target))
        raise
    try:
        if len(target) != expected:
            raise ValueError(f"destination holds {len(target)} bytes, message decrypts to "
                             f"{expected}")
        _backends.engine().decrypt_span(keys.aead_key, keys.base_nonce, 0, source[HEADER_SIZE:],
                                        target, final=True, threads=threads)
    finally:
        keys.wipe()


def decrypt(key: bytes, ciphertext, context: bytes = b"", *, threads: int = 0) -> bytes:
    """Decrypt and authenticate a whole message; returns the plaintext or raises (see module doc)."""
    source = memoryview(ciphertext).cast("B")
    keys = open_message(key, source, context)
    try:
        out = bytearray(plaintext_length(len(source)))
        _backends.engine().decrypt_span(keys.aead_key, keys.base_nonce, 0, source[HEADER_SIZE:],
                                        out, final=True, threads=threads)
    finally:
        keys.wipe()
    return bytes(out)


def chunk_range_for_bytes(begin: int, end: int) -> tuple[int, int]:
    """The chunks [first, stop) whose plaintext covers bytes [begin, end) (at least one chunk)."""
    if not 0 <= begin <= end:
        raise ValueError("bad byte range")
    first = begin // CHUNK_SIZE
    stop = max(first + 1, -(-end // CHUNK_SIZE))
    return first, stop


def _range_geometry(message_len: int, first: int, stop: int) -> tuple[int, int, int, bool]:
    """(ciphertext offset in the message, ciphertext length, plaintext length, final) of a range."""
    total_plain = plaintext_length(message_len)
    total_chunks = chunk_count(total_plain)
    if not 0 <= first < stop <= total_chunks:
        raise ValueError(f"chunk range [{first}, {stop}) outside the message's {total_chunks} chunks")
    final = stop == total_chunks
    offset = HEADER_SIZE + first * ENCRYPTED_CHUNK_SIZE
    if final:
        ct_len = message_len - offset
        plain_len = total_plain - first * CHUNK_SIZE
    else:
        ct_len = (stop - first) * ENCRYPTED_CHUNK_SIZE
        plain_len = (stop - first) * CHUNK_SIZE
    return offset, ct_len, plain_len, final


def decrypt_chunk_range_into(keys: MessageKeys, message, first: int, stop: int, dst, *,
                             threads: int = 0, digests=None) -> None:
    """Decrypt chunks [first, stop) of ``message`` (the whole message's bytes, e.g. an mmap) into
    ``dst``, which must hold exactly their plaintext. ``keys`` come from :func:`open_message`.

    The message length is authenticated by the caller (a sealed file's header MAC covers it); a
    range that ends at the final chunk also authenticates it through that chunk's nonce.

    ``digests``: None, or 32 bytes per chunk of [first, stop), the expected SHA-256 of each stored
    chunk (ciphertext and tag), e.g. from a publisher's signed manifest. Every chunk is checked
    before it is decrypted; a mismatch wipes ``dst`` and raises
    :class:`~sealtensors.errors.SignatureError` with the lowest failing ``chunk_index``.
    """
    source = memoryview(message).cast("B")
    offset, ct_len, plain_len, final = _range_geometry(len(source), first, stop)
    if len(memoryview(dst).cast("B")) != plain_len:
        raise ValueError(f"destination must hold exactly {plain_len} bytes")
    _backends.engine().decrypt_span(keys.aead_key, keys.base_nonce, first,
                                    source[offset:offset + ct_len], dst, final=final, threads=threads,
                                    digests=digests)


def decrypt_chunk_range_fd_into(keys: MessageKeys, fd: int, message_offset: int, message_len: int,
                                first: int, stop: int, dst, *, threads: int = 0,
                                digests=None) -> None:
    """Like :func:`decrypt_chunk_range_into` (``digests`` included), reading the message from file
    descriptor ``fd`` where it starts at ``message_offset`` and is ``message_len`` bytes long (pread;
    the fd's position is kept)."""
    offset, ct_len, plain_len, final = _range_geometry(message_len, first, stop)
    if len(memoryview(dst).cast("B")) != plain_len:
        raise ValueError(f"destination must hold exactly {plain_len} bytes")
    _backends.engine().decrypt_span_fd(keys.aead_key, keys.base_nonce, first, fd,
                                       message_offset + offset, ct_len, dst, final=final,
                                       threads=threads, digests=digests)
