"""Reading and writing key files, and turning what callers pass (bytes, paths, strings, objects) into
identities (to open files) and recipients (to seal for).

Symmetric keys are 32 random bytes. On disk a secret lives in a file of mode 0600 holding one line
``ST-<TYPE>-SECRET:<base64url + checksum>`` (keys/textcodec.py), optionally preceded by ``#``
comment lines; for symmetric keys the v0.1 forms stay readable: exactly 32 raw bytes (refused when
they look like text, which is what a truncated text key file looks like) and
``sealtensors-key-v1:<64 hex digits>``. Recipient files list public strings, one per line.
Nothing here ever puts key material into a message, a repr or a log.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import warnings
from pathlib import Path
from typing import Iterable, Union

from ..errors import InvalidKeyError
from . import textcodec
from .slots import PASSPHRASE, X25519, XWING, Identity, Recipient

KEY_SIZE = 32
KEY_ID_SIZE = 16
LEGACY_PREFIX = "sealtensors-key-v1:"
SYMMETRIC_TAG = "ST-SYMMETRIC-SECRET"
_MAX_KEY_FILE_BYTES = 65536
_LEGACY_HEX = re.compile(r"[0-9a-f]{64}")
_LOOKS_SECRET = re.compile(r"(SECRET:|sealtensors-key-v1:)|^[0-9A-Za-z_+/=-]{40,}$")

KeyLike = Union[bytes, bytearray, memoryview, str, os.PathLike]


class KeyFilePermissionWarning(UserWarning):
    """A secret key file is readable by its group or by others."""


def generate_key() -> bytes:
    """A fresh random 32-byte symmetric key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def key_id(key) -> bytes:
    """The 16-byte public name of a symmetric key (the same everywhere; sealed files do not store
    it: their slot ids differ per file)."""
    from .symmetric import SymmetricKey

    return (key if isinstance(key, SymmetricKey) else SymmetricKey(as_key(key))).name()


def _describe_argument(value: str) -> str:
    """How an error names a path argument: never echo something that looks like key material."""
    if _LOOKS_SECRET.search(value) or len(value) > 4096:
        return "(an argument that looks like key material, not a path; not shown)"
    return repr(value)


def _read_small(path, what: str) -> bytes:
    if isinstance(path, str) and _LOOKS_SECRET.search(path) and not os.path.exists(path):
        raise InvalidKeyError(f"cannot read {what} {_describe_argument(path)}: a key must be given "
                              "as a file, not as text on the command line or in a str")
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(21, "Is a directory")
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidKeyError(f"cannot read {what} {_describe_argument(os.fspath(path))}: "
                              f"{exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise InvalidKeyError(f"{os.fspath(path)}: too large to be a {what}")
    _last_mode[os.fspath(path)] = info.st_mode
    return data


_last_mode: dict = {}


def _warn_if_exposed(path) -> None:
    """Warn (once the file proved to hold a key) when a secret file is group/other-readable."""
    mode = _last_mode.pop(os.fspath(path), None)
    if mode is not None and stat.S_ISREG(mode) and mode & 0o077:
        warnings.warn(f"{os.fspath(path)}: secret key file is readable by group or others "
                      f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                      KeyFilePermissionWarning, stacklevel=4)


def _secret_line(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKeyError(f"{where}: not a sealtensors key file") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 1:
        raise InvalidKeyError(f"{where}: a key file holds exactly one key line "
                              f"(found {len(lines)})")
    return lines[0]


def read_secret_text(path) -> str:
    """The one key line of a text secret file (comments dropped)."""
    line = _secret_line(_read_small(path, "key file"), os.fspath(path))
    _warn_if_exposed(path)
    return line


def _parse_identity(data: bytes, where: str) -> Identity:
    from .hpke import PublicKeyIdentity
    from .symmetric import SymmetricKey

    if len(data) == KEY_SIZE:
        if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in data):
            raise InvalidKeyError(f"{where}: 32 bytes of text, not a raw key (a truncated text key "
                                  "file?)")
        return SymmetricKey(data)
    line = _secret_line(data, where)
    if line.startswith(LEGACY_PREFIX):
        digits = line[len(LEGACY_PREFIX):]
        if not _LEGACY_HEX.fullmatch(digits):
            raise InvalidKeyError(f"{where}: a {LEGACY_PREFIX} key is exactly 64 lower-case hex digits")
        return SymmetricKey(bytes.fromhex(digits))
    try:
        tag, payload = textcodec.decode(line)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"{where}: {exc}") from None
    if tag == SYMMETRIC_TAG:
        return SymmetricKey(payload)
    if tag == "ST-X25519-SECRET":
        return PublicKeyIdentity(X25519, payload)
    if tag == "ST-XWING-SECRET":
        return PublicKeyIdentity(XWING, payload)
    if tag == "ST-SIGN-SECRET":
        raise InvalidKeyError(f"{where}: a signing key signs files; it cannot open them")
    raise InvalidKeyError(f"{where}: holds a public key ({tag}); opening a file needs the secret "
                          "identity file")


def load_identity(path) -> Identity:
    """The identity in a key or identity file (symmetric, x25519, xwing)."""
    identity = _parse_identity(_read_small(path, "key file"), os.fspath(path))
    _warn_if_exposed(path)
    return identity


def read_key_file(path: str | os.PathLike) -> bytes:
    """The 32 bytes of a symmetric key file; InvalidKeyError if it is not one."""
    from .symmetric import SymmetricKey

    identity = load_identity(path)
    if not isinstance(identity, SymmetricKey):
        raise InvalidKeyError(f"{os.fspath(path)}: not a symmetric key file")
    return identity.secret


def as_key(key: KeyLike) -> bytes:
    """32 raw bytes, or the path of a symmetric key file; returns the 32 key bytes."""
    if isinstance(key, (str, os.PathLike)):
        return read_key_file(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {len(raw)}")
        return raw
    raise InvalidKeyError(f"a key must be 32 bytes or a key file path, not {type(key).__name__}")


def _flatten(value) -> list:
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray, memoryview, str, os.PathLike, Recipient, Identity)):
        return [value]
    from .provider import KeyProvider

    if isinstance(value, KeyProvider):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise InvalidKeyError(f"expected a key, an identity or a list of them, not "
                              f"{type(value).__name__}") from None


def as_identities(keys) -> list[Identity]:
    """What opens a file: 32-byte keys, key/identity file paths, Identity objects (Passphrase,
    provider recipients, PublicKeyIdentity), KeyProvider instances, or a list of these."""
    from .provider import KeyProvider
    from .provider_slot import ProviderRecipient
    from .symmetric import SymmetricKey

    result = []
    for item in _flatten(keys):
        if isinstance(item, Identity):
            result.append(item)
        elif isinstance(item, KeyProvider):
            result.append(ProviderRecipient(item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            result.append(SymmetricKey(as_key(item)))
        elif isinstance(item, (str, os.PathLike)):
            result.append(load_identity(item))
        else:
            raise InvalidKeyError(f"cannot open a file with a {type(item).__name__}")
    if not result:
        raise InvalidKeyError("at least one key or identity is required")
    return result


def parse_recipient(text: str) -> Recipient:
    """A recipient from its public string (``st-x25519:...``, ``st-xwing:...``)."""
    from .hpke import PublicKeyRecipient

    tag, payload = textcodec.decode(text, ("st-x25519", "st-xwing"))
    return PublicKeyRecipient(X25519 if tag == "st-x25519" else XWING, payload)


def read_key_list(path, what: str, parse, *, limit: int = 16 << 20) -> list:
    """Entries of a text file listing public keys one per line ('#' comments and blank lines
    ignored), each turned into an object by ``parse``; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(limit)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidKeyError(f"cannot read {what} {_describe_argument(os.fspath(path))}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    result = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            result.append(parse(line))
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"{os.fspath(path)}:{number}: {exc}") from None
    if not result:
        raise InvalidKeyError(f"{what} {os.fspath(path)!r} lists nothing")
    return result


def read_recipients_file(path) -> list[Recipient]:
    """Recipients listed one public string per line ('#' comments and blank lines ignored)."""
    return read_key_list(path, "recipients file", parse_recipient)


def as_recipients(recipients) -> list[Recipient]:
    """Who to seal for: 32-byte keys, symmetric key file paths, public recipient strings,
    identity files (their public half), Recipient objects, KeyProvider instances, or a list."""
    from .hpke import PublicKeyIdentity
    from .provider import KeyProvider
    from .provider_slot import ProviderRecipient
    from .symmetric import SymmetricKey

    result: list[Recipient] = []
    for item in _flatten(recipients):
        if isinstance(item, Recipient):
            result.append(item)
        elif isinstance(item, PublicKeyIdentity):
            result.append(item.recipient())
        elif isinstance(item, KeyProvider):
            result.append(ProviderRecipient(item))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            result.append(SymmetricKey(as_key(item)))
        elif isinstance(item, str) and textcodec.tag_of(item.strip()) in textcodec.PUBLIC_TAGS:
            result.append(parse_recipient(item))
        elif isinstance(item, (str, os.PathLike)):
            identity = load_identity(item)
            result.append(identity.recipient() if isinstance(identity, PublicKeyIdentity) else identity)
        else:
            raise InvalidKeyError(f"cannot seal for a {type(item).__name__}")
    if not result:
        raise InvalidKeyError("at least one recipient is required")
    unique: list[Recipient] = []
    for recipient in result:
        if recipient.slot_type == PASSPHRASE or recipient not in unique:
            unique.append(recipient)
    return unique


# v0.1 names, kept for callers of the symmetric-key API.
def as_keys(keys: KeyLike | Iterable[KeyLike]) -> list[bytes]:
    """One symmetric key or several; at least one."""
    items = _flatten(keys)
    if not items:
        raise InvalidKeyError("at least one key is required")
    return [as_key(item) for item in items]


def format_key(key: bytes) -> str:
    """The text form of a symmetric key file's content (one line, newline-terminated)."""
    return textcodec.encode(SYMMETRIC_TAG, as_key(key)) + "\n"


def write_secret_file(path, text: str, *, overwrite: bool = False) -> None:
    """Write a secret key file, mode 0600, refusing to replace a file unless ``overwrite``."""
    from ..io.atomic import atomic_output

    # A fresh file renamed into place: a replaced key file never keeps looser permissions, and a
    # symbolic link at the path is replaced rather than followed.
    with atomic_output(path, overwrite=overwrite, mode=0o600) as handle:
        handle.write(text.encode("utf-8"))


def write_key_file(path: str | os.PathLike, key: bytes | None = None, *, overwrite: bool = False) -> bytes:
    """Write ``key`` (a fresh one if None) to ``path`` with mode 0600; refuses to replace a file
    unless ``overwrite``. Returns the key."""
    key = generate_key() if key is None else as_key(key)
    write_secret_file(path, format_key(key), overwrite=overwrite)
    return key
