"""The signature trailer parser (format/trailer.py) and pin files (keys/pins.py) on crafted input.

Trailers: impossible lengths, a bad label, a malformed verifying key, a generation out of range,
directly and through signed files. Pin files: unknown fields, bad types, bad file ids, no signers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sealcraft
from sealtensors.crypto import chunked
from sealtensors.errors import FormatError, IntegrityError, InvalidKeyError, SignatureError
from sealtensors.format import trailer
from sealtensors.keys.pins import read_pin_file
from sealtensors.keys.signing import ED25519_PUBLIC_SIZE, SigningKey
from sealtensors.numpy import load, save
from sealtensors.reader import SealedReader

KEY = sealcraft.KEY
SIGNER = SigningKey(bytes(range(64)))
OTHER_SIGNER = SigningKey(bytes(range(1, 65)))


def _bad_ed25519_point() -> bytes:
    """32 bytes that do not decode to an Ed25519 point (found by trying y values)."""
    from Crypto.Signature import eddsa

    for y in range(2, 1000):
        candidate = y.to_bytes(32, "little")
        try:
            eddsa.import_public_key(candidate)
        except ValueError:
            return candidate
    raise AssertionError("no invalid point found")


@pytest.fixture(scope="module")
def signed() -> bytes:
    return save({"w": np.arange(5000, dtype=np.float32)}, KEY, signer=SIGNER, generation=7)


def trailer_of(blob: bytes) -> bytes:
    header = sealcraft.header_of(blob)
    return blob[header.trailer_offset:]


def with_trailer(blob: bytes, new_trailer: bytes) -> bytes:
    """``blob`` with another trailer of the same length, the header's trailer digest updated under
    a recomputed MAC (what a data-key holder can do, but not sign)."""
    header = sealcraft.header_of(blob)
    assert len(new_trailer) == header.trailer_length
    rebuilt = sealcraft.rebuild(blob[:header.trailer_offset],
                                trailer_digest=hashlib.sha256(new_trailer).digest())
    return rebuilt + new_trailer


def test_signed_file_parses_and_verifies(signed):
    raw = trailer_of(signed)
    parsed = trailer.parse(raw)
    assert parsed.signer == SIGNER.verifying_key and parsed.statement.generation == 7
    assert len(raw) == trailer.trailer_length(sealcraft.header_of(signed).data_length)
    assert load(signed, KEY, signer=SIGNER.verifying_key)["w"].shape == (5000,)
    assert with_trailer(signed, raw) == signed


@pytest.mark.parametrize("length", [0, 1, trailer.FIXED_SIZE - 1])
def test_too_short(signed, length):
    with pytest.raises(FormatError, match="impossible length"):
        trailer.parse(trailer_of(signed)[:length])


@pytest.mark.parametrize("extra", [1, 16, 31, 33])
def test_digest_table_not_whole(signed, extra):
    with pytest.raises(FormatError, match="impossible length"):
        trailer.parse(trailer_of(signed) + bytes(extra))
    with pytest.raises(FormatError, match="impossible length"):
        trailer.parse(trailer_of(signed)[:-extra])


def test_bad_label(signed):
    for position in (0, 15, 31):
        raw = bytearray(trailer_of(signed))
        raw[position] ^= 1
        with pytest.raises(SignatureError, match="statement"):
            trailer.parse(bytes(raw))


@pytest.mark.parametrize("generation", [2**63, 2**64 - 1])
def test_generation_out_of_range(signed, generation):
    raw = bytearray(trailer_of(signed))
    raw[48:56] = generation.to_bytes(8, "little")
    with pytest.raises(SignatureError, match="generation"):
        trailer.parse(bytes(raw))
    raw[48:56] = (2**63 - 1).to_bytes(8, "little")
    assert trailer.parse(bytes(raw)).statement.generation == 2**63 - 1


def test_malformed_verifying_key(signed):
    raw = bytearray(trailer_of(signed))
    at = trailer.STATEMENT_SIZE
    raw[at:at + ED25519_PUBLIC_SIZE] = _bad_ed25519_point()
    with pytest.raises(SignatureError, match="verifying key"):
        trailer.parse(bytes(raw))


@given(st.binary(max_size=64))
def test_random_statement_prefix(prefix):
    raw = prefix + bytes(trailer.FIXED_SIZE - len(prefix))
    try:
        trailer.parse(raw)
    except (FormatError, SignatureError):
        pass


def test_generation_is_checked_when_building():
    with pytest.raises(ValueError):
        trailer.build(SIGNER, file_id=bytes(16), generation=2**63, index_message=b"",
                      data_header=bytes(56), data_length=72, digests=bytes(32))
    with pytest.raises(ValueError):
        trailer.build(SIGNER, file_id=bytes(16), generation=-1, index_message=b"",
                      data_header=bytes(56), data_length=72, digests=bytes(32))


# --- through a reader that asks for the signature -------------------------------------------------


@pytest.mark.parametrize("case", ["label", "generation", "verifying-key", "other-signer-key",
                                  "signature", "digest"])
def test_hostile_trailers_under_a_valid_header(signed, case):
    """A data-key holder replaces the trailer and fixes the header's digest: every change is a
    SignatureError for a reader that asks for the signer; a reader that does not ask loads."""
    raw = bytearray(trailer_of(signed))
    if case == "label":
        raw[3] ^= 0x20
    elif case == "generation":
        raw[48:56] = (2**64 - 1).to_bytes(8, "little")
    elif case == "verifying-key":
        raw[trailer.STATEMENT_SIZE:trailer.STATEMENT_SIZE + 32] = _bad_ed25519_point()
    elif case == "other-signer-key":
        raw[trailer.STATEMENT_SIZE:trailer.STATEMENT_SIZE + trailer.PUBLIC_SIZE] = \
            OTHER_SIGNER.verifying_key.public
    elif case == "signature":
        raw[trailer.STATEMENT_SIZE + trailer.PUBLIC_SIZE + 10] ^= 1
    elif case == "digest":
        raw[-1] ^= 1
    blob = with_trailer(signed, bytes(raw))
    with pytest.raises(SignatureError):
        load(blob, KEY, signer=SIGNER.verifying_key)
    with pytest.raises(SignatureError):
        load(blob, KEY, signer=[SIGNER.verifying_key, OTHER_SIGNER.verifying_key])
    assert load(blob, KEY)["w"].shape == (5000,)


def test_trailer_altered_without_the_header(signed):
    raw = bytearray(signed)
    raw[-40] ^= 1
    with pytest.raises(IntegrityError, match="trailer"):
        load(bytes(raw), KEY, signer=SIGNER.verifying_key)
    with SealedReader.from_bytes(bytes(raw), KEY) as reader:
        with pytest.raises(IntegrityError):
            reader.check_trailer()


def test_unsigned_file_with_a_signer_required():
    blob = save({"w": np.zeros(3, np.float32)}, KEY)
    with pytest.raises(SignatureError, match="not signed"):
        load(blob, KEY, signer=SIGNER.verifying_key)


# --- pin files ---------------------------------------------------------------------------------


def _pin(tmp_path, document, raw: bytes | None = None):
    path = tmp_path / "model.pin"
    path.write_bytes(raw if raw is not None else json.dumps(document).encode())
    return path


SIGNER_TEXT = SIGNER.verifying_key.text()


def test_valid_pin_file(tmp_path, signed):
    header = sealcraft.header_of(signed)
    path = _pin(tmp_path, {"signers": [SIGNER_TEXT], "min_generation": 7,
                           "file_id": header.file_id.hex()})
    options = read_pin_file(path)
    assert options == {"signer": [SIGNER.verifying_key], "min_generation": 7,
                       "expect_file_id": header.file_id}
    assert read_pin_file(_pin(tmp_path, {"signers": [SIGNER_TEXT]})) == \
        {"signer": [SIGNER.verifying_key]}
    assert load(signed, KEY, pin=path)["w"].shape == (5000,)


def test_pins_that_do_not_hold(tmp_path, signed):
    header = sealcraft.header_of(signed)
    for document in ({"signers": [SIGNER_TEXT], "min_generation": 8},
                     {"signers": [SIGNER_TEXT], "file_id": bytes(16).hex()},
                     {"signers": [OTHER_SIGNER.verifying_key.text()],
                      "file_id": header.file_id.hex()}):
        with pytest.raises(SignatureError):
            load(signed, KEY, pin=_pin(tmp_path, document))


BAD_PINS = {
    "unknown-field": {"signers": [SIGNER_TEXT], "min_generaton": 1},
    "extra-field": {"signers": [SIGNER_TEXT], "comment": "x"},
    "no-signers": {"min_generation": 1},
    "empty-signers": {"signers": []},
    "signers-string": {"signers": SIGNER_TEXT},
    "signers-null": {"signers": None},
    "signer-int": {"signers": [5]},
    "signer-bad-text": {"signers": [SIGNER_TEXT[:-3]]},
    "signer-secret": {"signers": [SIGNER.text()]},
    "signer-x25519": {"signers": ["st-x25519:" + "A" * 48]},
    "generation-bool": {"signers": [SIGNER_TEXT], "min_generation": True},
    "generation-float": {"signers": [SIGNER_TEXT], "min_generation": 1.0},
    "generation-negative": {"signers": [SIGNER_TEXT], "min_generation": -1},
    "generation-2**63": {"signers": [SIGNER_TEXT], "min_generation": 2**63},
    "generation-string": {"signers": [SIGNER_TEXT], "min_generation": "1"},
    "generation-null": {"signers": [SIGNER_TEXT], "min_generation": None},
    "file-id-upper": {"signers": [SIGNER_TEXT], "file_id": "AB" * 16},
    "file-id-short": {"signers": [SIGNER_TEXT], "file_id": "ab" * 15 + "a"},
    "file-id-long": {"signers": [SIGNER_TEXT], "file_id": "ab" * 17},
    "file-id-int": {"signers": [SIGNER_TEXT], "file_id": 5},
    "file-id-not-hex": {"signers": [SIGNER_TEXT], "file_id": "zz" * 16},
    "file-id-spaces": {"signers": [SIGNER_TEXT], "file_id": " " + "ab" * 16},
    "list": [SIGNER_TEXT],
    "string": SIGNER_TEXT,
    "null": None,
}


@pytest.mark.parametrize("document", list(BAD_PINS.values()), ids=list(BAD_PINS))
def test_malformed_pin_files(tmp_path, document):
    with pytest.raises(InvalidKeyError):
        read_pin_file(_pin(tmp_path, document))


@pytest.mark.parametrize("raw", [
    b"", b"{", b"\xff\xfe", b'{"signers": ["x"], "signers": ["y"]}', b'{"signers": NaN}',
    b"[" * 100_000, b" " * ((1 << 20) + 1),
], ids=["empty", "open", "not-utf8", "duplicate", "nan", "deep", "too-large"])
def test_pin_files_that_are_not_json_objects(tmp_path, raw):
    with pytest.raises(InvalidKeyError):
        read_pin_file(_pin(tmp_path, None, raw))


def test_missing_pin_file(tmp_path):
    with pytest.raises(InvalidKeyError, match="cannot read pin file"):
        read_pin_file(tmp_path / "absent.pin")
    with pytest.raises(InvalidKeyError):
        load(save({"w": np.zeros(1, np.float32)}, KEY), KEY, pin=tmp_path / "absent.pin")


def test_pin_requires_nothing_else_and_digest_table_covers_the_data(signed):
    statement = trailer.parse(trailer_of(signed)).statement
    data_length = sealcraft.header_of(signed).data_length
    chunks = chunked.chunk_count(chunked.plaintext_length(data_length))
    assert len(trailer_of(signed)) == trailer.FIXED_SIZE + 32 * chunks
    assert statement.data_length == data_length
