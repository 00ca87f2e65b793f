"""The C engine against the pure-Python reference: byte for byte, error for error, per AES provider."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealtensors.engine.spec import (
    CHUNK_SIZE,
    ENCRYPTED_CHUNK_SIZE,
    KEY_SIZE,
    MAX_CHUNKS,
    NONCE_SIZE,
    TAG_SIZE,
    span_ciphertext_length,
)
from sealtensors.engine.pyengine import PythonEngine
from sealtensors.errors import BackendError, IntegrityError

cengine = pytest.importorskip("sealtensors.engine.cengine", reason="C engine not built")
CEngine = cengine.CEngine

VECTORS = Path(__file__).parent / "vectors"
PROVIDERS = cengine.available_providers()
PY = PythonEngine()


@pytest.fixture(autouse=True)
def backend():
    """Overrides conftest's every-backend parametrization: these tests pick their engines explicitly
    (the Python reference and a C engine per provider), so each runs once per provider, not per
    global backend."""
    return "explicit"


@pytest.fixture(params=["ipsecmb", "openssl"])
def engine(request):
    if request.param not in PROVIDERS:
        pytest.skip(f"provider {request.param} not available in this build / on this CPU")
    return CEngine(request.param)


def keys(seed: int = 0) -> tuple[bytes, bytes]:
    rng = __import__("random").Random(seed)
    return rng.randbytes(KEY_SIZE), rng.randbytes(NONCE_SIZE)


def encrypt_reference(key, nonce, first, plaintext, final) -> bytearray:
    out = bytearray(span_ciphertext_length(len(plaintext), final))
    PY.encrypt_span(key, nonce, first, plaintext, out, final=final)
    return out


def outcome(engine, method, *args, **kwargs):
    """('ok', dst bytes) or (exception class, chunk_index, dst bytes) of one decrypt call."""
    dst = args[-1]
    try:
        getattr(engine, method)(*args, **kwargs)
    except IntegrityError as exc:
        return (IntegrityError, exc.chunk_index, bytes(dst))
    except (ValueError, OSError) as exc:
        return (type(exc), str(exc))
    return ("ok", bytes(dst))


@pytest.fixture
def tmpfile():
    fd, path = tempfile.mkstemp(prefix="sealtensors-cengine-")
    try:
        yield fd, path
    finally:
        os.close(fd)
        os.unlink(path)


def write_file(fd, data, prefix=b"") -> int:
    os.ftruncate(fd, 0)
    os.pwrite(fd, bytes(prefix) + bytes(data), 0)
    return len(prefix)


# ------------------------------------------------------------------------------------------------
# round trips

FINAL_LENGTHS = [0, 1, 15, 16, 17, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE - 1,
                 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 1, 33 * CHUNK_SIZE + 100, (3 << 20) + 5]
NONFINAL_CHUNKS = [0, 1, 2, 31, 32, 33, 200]


@pytest.mark.parametrize("length", FINAL_LENGTHS)
@pytest.mark.parametrize("threads", [1, 2, 7])
def test_final_span_round_trip(engine, length, threads):
    key, nonce = keys(length)
    plaintext = os.urandom(length)
    expected = encrypt_reference(key, nonce, 3, plaintext, True)
    ciphertext = bytearray(len(expected))
    engine.encrypt_span(key, nonce, 3, plaintext, ciphertext, final=True, threads=threads)
    assert ciphertext == expected
    out = bytearray(length)
    engine.decrypt_span(key, nonce, 3, bytes(ciphertext), out, final=True, threads=threads)
    assert out == plaintext


@pytest.mark.parametrize("chunks", NONFINAL_CHUNKS)
@pytest.mark.parametrize("threads", [0, 1, 3, 500])
def test_nonfinal_span_round_trip(engine, chunks, threads):
    key, nonce = keys(chunks)
    plaintext = os.urandom(chunks * CHUNK_SIZE)
    first = 1000 + chunks
    expected = encrypt_reference(key, nonce, first, plaintext, False)
    ciphertext = bytearray(len(expected))
    engine.encrypt_span(key, nonce, first, plaintext, ciphertext, final=False, threads=threads)
    assert ciphertext == expected
    out = bytearray(len(plaintext))
    engine.decrypt_span(key, nonce, first, ciphertext, out, final=False, threads=threads)
    assert out == plaintext


@pytest.mark.parametrize("skew", [1, 3, 8, 15])
@pytest.mark.parametrize("threads", [1, 3])
def test_unaligned_large_destination(engine, tmpfile, skew, threads):
    """Spans of 128+ chunks decrypt through streaming stores: any destination alignment works."""
    key, nonce = keys(skew)
    plaintext = os.urandom(150 * CHUNK_SIZE + 77)
    ciphertext = encrypt_reference(key, nonce, 0, plaintext, True)
    backing = bytearray(len(plaintext) + 64)
    out = memoryview(backing)[skew:skew + len(plaintext)]
    engine.decrypt_span(key, nonce, 0, ciphertext, out, final=True, threads=threads)
    assert out == plaintext
    assert backing[:skew] == bytes(skew) and not any(backing[skew + len(plaintext):])
    fd, _ = tmpfile
    write_file(fd, ciphertext)
    backing[:] = bytes(len(backing))
    engine.decrypt_span_fd(key, nonce, 0, fd, 0, len(ciphertext), out, final=True, threads=threads)
    assert out == plaintext
    assert backing[:skew] == bytes(skew) and not any(backing[skew + len(plaintext):])


def test_last_counters(engine):
    key, nonce = keys(9)
    plaintext = os.urandom(3 * CHUNK_SIZE + 9)
    first = MAX_CHUNKS - 4
    expected = encrypt_reference(key, nonce, first, plaintext, True)
    ciphertext = bytearray(len(expected))
    engine.encrypt_span(key, nonce, first, plaintext, ciphertext, final=True)
    assert ciphertext == expected
    out = bytearray(len(plaintext))
    engine.decrypt_span(key, nonce, first, ciphertext, out, final=True)
    assert out == plaintext


def test_numpy_buffers(engine):
    np = pytest.importorskip("numpy")
    key, nonce = keys(4)
    plaintext = np.arange(50_000, dtype=np.float32).reshape(100, 500)
    ciphertext = np.empty(span_ciphertext_length(plaintext.nbytes, True), dtype=np.uint8)
    engine.encrypt_span(key, nonce, 0, plaintext, ciphertext, final=True)
    out = np.empty_like(plaintext)
    engine.decrypt_span(key, nonce, 0, ciphertext, out, final=True, threads=2)
    assert np.array_equal(out, plaintext)


def test_providers_agree():
    if len(PROVIDERS) < 2:
        pytest.skip("one provider only")
    key, nonce = keys(5)
    plaintext = os.urandom(70 * CHUNK_SIZE + 3)
    results = []
    for name in PROVIDERS:
        out = bytearray(span_ciphertext_length(len(plaintext), True))
        CEngine(name).encrypt_span(key, nonce, 11, plaintext, out, final=True, threads=4)
        results.append(out)
    assert all(r == results[0] for r in results)


# ------------------------------------------------------------------------------------------------
# fd source

@pytest.mark.parametrize("length", [0, 1, CHUNK_SIZE, 70 * CHUNK_SIZE + 1, 200 * CHUNK_SIZE])
@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("threads", [1, 4])
def test_fd_equals_mem(engine, tmpfile, length, final, threads):
    if not final:
        length -= length % CHUNK_SIZE
    fd, _ = tmpfile
    key, nonce = keys(length)
    plaintext = os.urandom(length)
    ciphertext = encrypt_reference(key, nonce, 2, plaintext, final)
    offset = write_file(fd, ciphertext, prefix=b"x" * 77)
    position = os.lseek(fd, 5, os.SEEK_SET)
    out = bytearray(length)
    engine.decrypt_span_fd(key, nonce, 2, fd, offset, len(ciphertext), out, final=final,
                           threads=threads)
    assert out == plaintext
    assert os.lseek(fd, 0, os.SEEK_CUR) == position


@pytest.mark.parametrize("cut", [1, ENCRYPTED_CHUNK_SIZE, 40 * ENCRYPTED_CHUNK_SIZE + 5,
                                 100 * ENCRYPTED_CHUNK_SIZE - 1])
@pytest.mark.parametrize("threads", [1, 3])
def test_fd_truncated_file(engine, tmpfile, cut, threads):
    fd, _ = tmpfile
    key, nonce = keys(cut)
    plaintext = os.urandom(100 * CHUNK_SIZE + 9)
    ciphertext = encrypt_reference(key, nonce, 0, plaintext, True)
    write_file(fd, ciphertext[:cut])
    results = [outcome(e, "decrypt_span_fd", key, nonce, 0, fd, 0, len(ciphertext),
                       bytearray(os.urandom(len(plaintext))), final=True, threads=threads)
               for e in (PY, engine)]
    assert results[0][0] is IntegrityError
    assert results[0][1] == cut // ENCRYPTED_CHUNK_SIZE
    assert results[1] == results[0]
    assert results[1][2] == bytes(len(plaintext))


def test_fd_truncated_after_bad_chunk(engine, tmpfile):
    """A chunk failing authentication below the point where the file ends is what gets reported."""
    fd, _ = tmpfile
    key, nonce = keys(1)
    plaintext = os.urandom(300 * CHUNK_SIZE)
    ciphertext = encrypt_reference(key, nonce, 0, plaintext, True)
    ciphertext[5 * ENCRYPTED_CHUNK_SIZE + 3] ^= 1
    write_file(fd, ciphertext[:280 * ENCRYPTED_CHUNK_SIZE + 7])
    for e in (PY, engine):
        with pytest.raises(IntegrityError) as info:
            e.decrypt_span_fd(key, nonce, 0, fd, 0, len(ciphertext), bytearray(len(plaintext)),
                              final=True, threads=4)
        assert info.value.chunk_index == 5


def test_fd_errors(engine, tmpfile):
    fd, path = tmpfile
    key, nonce = keys(2)
    ciphertext = encrypt_reference(key, nonce, 0, b"abc", True)
    write_file(fd, ciphertext)
    out = bytearray(b"zzz")
    with pytest.raises(OSError) as info:
        engine.decrypt_span_fd(key, nonce, 0, fd, -1, len(ciphertext), out, final=True)
    assert info.value.errno == errno.EINVAL
    assert out == bytes(3)
    bad = os.open(path, os.O_RDONLY)
    os.close(bad)
    with pytest.raises(OSError) as info:
        engine.decrypt_span_fd(key, nonce, 0, bad, 0, len(ciphertext), bytearray(3), final=True)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError):
        PY.decrypt_span_fd(key, nonce, 0, bad, 0, len(ciphertext), bytearray(3), final=True)


# ------------------------------------------------------------------------------------------------
# tampering and impossible lengths


def tampered(length, positions, first=0, final=True, seed=0):
    key, nonce = keys(seed)
    plaintext = os.urandom(length)
    ciphertext = encrypt_reference(key, nonce, first, plaintext, final)
    for p in positions:
        ciphertext[p % len(ciphertext)] ^= 0x40
    return key, nonce, plaintext, ciphertext


@pytest.mark.parametrize("positions", [
    [0], [TAG_SIZE - 1 + CHUNK_SIZE], [ENCRYPTED_CHUNK_SIZE * 37 + 100], [-1], [-TAG_SIZE - 1],
    [ENCRYPTED_CHUNK_SIZE * 90, ENCRYPTED_CHUNK_SIZE * 60 + 5, ENCRYPTED_CHUNK_SIZE * 61],
])
@pytest.mark.parametrize("threads", [1, 2, 16])
def test_tampered_span(engine, tmpfile, positions, threads):
    key, nonce, plaintext, ciphertext = tampered(100 * CHUNK_SIZE + 500, positions, first=4)
    expect = outcome(PY, "decrypt_span", key, nonce, 4, ciphertext,
                     bytearray(len(plaintext)), final=True)
    assert expect[0] is IntegrityError and expect[2] == bytes(len(plaintext))
    got = outcome(engine, "decrypt_span", key, nonce, 4, ciphertext,
                  bytearray(os.urandom(len(plaintext))), final=True, threads=threads)
    assert got == expect
    fd, _ = tmpfile
    write_file(fd, ciphertext)
    got = outcome(engine, "decrypt_span_fd", key, nonce, 4, fd, 0, len(ciphertext),
                  bytearray(os.urandom(len(plaintext))), final=True, threads=threads)
    assert got == expect


def test_lowest_failure_wins_whatever_the_timing(engine):
    # every chunk from 40 on is bad, and chunk 33: threads race, the answer must stay 33 + first
    key, nonce, plaintext, ciphertext = tampered(
        400 * CHUNK_SIZE, [ENCRYPTED_CHUNK_SIZE * i + 7 for i in [33, *range(40, 400)]], first=9)
    for _ in range(20):
        out = bytearray(len(plaintext))
        with pytest.raises(IntegrityError) as info:
            engine.decrypt_span(key, nonce, 9, ciphertext, out, final=True, threads=8)
        assert info.value.chunk_index == 42
        assert not any(out)


def test_wrong_key_and_wrong_counter(engine):
    key, nonce, plaintext, ciphertext = tampered(5 * CHUNK_SIZE + 3, [])
    for args in [(bytes(32), nonce, 0), (key, bytes(12), 0), (key, nonce, 1)]:
        out = bytearray(len(plaintext))
        with pytest.raises(IntegrityError) as info:
            engine.decrypt_span(*args, ciphertext, out, final=True, threads=2)
        assert info.value.chunk_index == args[2]
        assert not any(out)
    # the final flag is authenticated by the span's geometry or the last chunk's tag
    out = bytearray(5 * CHUNK_SIZE)
    assert outcome(engine, "decrypt_span", key, nonce, 0, ciphertext[:5 * ENCRYPTED_CHUNK_SIZE],
                   out, final=True) == outcome(PY, "decrypt_span", key, nonce, 0,
                                               ciphertext[:5 * ENCRYPTED_CHUNK_SIZE],
                                               bytearray(5 * CHUNK_SIZE), final=True)


@pytest.mark.parametrize("length", [0, 1, TAG_SIZE - 1, ENCRYPTED_CHUNK_SIZE - 1,
                                    ENCRYPTED_CHUNK_SIZE + 3, 3 * ENCRYPTED_CHUNK_SIZE + 15])
@pytest.mark.parametrize("final", [True, False])
def test_impossible_lengths(engine, tmpfile, length, final):
    key, nonce = keys(3)
    data = os.urandom(length)
    expect = outcome(PY, "decrypt_span", key, nonce, 6, data, bytearray(0), final=final)
    got = outcome(engine, "decrypt_span", key, nonce, 6, data, bytearray(0), final=final)
    assert got == expect
    fd, _ = tmpfile
    write_file(fd, data)
    got_fd = outcome(engine, "decrypt_span_fd", key, nonce, 6, fd, 0, length, bytearray(0),
                     final=final)
    expect_fd = outcome(PY, "decrypt_span_fd", key, nonce, 6, fd, 0, length, bytearray(0),
                        final=final)
    assert got_fd == expect_fd


def test_impossible_length_wipes_destination(engine):
    key, nonce = keys(3)
    out = bytearray(b"\xff" * 100)
    with pytest.raises(IntegrityError) as info:
        engine.decrypt_span(key, nonce, 2, os.urandom(ENCRYPTED_CHUNK_SIZE + 5), out, final=False)
    assert info.value.chunk_index == 3
    assert out == bytes(100)


# ------------------------------------------------------------------------------------------------
# argument errors: same class and message as the Python engine

BAD_CALLS = [
    ("key", dict(key=bytes(31))),
    ("nonce", dict(nonce=bytes(13))),
    ("dst", dict(dst_delta=1)),
    ("dst", dict(dst_delta=-1)),
    ("counter", dict(first=MAX_CHUNKS)),
    ("counter", dict(first=-1)),
    ("ragged", dict(final=False, length=CHUNK_SIZE + 1)),
    ("readonly", dict(readonly=True)),
]


# A ragged non-final span is an argument error only when encrypting; for decryption it is an
# impossible ciphertext length, covered by the truncation tests.
ARGUMENT_CASES = [
    pytest.param(method, what, change, id=f"{method}-{what}{i}")
    for method in ("encrypt_span", "decrypt_span", "decrypt_span_fd")
    for i, (what, change) in enumerate(BAD_CALLS)
    if not (what == "ragged" and method != "encrypt_span")
]


@pytest.mark.parametrize("method,what,change", ARGUMENT_CASES)
def test_argument_errors_match(engine, tmpfile, what, change, method):
    key, nonce = keys(8)
    final = change.get("final", True)
    length = change.get("length", 2 * CHUNK_SIZE if not final else 2 * CHUNK_SIZE + 5)
    plaintext = os.urandom(length)
    ciphertext = encrypt_reference(key, nonce, 0, plaintext, final) if what != "ragged" else b""
    fd, _ = tmpfile
    write_file(fd, ciphertext)
    delta = change.get("dst_delta", 0)

    def call(e):
        k, n, first = change.get("key", key), change.get("nonce", nonce), change.get("first", 0)
        if method == "encrypt_span":
            size = span_ciphertext_length(length, True) if what == "ragged" else len(ciphertext)
            dst = bytearray(size + delta)
            dst = bytes(dst) if change.get("readonly") else dst
            return outcome(e, method, k, n, first, plaintext, dst, final=final)
        dst = bytearray(length + delta)
        dst = bytes(dst) if change.get("readonly") else dst
        if method == "decrypt_span":
            return outcome(e, method, k, n, first, ciphertext, dst, final=final)
        return outcome(e, method, k, n, first, fd, 0, len(ciphertext), dst, final=final)

    expect = call(PY)
    assert expect[0] is ValueError
    assert call(engine) == expect


def test_negative_threads(engine):
    key, nonce = keys(0)
    with pytest.raises(ValueError):
        engine.encrypt_span(key, nonce, 0, b"", bytearray(TAG_SIZE), final=True, threads=-1)


def test_overlapping_buffers_are_rejected(engine):
    key, nonce = keys(0)
    buffer = bytearray(span_ciphertext_length(CHUNK_SIZE, True) + CHUNK_SIZE)
    view = memoryview(buffer)
    with pytest.raises(ValueError):
        engine.encrypt_span(key, nonce, 0, view[:CHUNK_SIZE], view[CHUNK_SIZE - 1:-1], final=True)


# ------------------------------------------------------------------------------------------------
# module surface: providers, info, version, helpers


def test_sizes_come_from_c():
    lib = cengine.lib
    assert (lib.st_key_size(), lib.st_nonce_size(), lib.st_tag_size(), lib.st_chunk_size()) == (
        KEY_SIZE, NONCE_SIZE, TAG_SIZE, CHUNK_SIZE)
    assert lib.st_max_chunks() == MAX_CHUNKS


def test_info(engine):
    info = engine.info()
    assert info["backend"] == "c" and engine.name == "c"
    assert info["provider"] == engine.provider
    assert isinstance(info["cpu_path"], str) and info["cpu_path"]
    assert info["threads"] >= 1


def test_provider_selection(monkeypatch):
    assert "openssl" in PROVIDERS
    monkeypatch.setenv("SEALTENSORS_AES", "openssl")
    assert CEngine().provider == "openssl"
    monkeypatch.setenv("SEALTENSORS_AES", "auto")
    assert CEngine().provider == PROVIDERS[0]
    monkeypatch.setenv("SEALTENSORS_AES", "rot13")
    with pytest.raises(BackendError):
        CEngine()
    with pytest.raises(BackendError):
        CEngine("aesni")
    monkeypatch.delenv("SEALTENSORS_AES")
    assert CEngine("OpenSSL").provider == "openssl"
    if "ipsecmb" in PROVIDERS:
        assert CEngine().provider == "ipsecmb"
    else:
        with pytest.raises(BackendError):
            CEngine("ipsecmb")


@pytest.mark.parametrize("value", ["3", " 7", "+2", "1000", "0", "-4", "nonsense", "3 ", "2_0", ""])
def test_default_threads_python_and_c_agree(monkeypatch, value):
    monkeypatch.setenv("SEALTENSORS_THREADS", value)
    assert cengine.default_threads() == cengine.lib.st_default_threads()
    if value.strip().lstrip("+").isdigit() and int(value) > 0 and value == value.rstrip():
        assert cengine.default_threads() == min(int(value), 256)
    else:
        assert cengine.default_threads() == cengine.lib.st_cpu_count()


def test_default_threads_without_environment(monkeypatch):
    monkeypatch.delenv("SEALTENSORS_THREADS", raising=False)
    cpus = min(len(os.sched_getaffinity(0)), os.cpu_count())
    assert cengine.default_threads() == cengine.lib.st_default_threads() == cpus
    assert CEngine("openssl").info()["threads"] == cpus


def test_version_mismatch_refuses_to_load():
    code = (
        "import sealtensors._version as v; v.__version__ = '0.0.0-other'\n"
        "from sealtensors.engine import backends as _backends\n"
        "from sealtensors import errors\n"
        "try:\n"
        "    import sealtensors.engine.cengine\n"
        "except ImportError as exc:\n"
        "    assert 'built for version' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('imported a mismatched build')\n"
        "assert _backends._load('auto').name == 'python'\n"
        "try:\n"
        "    _backends._load('c')\n"
        "except errors.BackendError:\n"
        "    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_memory_helpers():
    buffer = bytearray(os.urandom(10_000))
    cengine.wipe(buffer)
    assert buffer == bytes(10_000)
    cengine.wipe(bytearray())
    page = bytearray(8192)
    rc = cengine.lock_memory(page)
    assert rc in (0, errno.ENOMEM, errno.EPERM, errno.EAGAIN)
    if rc == 0:
        assert cengine.unlock_memory(page) == 0
    with pytest.raises(BufferError):
        cengine.wipe(b"read-only")


# ------------------------------------------------------------------------------------------------
# property: C and Python agree on random spans, thread counts and tampering


@settings(deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(
    provider=st.sampled_from(PROVIDERS),
    chunks=st.one_of(st.integers(0, 4), st.integers(0, 200)),
    tail=st.integers(0, CHUNK_SIZE - 1),
    final=st.booleans(),
    first=st.one_of(st.just(0), st.integers(0, MAX_CHUNKS - 300)),
    threads=st.integers(0, 12),
    tamper=st.lists(st.integers(0, 1 << 30), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 1 << 30)),
    seed=st.integers(0, 1 << 16),
)
def test_property_agrees_with_python(tmpfile, provider, chunks, tail, final, first, threads,
                                     tamper, cut, seed):
    engine = CEngine(provider)
    length = chunks * CHUNK_SIZE + (tail if final else 0)
    key, nonce = keys(seed)
    plaintext = os.urandom(length)
    ciphertext = encrypt_reference(key, nonce, first, plaintext, final)
    mine = bytearray(len(ciphertext))
    engine.encrypt_span(key, nonce, first, plaintext, mine, final=final, threads=threads)
    assert mine == ciphertext
    for p in tamper:
        if ciphertext:
            ciphertext[p % len(ciphertext)] ^= 1 << (p % 8)
    if cut is not None and ciphertext:
        ciphertext = ciphertext[:cut % len(ciphertext)]
    expect = outcome(PY, "decrypt_span", key, nonce, first, ciphertext, bytearray(length),
                     final=final)
    if expect[0] is ValueError:  # a cut that leaves a decryptable length: destination too big
        return
    got = outcome(engine, "decrypt_span", key, nonce, first, ciphertext,
                  bytearray(os.urandom(length)), final=final, threads=threads)
    assert got == expect
    fd, _ = tmpfile
    write_file(fd, ciphertext)
    got = outcome(engine, "decrypt_span_fd", key, nonce, first, fd, 0, len(ciphertext),
                  bytearray(os.urandom(length)), final=final, threads=threads)
    assert got == expect


@settings(deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(provider=st.sampled_from(PROVIDERS), chunks=st.integers(1, 300), threads=st.integers(1, 9),
       declared_extra=st.integers(1, 50), seed=st.integers(0, 1 << 16))
def test_property_fd_truncation(tmpfile, provider, chunks, threads, declared_extra, seed):
    """The file holds fewer bytes than the span says: same chunk_index as the Python engine."""
    engine = CEngine(provider)
    key, nonce = keys(seed)
    plaintext = os.urandom(chunks * CHUNK_SIZE + 11)
    ciphertext = encrypt_reference(key, nonce, 0, plaintext, True)
    cut = max(0, len(ciphertext) - declared_extra * 997)
    fd, _ = tmpfile
    write_file(fd, ciphertext[:cut])
    expect = outcome(PY, "decrypt_span_fd", key, nonce, 0, fd, 0, len(ciphertext),
                     bytearray(len(plaintext)), final=True)
    got = outcome(engine, "decrypt_span_fd", key, nonce, 0, fd, 0, len(ciphertext),
                  bytearray(len(plaintext)), final=True, threads=threads)
    assert got == expect


# ------------------------------------------------------------------------------------------------
# known-answer vectors (empty AAD, 96-bit IV, 128-bit tag) through a single-chunk final span


def wycheproof_cases():
    data = json.loads((VECTORS / "wycheproof" / "aes_gcm_test.json").read_text())
    cases = []
    for group in data["testGroups"]:
        if (group["keySize"], group["ivSize"], group["tagSize"]) != (256, 96, 128):
            continue
        for test in group["tests"]:
            if test["aad"]:
                continue
            cases.append((f"wycheproof-{test['tcId']}", test["key"], test["iv"], test["ct"],
                          test["tag"], test["msg"] if test["result"] == "valid" else None))
    return cases


def nist_cases():
    cases, params, record = [], {}, {}
    path = VECTORS / "nist-cavp" / "gcmDecrypt256.rsp"

    def flush():
        if record and params.get("IVlen") == "96" and params.get("Taglen") == "128" \
                and params.get("AADlen") == "0":
            cases.append((f"nist-{len(cases)}", record["Key"], record["IV"], record["CT"],
                          record["Tag"], None if record.get("FAIL") else record["PT"]))

    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            flush()  # the last record of a section belongs to the section's parameters
            record = {}
            name, _, value = line[1:-1].partition("=")
            params[name.strip()] = value.strip()
        elif line.startswith("Count"):
            flush()
            record = {}
        elif line == "FAIL":
            record["FAIL"] = True
        elif "=" in line:
            name, _, value = line.partition("=")
            record[name.strip()] = value.strip()
    flush()
    return cases


WYCHEPROOF = wycheproof_cases()
NIST = nist_cases()


def test_vector_counts():
    # aes_gcm_test.json: 66 tests with 256-bit key / 96-bit IV / 128-bit tag, 48 of them without AAD;
    # gcmDecrypt256.rsp: 15 cases for each of 5 plaintext lengths at IV 96 / AAD 0 / tag 128.
    assert len(WYCHEPROOF) == 48
    assert len(NIST) == 75
    assert sum(case[5] is None for case in NIST) > 0
    assert sum(case[5] is None for case in WYCHEPROOF) > 0


@pytest.mark.parametrize("case", WYCHEPROOF + NIST, ids=[c[0] for c in WYCHEPROOF + NIST])
def test_known_answer(engine, case):
    _, key, iv, ct, tag, msg = case
    key, iv, span = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(ct) + bytes.fromhex(tag)
    assert len(span) < ENCRYPTED_CHUNK_SIZE
    out = bytearray(os.urandom(len(span) - TAG_SIZE))
    if msg is None:
        with pytest.raises(IntegrityError) as info:
            engine.decrypt_span(key, iv, 0, span, out, final=True)
        assert info.value.chunk_index == 0
        assert not any(out)
    else:
        engine.decrypt_span(key, iv, 0, span, out, final=True)
        assert out.hex() == msg
        sealed = bytearray(len(span))
        engine.encrypt_span(key, iv, 0, bytes.fromhex(msg), sealed, final=True)
        assert sealed == span
