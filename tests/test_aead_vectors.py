"""AES-256-GCM known answers: Wycheproof ``aes_gcm_test.json`` and NIST CAVP ``gcmDecrypt256.rsp``.

The 256-bit key / 96-bit IV / 128-bit tag subsets (66 Wycheproof + 375 NIST cases, AAD included) go
through :mod:`sealtensors.crypto.aead` on every backend: pycryptodome on ``python``, the C engine's
``st_aead_open`` / ``st_aead_seal`` on each ``c-<provider>`` (a spy on the engine class proves the C
entry point did the work). Every other size must be refused with a clear error. The empty-AAD subsets
also go through the current engine's ``decrypt_span`` as a single final chunk (a chunk's nonce is the
base nonce XOR its counter, so chunk 0 is plain GCM).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealtensors.engine import backends as _backends
from sealtensors.crypto import aead
from sealtensors.engine.spec import CHUNK_SIZE
from sealtensors.errors import IntegrityError, InvalidKeyError

from conftest import VECTORS


def _wycheproof():
    document = json.loads((VECTORS / "wycheproof" / "aes_gcm_test.json").read_text())
    cases = []
    for group in document["testGroups"]:
        for test in group["tests"]:
            cases.append({
                "id": f"wycheproof-{test['tcId']}",
                "key_bits": group["keySize"], "iv_bits": group["ivSize"], "tag_bits": group["tagSize"],
                "key": bytes.fromhex(test["key"]), "iv": bytes.fromhex(test["iv"]),
                "aad": bytes.fromhex(test["aad"]), "pt": bytes.fromhex(test["msg"]),
                "ct": bytes.fromhex(test["ct"]), "tag": bytes.fromhex(test["tag"]),
                "valid": test["result"] == "valid",
                "result": test["result"],
            })
    assert len(cases) == document["numberOfTests"]
    return cases


def _nist():
    """Parse the CAVP .rsp file: section headers set lengths, a bare FAIL replaces PT."""
    text = (VECTORS / "nist-cavp" / "gcmDecrypt256.rsp").read_text()
    section = {}
    cases = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        header = re.fullmatch(r"\[(\w+) = (\d+)\]", line)
        if header:
            section[header.group(1)] = int(header.group(2))
            current = None
            continue
        if line == "FAIL":
            current["valid"] = False
            continue
        if "=" not in line or line.startswith("#"):
            continue
        name, _, value = (part.strip() for part in line.partition("="))
        if name == "Count":
            current = {"section": dict(section), "valid": True, "count": int(value)}
            cases.append(current)
        elif current is not None:
            current[name] = bytes.fromhex(value)
    result = []
    for case in cases:
        s = case["section"]
        assert s["Keylen"] == 256
        result.append({
            "id": f"nist-iv{s['IVlen']}-tag{s['Taglen']}-pt{s['PTlen']}-aad{s['AADlen']}-{case['count']}",
            "key_bits": s["Keylen"], "iv_bits": s["IVlen"], "tag_bits": s["Taglen"],
            "key": case["Key"], "iv": case["IV"], "aad": case["AAD"], "ct": case["CT"],
            "tag": case["Tag"], "pt": case.get("PT", b""), "valid": case["valid"],
        })
        assert len(case["IV"]) * 8 == s["IVlen"] and len(case["Tag"]) * 8 == s["Taglen"]
        assert "PT" in case or not case["valid"]
    return result


WYCHEPROOF = _wycheproof()
NIST = _nist()


def _supported(case) -> bool:
    return (case["key_bits"], case["iv_bits"], case["tag_bits"]) == (256, 96, 128)


W_SUPPORTED = [c for c in WYCHEPROOF if _supported(c)]
N_SUPPORTED = [c for c in NIST if _supported(c)]
W_EMPTY_AAD = [c for c in W_SUPPORTED if not c["aad"]]
N_EMPTY_AAD = [c for c in N_SUPPORTED if not c["aad"]]


OPEN_CASES = W_SUPPORTED + N_SUPPORTED


def _params(cases):
    return [pytest.param(c, id=c["id"]) for c in cases]


def _other_size_sample(cases, per_size=3):
    """A few cases (valid and invalid where there are both) of every unsupported size combination."""
    by_size = {}
    for case in cases:
        if not _supported(case):
            by_size.setdefault((case["key_bits"], case["iv_bits"], case["tag_bits"]), []).append(case)
    sample = []
    for group in by_size.values():
        valid = [c for c in group if c["valid"]]
        invalid = [c for c in group if not c["valid"]]
        picks = (valid[:per_size - 1] + invalid[:1]) or group[:per_size]
        sample.extend(picks)
    return sample


def test_vector_counts():
    assert len(WYCHEPROOF) == 316
    assert len(W_SUPPORTED) == 66
    assert Counter(c["result"] for c in W_SUPPORTED) == {"valid": 39, "invalid": 27}
    assert len(NIST) == 7875 and sum(not c["valid"] for c in NIST) == 3919
    assert len(N_SUPPORTED) == 375
    assert sum(not c["valid"] for c in N_SUPPORTED) == 191
    assert len(OPEN_CASES) == 66 + 375
    assert sum(bool(c["aad"]) for c in OPEN_CASES) == 18 + 300
    assert (len(W_EMPTY_AAD), sum(c["valid"] for c in W_EMPTY_AAD)) == (48, 21)
    assert (len(N_EMPTY_AAD), sum(not c["valid"] for c in N_EMPTY_AAD)) == (75, 33)
    # Every other size combination is sampled: 47 Wycheproof groups minus the supported one, and
    # the 20 NIST (IV, tag) sections other than (96, 128).
    assert len({(c["key_bits"], c["iv_bits"]) for c in _other_size_sample(WYCHEPROOF)}) == 44
    assert len({(c["iv_bits"], c["tag_bits"]) for c in _other_size_sample(NIST)}) == 20


@pytest.fixture
def c_calls(backend, monkeypatch):
    """On a ``c-<provider>`` backend, a list recording every call of the engine class's
    ``aead_open`` / ``aead_seal`` as ``(method, provider)``; None on ``python``."""
    if backend == "python":
        assert not hasattr(_backends.engine(), "aead_open")
        return None
    calls = []
    cls = type(_backends.engine())
    for name in ("aead_open", "aead_seal"):
        original = getattr(cls, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls.append((_name, self.provider))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    return calls


def _provider(backend):
    return backend.split("-", 1)[1]


@pytest.mark.parametrize("case", _params(OPEN_CASES))
def test_open(case, backend, c_calls):
    data = case["ct"] + case["tag"]
    if case["valid"]:
        assert aead.open(case["key"], case["iv"], data, case["aad"]) == case["pt"]
        assert aead.open(bytearray(case["key"]), memoryview(case["iv"]), bytearray(data),
                         memoryview(case["aad"])) == case["pt"]
        assert aead.seal(case["key"], case["iv"], case["pt"], case["aad"]) == data
        expected = ["aead_open", "aead_open", "aead_seal"]
    else:
        with pytest.raises(IntegrityError):
            aead.open(case["key"], case["iv"], data, case["aad"])
        expected = ["aead_open"]
    if c_calls is not None:
        assert c_calls == [(name, _provider(backend)) for name in expected]


def test_every_vector_runs_on_this_backend(request, backend):
    """All 441 known answers are collected for this backend (skipped when test_open is not
    selected)."""
    ids = [item.callspec.params["case"]["id"] for item in request.session.items
           if getattr(item, "originalname", None) == "test_open"
           and item.callspec.params.get("backend") == backend]
    if not ids:
        pytest.skip("test_open is not selected in this run")
    assert len(ids) == len(OPEN_CASES) == 441
    assert sum(i.startswith("wycheproof-") for i in ids) == 66
    assert sum(i.startswith("nist-") for i in ids) == 375


@pytest.mark.parametrize("case", _params(W_EMPTY_AAD + N_EMPTY_AAD))
def test_engine_single_final_chunk(case):
    """The empty-AAD cases as a one-chunk C2SP span on the current engine."""
    assert len(case["pt"]) < CHUNK_SIZE
    engine = _backends.engine()
    data = case["ct"] + case["tag"]
    dst = bytearray(b"\xa5" * len(case["ct"]))
    if case["valid"]:
        engine.decrypt_span(case["key"], case["iv"], 0, data, dst, final=True)
        assert dst == case["pt"]
        out = bytearray(len(data))
        engine.encrypt_span(case["key"], case["iv"], 0, case["pt"], out, final=True)
        assert out == data
    else:
        with pytest.raises(IntegrityError) as info:
            engine.decrypt_span(case["key"], case["iv"], 0, data, dst, final=True)
        assert info.value.chunk_index == 0
        assert dst == bytes(len(dst)), "the engine left unauthenticated plaintext behind"


@pytest.mark.parametrize("case", _params(_other_size_sample(WYCHEPROOF) + _other_size_sample(NIST)))
def test_other_sizes_refused(case):
    data = case["ct"] + case["tag"]
    if case["key_bits"] != 256:
        with pytest.raises(InvalidKeyError, match="32 bytes"):
            aead.open(case["key"], case["iv"], data, case["aad"])
        with pytest.raises(InvalidKeyError):
            aead.seal(case["key"], case["iv"], case["pt"], case["aad"])
    elif case["iv_bits"] != 96:
        with pytest.raises(ValueError, match="nonce must be 12 bytes") as info:
            aead.open(case["key"], case["iv"], data, case["aad"])
        assert not isinstance(info.value, IntegrityError)
        with pytest.raises(ValueError, match="nonce must be 12 bytes"):
            aead.seal(case["key"], case["iv"], case["pt"], case["aad"])
    else:
        # A tag shorter than 16 bytes cannot be expressed: the last 16 bytes are the tag, so a
        # truncated-tag message never authenticates, even one that is valid at its own tag size.
        assert case["tag_bits"] < 128
        with pytest.raises(IntegrityError):
            aead.open(case["key"], case["iv"], data, case["aad"])


KEY = bytes(range(32))
NONCE = bytes(12)


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 1000, CHUNK_SIZE + 3])
def test_round_trip_and_every_bit_flip_of_tag(length):
    plaintext = bytes((i * 7) & 0xFF for i in range(length))
    sealed = aead.seal(KEY, NONCE, plaintext, b"header")
    assert len(sealed) == length + aead.TAG_SIZE
    assert aead.open(KEY, NONCE, sealed, b"header") == plaintext
    for bit in range(aead.TAG_SIZE * 8):
        tampered = bytearray(sealed)
        tampered[length + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            aead.open(KEY, NONCE, bytes(tampered), b"header")
    with pytest.raises(IntegrityError):
        aead.open(KEY, NONCE, sealed, b"other")
    with pytest.raises(IntegrityError):
        aead.open(KEY, b"\x01" + NONCE[1:], sealed, b"header")
    with pytest.raises(IntegrityError):
        aead.open(KEY, NONCE, sealed + b"\x00", b"header")
    with pytest.raises(IntegrityError):
        aead.open(KEY, NONCE, sealed[:-1], b"header")


@pytest.mark.parametrize("size", [0, 1, 16, 24, 31, 33, 64])
def test_bad_key_sizes(size):
    with pytest.raises(InvalidKeyError):
        aead.seal(bytes(size), NONCE, b"x")
    with pytest.raises(InvalidKeyError):
        aead.open(bytes(size), NONCE, bytes(16))


@pytest.mark.parametrize("size", [0, 1, 8, 11, 13, 16, 128])
def test_bad_nonce_sizes(size):
    with pytest.raises(ValueError, match="nonce"):
        aead.seal(KEY, bytes(size), b"x")
    with pytest.raises(ValueError, match="nonce"):
        aead.open(KEY, bytes(size), bytes(16))


@pytest.mark.parametrize("length", range(16))
def test_shorter_than_a_tag(length):
    with pytest.raises(IntegrityError, match="shorter"):
        aead.open(KEY, NONCE, bytes(length))


def test_non_bytes_arguments():
    with pytest.raises(InvalidKeyError):
        aead.seal("k" * 32, NONCE, b"")
    with pytest.raises(TypeError):
        aead.seal(KEY, NONCE, "text")
    with pytest.raises(TypeError):
        aead.open(KEY, NONCE, None)


def test_engine_single_message_calls_are_used_when_offered(monkeypatch):
    """An engine with ``aead_seal`` / ``aead_open`` (the C engine may offer them) does the work;
    aead still validates sizes first, and the engine's IntegrityError reaches the caller."""
    from Crypto.Cipher import AES

    calls = []

    class WithAead:
        name = "with-aead"

        def aead_seal(self, key, nonce, plaintext, aad):
            calls.append("seal")
            cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
            cipher.update(aad)
            return b"".join(cipher.encrypt_and_digest(plaintext))

        def aead_open(self, key, nonce, data, aad):
            calls.append("open")
            cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
            cipher.update(aad)
            try:
                return cipher.decrypt_and_verify(data[:-16], data[-16:])
            except ValueError:
                raise IntegrityError("engine says no") from None

    monkeypatch.setattr(_backends, "_current", WithAead())
    case = W_SUPPORTED[0]
    assert aead.seal(case["key"], case["iv"], case["pt"], case["aad"]) == case["ct"] + case["tag"]
    assert aead.open(case["key"], case["iv"], case["ct"] + case["tag"], case["aad"]) == case["pt"]
    with pytest.raises(IntegrityError, match="engine says no"):
        aead.open(case["key"], case["iv"], bytes(16), case["aad"])
    with pytest.raises(ValueError):
        aead.open(case["key"], bytes(8), bytes(16))
    assert calls == ["seal", "open", "open"]


# --- single messages with AAD on every backend ----------------------------------------------------


def _reference_seal(key, nonce, plaintext, aad):
    from Crypto.Cipher import AES

    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    return b"".join(cipher.encrypt_and_digest(plaintext))


@given(plaintext=st.binary(max_size=3000), aad=st.binary(max_size=600),
       key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12))
def test_round_trip_random_aad(plaintext, aad, key, nonce):
    sealed = aead.seal(key, nonce, plaintext, aad)
    assert sealed == _reference_seal(key, nonce, plaintext, aad)
    assert aead.open(key, nonce, sealed, aad) == plaintext


TAMPER_CASES = [(length, where) for length in (0, 1, 16, 255, CHUNK_SIZE + 17)
                for where in ("aad", "tag", "ciphertext", "aad-length")
                if not (where == "ciphertext" and length == 0)]  # no ciphertext byte to flip


@pytest.mark.parametrize("length,where", TAMPER_CASES)
def test_tampering_is_refused_and_output_wiped(backend, length, where):
    key, nonce = os.urandom(32), os.urandom(12)
    plaintext, aad = os.urandom(length), os.urandom(33)
    sealed = bytearray(aead.seal(key, nonce, plaintext, aad))
    if where == "aad":
        aad = bytes([aad[0] ^ 0x80]) + aad[1:]
    elif where == "aad-length":
        aad = aad[:-1]
    elif where == "tag":
        sealed[-1] ^= 1
    else:
        sealed[length // 2] ^= 4
    with pytest.raises(IntegrityError):
        aead.open(key, nonce, bytes(sealed), aad)
    if backend == "python":
        return
    engine = _backends.engine()
    dst = bytearray(b"\xa5" * length)
    with pytest.raises(IntegrityError, match="authentication failed"):
        engine.aead_open_into(key, nonce, sealed, dst, aad)
    assert dst == bytes(length), "unauthenticated plaintext escaped"


def _c_only(backend):
    assert backend != "python", "mark the test c_engine_only"
    from sealtensors._native import ffi, lib

    return _backends.engine(), ffi, lib


@pytest.mark.c_engine_only
def test_c_engine_checks_like_aead(backend):
    engine, _, _ = _c_only(backend)
    with pytest.raises(InvalidKeyError, match="key must be 32 bytes, got 16"):
        engine.aead_seal(bytes(16), NONCE, b"")
    with pytest.raises(ValueError, match="nonce must be 12 bytes, got 8"):
        engine.aead_open(KEY, bytes(8), bytes(16))
    with pytest.raises(IntegrityError, match="shorter than the 16-byte tag"):
        engine.aead_open(KEY, NONCE, bytes(15))
    with pytest.raises(TypeError, match="plaintext must be bytes-like"):
        engine.aead_seal(KEY, NONCE, "text")
    with pytest.raises(TypeError, match="aad must be bytes-like"):
        engine.aead_open(KEY, NONCE, bytes(16), 5)
    sealed = engine.aead_seal(KEY, NONCE, b"abc", b"ad")
    with pytest.raises(ValueError, match="must be 3 bytes"):
        engine.aead_open_into(KEY, NONCE, sealed, bytearray(4), b"ad")
    with pytest.raises(ValueError, match="writable"):
        engine.aead_open_into(KEY, NONCE, sealed, bytes(3), b"ad")
    short = bytearray(b"\xff" * 3)
    with pytest.raises(IntegrityError, match="shorter"):
        engine.aead_open_into(KEY, NONCE, bytes(15), short)
    assert short == bytes(3)
    out = bytearray(3)
    engine.aead_open_into(KEY, NONCE, memoryview(sealed), out, bytearray(b"ad"))
    assert out == b"abc"


@pytest.mark.c_engine_only
def test_c_entry_points_reject_bad_arguments_without_touching_memory(backend):
    """Fake lengths: GCM's limits, NULL pointers and overlapping buffers are ST_E_ARG, and nothing
    is written (nothing this large is allocated)."""
    engine, ffi, lib = _c_only(backend)
    provider = engine._provider
    key, nonce, tag = ffi.new("uint8_t[32]"), ffi.new("uint8_t[12]"), ffi.new("uint8_t[16]")
    buf = ffi.new("uint8_t[64]", [0x5A] * 64)
    status = ffi.new("st_status *")
    max_text, max_aad = (1 << 36) - 32, (1 << 61) - 1
    NULL = ffi.NULL
    cases = [
        # (aad, aad_len, text, text_len, out, tag)
        (NULL, 0, buf, max_text + 1, buf + 32, tag),      # text beyond GCM's 2^39 - 256 bits
        (buf, max_aad + 1, NULL, 0, NULL, tag),           # AAD beyond 2^64 - 1 bits
        (NULL, 1, NULL, 0, NULL, tag),                    # NULL aad with a length
        (NULL, 0, NULL, 1, buf, tag),                     # NULL input with a length
        (NULL, 0, buf, 1, NULL, tag),                     # NULL output with a length
        (NULL, 0, NULL, 0, NULL, NULL),                   # no tag
        (NULL, 0, buf, 16, buf + 8, tag),                 # output overlaps input
        (buf + 40, 8, buf, 16, buf + 32, tag),            # output overlaps aad
        (NULL, 0, buf, 16, buf + 16, buf + 24),           # output overlaps the tag
    ]
    for aad, aad_len, text, text_len, out, tag_ptr in cases:
        rc = lib.st_aead_seal(provider, key, nonce, aad, aad_len, text, text_len, out, tag_ptr,
                              status)
        assert rc == status.code == lib.ST_E_ARG
        rc = lib.st_aead_open(provider, key, nonce, aad, aad_len, text, text_len, tag_ptr, out,
                              status)
        assert rc == status.code == lib.ST_E_ARG
    assert bytes(ffi.buffer(buf)) == b"\x5a" * 64
    ARG, PROVIDER = lib.ST_E_ARG, lib.ST_E_PROVIDER
    assert lib.st_aead_seal(provider, NULL, nonce, NULL, 0, NULL, 0, NULL, tag, status) == ARG
    assert lib.st_aead_open(provider, key, NULL, NULL, 0, NULL, 0, tag, NULL, status) == ARG
    assert lib.st_aead_open(99, key, nonce, NULL, 0, NULL, 0, tag, NULL, status) == PROVIDER
    # An empty message with no AAD needs no buffers at all.
    assert lib.st_aead_seal(provider, key, nonce, NULL, 0, NULL, 0, NULL, tag, status) == lib.ST_OK
    assert bytes(ffi.buffer(tag)).hex() == _reference_seal(bytes(32), bytes(12), b"", b"").hex()


@pytest.mark.c_engine_only
def test_c_open_wipes_on_failure_in_c(backend):
    """st_aead_open itself wipes: the destination is prefilled and the tag is wrong."""
    engine, ffi, lib = _c_only(backend)
    key, nonce, aad = os.urandom(32), os.urandom(12), os.urandom(20)
    plaintext = os.urandom(1000)
    sealed = engine.aead_seal(key, nonce, plaintext, aad)
    out = ffi.new("uint8_t[]", [0xA5] * 1000)
    status = ffi.new("st_status *")
    bad = bytearray(sealed)
    bad[-3] ^= 0x10
    rc = lib.st_aead_open(engine._provider, key, nonce, aad, len(aad), bytes(bad[:-16]), 1000,
                          bytes(bad[-16:]), out, status)
    assert rc == status.code == lib.ST_E_AUTH
    assert bytes(ffi.buffer(out)) == bytes(1000)
    rc = lib.st_aead_open(engine._provider, key, nonce, aad, len(aad), sealed[:-16], 1000,
                          sealed[-16:], out, status)
    assert rc == lib.ST_OK and bytes(ffi.buffer(out)) == plaintext


@pytest.mark.c_engine_only
def test_c_providers_agree_on_aad_messages(backend):
    _c_only(backend)
    from sealtensors.engine.cengine import CEngine, available_providers

    key, nonce = os.urandom(32), os.urandom(12)
    for length, aad_len in [(0, 0), (0, 1), (17, 0), (5000, 4097), (CHUNK_SIZE * 3 + 1, 70000)]:
        plaintext, aad = os.urandom(length), os.urandom(aad_len)
        results = {CEngine(p).aead_seal(key, nonce, plaintext, aad) for p in available_providers()}
        assert results == {_reference_seal(key, nonce, plaintext, aad)}
