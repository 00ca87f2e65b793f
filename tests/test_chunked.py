"""Properties of the chunked construction (sealtensors.crypto.chunked) on every engine."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, strategies as st

from sealtensors.engine import backends as _backends
from sealtensors.crypto import chunked
from sealtensors.engine.spec import (
    ENCRYPTED_CHUNK_SIZE,
    MAX_CHUNKS,
    chunk_nonce,
    span_ciphertext_length,
    span_plaintext_length,
)
from sealtensors.engine.pyengine import PythonEngine
from sealtensors.errors import CommitmentError, IntegrityError, InvalidKeyError

CHUNK = chunked.CHUNK_SIZE
HEADER = chunked.HEADER_SIZE
TAG = chunked.TAG_SIZE

SPECIAL_LENGTHS = [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK,
                   2 * CHUNK + 1, 5 * CHUNK - 1, 5 * CHUNK, 5 * CHUNK + 1, 300 * 1024]
lengths = st.one_of(
    st.sampled_from(SPECIAL_LENGTHS),
    st.integers(0, 3 * CHUNK),
    st.integers(0, 20).map(lambda n: n * CHUNK) | st.integers(1, 20).map(lambda n: n * CHUNK - 1),
    st.integers(0, 400 * 1024),
)
keys = st.binary(min_size=32, max_size=32)
contexts = st.binary(max_size=80)
threads = st.sampled_from([0, 1, 2, 3, 8])


def _plaintext(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


def test_backend_fixture_selects_the_engine(backend):
    engine = _backends.engine()
    if backend == "python":
        assert engine.name == "python"
    else:
        assert engine.name == "c"
        assert engine.provider == backend.split("-", 1)[1]
        assert engine.info()["provider"] == engine.provider


@given(length=lengths, seed=st.integers(0, 2**32), key=keys, context=contexts, threads=threads)
@example(length=0, seed=0, key=bytes(32), context=b"", threads=0)
@example(length=CHUNK, seed=1, key=bytes(32), context=b"\x00", threads=2)
def test_round_trip(length, seed, key, context, threads):
    plaintext = _plaintext(length, seed)
    message = chunked.encrypt(key, plaintext, context, threads=threads)
    expected_len = HEADER + length + (length // CHUNK + 1) * TAG
    assert len(message) == expected_len == chunked.ciphertext_length(length)
    assert chunked.plaintext_length(len(message)) == length
    assert chunked.chunk_count(length) == length // CHUNK + 1
    assert chunked.decrypt(key, message, context, threads=threads) == plaintext
    out = bytearray(b"\xa5" * length)
    chunked.decrypt_into(key, memoryview(message), out, context, threads=threads)
    assert out == plaintext
    # A fresh salt every time: the same input never gives the same message.
    again = chunked.encrypt(key, plaintext, context)
    assert again[:chunked.SALT_SIZE] != message[:chunked.SALT_SIZE]


@given(length=lengths, seed=st.integers(0, 2**32), context=contexts, data=st.data())
def test_random_access_equals_slices(length, seed, context, data):
    key = random.Random(seed).randbytes(32)
    plaintext = _plaintext(length, seed)
    message = chunked.encrypt(key, plaintext, context)
    message_keys = chunked.open_message(key, message, context)
    total = chunked.chunk_count(length)
    for _ in range(3):
        begin = data.draw(st.integers(0, length), label="begin")
        end = data.draw(st.integers(begin, length), label="end")
        first, stop = chunked.chunk_range_for_bytes(begin, end)
        stop = min(stop, total)
        plain_end = length if stop == total else stop * CHUNK
        dst = bytearray(plain_end - first * CHUNK)
        chunked.decrypt_chunk_range_into(message_keys, message, first, stop, dst)
        skip = begin - first * CHUNK
        assert dst[skip:skip + end - begin] == plaintext[begin:end]
        assert dst == plaintext[first * CHUNK:plain_end]


@given(length=st.sampled_from([0, 5, CHUNK, 2 * CHUNK + 7]), key=keys, other=keys,
       context=contexts, other_context=contexts)
def test_wrong_key_or_context_is_a_commitment_error(length, key, other, context, other_context):
    message = chunked.encrypt(key, _plaintext(length, 3), context)
    if other != key:
        with pytest.raises(CommitmentError):
            chunked.decrypt(other, message, context)
        with pytest.raises(CommitmentError):
            chunked.open_message(other, message, context)
    if other_context != context:
        with pytest.raises(CommitmentError):
            chunked.decrypt(key, message, other_context)
        dst = bytearray(length)
        with pytest.raises(CommitmentError):
            chunked.decrypt_into(key, message, dst, other_context)


def test_salt_or_commitment_altered_is_a_commitment_error():
    key = bytes(range(32))
    message = chunked.encrypt(key, b"payload" * 100)
    for position in range(HEADER):
        tampered = bytearray(message)
        tampered[position] ^= 0x01
        with pytest.raises(CommitmentError):
            chunked.decrypt(key, tampered)


def _assert_integrity_failure(key, message):
    with pytest.raises(IntegrityError) as info:
        chunked.decrypt(key, message)
    assert not isinstance(info.value, CommitmentError)
    try:
        length = chunked.plaintext_length(len(message))
    except IntegrityError:
        length = 10
    dst = bytearray(b"\xa5" * length)
    with pytest.raises(IntegrityError):
        chunked.decrypt_into(key, message, dst)
    assert dst == bytes(length)


@pytest.mark.parametrize("message_length", [0, HEADER - 1, "commitment"])
def test_decrypt_into_wipes_on_header_failure(message_length):
    key = bytes(range(32))
    message = chunked.encrypt(key, b"secret!")
    if message_length == "commitment":
        message = bytes([message[0] ^ 1]) + message[1:]
    else:
        message = message[:message_length]
    dst = bytearray(b"\xa5" * 7)
    with pytest.raises(IntegrityError):
        chunked.decrypt_into(key, message, dst)
    assert dst == bytes(7)


def test_every_truncation_of_a_small_message():
    key = bytes(range(32))
    message = chunked.encrypt(key, b"abcdefghij" * 10)
    assert len(message) == HEADER + 100 + TAG
    for length in range(len(message)):
        _assert_integrity_failure(key, message[:length])


def test_truncations_of_a_multi_chunk_message():
    key = bytes(range(32, 64))
    message = chunked.encrypt(key, _plaintext(2 * CHUNK + 5, 9))
    boundaries = [HEADER + i * ENCRYPTED_CHUNK_SIZE for i in range(3)] + [len(message)]
    cuts = set(range(0, HEADER + 40))
    for boundary in boundaries:
        cuts.update(range(boundary - 40, boundary + 40))
    cuts.update(range(0, len(message), 97))
    cuts = sorted(c for c in cuts if 0 <= c < len(message))
    assert len(cuts) > 500
    for length in cuts:
        _assert_integrity_failure(key, message[:length])


@pytest.mark.slow
def test_every_truncation_of_a_multi_chunk_message():
    key = bytes(range(32, 64))
    message = chunked.encrypt(key, _plaintext(2 * CHUNK + 5, 9))
    for length in range(len(message)):
        _assert_integrity_failure(key, message[:length])


@pytest.mark.parametrize("length", [0, 100, CHUNK, 2 * CHUNK + 5])
def test_appended_bytes(length):
    key = bytes(range(32))
    message = chunked.encrypt(key, _plaintext(length, 1))
    final_chunk = message[HEADER + (length // CHUNK) * ENCRYPTED_CHUNK_SIZE:]
    other = chunked.encrypt(key, _plaintext(CHUNK + 1, 2))
    for suffix in (b"\x00", b"\x01" * 15, b"\x00" * 16, b"\x00" * 17, final_chunk,
                   other[HEADER:HEADER + ENCRYPTED_CHUNK_SIZE], bytes(ENCRYPTED_CHUNK_SIZE)):
        _assert_integrity_failure(key, message + suffix)


def test_dropping_the_empty_final_chunk():
    """A message of whole chunks ends with an empty final chunk; without it no length is possible."""
    key = bytes(range(32))
    message = chunked.encrypt(key, _plaintext(2 * CHUNK, 4))
    _assert_integrity_failure(key, message[:-TAG])
    # Dropping the final full chunk plus the terminator leaves a possible length that fails auth.
    _assert_integrity_failure(key, message[:-TAG - ENCRYPTED_CHUNK_SIZE])


@given(chunks=st.integers(1, 12), flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=4),
       thread_count=threads)
def test_lowest_failing_chunk_is_reported(chunks, flips, thread_count):
    key = bytes(range(32))
    plaintext = _plaintext(chunks * CHUNK - 3, chunks)
    message = bytearray(chunked.encrypt(key, plaintext))
    body = len(message) - HEADER
    positions = sorted({HEADER + f % body for f in flips})
    for position in positions:
        message[position] ^= 0x80
    lowest = (positions[0] - HEADER) // ENCRYPTED_CHUNK_SIZE
    dst = bytearray(b"\xa5" * len(plaintext))
    with pytest.raises(IntegrityError) as info:
        chunked.decrypt_into(key, message, dst, threads=thread_count)
    assert info.value.chunk_index == lowest
    assert dst == bytes(len(dst))


@given(length=lengths, first_chunk=st.integers(0, 2**32) | st.sampled_from([255, 256, 65535, 2**32 - 1]),
       seed=st.integers(0, 2**32), thread_count=threads)
def test_engine_agrees_with_python_reference(length, first_chunk, seed, thread_count):
    """The current engine and the pure-Python reference produce identical spans and verdicts."""
    rng = random.Random(seed)
    key, nonce = rng.randbytes(32), rng.randbytes(12)
    final = rng.random() < 0.5
    if not final:
        length -= length % CHUNK
    plaintext = _plaintext(length, seed)
    engine, reference = _backends.engine(), PythonEngine()
    size = span_ciphertext_length(length, final)
    ours, theirs = bytearray(size), bytearray(size)
    engine.encrypt_span(key, nonce, first_chunk, plaintext, ours, final=final, threads=thread_count)
    reference.encrypt_span(key, nonce, first_chunk, plaintext, theirs, final=final)
    assert ours == theirs
    out = bytearray(length)
    engine.decrypt_span(key, nonce, first_chunk, bytes(ours), out, final=final, threads=thread_count)
    assert out == plaintext
    if size:
        position = rng.randrange(size)
        ours[position] ^= 1
        verdicts = []
        for e in (engine, reference):
            dst = bytearray(b"\xa5" * length)
            with pytest.raises(IntegrityError) as info:
                e.decrypt_span(key, nonce, first_chunk, bytes(ours), dst, final=final)
            assert dst == bytes(length)
            verdicts.append(info.value.chunk_index)
        assert verdicts[0] == verdicts[1] == first_chunk + position // ENCRYPTED_CHUNK_SIZE


def test_chunk_nonce_is_xor_of_big_endian_counter():
    base = bytes.fromhex("000102030405060708090a0b")
    assert chunk_nonce(base, 0) == base
    assert chunk_nonce(base, 1) == bytes.fromhex("000102030405060708090a0a")
    assert chunk_nonce(base, 0x100) == bytes.fromhex("000102030405060708090b0b")
    assert chunk_nonce(base, MAX_CHUNKS - 1)[-5:] == bytes.fromhex("38f7f6f5f4")


def test_span_length_arithmetic():
    for length in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK):
        ct = span_ciphertext_length(length, final=True)
        assert span_plaintext_length(ct, final=True) == length
    assert span_ciphertext_length(2 * CHUNK, final=False) == 2 * ENCRYPTED_CHUNK_SIZE
    assert span_plaintext_length(2 * ENCRYPTED_CHUNK_SIZE, final=False) == 2 * CHUNK
    assert span_plaintext_length(2 * ENCRYPTED_CHUNK_SIZE + 1, final=False) is None
    for impossible in (-1, 0, 15, ENCRYPTED_CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE + 15):
        assert span_plaintext_length(impossible, final=True) is None
    with pytest.raises(ValueError):
        span_ciphertext_length(CHUNK + 1, final=False)


def test_lengths_at_the_chunk_limit():
    """The 2**38-chunk limit, checked with lengths only (nothing is allocated)."""
    longest = (MAX_CHUNKS - 1) * CHUNK + CHUNK - 1
    assert chunked.plaintext_length(chunked.ciphertext_length(longest)) == longest
    with pytest.raises(ValueError):
        chunked.ciphertext_length(longest + 1)
    with pytest.raises(IntegrityError):
        chunked.plaintext_length(chunked.ciphertext_length(longest) + ENCRYPTED_CHUNK_SIZE)
    with pytest.raises(IntegrityError):
        chunked.plaintext_length(2**64 - 1)
    engine = _backends.engine()
    with pytest.raises((ValueError, OverflowError)):
        engine.decrypt_span(bytes(32), bytes(12), MAX_CHUNKS, bytes(TAG), bytearray(0), final=True)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_bad_key_sizes(size):
    with pytest.raises(InvalidKeyError):
        chunked.encrypt(bytes(size), b"x")
    message = chunked.encrypt(bytes(32), b"x")
    with pytest.raises(InvalidKeyError):
        chunked.decrypt(bytes(size), message)
    with pytest.raises(InvalidKeyError):
        chunked.open_message(bytes(size), message)


def test_destination_size_is_checked():
    key = bytes(32)
    message = chunked.encrypt(key, b"12345")
    for size in (4, 6):
        with pytest.raises(ValueError):
            chunked.decrypt_into(key, message, bytearray(size))
    with pytest.raises(ValueError):
        chunked.encrypt_into(key, b"12345", bytearray(len(message) - 1))
