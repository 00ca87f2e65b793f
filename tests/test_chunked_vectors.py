"""Wycheproof's C2SP chunked-encryption vectors (Cobblestone-256) through every entry point.

Each of the 35 vectors is classified into exactly one group and run through ``chunked.decrypt``;
the valid ones also through ``decrypt_into`` and the random-access pieces, the invalid ones with a spy
engine that records every chunk the engine is asked to decrypt.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib

import pytest

from sealtensors.engine import backends as _backends
from sealtensors.crypto import chunked
from sealtensors.errors import CommitmentError, IntegrityError, InvalidKeyError, SealError

from conftest import VECTORS

FILE = VECTORS / "wycheproof" / "c2sp_chunked_encryption_aes_256_gcm_test.json"
CHUNK = chunked.CHUNK_SIZE


def _load():
    document = json.loads(FILE.read_text())
    cases = []
    for group in document["testGroups"]:
        assert group["type"] == "ChunkedEncryption"
        assert group["aead"] == "AEAD_AES_256_GCM" and group["sha"] == "SHA-512"
        for test in group["tests"]:
            test = dict(test)
            test["ct_bytes"] = zlib.decompress(bytes.fromhex(test["ct"]))
            cases.append(test)
    assert document["numberOfTests"] == len(cases)
    return cases


CASES = _load()


def _group(case) -> str:
    """Exactly one of: valid, key-size, header, chunk (invalid, found at or after the first chunk)."""
    flags = set(case["flags"])
    if case["result"] == "valid":
        assert not flags - {"CounterRollover"}
        return "valid"
    assert case["result"] == "invalid"
    if "InvalidKeySize" in flags:
        assert "HeaderFailure" in flags
        return "key-size"
    if "HeaderFailure" in flags:
        return "header"
    return "chunk"


def _select(*groups):
    return [pytest.param(c, id=f"tc{c['tcId']}") for c in CASES if _group(c) in groups]


def _key(case):
    return bytes.fromhex(case["key"])


def _ctx(case):
    return bytes.fromhex(case["ctx"])


class SpyEngine:
    """Wraps the current engine and records every span it is asked to decrypt."""

    def __init__(self, inner):
        self._inner = inner
        self.decrypt_calls = []
        self.name = inner.name

    def decrypt_span(self, aead_key, base_nonce, first_chunk, src, dst, **kwargs):
        self.decrypt_calls.append((first_chunk, len(src)))
        return self._inner.decrypt_span(aead_key, base_nonce, first_chunk, src, dst, **kwargs)

    def decrypt_span_fd(self, aead_key, base_nonce, first_chunk, fd, offset, length, dst, **kwargs):
        self.decrypt_calls.append((first_chunk, length))
        return self._inner.decrypt_span_fd(aead_key, base_nonce, first_chunk, fd, offset, length,
                                           dst, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def spy(monkeypatch):
    engine = SpyEngine(_backends.engine())
    monkeypatch.setattr(_backends, "_current", engine)
    return engine


# --- counts: nothing may be skipped or reclassified silently -------------------------------------


def test_vector_counts():
    groups = [_group(c) for c in CASES]
    assert len(CASES) == 35
    assert sorted({c["tcId"] for c in CASES}) == list(range(1, 36))
    assert groups.count("valid") == 10
    assert groups.count("key-size") == 2
    assert groups.count("header") == 8
    assert groups.count("chunk") == 15
    assert sum("HeaderFailure" in c["flags"] for c in CASES) == 10
    assert sum("PartialPlaintext" in c["flags"] for c in CASES) == 9
    assert sum("CounterRollover" in c["flags"] for c in CASES) == 2
    # Every case is run by the parametrized tests below.
    assert len(_select("valid", "key-size", "header", "chunk")) == 35


# --- the whole-message API over all 35 -----------------------------------------------------------


def _expected_error(case):
    flags = set(case["flags"])
    group = _group(case)
    if group == "key-size":
        return InvalidKeyError
    if group == "header":
        if "Truncation" in flags:
            return IntegrityError  # shorter than the 56-byte header
        return CommitmentError  # wrong key/context, altered salt or commitment
    return IntegrityError


@pytest.mark.parametrize("case", _select("valid", "key-size", "header", "chunk"))
def test_decrypt(case, spy):
    ct = case["ct_bytes"]
    if case["result"] == "valid":
        plaintext = chunked.decrypt(_key(case), ct, _ctx(case))
        assert len(plaintext) == case["msgLength"]
        assert hashlib.sha512(plaintext).hexdigest() == case["msgSha512"]
        assert chunked.plaintext_length(len(ct)) == case["msgLength"]
        assert chunked.ciphertext_length(case["msgLength"]) == len(ct)
        return
    expected = _expected_error(case)
    with pytest.raises(expected) as info:
        chunked.decrypt(_key(case), ct, _ctx(case))
    if expected is IntegrityError:
        assert not isinstance(info.value, CommitmentError), "the commitment was fine in this case"
    if "HeaderFailure" in case["flags"]:
        assert spy.decrypt_calls == [], "a chunk was decrypted before the header was rejected"
        assert getattr(info.value, "chunk_index", None) is None


@pytest.mark.parametrize("case", _select("key-size", "header"))
def test_header_failure_decrypt_into(case, spy):
    ct = case["ct_bytes"]
    dst = bytearray(b"\xa5" * 64)
    with pytest.raises(_expected_error(case)):
        chunked.decrypt_into(_key(case), ct, dst, _ctx(case))
    assert spy.decrypt_calls == []


@pytest.mark.parametrize("case", _select("key-size", "header"))
def test_header_failure_open_message(case, spy):
    with pytest.raises(_expected_error(case)):
        chunked.open_message(_key(case), case["ct_bytes"], _ctx(case))
    assert spy.decrypt_calls == []


# --- derived keys ("raw mode") -------------------------------------------------------------------


@pytest.mark.parametrize("case", [p for p in _select("valid", "chunk")])
def test_derived_keys(case):
    """Where the vector gives the per-message AES key and base nonce, HKDF derives exactly those, and
    the engine alone (no header processing) gives the same verdict."""
    assert "aeadKey" in case and "baseNonce" in case
    keys = chunked.open_message(_key(case), case["ct_bytes"], _ctx(case))
    assert keys.aead_key.hex() == case["aeadKey"]
    assert keys.base_nonce.hex() == case["baseNonce"]
    body = case["ct_bytes"][chunked.HEADER_SIZE:]
    from sealtensors.engine.spec import span_plaintext_length

    length = span_plaintext_length(len(body), final=True)
    dst = bytearray(b"\x5a" * (length if length is not None else 100))
    engine = _backends.engine()
    if case["result"] == "valid":
        engine.decrypt_span(keys.aead_key, keys.base_nonce, 0, body, dst, final=True)
        assert hashlib.sha512(dst).hexdigest() == case["msgSha512"]
    else:
        with pytest.raises(IntegrityError):
            engine.decrypt_span(keys.aead_key, keys.base_nonce, 0, body, dst, final=True)
        assert not any(dst)


# --- valid vectors through every entry point -----------------------------------------------------


@pytest.mark.parametrize("case", _select("valid"))
def test_valid_decrypt_into(case):
    ct = case["ct_bytes"]
    dst = bytearray(b"\xa5" * case["msgLength"])
    chunked.decrypt_into(_key(case), memoryview(ct), dst, _ctx(case))
    assert hashlib.sha512(dst).hexdigest() == case["msgSha512"]
    with pytest.raises(ValueError):
        chunked.decrypt_into(_key(case), ct, bytearray(case["msgLength"] + 1), _ctx(case))


@pytest.mark.parametrize("case", _select("valid"))
def test_valid_random_access(case):
    ct = case["ct_bytes"]
    plaintext = chunked.decrypt(_key(case), ct, _ctx(case))
    keys = chunked.open_message(_key(case), ct, _ctx(case))
    total = chunked.chunk_count(len(plaintext))
    assert total == len(plaintext) // CHUNK + 1

    def check(first, stop):
        begin = first * CHUNK
        end = len(plaintext) if stop == total else stop * CHUNK
        dst = bytearray(b"\xa5" * (end - begin))
        chunked.decrypt_chunk_range_into(keys, ct, first, stop, dst)
        assert dst == plaintext[begin:end], (first, stop)

    for i in range(total):  # every single chunk, including the final (possibly empty) one
        check(i, i + 1)
    check(0, total)
    rng = random.Random(case["tcId"])
    for _ in range(8):
        first = rng.randrange(total)
        check(first, rng.randrange(first + 1, total + 1))
    for bad in ((0, total + 1), (total, total + 1), (1, 1) if total > 1 else (0, 0), (-1, 1)):
        with pytest.raises(ValueError):
            chunked.decrypt_chunk_range_into(keys, ct, *bad, bytearray(0))


@pytest.mark.parametrize("case", _select("valid"))
def test_valid_random_access_fd(case, tmp_path):
    ct = case["ct_bytes"]
    plaintext = chunked.decrypt(_key(case), ct, _ctx(case))
    keys = chunked.open_message(_key(case), ct, _ctx(case))
    path = tmp_path / "message"
    path.write_bytes(b"\x00" * 7 + ct + b"junk")  # the message sits at an offset inside the file
    total = chunked.chunk_count(len(plaintext))
    rng = random.Random(case["tcId"])
    ranges = [(0, total), (total - 1, total), (0, 1)]
    ranges += [(f, rng.randrange(f + 1, total + 1)) for f in (rng.randrange(total) for _ in range(4))]
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        for first, stop in ranges:
            begin = first * CHUNK
            end = len(plaintext) if stop == total else stop * CHUNK
            dst = bytearray(end - begin)
            chunked.decrypt_chunk_range_fd_into(keys, fd, 7, len(ct), first, stop, dst)
            assert dst == plaintext[begin:end]
    finally:
        os.close(fd)


# --- invalid vectors: no plaintext escapes -------------------------------------------------------


@pytest.mark.parametrize("case", _select("chunk"))
def test_invalid_decrypt_into_wipes(case, spy):
    ct = case["ct_bytes"]
    try:
        length = chunked.plaintext_length(len(ct))
    except IntegrityError:
        length = case.get("msgLength", 0) + 1  # impossible length: any destination is wiped
    dst = bytearray(b"\xa5" * length)
    with pytest.raises(IntegrityError) as info:
        chunked.decrypt_into(_key(case), ct, dst, _ctx(case))
    assert not isinstance(info.value, CommitmentError)
    assert dst == bytes(length), "decrypt_into left bytes behind after a failure"


@pytest.mark.parametrize("case", [c for c in _select("chunk")
                                  if "PartialPlaintext" in c.values[0]["flags"]])
def test_partial_plaintext(case):
    """The valid prefix is exactly what the vector says; no call ever exposes a byte past it, and
    every call that reaches the bad chunk fails and keeps failing, wiping its destination."""
    ct = case["ct_bytes"]
    key, ctx = _key(case), _ctx(case)
    prefix_chunks, rest = divmod(case["msgLength"], CHUNK)
    assert rest == 0 and prefix_chunks >= 1
    keys = chunked.open_message(key, ct, ctx)
    for _ in range(2):  # must keep failing
        with pytest.raises(IntegrityError):
            chunked.decrypt(key, ct, ctx)
    try:
        total_plain = chunked.plaintext_length(len(ct))
    except IntegrityError:
        # An impossible length: the random-access API refuses every range up front.
        with pytest.raises(IntegrityError):
            chunked.decrypt_chunk_range_into(keys, ct, 0, 1, bytearray(CHUNK))
        return
    total = chunked.chunk_count(total_plain)
    assert prefix_chunks < total
    # The valid prefix, read as a non-final range, matches msgSha512 (streaming readers may show it).
    prefix = bytearray(prefix_chunks * CHUNK)
    chunked.decrypt_chunk_range_into(keys, ct, 0, prefix_chunks, prefix)
    assert hashlib.sha512(prefix).hexdigest() == case["msgSha512"]
    # Any range that covers the first bad chunk fails and leaves nothing.
    for first in range(0, prefix_chunks + 1):
        for stop in range(prefix_chunks + 1, total + 1):
            length = (total_plain if stop == total else stop * CHUNK) - first * CHUNK
            dst = bytearray(b"\xa5" * length)
            with pytest.raises(IntegrityError) as info:
                chunked.decrypt_chunk_range_into(keys, ct, first, stop, dst)
            assert dst == bytes(length), (first, stop)
            assert info.value.chunk_index is not None
            assert first <= info.value.chunk_index < stop
    dst = bytearray(b"\xa5" * total_plain)
    with pytest.raises(IntegrityError):
        chunked.decrypt_into(key, ct, dst, ctx)
    assert dst == bytes(total_plain)


def test_every_failure_is_a_seal_error():
    for error in (CommitmentError, IntegrityError, InvalidKeyError):
        assert issubclass(error, SealError) and issubclass(error, ValueError)
