"""Single-message AES-256-GCM: the primitive each chunk of a sealed file is made of.

Only the parameters sealtensors uses are accepted: 32-byte keys, 12-byte nonces and 16-byte tags.
Anything else is refused up front (:class:`~sealtensors.errors.InvalidKeyError` for a key,
``ValueError`` for a nonce) rather than silently handled, so there is exactly one GCM profile to test.

A ciphertext is ``ciphertext || tag`` (the tag is the last 16 bytes). :func:`open` returns plaintext
only after the tag has been verified; any failure, including input shorter than a tag, raises
:class:`~sealtensors.errors.IntegrityError`. The engine selected by :mod:`sealtensors.engine.backends` does
the work when it offers single-message calls (the C engine); otherwise pycryptodome does. Thread safe:
nothing is shared between calls.
"""

from __future__ import annotations

from Crypto.Cipher import AES

from ..engine import backends as _backends
from ..engine.spec import KEY_SIZE, NONCE_SIZE, TAG_SIZE
from ..errors import IntegrityError, InvalidKeyError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "seal", "open"]


def _as_bytes(value, what: str) -> bytes:
    try:
        return bytes(memoryview(value).cast("B"))
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}") from None


def _check(key, nonce, aad) -> tuple[bytes, bytes, bytes]:
    try:
        key = _as_bytes(key, "key")
    except TypeError as exc:
        raise InvalidKeyError(str(exc)) from None
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"AES-256-GCM key must be {KEY_SIZE} bytes, got {len(key)}")
    nonce = _as_bytes(nonce, "nonce")
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"AES-256-GCM nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return key, nonce, _as_bytes(aad, "aad")


def seal(key: bytes, nonce: bytes, plaintext, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` under ``key`` (32 bytes) and ``nonce`` (12 bytes, never reused with the
    same key), authenticating ``aad`` too; returns ``ciphertext || tag`` (16 more bytes)."""
    key, nonce, aad = _check(key, nonce, aad)
    plaintext = _as_bytes(plaintext, "plaintext")
    engine = _backends.engine()
    if hasattr(engine, "aead_seal"):
        return bytes(engine.aead_seal(key, nonce, plaintext, aad))
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(aad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return ciphertext + tag


def open(key: bytes, nonce: bytes, ciphertext_and_tag, aad: bytes = b"") -> bytes:  # noqa: A001
    """Verify and decrypt ``ciphertext || tag``; returns the plaintext.

    Raises IntegrityError when the tag does not verify (wrong key, nonce or aad, or modified,
    truncated or extended input); no plaintext is returned in that case."""
    key, nonce, aad = _check(key, nonce, aad)
    data = _as_bytes(ciphertext_and_tag, "ciphertext_and_tag")
    if len(data) < TAG_SIZE:
        raise IntegrityError(f"input is {len(data)} bytes, shorter than the {TAG_SIZE}-byte tag")
    engine = _backends.engine()
    if hasattr(engine, "aead_open"):
        return bytes(engine.aead_open(key, nonce, data, aad))
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    cipher.update(aad)
    try:
        return cipher.decrypt_and_verify(data[:-TAG_SIZE], data[-TAG_SIZE:])
    except ValueError:
        raise IntegrityError("AES-GCM authentication failed") from None
