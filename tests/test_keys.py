"""Keys: generation, key ids, key files in raw and text form, and the checks on malformed ones."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest
from hypothesis import given, strategies as st

from sealtensors.errors import InvalidKeyError
from sealtensors.keys.keyfile.keyfile import (
    KEY_FILE_PREFIX,
    as_key,
    as_keys,
    format_key,
    generate_key,
    key_id,
    read_key_file,
    write_key_file,
)

KEY = bytes(range(32))


def _independent_key_id(key: bytes) -> bytes:
    # HKDF-Expand-SHA-512 for 16 bytes is the first HMAC block: HMAC(key, info || 0x01)[:16].
    return hmac.new(key, b"sealtensors/v1/key-id\x01", hashlib.sha512).digest()[:16]


def test_generate_key():
    keys = {generate_key() for _ in range(32)}
    assert len(keys) == 32
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)


@given(st.binary(min_size=32, max_size=32))
def test_key_id_matches_hkdf(key):
    assert key_id(key) == _independent_key_id(key)
    assert len(key_id(key)) == 16
    assert key_id(bytearray(key)) == key_id(memoryview(key))


def test_key_id_known_answer():
    assert key_id(KEY) == _independent_key_id(KEY)
    assert key_id(KEY) != key_id(bytes(32))
    with pytest.raises(InvalidKeyError):
        key_id(bytes(31))


def test_write_and_read_text_form(tmp_path):
    path = tmp_path / "model.key"
    key = write_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text("ascii")
    assert text == f"{KEY_FILE_PREFIX}{key.hex()}\n" == format_key(key)
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


@pytest.mark.parametrize("content", [
    KEY,  # raw
    f"{KEY_FILE_PREFIX}{KEY.hex()}".encode(),  # no newline
    f"{KEY_FILE_PREFIX}{KEY.hex()}\n".encode(),
    f"{KEY_FILE_PREFIX}{KEY.hex()}\r\n".encode(),
    f"  {KEY_FILE_PREFIX}{KEY.hex().upper()}  \n\n".encode(),
])
def test_read_accepted_forms(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    assert read_key_file(path) == KEY


@pytest.mark.parametrize("content", [
    b"",
    KEY[:31],
    KEY + b"\x00",
    KEY + b"\n",  # 33 bytes: neither raw nor text
    b"\xff" * 40,
    f"{KEY_FILE_PREFIX}".encode(),
    f"{KEY_FILE_PREFIX}{KEY.hex()[:-2]}\n".encode(),
    f"{KEY_FILE_PREFIX}{KEY.hex()}00\n".encode(),
    f"{KEY_FILE_PREFIX}{KEY.hex()[:-1]}g\n".encode(),
    f"{KEY_FILE_PREFIX}{KEY.hex()[:-1]}\n".encode(),  # odd number of digits
    f"sealtensors-key-v2:{KEY.hex()}\n".encode(),
    f"{KEY.hex()}\n".encode(),  # bare hex
    f"{KEY_FILE_PREFIX}{KEY.hex()}\n{KEY_FILE_PREFIX}{KEY.hex()}\n".encode(),  # two keys
    "sealtensors-key-v1:ééé".encode("utf-8"),
    b"x" * 4097,  # too large to be a key file
])
def test_read_malformed(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(InvalidKeyError):
        read_key_file(path)
    with pytest.raises(InvalidKeyError):
        as_key(path)


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
