"""The text form of recipient strings, identity files and signing keys: a type tag, base64url, a checksum.

Every public or secret key that a person copies, pastes or stores as text is written as::

    <tag>:<base64url(payload || check)>        check = SHA-256(tag || ":" || payload)[0:4]

with base64url from RFC 4648 section 5, without padding. The tag names the key type (and whether it
is public or secret), so a key is never used as the wrong kind; the 4-byte check catches a mistyped,
truncated or spliced string. See docs/FORMAT.md section 4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from ..errors import InvalidKeyError

CHECK_SIZE = 4
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# tag -> payload length in bytes
PUBLIC_TAGS = {
    "st-x25519": 32,
    "st-xwing": 1216,
    "st-sign": 32 + 1952,
}
SECRET_TAGS = {
    "ST-SYMMETRIC-SECRET": 32,
    "ST-X25519-SECRET": 32,
    "ST-XWING-SECRET": 32,
    "ST-SIGN-SECRET": 64,
}
ALL_TAGS = {**PUBLIC_TAGS, **SECRET_TAGS}


def _check(tag: str, payload: bytes) -> bytes:
    return hashlib.sha256(tag.encode("ascii") + b":" + payload).digest()[:CHECK_SIZE]


def encode(tag: str, payload: bytes) -> str:
    """The text form of ``payload`` under ``tag`` (no newline)."""
    if ALL_TAGS.get(tag) != len(payload):
        raise ValueError(f"{tag}: payload must be {ALL_TAGS.get(tag)} bytes")
    body = base64.urlsafe_b64encode(payload + _check(tag, payload)).rstrip(b"=").decode("ascii")
    return f"{tag}:{body}"


def tag_of(text: str) -> str | None:
    """The tag of a text key, or None when ``text`` does not start with a known tag."""
    tag, sep, _ = text.partition(":")
    return tag if sep and tag in ALL_TAGS else None


def decode(text: str, allowed: tuple[str, ...] | None = None) -> tuple[str, bytes]:
    """(tag, payload) of a text key; InvalidKeyError naming what is wrong, never echoing a secret."""
    text = text.strip()
    tag = tag_of(text)
    if tag is None:
        raise InvalidKeyError("not a sealtensors key string (expected one of "
                              + ", ".join(f"'{t}:...'" for t in sorted(allowed or ALL_TAGS)) + ")")
    if allowed is not None and tag not in allowed:
        raise InvalidKeyError(f"a {tag} key cannot be used here (expected "
                              + " or ".join(sorted(allowed)) + ")")
    body = text[len(tag) + 1:]
    if not _BASE64URL.fullmatch(body):
        raise InvalidKeyError(f"{tag} key: characters outside base64url (mistyped or damaged)")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise InvalidKeyError(f"{tag} key: not valid base64url (truncated?)") from None
    expected = ALL_TAGS[tag] + CHECK_SIZE
    if len(raw) != expected:
        raise InvalidKeyError(f"{tag} key: {len(raw)} bytes where {expected} were expected "
                              "(truncated or extended)")
    # Canonical form only: a body with non-zero trailing bits decodes to the same bytes and would
    # give one key two spellings.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
        raise InvalidKeyError(f"{tag} key: not in canonical base64url form")
    payload, check = raw[:-CHECK_SIZE], raw[-CHECK_SIZE:]
    if not hmac.compare_digest(check, _check(tag, payload)):
        raise InvalidKeyError(f"{tag} key: checksum mismatch (mistyped, truncated or damaged)")
    return tag, payload
