"""Keys: generation, public key names, key and identity files in text and legacy forms, the checks on
malformed ones, and that no error, repr or warning ever shows key material."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

from sealtensors.errors import InvalidKeyError, SealError
from sealtensors.keys import generate_identity, identity_text
from sealtensors.keys import textcodec
from sealtensors.keys.hpke import PublicKeyIdentity
from sealtensors.keys.keyfile import (
    LEGACY_PREFIX,
    SYMMETRIC_TAG,
    KeyFilePermissionWarning,
    as_identities,
    as_key,
    as_keys,
    as_recipients,
    format_key,
    generate_key,
    key_id,
    load_identity,
    read_key_file,
    write_key_file,
)
from sealtensors.keys.signing import SigningKey
from sealtensors.keys.symmetric import SymmetricKey

KEY = bytes(range(32))
TEXT = textcodec.encode(SYMMETRIC_TAG, KEY)
LEGACY = f"{LEGACY_PREFIX}{KEY.hex()}"


def _independent_key_name(key: bytes) -> bytes:
    # HKDF-Expand-SHA-512 for 16 bytes is the first HMAC block: HMAC(key, info || 0x01)[:16].
    return hmac.new(key, b"sealtensors/v2/key-name\x01", hashlib.sha512).digest()[:16]


def _independent_text(tag: str, payload: bytes) -> str:
    check = hashlib.sha256(tag.encode() + b":" + payload).digest()[:4]
    return tag + ":" + base64.urlsafe_b64encode(payload + check).decode().rstrip("=")


def test_generate_key():
    keys = {generate_key() for _ in range(32)}
    assert len(keys) == 32
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)


@given(st.binary(min_size=32, max_size=32))
def test_key_id_matches_hkdf(key):
    assert key_id(key) == _independent_key_name(key)
    assert len(key_id(key)) == 16
    assert key_id(bytearray(key)) == key_id(memoryview(key)) == SymmetricKey(key).name()


def test_key_id_known_answer():
    assert key_id(KEY) == _independent_key_name(KEY)
    assert key_id(KEY) != key_id(bytes(32))
    with pytest.raises(InvalidKeyError):
        key_id(bytes(31))


def test_write_and_read_text_form(tmp_path):
    path = tmp_path / "model.key"
    key = write_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text("ascii")
    assert text == _independent_text(SYMMETRIC_TAG, key) + "\n" == format_key(key)
    assert read_key_file(path) == key
    assert as_key(str(path)) == key and as_key(path) == key


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "model.key"
    first = write_key_file(path, KEY)
    assert first == KEY
    with pytest.raises(FileExistsError):
        write_key_file(path)
    assert read_key_file(path) == KEY
    second = write_key_file(path, overwrite=True)
    assert read_key_file(path) == second != KEY


def test_write_rejects_bad_key(tmp_path):
    with pytest.raises(InvalidKeyError):
        write_key_file(tmp_path / "k", b"too short")
    assert not (tmp_path / "k").exists()


def _write(tmp_path, content: bytes, mode: int = 0o600):
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("content", [
    KEY,  # raw, v0.1: not text (it has control bytes)
    bytes([0xFF]) * 32,
    TEXT.encode(),  # no newline
    f"{TEXT}\n".encode(),
    f"{TEXT}\r\n".encode(),
    f"  {TEXT}  \n\n".encode(),
    f"# sealtensors symmetric key\n{TEXT}\n# trailing comment\n".encode(),
    f"\n#\n\n{TEXT}".encode(),
    LEGACY.encode(),
    f"{LEGACY}\n".encode(),
    f"# old key\n  {LEGACY}\r\n".encode(),
], ids=["raw", "raw-ff", "text", "text-lf", "text-crlf", "text-spaces", "comments", "blank-lines",
        "legacy", "legacy-lf", "legacy-comment"])
def test_read_accepted_forms(tmp_path, content):
    path = _write(tmp_path, content)
    expected = bytes([0xFF]) * 32 if content == bytes([0xFF]) * 32 else KEY
    assert read_key_file(path) == expected
    assert isinstance(load_identity(path), SymmetricKey)


MALFORMED = {
    "empty": b"",
    "31-raw": KEY[:31],
    "33-raw": KEY + b"\x00",
    "raw-plus-newline": KEY + b"\n",  # 33 bytes: neither raw nor text
    "not-utf8": b"\xff" * 40,
    "32-text-bytes": b"A" * 32,  # what a truncated text key looks like
    "32-text-prefix": TEXT.encode()[:32],
    "32-hex-chars": KEY.hex().encode()[:32],
    "32-whitespace": b" \t" * 15 + b"\r\n",
    "legacy-prefix-only": LEGACY_PREFIX.encode(),
    "legacy-62": f"{LEGACY_PREFIX}{KEY.hex()[:-2]}\n".encode(),
    "legacy-66": f"{LEGACY_PREFIX}{KEY.hex()}00\n".encode(),
    "legacy-g": f"{LEGACY_PREFIX}{KEY.hex()[:-1]}g\n".encode(),
    "legacy-odd": f"{LEGACY_PREFIX}{KEY.hex()[:-1]}\n".encode(),
    "legacy-upper": f"{LEGACY_PREFIX}{KEY.hex().upper()}\n".encode(),  # strict: lower case only
    "legacy-space": f"{LEGACY_PREFIX} {KEY.hex()}\n".encode(),
    "legacy-v2": f"sealtensors-key-v2:{KEY.hex()}\n".encode(),
    "bare-hex": f"{KEY.hex()}\n".encode(),
    "two-keys": f"{TEXT}\n{TEXT}\n".encode(),
    "two-legacy": f"{LEGACY}\n{LEGACY}\n".encode(),
    "key-and-garbage": f"{TEXT}\nsomething\n".encode(),
    "comments-only": b"# nothing here\n#\n",
    "legacy-unicode": "sealtensors-key-v1:ééé".encode("utf-8"),
    "text-bad-check": (TEXT[:-1] + ("A" if TEXT[-1] != "A" else "B")).encode(),
    "text-truncated": TEXT[:-5].encode(),
    "text-lowercase-tag": TEXT.replace(SYMMETRIC_TAG, SYMMETRIC_TAG.lower()).encode(),
    "text-inner-space": (TEXT[:30] + " " + TEXT[30:]).encode(),
    "too-large": b"#" * 65536 + b"\n" + TEXT.encode(),
}


@pytest.mark.parametrize("content", list(MALFORMED.values()), ids=list(MALFORMED))
def test_read_malformed(tmp_path, content):
    path = _write(tmp_path, content)
    with pytest.raises(InvalidKeyError):
        read_key_file(path)
    with pytest.raises(InvalidKeyError):
        as_key(path)
    with pytest.raises(InvalidKeyError):
        as_identities(path)


def test_32_bytes_of_text_are_named_as_such(tmp_path):
    with pytest.raises(InvalidKeyError, match="32 bytes of text"):
        read_key_file(_write(tmp_path, TEXT.encode()[:32]))


def test_more_than_one_key_line_is_counted(tmp_path):
    with pytest.raises(InvalidKeyError, match="exactly one key line.*found 2"):
        read_key_file(_write(tmp_path, f"{TEXT}\n# c\n{LEGACY}\n".encode()))


def test_identity_files_of_each_type(tmp_path):
    for kind in ("symmetric", "x25519", "xwing"):
        identity = generate_identity(kind)
        path = tmp_path / f"{kind}.id"
        path.write_text(identity_text(identity))
        path.chmod(0o600)
        loaded = load_identity(path)
        assert type(loaded) is type(identity)
        if isinstance(identity, PublicKeyIdentity):
            assert loaded.recipient() == identity.recipient()
            # a public key is not an identity
            public = tmp_path / f"{kind}.pub"
            public.write_text(identity.recipient().text() + "\n")
            with pytest.raises(InvalidKeyError, match="public key"):
                load_identity(public)
            # and an identity file seals for its public half
            assert as_recipients(path) == [identity.recipient()]


def test_signing_key_is_refused_as_identity(tmp_path):
    signing = SigningKey.generate()
    path = _write(tmp_path, (signing.text() + "\n").encode())
    with pytest.raises(InvalidKeyError, match="signing key"):
        load_identity(path)
    with pytest.raises(InvalidKeyError):
        read_key_file(path)
    assert SigningKey.load(path).verifying_key == signing.verifying_key
    # and an identity is refused as a signing key
    identity = _write(tmp_path, f"{TEXT}\n".encode())
    with pytest.raises(InvalidKeyError):
        SigningKey.load(identity)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_group_or_world_readable_key_file_warns(tmp_path, mode):
    path = _write(tmp_path, f"{TEXT}\n".encode(), mode)
    with pytest.warns(KeyFilePermissionWarning, match="chmod 600"):
        assert read_key_file(path) == KEY


def test_private_key_file_does_not_warn(tmp_path):
    path = _write(tmp_path, f"{TEXT}\n".encode(), 0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_key_file(path) == KEY
        assert isinstance(load_identity(path), SymmetricKey)


def test_read_missing_or_unreadable(tmp_path):
    with pytest.raises(InvalidKeyError, match="cannot read"):
        read_key_file(tmp_path / "absent")
    with pytest.raises(InvalidKeyError):
        read_key_file(tmp_path)  # a directory


@pytest.mark.parametrize("value", [b"", bytes(31), bytes(33), bytearray(64), memoryview(bytes(16))])
def test_as_key_wrong_length(value):
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        as_key(value)


@pytest.mark.parametrize("value", [None, 5, 3.0, [KEY], {"k": KEY}])
def test_as_key_wrong_type(value):
    with pytest.raises(InvalidKeyError):
        as_key(value)


def test_as_key_accepts_bytes_like():
    assert as_key(KEY) == as_key(bytearray(KEY)) == as_key(memoryview(KEY)) == KEY
    assert isinstance(as_key(bytearray(KEY)), bytes)


def test_as_keys(tmp_path):
    path = tmp_path / "k"
    write_key_file(path, KEY)
    other = bytes(32)
    assert as_keys(KEY) == [KEY]
    assert as_keys(path) == [KEY]
    assert as_keys([KEY, other]) == [KEY, other]
    assert as_keys((str(path), other)) == [KEY, other]
    assert as_keys(k for k in (other,)) == [other]
    for bad in ([], (), 5, None, [KEY, b"short"], [KEY, 7]):
        with pytest.raises(InvalidKeyError):
            as_keys(bad)


# --- key material never shows up in messages ---------------------------------------------------


SECRET = bytes(range(200, 232))
SECRET_TEXT = textcodec.encode(SYMMETRIC_TAG, SECRET)
X25519_SEED = bytes(range(64, 96))
X25519_TEXT = textcodec.encode("ST-X25519-SECRET", X25519_SEED)
SIGN_SEEDS = bytes(range(100, 164))
SIGN_TEXT = textcodec.encode("ST-SIGN-SECRET", SIGN_SEEDS)


def _forbidden() -> list[str]:
    """Every spelling of the secrets above that must never appear: hex (both cases), the text
    forms, their base64 bodies and long fragments of them, the bytes' repr."""
    needles = []
    for secret, text in ((SECRET, SECRET_TEXT), (X25519_SEED, X25519_TEXT),
                         (SIGN_SEEDS, SIGN_TEXT)):
        body = text.split(":", 1)[1]
        needles += [secret.hex(), secret.hex().upper(), text, body, body[:16], body[-16:],
                    secret.hex()[:16], repr(secret)[2:26]]
    return needles


def _messages(error: BaseException) -> list[str]:
    out = []
    while error is not None:
        out += [str(error), repr(error)] + [repr(a) for a in error.args]
        error = error.__cause__ or error.__context__
    return out


def _bad_key_attempts(tmp_path):
    """(description, callable) for every way a caller can hand us key material wrongly."""
    import sealtensors.numpy as stnp

    blob = stnp.save({"t": np.zeros(2, np.uint8)}, KEY)
    attempts = []
    for text in (SECRET_TEXT, X25519_TEXT, SIGN_TEXT, f"{LEGACY_PREFIX}{SECRET.hex()}",
                 SECRET.hex(), SECRET.hex().upper(), SECRET_TEXT + "\n", SECRET_TEXT[:-3]):
        attempts += [
            (f"as_key({text[:12]}...)", lambda t=text: as_key(t)),
            (f"as_identities({text[:12]}...)", lambda t=text: as_identities(t)),
            (f"as_recipients({text[:12]}...)", lambda t=text: as_recipients(t)),
            (f"load_identity({text[:12]}...)", lambda t=text: load_identity(t)),
            (f"load(key={text[:12]}...)", lambda t=text: stnp.load(blob, t)),
            (f"SigningKey.load({text[:12]}...)", lambda t=text: SigningKey.load(t)),
        ]
    # truncated, damaged and mixed-up identity files (mode 0644: the warning is collected too)
    contents = [SECRET_TEXT[:n] for n in (10, 20, 32, 40, len(SECRET_TEXT) - 1)]
    contents += [SECRET_TEXT[:-1] + ("A" if SECRET_TEXT[-1] != "A" else "B"),
                 f"{LEGACY_PREFIX}{SECRET.hex()[:-1]}", f"{LEGACY_PREFIX}{SECRET.hex().upper()}",
                 f"{SECRET_TEXT}\n{SECRET_TEXT}", SIGN_TEXT, SECRET_TEXT.lower(), X25519_TEXT[:-2],
                 SECRET.hex(), SIGN_TEXT[:50]]
    for number, content in enumerate(contents):
        path = tmp_path / f"bad-{number}.key"
        path.write_text(content + "\n")
        path.chmod(0o644)
        attempts += [(f"file {number}", lambda p=path: read_key_file(p)),
                     (f"file {number} identity", lambda p=path: load_identity(p)),
                     (f"file {number} load", lambda p=path: stnp.load(blob, p))]
    attempts.append(("31 bytes", lambda: as_key(SECRET[:31])))
    attempts.append(("wrong key", lambda: stnp.load(blob, SECRET)))
    return attempts


def test_no_error_repr_or_warning_shows_key_material(tmp_path):
    forbidden = _forbidden()
    failures = 0
    for what, attempt in _bad_key_attempts(tmp_path):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                attempt()
            except SealError as exc:
                texts = _messages(exc)
                failures += 1
            else:
                pytest.fail(f"{what}: accepted")
        texts += [str(w.message) for w in caught]
        for text in texts:
            for needle in forbidden:
                assert needle not in text, f"{what}: key material in {text!r}"
    assert failures > 80
    # and the objects that hold secrets show only public names
    for holder in (SymmetricKey(SECRET), PublicKeyIdentity(2, X25519_SEED), SigningKey(SIGN_SEEDS)):
        for text in (repr(holder), str(holder)):
            for needle in forbidden:
                assert needle not in text, f"{type(holder).__name__}: {text!r}"
