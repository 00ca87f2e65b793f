"""The seam between the chunked construction and the engines that run AES-256-GCM over chunks.

An engine encrypts or decrypts a *span*: consecutive chunks of one C2SP chunked message, starting at
chunk counter ``first_chunk``. Ciphertext chunks are ``CHUNK_SIZE + TAG_SIZE`` bytes each; when
``final`` is true the span ends with the message's final chunk, whose plaintext is shorter than
``CHUNK_SIZE`` (possibly empty), otherwise every chunk of the span is full. The length arithmetic
lives here so that every engine applies exactly the same rules.
"""

from __future__ import annotations

from typing import Protocol

CHUNK_SIZE = 16384
TAG_SIZE = 16
KEY_SIZE = 32
NONCE_SIZE = 12
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
MAX_CHUNKS = 1 << 38
DIGEST_SIZE = 32  # SHA-256 of one stored chunk (its ciphertext and tag), for publisher signatures


def span_chunk_count_for_plaintext(plaintext_length: int, final: bool) -> int:
    """Chunks needed for ``plaintext_length`` bytes; ValueError if a non-final span is ragged."""
    if plaintext_length < 0:
        raise ValueError("negative length")
    if final:
        return plaintext_length // CHUNK_SIZE + 1
    if plaintext_length % CHUNK_SIZE:
        raise ValueError("a non-final span must hold whole chunks")
    return plaintext_length // CHUNK_SIZE


def span_ciphertext_length(plaintext_length: int, final: bool) -> int:
    return plaintext_length + span_chunk_count_for_plaintext(plaintext_length, final) * TAG_SIZE


def span_plaintext_length(ciphertext_length: int, final: bool) -> int | None:
    """Plaintext length of a span of ``ciphertext_length`` bytes, or None if no span has that length."""
    if ciphertext_length < 0:
        return None
    full, remainder = divmod(ciphertext_length, ENCRYPTED_CHUNK_SIZE)
    if final:
        if remainder < TAG_SIZE:
            return None
        return ciphertext_length - (full + 1) * TAG_SIZE
    if remainder:
        return None
    return full * CHUNK_SIZE


def chunk_nonce(base_nonce: bytes, counter: int) -> bytes:
    """The chunk's nonce: the base nonce XOR the counter as a 96-bit big-endian integer."""
    return (int.from_bytes(base_nonce, "big") ^ counter).to_bytes(NONCE_SIZE, "big")


def chunk_digests_view(digests, chunk_count: int, *, writable: bool) -> memoryview | None:
    """A flat byte view of a per-chunk digest array (``DIGEST_SIZE`` bytes per chunk of the span),
    or None when ``digests`` is None; ValueError for any other length, TypeError when not bytes-like,
    ValueError when ``writable`` is asked of a read-only buffer."""
    if digests is None:
        return None
    try:
        view = memoryview(digests)
    except TypeError:
        raise TypeError(f"digests must be bytes-like, not {type(digests).__name__}") from None
    if writable and view.readonly:
        raise ValueError("digests_out must be a writable buffer")
    if not view.c_contiguous:
        raise ValueError("digests must be a contiguous buffer")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if view.nbytes != chunk_count * DIGEST_SIZE:
        raise ValueError(f"digests must be {DIGEST_SIZE} bytes per chunk: {chunk_count} chunks need "
                         f"{chunk_count * DIGEST_SIZE} bytes, got {view.nbytes}")
    return view


def check_counter_range(first_chunk: int, chunk_count: int) -> None:
    if first_chunk < 0 or first_chunk + chunk_count > MAX_CHUNKS:
        raise ValueError("chunk counter out of range (a message holds at most 2**38 chunks)")


class Engine(Protocol):
    """What an engine offers. All buffers are bytes-like; ``dst`` must be writable.

    Decryption writes plaintext into ``dst`` (exactly the span's plaintext length); a chunk's
    plaintext reaches ``dst`` only after its tag verified. On an authentication failure it wipes all
    of ``dst`` and raises IntegrityError whose ``chunk_index`` is the lowest failing absolute chunk
    counter. ``threads`` = 0 means the engine's default.

    ``digests`` (decryption): ``DIGEST_SIZE`` bytes per chunk of the span, the expected SHA-256 of
    each stored chunk (ciphertext and tag). Each chunk is hashed and compared before it is
    decrypted; a mismatch wipes ``dst`` and raises SignatureError at the lowest failing chunk (a
    lower chunk failing authentication wins, as any lowest failure does). ``digests_out``
    (encryption): a writable buffer of ``DIGEST_SIZE`` bytes per chunk that receives them.
    """

    name: str

    def encrypt_span(self, aead_key: bytes, base_nonce: bytes, first_chunk: int, src, dst, *,
                     final: bool, threads: int = 0, digests_out=None) -> None: ...

    def decrypt_span(self, aead_key: bytes, base_nonce: bytes, first_chunk: int, src, dst, *,
                     final: bool, threads: int = 0, digests=None) -> None: ...

    def decrypt_span_fd(self, aead_key: bytes, base_nonce: bytes, first_chunk: int, fd: int,
                        offset: int, length: int, dst, *, final: bool, threads: int = 0,
                        digests=None) -> None: ...

    def info(self) -> dict: ...


def validate_span(aead_key: bytes, base_nonce: bytes, first_chunk: int, src_length: int,
                  dst_length: int, *, final: bool, decrypting: bool) -> int:
    """Check a span request and return its chunk count.

    For decryption an impossible ciphertext length is an authentication failure (the message was
    truncated or extended), reported at the chunk where the ragged end sits.
    """
    from ..errors import IntegrityError

    if len(aead_key) != KEY_SIZE:
        raise ValueError(f"AES-256-GCM key must be {KEY_SIZE} bytes")
    if len(base_nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if decrypting:
        plaintext_length = span_plaintext_length(src_length, final)
        if plaintext_length is None:
            raise IntegrityError(
                "ciphertext span has an impossible length (truncated or extended)",
                chunk_index=first_chunk + src_length // ENCRYPTED_CHUNK_SIZE,
            )
        if dst_length != plaintext_length:
            raise ValueError(f"destination holds {dst_length} bytes, span decrypts to {plaintext_length}")
        count = span_chunk_count_for_plaintext(plaintext_length, final)
    else:
        count = span_chunk_count_for_plaintext(src_length, final)
        expected = span_ciphertext_length(src_length, final)
        if dst_length != expected:
            raise ValueError(f"destination holds {dst_length} bytes, span encrypts to {expected}")
    check_counter_range(first_chunk, count)
    return count
