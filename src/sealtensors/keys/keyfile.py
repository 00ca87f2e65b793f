"""Key handling: generating keys, reading key files, and key ids.

A sealtensors key is 32 uniformly random bytes. On disk a key file holds either exactly those 32 raw
bytes, or one line of text ``sealtensors-key-v1:<64 hex digits>`` (what :func:`write_key_file` and
``sealtensors keygen`` write). A key is named in sealed files only by its *key id*, derived from the key
with HKDF, which reveals nothing about the key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterable, Union

from ..crypto.hkdf import hkdf_expand
from ..errors import InvalidKeyError

KEY_SIZE = 32
KEY_ID_SIZE = 16
KEY_FILE_PREFIX = "sealtensors-key-v1:"
_KEY_ID_INFO = b"sealtensors/v1/key-id"
_MAX_KEY_FILE_BYTES = 4096

KeyLike = Union[bytes, bytearray, memoryview, str, os.PathLike]


def generate_key() -> bytes:
    """A fresh random 32-byte key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def key_id(key: bytes) -> bytes:
    """The 16-byte public identifier of ``key`` (HKDF-Expand-SHA-512, label ``sealtensors/v1/key-id``)."""
    return hkdf_expand(as_key(key), _KEY_ID_INFO, KEY_ID_SIZE, "sha512")


def _parse_key_file(data: bytes, where: str) -> bytes:
    if len(data) == KEY_SIZE:
        return bytes(data)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidKeyError(f"{where}: not a sealtensors key file") from None
    if not text.startswith(KEY_FILE_PREFIX):
        raise InvalidKeyError(f"{where}: not a sealtensors key file (expected {KEY_FILE_PREFIX}...)")
    digits = text[len(KEY_FILE_PREFIX):]
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise InvalidKeyError(f"{where}: key is not hexadecimal") from None
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"{where}: key must be {KEY_SIZE} bytes")
    return key


def read_key_file(path: str | os.PathLike) -> bytes:
    """Read a key file (raw 32 bytes or the text form); InvalidKeyError if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidKeyError(f"cannot read key file {str(path)!r}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise InvalidKeyError(f"{path}: too large to be a key file")
    return _parse_key_file(data, str(path))


def as_key(key: KeyLike) -> bytes:
    """Accept 32 raw bytes, or a path (str / PathLike) to a key file; return the 32 key bytes."""
    if isinstance(key, (str, os.PathLike)):
        return read_key_file(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {len(raw)}")
        return raw
    raise InvalidKeyError(f"a key must be 32 bytes or a key file path, not {type(key).__name__}")


def as_keys(keys: KeyLike | Iterable[KeyLike]) -> list[bytes]:
    """One key or several (a list/tuple of keys); at least one."""
    if isinstance(keys, (bytes, bytearray, memoryview, str, os.PathLike)):
        return [as_key(keys)]
    try:
        result = [as_key(k) for k in keys]
    except TypeError:
        raise InvalidKeyError("keys must be a key or an iterable of keys") from None
    if not result:
        raise InvalidKeyError("at least one key is required")
    return result


def format_key(key: bytes) -> str:
    """The text form of a key file's content (one line, newline-terminated)."""
    return KEY_FILE_PREFIX + as_key(key).hex() + "\n"


def write_key_file(path: str | os.PathLike, key: bytes | None = None, *, overwrite: bool = False) -> bytes:
    """Write ``key`` (a fresh one if None) to ``path`` with mode 0600; refuses to replace a file
    unless ``overwrite``. Returns the key."""
    from ..io.atomic import atomic_output

    key = generate_key() if key is None else as_key(key)
    # A fresh file renamed into place: a replaced key file never keeps looser permissions, and a
    # symbolic link at the path is replaced rather than followed.
    with atomic_output(path, overwrite=overwrite, mode=0o600) as handle:
        handle.write(format_key(key).encode("ascii"))
    return key
