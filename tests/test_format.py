"""The sealed file format: header layout, the hostile-input checks of the header and index parsers,
and limits tested with crafted headers (fake lengths, nothing huge allocated)."""

from __future__ import annotations

import json
import secrets
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from sealtensors.crypto import chunked
from sealtensors.format import container
from sealtensors.format import index
from sealtensors.format.dtypes import DTYPE_NAMES, item_size
from sealtensors.errors import FormatError, IntegrityError, UnsupportedFormatError
from sealtensors.keys.keyfile.keyfile import key_id
from sealtensors.numpy import load, save
from sealtensors.reader import SealedReader

KEY = bytes(range(32))
MIN_MESSAGE = chunked.HEADER_SIZE + chunked.TAG_SIZE  # an empty chunked message: 72 bytes


def fixed(*, magic=container.MAGIC, version=1, suite=1, reserved0=0, file_id=bytes(16),
          index_len=MIN_MESSAGE, data_len=MIN_MESSAGE, slots=1, reserved1=0) -> bytes:
    return struct.pack("<8sHHI16sQQII", magic, version, suite, reserved0, file_id, index_len,
                       data_len, slots, reserved1)


def craft_sealed(index_plaintext: bytes, data_plaintext: bytes = b"", keys=(KEY,), *,
                 data_key: bytes | None = None, file_id: bytes | None = None,
                 index_len: int | None = None, data_len: int | None = None) -> bytes:
    """A sealed file with a correct header MAC around an arbitrary index and data plaintext
    (the writer would refuse a malformed index; the reader must not trust it either). ``index_len``
    and ``data_len`` override the lengths the header claims."""
    data_key = data_key or secrets.token_bytes(32)
    file_id = file_id or secrets.token_bytes(16)
    index_message = chunked.encrypt(data_key, index_plaintext, container.index_context(file_id))
    data_message = chunked.encrypt(data_key, data_plaintext,
                                   container.data_context(file_id, index_plaintext))
    slots = [container.wrap_key(k, data_key, file_id) for k in keys]
    header = container.build(file_id, len(index_message) if index_len is None else index_len,
                             len(data_message) if data_len is None else data_len, slots, data_key)
    return header + index_message + data_message


def document(tensors, metadata=None) -> bytes:
    return json.dumps({"metadata": metadata, "tensors": tensors}).encode()


def entry(name="t", dtype="U8", shape=(4,), offsets=(0, 4)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "offsets": list(offsets)}


# --- layout ---------------------------------------------------------------------------------------


def test_header_layout_of_a_real_file():
    tensors = {"a": np.arange(10, dtype=np.float32), "b": np.ones((2, 3), dtype=np.uint8)}
    sealed = save(tensors, [KEY, bytes(32)], {"k": "v"})
    magic, version, suite, r0, file_id, index_len, data_len, slots, r1 = \
        struct.unpack_from("<8sHHI16sQQII", sealed)
    assert (magic, version, suite, r0, r1, slots) == (b"SEALTENS", 1, 1, 0, 0, 2)
    header_size = 56 + 120 * 2 + 32
    assert container.header_size(2) == header_size
    assert len(sealed) == header_size + index_len + data_len
    assert sealed[56:72] == key_id(KEY) and sealed[176:192] == key_id(bytes(32))
    assert container.WRAPPED_KEY_SIZE == 104 == chunked.ciphertext_length(32)
    header = container.parse(sealed)
    assert header.file_id == file_id and header.file_length == len(sealed)
    assert header.data_offset == header_size + index_len
    with SealedReader.from_bytes(sealed, KEY) as reader:
        assert reader.data_length == chunked.plaintext_length(data_len)
        assert [t.begin for t in reader.index.tensors] == [0, 64]
        assert reader.data_length == 64 + 6


def test_crafted_file_helper_round_trip():
    idx = index.layout([("x", "U8", (5,))], {"m": "n"})
    sealed = craft_sealed(index.serialize(idx), b"hello")
    assert load(sealed, KEY)["x"].tobytes() == b"hello"


# --- fixed header ---------------------------------------------------------------------------------


def test_parse_fixed_accepts_a_minimal_header():
    assert container.parse_fixed(fixed()) == (1, 1, bytes(16), MIN_MESSAGE, MIN_MESSAGE, 1)
    assert container.parse_fixed(fixed(slots=container.MAX_SLOTS))[5] == container.MAX_SLOTS
    big = container.MAX_DATA_MESSAGE
    assert container.parse_fixed(fixed(data_len=big))[4] == big
    assert container.parse_fixed(fixed(index_len=container.MAX_INDEX_MESSAGE))[3] \
        == container.MAX_INDEX_MESSAGE


@pytest.mark.parametrize("prefix", [b"", b"S", b"SEALTEN", b"SEALTENZ" + bytes(48),
                                    b"sealtens" + fixed()[8:], bytes(56), b"\x00" * 15,
                                    b"PK\x03\x04" + bytes(52), fixed()[1:] + b"\x00"])
def test_bad_magic(prefix):
    with pytest.raises(FormatError, match="magic") as info:
        container.parse_fixed(prefix)
    assert not isinstance(info.value, UnsupportedFormatError)


@pytest.mark.parametrize("length", [8, 9, 11, 12, 15])
def test_truncated_preamble_with_good_magic_is_truncation(length):
    with pytest.raises(IntegrityError, match="truncated"):
        container.parse_fixed(fixed()[:length])


@pytest.mark.parametrize("length", [10, 12, 16, 40])
def test_short_file_of_a_future_version_is_unsupported(length):
    future = bytearray(fixed())
    future[8:10] = (2).to_bytes(2, "little")
    with pytest.raises(UnsupportedFormatError):
        container.parse_fixed(bytes(future[:length]))


@pytest.mark.parametrize("length", [16, 17, 40, 55])
def test_truncated_inside_fixed_header(length):
    with pytest.raises(IntegrityError, match="truncated"):
        container.parse_fixed(fixed()[:length])


@pytest.mark.parametrize("fields", [dict(version=0), dict(version=2), dict(version=0xFFFF),
                                    dict(suite=0), dict(suite=2), dict(suite=0xFFFF),
                                    dict(version=2, suite=7)])
def test_unsupported_version_or_suite(fields):
    with pytest.raises(UnsupportedFormatError):
        container.parse_fixed(fixed(**fields))


WHOLE_CHUNK_NO_FINAL = chunked.HEADER_SIZE + chunked.ENCRYPTED_CHUNK_SIZE


@pytest.mark.parametrize("fields", [
    dict(reserved0=1), dict(reserved1=0x80000000),
    dict(slots=0), dict(slots=container.MAX_SLOTS + 1), dict(slots=2**32 - 1),
    dict(index_len=0), dict(index_len=MIN_MESSAGE - 1), dict(index_len=2**63),
    dict(index_len=2**64 - 1), dict(index_len=container.MAX_INDEX_MESSAGE + 1),
    dict(index_len=WHOLE_CHUNK_NO_FINAL), dict(index_len=MIN_MESSAGE + 5 * chunked.ENCRYPTED_CHUNK_SIZE - 3),
    dict(data_len=0), dict(data_len=MIN_MESSAGE - 1), dict(data_len=2**63), dict(data_len=2**64 - 1),
    dict(data_len=container.MAX_DATA_MESSAGE + 1), dict(data_len=WHOLE_CHUNK_NO_FINAL),
    dict(data_len=WHOLE_CHUNK_NO_FINAL + 15),
    dict(data_len=container.MAX_DATA_MESSAGE + chunked.ENCRYPTED_CHUNK_SIZE),
])
def test_impossible_fixed_fields(fields):
    with pytest.raises(FormatError) as info:
        container.parse_fixed(fixed(**fields))
    assert not isinstance(info.value, UnsupportedFormatError)


@given(st.binary(min_size=56, max_size=56))
def test_parse_fixed_random_bytes(prefix):
    """Random headers raise FormatError/IntegrityError (never struct.error or OverflowError)."""
    for candidate in (prefix, container.MAGIC + prefix[8:]):
        try:
            container.parse_fixed(candidate)
        except (FormatError, IntegrityError):
            pass


def test_header_truncated_inside_slots():
    header = fixed(slots=container.MAX_SLOTS)
    with pytest.raises(IntegrityError, match="truncated"):
        container.parse(header + bytes(1000))
    with pytest.raises(IntegrityError):
        SealedReader.from_bytes(header + bytes(1000), KEY)


@pytest.mark.parametrize("overrides", [
    dict(data_len=container.MAX_DATA_MESSAGE),
    dict(data_len=2 * MIN_MESSAGE - 16 + chunked.ENCRYPTED_CHUNK_SIZE),
    dict(index_len=container.MAX_INDEX_MESSAGE),
])
def test_authenticated_lengths_larger_than_the_file(overrides):
    """Lengths under a valid MAC that the file cannot hold: refused by size, nothing allocated."""
    idx = index.serialize(index.layout([]))
    sealed = craft_sealed(idx, b"", **overrides)
    with pytest.raises(IntegrityError, match="truncated or extended"):
        SealedReader.from_bytes(sealed, KEY)


# --- index ----------------------------------------------------------------------------------------


def test_index_round_trip():
    idx = index.layout([("a", "F32", (2, 3)), ("ü名", "BF16", ()), ("z", "U8", (0,))], {"k": "v"})
    parsed = index.parse(index.serialize(idx), idx.data_length)
    assert parsed == idx
    assert [(t.begin, t.end) for t in parsed.tensors] == [(0, 24), (64, 66), (128, 128)]


UNICODE = st.text(st.characters(exclude_categories=("Cs",)), max_size=5)


@given(st.lists(st.tuples(st.sampled_from(DTYPE_NAMES),
                          st.lists(st.integers(0, 5), max_size=4)), max_size=8),
       st.none() | st.dictionaries(UNICODE, UNICODE, max_size=3))
def test_index_round_trip_property(specs, metadata):
    idx = index.layout([(f"t{i}", d, s) for i, (d, s) in enumerate(specs)], metadata)
    assert index.parse(index.serialize(idx), idx.data_length) == idx
    for t in idx.tensors:
        assert t.begin % index.ALIGNMENT == 0
        assert t.nbytes == int(np.prod(t.shape, dtype=np.int64)) * item_size(t.dtype)


NOT_JSON = [
    (b"\xff\xfe", "UTF-8"),
    (b'{"metadata": null, "tensors": []', "JSON"),
    (b"", "JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nest"),
    (b'{"metadata": null, "metadata": null, "tensors": []}', "duplicate"),
    (b'{"metadata": null, "tensors": [{"name": "t", "name": "u", "dtype": "U8", "shape": [0],'
     b' "offsets": [0, 0]}]}', "duplicate"),
    (b'{"metadata": {"k": NaN}, "tensors": []}', "NaN"),
    (b'{"metadata": null, "tensors": [], "x": Infinity}', "Infinity"),
    (b'\xef\xbb\xbf{"metadata": null, "tensors": []}', "JSON"),  # a BOM is not JSON
    (b'{"metadata": {"k": "\\ud800"}, "tensors": []}', "Unicode"),  # lone surrogate
    (b'{"metadata": null, "tensors": [{"name": "\\udc00", "dtype": "U8", "shape": [0],'
     b' "offsets": [0, 0]}]}', "Unicode"),
]


@pytest.mark.parametrize("encoded, match", NOT_JSON)
def test_index_not_json(encoded, match):
    with pytest.raises(FormatError, match=match):
        index.parse(encoded, 0)


BAD_DOCUMENTS = [
    # top level
    ("top-list", b"[]", 0),
    ("top-null", b"null", 0),
    ("top-missing-metadata", b'{"tensors": []}', 0),
    ("top-extra-key", b'{"metadata": null, "tensors": [], "more": 1}', 0),
    ("tensors-not-list", b'{"metadata": null, "tensors": {}}', 0),
    # metadata
    ("metadata-list", document([], ["a"]), 0),
    ("metadata-int-value", document([], {"a": 1}), 0),
    ("metadata-null-value", document([], {"a": None}), 0),
    ("metadata-nested", document([], {"a": {"b": "c"}}), 0),
    ("metadata-string", document([], "meta"), 0),
    # entries
    ("entry-not-object", document([[1, 2]]), 4),
    ("entry-missing-key", document([{"name": "t", "dtype": "U8", "shape": [4]}]), 4),
    ("entry-extra-key", document([dict(entry(), extra=1)]), 4),
    # names
    ("name-empty", document([entry(name="")]), 4),
    ("name-int", document([entry(name=5)]), 4),
    ("name-null", document([entry(name=None)]), 4),
    ("name-reserved", document([entry(name="__metadata__")]), 4),
    ("name-too-long", document([entry(name="n" * 4097)]), 4),
    ("name-too-long-utf8", document([entry(name="é" * 2049)]), 4),
    ("name-duplicate", document([entry(), entry(offsets=(64, 68))]), 68),
    # dtypes
    ("dtype-unknown", document([entry(dtype="F128")]), 4),
    ("dtype-lowercase", document([entry(dtype="u8")]), 4),
    ("dtype-int", document([entry(dtype=1)]), 4),
    # shapes
    ("shape-negative", document([entry(shape=(-4,), offsets=(0, -4))]), 4),
    ("shape-float", document([entry(shape=(4.0,))]), 4),
    ("shape-bool", document([entry(shape=(True,), offsets=(0, 1))]), 1),
    ("shape-string", document([entry(shape=("4",))]), 4),
    ("shape-null", document([entry(shape=(None,))]), 4),
    ("shape-not-list", document([dict(entry(), shape=4)]), 4),
    ("shape-dim-2**63", document([entry(shape=(2**63,), offsets=(0, 2**63))]), 4),
    ("shape-dim-2**64", document([entry(shape=(2**64,), offsets=(0, 2**64))]), 4),
    ("shape-overflow-product", document([entry(shape=(2, 2**63 - 1), offsets=(0, 2**64 - 2))]), 4),
    ("shape-huge-product", document([entry(dtype="F64", shape=(2**62, 2**62),
                                           offsets=(0, 2**127))]), 4),
    ("shape-rank-65", document([entry(shape=(1,) * 65, offsets=(0, 1))]), 1),
    # offsets
    ("offsets-gap-first", document([entry(offsets=(64, 68))]), 68),
    ("offsets-gap-second", document([entry(), entry(name="u", offsets=(128, 132))]), 132),
    ("offsets-unaligned", document([entry(), entry(name="u", offsets=(4, 8))]), 8),
    ("offsets-overlap", document([entry(), entry(name="u", offsets=(0, 4))]), 4),
    ("offsets-reversed", document([entry(offsets=(4, 0))]), 4),
    ("offsets-too-short", document([entry(offsets=(0, 3))]), 4),
    ("offsets-too-long", document([entry(offsets=(0, 5))]), 5),
    ("offsets-past-end", document([entry()]), 3),
    ("offsets-trailing-data", document([entry()]), 5),
    ("offsets-trailing-no-tensors", document([]), 1),
    ("offsets-one", document([entry(offsets=(0,))]), 4),
    ("offsets-three", document([entry(offsets=(0, 4, 8))]), 4),
    ("offsets-float", document([entry(offsets=(0, 4.0))]), 4),
    ("offsets-bool", document([entry(shape=(1,), offsets=(False, True))]), 1),
    ("offsets-negative", document([entry(offsets=(-64, -60))]), 4),
    ("offsets-not-list", document([dict(entry(), offsets={"begin": 0, "end": 4})]), 4),
    ("offsets-huge", document([entry(shape=(2**62,), offsets=(0, 2**62))]), 2**62 - 1),
]


@pytest.mark.parametrize("encoded, data_length",
                         [pytest.param(e, n, id=name) for name, e, n in BAD_DOCUMENTS])
def test_index_hostile_documents(encoded, data_length):
    with pytest.raises(FormatError):
        index.parse(encoded, data_length)


def test_index_accepts_what_the_bad_ones_are_near():
    assert index.parse(document([entry()]), 4).tensors[0].nbytes == 4
    assert index.parse(document([entry(), entry(name="u", offsets=(64, 68))]), 68).data_length == 68
    assert index.parse(document([entry(name="é" * 2048)]), 4).tensors[0].name == "é" * 2048
    assert index.parse(document([entry(shape=(1,) * 64, offsets=(0, 1))]), 1).tensors[0].shape \
        == (1,) * 64
    assert index.parse(document([entry(shape=(0, 2**63 - 1), offsets=(0, 0))]), 0).tensors[0].shape \
        == (0, 2**63 - 1)
    assert index.parse(document([], {"a": "b"}), 0).metadata == {"a": "b"}
    assert index.parse(document([]), 0).tensors == ()


def test_index_size_limit_without_allocating():
    class Huge(bytes):
        def __len__(self):
            return index.MAX_INDEX_BYTES + 1

    with pytest.raises(FormatError, match="larger"):
        index.parse(Huge(b"{}"), 0)


READER_SAMPLE = {"top-list", "top-extra-key", "metadata-int-value", "name-reserved",
                 "dtype-unknown", "shape-bool", "shape-overflow-product", "offsets-gap-first",
                 "offsets-overlap", "offsets-trailing-data", "offsets-past-end"}


@pytest.mark.parametrize("name, encoded, data_length",
                         [pytest.param(*b, id=b[0]) for b in BAD_DOCUMENTS if b[0] in READER_SAMPLE]
                         + [pytest.param("not-json", b"{", 0, id="not-json"),
                            pytest.param("not-utf8", b"\xff", 0, id="not-utf8")])
def test_reader_rejects_authenticated_but_malformed_index(name, encoded, data_length):
    """The index is authenticated, yet the reader still parses it as hostile input."""
    assert name in READER_SAMPLE | {"not-json", "not-utf8"}
    sealed = craft_sealed(encoded, bytes(data_length))
    with pytest.raises(FormatError):
        SealedReader.from_bytes(sealed, KEY)


def test_layout_rejects_what_parse_rejects():
    with pytest.raises(FormatError):
        index.layout([("a", "U8", (1,)), ("a", "U8", (1,))])
    with pytest.raises(FormatError):
        index.layout([("a", "NOPE", (1,))])
    with pytest.raises(FormatError):
        index.layout([("a", "U8", (-1,))])
    with pytest.raises(FormatError):
        index.layout([("\ud800", "U8", (1,))])
    with pytest.raises(FormatError):
        index.layout([], {"k": "\udfff"})
