"""AES-256-GCM known answers: Wycheproof ``aes_gcm_test.json`` and NIST CAVP ``gcmDecrypt256.rsp``.

The 256-bit key / 96-bit IV / 128-bit tag subsets go through :mod:`sealtensors.aead`; every other size
must be refused with a clear error. The empty-AAD subsets also go through the current engine's
``decrypt_span`` as a single final chunk (a chunk's nonce is the base nonce XOR its counter, so chunk 0
is plain GCM), which covers the Python and C engines alike.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from sealtensors import _backends, aead
from sealtensors._engine_api import CHUNK_SIZE
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
    assert (len(W_EMPTY_AAD), sum(c["valid"] for c in W_EMPTY_AAD)) == (48, 21)
    assert (len(N_EMPTY_AAD), sum(not c["valid"] for c in N_EMPTY_AAD)) == (75, 33)
    # Every other size combination is sampled: 47 Wycheproof groups minus the supported one, and
    # the 20 NIST (IV, tag) sections other than (96, 128).
    assert len({(c["key_bits"], c["iv_bits"]) for c in _other_size_sample(WYCHEPROOF)}) == 44
    assert len({(c["iv_bits"], c["tag_bits"]) for c in _other_size_sample(NIST)}) == 20


@pytest.mark.parametrize("case", _params(W_SUPPORTED + N_SUPPORTED))
def test_open(case):
    data = case["ct"] + case["tag"]
    if case["valid"]:
        assert aead.open(case["key"], case["iv"], data, case["aad"]) == case["pt"]
        assert aead.open(bytearray(case["key"]), memoryview(case["iv"]), bytearray(data),
                         memoryview(case["aad"])) == case["pt"]
        assert aead.seal(case["key"], case["iv"], case["pt"], case["aad"]) == data
    else:
        with pytest.raises(IntegrityError):
            aead.open(case["key"], case["iv"], data, case["aad"])


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
