"""Derived per-message keys are held in bytearrays and wiped once a whole-message call is done."""

from __future__ import annotations

import os

import pytest

from sealtensors.crypto import chunked
from sealtensors.errors import IntegrityError


def test_message_keys_wipe():
    keys, _ = chunked.derive(os.urandom(32), os.urandom(chunked.SALT_SIZE), b"ctx")
    assert isinstance(keys.aead_key, bytearray) and any(keys.aead_key)
    keys.wipe()
    assert keys.aead_key == bytes(32) and keys.base_nonce == bytes(12)
    assert "aead_key" not in repr(keys) or keys.aead_key.hex() not in repr(keys)


@pytest.fixture
def captured(monkeypatch):
    """Every MessageKeys the chunked module derives during the test."""
    seen = []
    derive = chunked.derive

    def spy(*args, **kwargs):
        keys, commitment = derive(*args, **kwargs)
        seen.append(keys)
        return keys, commitment

    monkeypatch.setattr(chunked, "derive", spy)
    return seen


def test_whole_message_calls_wipe_their_keys(captured):
    key = os.urandom(32)
    plaintext = os.urandom(3 * chunked.CHUNK_SIZE + 5)
    message = chunked.encrypt(key, plaintext, b"c")
    assert chunked.decrypt(key, message, b"c") == plaintext
    out = bytearray(len(plaintext))
    chunked.decrypt_into(key, message, out, b"c")
    assert out == plaintext
    tampered = bytearray(message)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        chunked.decrypt(key, tampered, b"c")
    assert len(captured) == 4
    assert all(k.aead_key == bytes(32) and k.base_nonce == bytes(12) for k in captured)
