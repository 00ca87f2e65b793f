"""Per-chunk SHA-256 digests (the data a publisher signs): checked before decryption, produced by
encryption, the same on every engine.

A digest is the SHA-256 of one stored chunk: its ciphertext followed by its 16-byte tag.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealtensors.crypto import chunked
from sealtensors.engine import backends
from sealtensors.engine.pyengine import PythonEngine
from sealtensors.engine.spec import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    ENCRYPTED_CHUNK_SIZE,
    span_ciphertext_length,
    span_plaintext_length,
)
from sealtensors.errors import IntegrityError, SignatureError

KEY, NONCE = bytes(range(1, 33)), bytes(range(40, 52))


def digests_of(ciphertext) -> bytes:
    view = memoryview(ciphertext)
    return b"".join(hashlib.sha256(view[i:i + ENCRYPTED_CHUNK_SIZE]).digest()
                    for i in range(0, len(view), ENCRYPTED_CHUNK_SIZE))


def seal(plaintext: bytes, first: int = 0, final: bool = True, threads: int = 2):
    """(ciphertext, digests_out) from the current engine."""
    ciphertext = bytearray(span_ciphertext_length(len(plaintext), final))
    count = len(ciphertext) // ENCRYPTED_CHUNK_SIZE + (1 if len(ciphertext) % ENCRYPTED_CHUNK_SIZE
                                                         else 0)
    table = bytearray(count * DIGEST_SIZE)
    backends.engine().encrypt_span(KEY, NONCE, first, plaintext, ciphertext, final=final,
                                   threads=threads, digests_out=table)
    return bytes(ciphertext), bytes(table)


def decrypt_from(source: str, tmp_path, first: int, ciphertext: bytes, out, *, threads: int,
                 digests: bytes) -> None:
    """Decrypt a final span with ``digests`` from memory or, for ``source == "fd"``, from a file."""
    if source == "memory":
        backends.engine().decrypt_span(KEY, NONCE, first, ciphertext, out, final=True,
                                       threads=threads, digests=digests)
        return
    path = tmp_path / "span"
    path.write_bytes(ciphertext)
    with open(path, "rb") as f:
        backends.engine().decrypt_span_fd(KEY, NONCE, first, f.fileno(), 0, len(ciphertext), out,
                                          final=True, threads=threads, digests=digests)


@pytest.mark.parametrize("length", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 5,
                                    40 * CHUNK_SIZE + 9])
def test_digests_out_is_sha256_of_each_stored_chunk(length):
    ciphertext, table = seal(os.urandom(length))
    assert table == digests_of(ciphertext)
    assert len(table) == DIGEST_SIZE * (length // CHUNK_SIZE + 1)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_correct_digests_decrypt(threads, tmp_path):
    plaintext = os.urandom(50 * CHUNK_SIZE + 321)
    ciphertext, table = seal(plaintext, first=7)
    out = bytearray(len(plaintext))
    backends.engine().decrypt_span(KEY, NONCE, 7, ciphertext, out, final=True, threads=threads,
                                   digests=table)
    assert out == plaintext
    path = tmp_path / "span"
    path.write_bytes(b"x" * 11 + ciphertext)
    out = bytearray(len(plaintext))
    with open(path, "rb") as f:
        backends.engine().decrypt_span_fd(KEY, NONCE, 7, f.fileno(), 11, len(ciphertext), out,
                                          final=True, threads=threads, digests=memoryview(table))
    assert out == plaintext


@pytest.mark.parametrize("bad", [0, 1, 33, 50])
@pytest.mark.parametrize("source", ["memory", "fd"])
def test_one_wrong_digest_is_a_signature_error(bad, source, tmp_path):
    plaintext = os.urandom(50 * CHUNK_SIZE + 321)
    ciphertext, table = seal(plaintext, first=3)
    wrong = bytearray(table)
    wrong[bad * DIGEST_SIZE + 17] ^= 0x40
    out = bytearray(b"\xaa" * len(plaintext))
    with pytest.raises(SignatureError) as caught:
        decrypt_from(source, tmp_path, 3, ciphertext, out, threads=2, digests=bytes(wrong))
    assert caught.value.chunk_index == 3 + bad
    assert isinstance(caught.value, IntegrityError)
    assert f"data chunk {3 + bad} does not match the publisher's signature" in str(caught.value)
    assert out == bytes(len(out))


@pytest.mark.parametrize("bad", [(0,), (31,), (32,), (63, 64), (64, 100), (100,)])
@pytest.mark.parametrize("source", ["memory", "fd"])
def test_wrong_digests_around_hashing_group_edges(bad, source, tmp_path):
    """On one thread a batch is hashed 32 chunks at a time (ipsec-mb's multi-buffer SHA-256 fills
    two rounds of 16 lanes) before any of them is decrypted: a mismatch at either edge of a group,
    or two in neighbouring groups, reports the lowest chunk, and nothing at or after it is kept."""
    plaintext = os.urandom(100 * CHUNK_SIZE + 5)
    ciphertext, table = seal(plaintext, first=9)
    wrong = bytearray(table)
    for index in bad:
        wrong[index * DIGEST_SIZE] ^= 0x01
    out = bytearray(b"\x55" * len(plaintext))
    with pytest.raises(SignatureError) as caught:
        decrypt_from(source, tmp_path, 9, ciphertext, out, threads=1, digests=bytes(wrong))
    assert caught.value.chunk_index == 9 + min(bad)
    assert out == bytes(len(out))


def test_engine_info_names_its_digest_path(backend):
    digest = backends.engine().info()["digest"]
    if backend == "python":
        assert digest == "hashlib"
    elif backend == "c-openssl":
        assert digest == "openssl"
    else:  # ipsec-mb hashes with its multi-buffer job API whenever it encrypts
        assert digest.startswith("ipsecmb-") and digest.endswith(" multi-buffer")


def test_tampered_chunk_with_signed_digest_fails_the_digest_first():
    """A modified chunk no longer hashes to what was signed: the digest check, which runs before
    any AES work, reports it (as SignatureError), not the tag."""
    plaintext = os.urandom(10 * CHUNK_SIZE)
    ciphertext, table = seal(plaintext)
    tampered = bytearray(ciphertext)
    tampered[4 * ENCRYPTED_CHUNK_SIZE + 100] ^= 1
    out = bytearray(len(plaintext))
    with pytest.raises(SignatureError) as caught:
        backends.engine().decrypt_span(KEY, NONCE, 0, tampered, out, final=True, digests=table)
    assert caught.value.chunk_index == 4
    assert out == bytes(len(out))


def test_lowest_failure_wins_between_digest_and_tag():
    plaintext = os.urandom(60 * CHUNK_SIZE)
    ciphertext, table = seal(plaintext)
    tampered = bytearray(ciphertext)
    tampered[(40 + 1) * ENCRYPTED_CHUNK_SIZE - 1] ^= 1  # chunk 40's tag
    wrong = bytearray(table)  # chunk 40 keeps its signed digest: its tamper is a mismatch
    wrong[45 * DIGEST_SIZE] ^= 1
    out = bytearray(len(plaintext))
    with pytest.raises(SignatureError) as caught:
        backends.engine().decrypt_span(KEY, NONCE, 0, tampered, out, final=True, threads=3,
                                       digests=bytes(wrong))
    assert caught.value.chunk_index == 40
    # the digest of the tampered chunk matches (re-signed), so its tag fails: IntegrityError at 40
    resigned = bytearray(wrong)
    resigned[40 * DIGEST_SIZE:41 * DIGEST_SIZE] = hashlib.sha256(
        tampered[40 * ENCRYPTED_CHUNK_SIZE:41 * ENCRYPTED_CHUNK_SIZE]).digest()
    with pytest.raises(IntegrityError) as caught:
        backends.engine().decrypt_span(KEY, NONCE, 0, tampered, out, final=True, threads=3,
                                       digests=bytes(resigned))
    assert not isinstance(caught.value, SignatureError)
    assert caught.value.chunk_index == 40
    assert out == bytes(len(out))


@pytest.mark.parametrize("delta", [-DIGEST_SIZE, -1, 1, DIGEST_SIZE])
def test_digest_array_length_is_checked(delta, tmp_path):
    plaintext = os.urandom(5 * CHUNK_SIZE)
    ciphertext, table = seal(plaintext)
    bad = (table + bytes(DIGEST_SIZE))[:len(table) + delta]
    out = bytearray(len(plaintext))
    with pytest.raises(ValueError, match="digests"):
        backends.engine().decrypt_span(KEY, NONCE, 0, ciphertext, out, final=True, digests=bad)
    path = tmp_path / "span"
    path.write_bytes(ciphertext)
    with open(path, "rb") as f, pytest.raises(ValueError, match="digests"):
        backends.engine().decrypt_span_fd(KEY, NONCE, 0, f.fileno(), 0, len(ciphertext), out,
                                          final=True, digests=bad)
    with pytest.raises(ValueError, match="digests"):
        backends.engine().encrypt_span(KEY, NONCE, 0, plaintext, bytearray(len(ciphertext)),
                                       final=True, digests_out=bytearray(len(bad)))
    with pytest.raises(ValueError, match="writable"):
        backends.engine().encrypt_span(KEY, NONCE, 0, plaintext, bytearray(len(ciphertext)),
                                       final=True, digests_out=bytes(len(table)))


def test_chunked_range_functions_pass_digests_through(tmp_path):
    key = os.urandom(32)
    plaintext = os.urandom(30 * CHUNK_SIZE + 77)
    message = chunked.encrypt(key, plaintext, b"ctx")
    keys = chunked.open_message(key, message, b"ctx")
    table = digests_of(memoryview(message)[chunked.HEADER_SIZE:])
    first, stop = 5, 31  # ends at the final chunk
    expected = table[first * DIGEST_SIZE:stop * DIGEST_SIZE]
    out = bytearray(len(plaintext) - first * CHUNK_SIZE)
    chunked.decrypt_chunk_range_into(keys, message, first, stop, out, threads=2, digests=expected)
    assert out == plaintext[first * CHUNK_SIZE:]
    path = tmp_path / "message"
    path.write_bytes(b"pad" + message)
    wrong = bytearray(expected)
    wrong[-1] ^= 1
    with open(path, "rb") as f:
        out2 = bytearray(len(out))
        chunked.decrypt_chunk_range_fd_into(keys, f.fileno(), 3, len(message), first, stop, out2,
                                            digests=expected)
        assert out2 == out
        with pytest.raises(SignatureError) as caught:
            chunked.decrypt_chunk_range_fd_into(keys, f.fileno(), 3, len(message), first, stop,
                                                out2, digests=bytes(wrong))
    assert caught.value.chunk_index == stop - 1
    assert out2 == bytes(len(out2))


@given(length=st.integers(0, 40 * CHUNK_SIZE), first=st.integers(0, 1000),
       threads=st.integers(1, 4), final=st.booleans(), data=st.data())
def test_engines_agree_on_digests(length, first, threads, final, data):
    if not final:
        length -= length % CHUNK_SIZE
    plaintext = os.urandom(length)
    reference = PythonEngine()
    ciphertext = bytearray(span_ciphertext_length(length, final))
    count = (span_ciphertext_length(length, final) + ENCRYPTED_CHUNK_SIZE - 1) // \
        ENCRYPTED_CHUNK_SIZE
    ref_table = bytearray(count * DIGEST_SIZE)
    reference.encrypt_span(KEY, NONCE, first, plaintext, ciphertext, final=final,
                           digests_out=ref_table)
    table = bytearray(len(ref_table))
    ours = bytearray(len(ciphertext))
    backends.engine().encrypt_span(KEY, NONCE, first, plaintext, ours, final=final,
                                   threads=threads, digests_out=table)
    assert (ours, table) == (ciphertext, ref_table)
    if not count:
        return
    wrong = bytearray(table)
    flips = data.draw(st.lists(st.integers(0, count - 1), max_size=3, unique=True))
    for chunk in flips:
        wrong[chunk * DIGEST_SIZE] ^= 0x80

    def outcome(engine):
        out = bytearray(span_plaintext_length(len(ciphertext), final))
        try:
            engine.decrypt_span(KEY, NONCE, first, ciphertext, out, final=final, threads=threads,
                                digests=bytes(wrong))
        except SignatureError as exc:
            assert out == bytes(len(out))
            return ("signature", exc.chunk_index)
        return ("ok", bytes(out))

    expected = outcome(reference)
    assert outcome(backends.engine()) == expected
    assert expected == (("signature", first + min(flips)) if flips else ("ok", plaintext))


@pytest.mark.c_engine_only
def test_c_engine_checks_digest_arguments_itself(backend):
    """The C entry points validate the digest array again (the Python checks are bypassed here)."""
    from sealtensors._native import ffi, lib

    provider = {"c-ipsecmb": lib.ST_PROVIDER_IPSECMB, "c-openssl": lib.ST_PROVIDER_OPENSSL}[backend]
    plaintext = os.urandom(3 * CHUNK_SIZE)
    ciphertext, table = seal(plaintext)
    out = bytearray(len(plaintext))
    status = ffi.new("st_status *")
    for pointer, length in ((table, len(table) - 1), (table, len(table) + DIGEST_SIZE),
                            (ffi.NULL, len(table))):
        rc = lib.st_decrypt_span_mem(provider, KEY, NONCE, 0, ciphertext, len(ciphertext),
                                     ffi.from_buffer(out), len(out), pointer, length, 1, 1, status)
        assert rc == lib.ST_E_ARG
    overlapping = ffi.from_buffer(out)  # digests inside the destination
    assert lib.st_decrypt_span_mem(provider, KEY, NONCE, 0, ciphertext, len(ciphertext),
                                   overlapping, len(out), overlapping, len(table), 1, 1,
                                   status) == lib.ST_E_ARG
    sink = bytearray(len(table) + 1)
    assert lib.st_encrypt_span_mem(provider, KEY, NONCE, 0, plaintext, len(plaintext),
                                   ffi.from_buffer(bytearray(len(ciphertext))), len(ciphertext),
                                   ffi.from_buffer(sink), len(sink), 1, 1, status) == lib.ST_E_ARG
    wrong = bytearray(table)
    wrong[DIGEST_SIZE] ^= 1
    rc = lib.st_decrypt_span_mem(provider, KEY, NONCE, 0, ciphertext, len(ciphertext),
                                 ffi.from_buffer(out), len(out), bytes(wrong), len(wrong), 1, 1,
                                 status)
    assert (rc, status.code, status.chunk_index) == (lib.ST_E_DIGEST, lib.ST_E_DIGEST, 1)
