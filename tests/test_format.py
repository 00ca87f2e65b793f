"""The sealed file format v2: header layout, the hostile-input checks of the preamble, header-copy
and index parsers, and limits tested with crafted headers (fake lengths, nothing huge allocated)."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest
from hypothesis import given, strategies as st

from sealcraft import assemble, craft, header_of, layout
from sealtensors.crypto import chunked
from sealtensors.format import container, trailer
from sealtensors.format import index
from sealtensors.format.dtypes import DTYPE_NAMES, is_packed, item_size, storage_shape
from sealtensors.errors import FormatError, IntegrityError, UnsupportedFormatError
from sealtensors.keys import slots as slot_types
from sealtensors.keys.keyfile import key_id
from sealtensors.keys.symmetric import SymmetricKey
from sealtensors.numpy import load, save
from sealtensors.reader import SealedReader

KEY = bytes(range(32))
MIN_MESSAGE = chunked.HEADER_SIZE + chunked.TAG_SIZE  # an empty chunked message: 72 bytes
P = container.PREAMBLE_SIZE
C = container.MIN_CAPACITY


def preamble(*, magic=container.MAGIC, version=2, suite=1, active=0, reserved0=bytes(3),
             capacity=C, reserved1=bytes(12)) -> bytes:
    return container.PREAMBLE.pack(magic, version, suite, active, reserved0, capacity, reserved1)


def one_record(slot_type=slot_types.SYMMETRIC, body_length=104):
    return slot_types.SlotRecord(slot_type, bytes(range(16)), bytes(body_length))


def copy(*, file_id=bytes(16), sequence=0, index_len=MIN_MESSAGE, data_len=MIN_MESSAGE,
         trailer_len=0, trailer_digest=bytes(32), count=1, table=None, table_length=None,
         mac=bytes(32), padding=b"", capacity=C) -> bytes:
    """One header copy with explicit fields (the parser does not check the MAC)."""
    table = one_record().to_bytes() if table is None else table
    table_length = len(table) if table_length is None else table_length
    raw = container.COPY_FIXED.pack(file_id, sequence, index_len, data_len, trailer_len,
                                    trailer_digest, count, table_length) + table + mac + padding
    return raw + bytes(max(0, capacity - len(raw)))


def parse(**fields) -> container.Header:
    pre = {k: fields.pop(k) for k in ("version", "suite", "active", "reserved0", "reserved1",
                                      "magic") if k in fields}
    capacity = fields.get("capacity", C)
    return container.parse(preamble(capacity=capacity, **pre), copy(**fields))


def document(tensors, metadata=None) -> bytes:
    return json.dumps({"metadata": metadata, "tensors": tensors}).encode()


def entry(name="t", dtype="U8", shape=(4,), offsets=(0, 4)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "offsets": list(offsets)}


# --- layout ---------------------------------------------------------------------------------------


def test_header_layout_of_a_real_file():
    tensors = {"a": np.arange(10, dtype=np.float32), "b": np.ones((2, 3), dtype=np.uint8)}
    sealed = save(tensors, [KEY, bytes(32)], {"k": "v"})
    magic, version, suite, active, r0, capacity, r1 = container.PREAMBLE.unpack_from(sealed)
    assert (magic, version, suite, active, r0, r1) == (b"SEALTENS", 2, 1, 0, bytes(3), bytes(12))
    table_length = 2 * (20 + 104)
    # FORMAT.md section 10 step 7: room for recipients added later, in 4 KiB units
    assert capacity == max(4096, -(-(88 + table_length + 32 + 8192) // 4096) * 4096) == 12288
    (file_id, sequence, index_len, data_len, trailer_len, trailer_digest, count,
     stored_table_length) = container.COPY_FIXED.unpack_from(sealed, P)
    assert (sequence, trailer_len, trailer_digest, count, stored_table_length) \
        == (0, 0, bytes(32), 2, table_length)
    region = P + 2 * capacity
    assert len(sealed) == region + index_len + data_len
    assert sealed[P + capacity:region] == bytes(capacity), "copy 1 of a new file is zero"
    records = sealed[P + 88:P + 88 + table_length]
    for number, key in enumerate((KEY, bytes(32))):
        record = records[number * 124:(number + 1) * 124]
        assert record[:4] == bytes([1, 0]) + (104).to_bytes(2, "little")
        assert record[4:20] == SymmetricKey(key).slot_id(file_id)
    # The key's public name is never stored: slot ids differ per file.
    assert key_id(KEY) not in sealed and key_id(bytes(32)) not in sealed
    mac_at = P + 88 + table_length
    assert not any(sealed[mac_at + 32:P + capacity]), "zero padding after the MAC"
    header = header_of(sealed)
    assert header.file_id == file_id and header.file_length == len(sealed)
    assert header.mac == sealed[mac_at:mac_at + 32]
    assert header.index_offset == region and header.data_offset == region + index_len
    assert container.capacity_for(table_length) == capacity
    with SealedReader.from_bytes(sealed, KEY) as reader:
        assert reader.data_length == chunked.plaintext_length(data_len)
        assert [t.begin for t in reader.index.tensors] == [0, 64]
        assert reader.data_length == 64 + 6


def test_slot_ids_differ_between_files_of_one_key():
    first, second = save({}, KEY), save({}, KEY)
    assert header_of(first).slots[0].slot_id != header_of(second).slots[0].slot_id


def test_crafted_file_helper_round_trip():
    idx = index.layout([("x", "U8", (5,))], {"m": "n"})
    sealed = craft(index.serialize(idx), b"hello")
    assert load(sealed, KEY)["x"].tobytes() == b"hello"
    assert layout(sealed).header.capacity == container.capacity_for(124)


# --- preamble -------------------------------------------------------------------------------------


def test_parse_preamble_accepts_minimal_and_maximal_capacity():
    assert container.parse_preamble(preamble()) == (2, 1, 0, C)
    assert container.parse_preamble(preamble(active=1, capacity=container.MAX_CAPACITY)) \
        == (2, 1, 1, container.MAX_CAPACITY)


@pytest.mark.parametrize("prefix", [b"", b"S", b"SEALTEN", b"SEALTENZ" + bytes(24),
                                    b"sealtens" + preamble()[8:], bytes(32), b"\x00" * 15,
                                    b"PK\x03\x04" + bytes(28), preamble()[1:] + b"\x00"])
def test_bad_magic(prefix):
    with pytest.raises(FormatError, match="magic") as info:
        container.parse_preamble(prefix)
    assert not isinstance(info.value, UnsupportedFormatError)


@pytest.mark.parametrize("length", [8, 9, 10, 11, 12, 13, 16, 20, 31])
def test_truncated_preamble_with_good_magic_is_truncation(length):
    with pytest.raises(IntegrityError, match="truncated"):
        container.parse_preamble(preamble()[:length])


@pytest.mark.parametrize("version", [1, 3, 0xFFFF])
@pytest.mark.parametrize("length", [10, 12, 16, 32])
def test_short_file_of_another_version_is_unsupported(version, length):
    with pytest.raises(UnsupportedFormatError) as info:
        container.parse_preamble(preamble(version=version)[:length])
    if version == 1:
        assert "reseal" in str(info.value)


@pytest.mark.parametrize("fields", [dict(version=0), dict(version=1), dict(version=3),
                                    dict(version=0xFFFF), dict(suite=0), dict(suite=2),
                                    dict(suite=0xFFFF), dict(version=3, suite=7)])
def test_unsupported_version_or_suite(fields):
    with pytest.raises(UnsupportedFormatError):
        container.parse_preamble(preamble(**fields))
    with pytest.raises(UnsupportedFormatError):
        container.parse(preamble(**fields), copy())


@pytest.mark.parametrize("fields", [
    dict(reserved0=b"\x01\x00\x00"), dict(reserved0=b"\x00\x00\x80"),
    dict(reserved1=b"\x00" * 11 + b"\x01"), dict(reserved1=b"\xff" * 12),
    dict(active=2), dict(active=0x80), dict(active=0xFF),
    dict(capacity=0), dict(capacity=1), dict(capacity=4095), dict(capacity=4097),
    dict(capacity=8191), dict(capacity=container.MAX_CAPACITY + 4096),
    dict(capacity=container.MAX_CAPACITY - 1), dict(capacity=2**31), dict(capacity=2**32 - 4096),
])
def test_impossible_preamble_fields(fields):
    with pytest.raises(FormatError) as info:
        container.parse_preamble(preamble(**fields))
    assert not isinstance(info.value, UnsupportedFormatError)


@given(st.binary(min_size=32, max_size=32))
def test_parse_preamble_random_bytes(prefix):
    """Random preambles raise FormatError/IntegrityError (never struct.error or OverflowError)."""
    for candidate in (prefix, container.MAGIC + prefix[8:],
                      container.MAGIC + b"\x02\x00\x01\x00" + prefix[12:]):
        try:
            container.parse_preamble(candidate)
        except (FormatError, IntegrityError):
            pass


# --- the active header copy -----------------------------------------------------------------------


def test_parse_accepts_a_minimal_header():
    header = parse()
    assert (header.version, header.suite, header.active, header.capacity) == (2, 1, 0, C)
    assert (header.index_length, header.data_length, header.trailer_length) \
        == (MIN_MESSAGE, MIN_MESSAGE, 0)
    assert header.region_size == P + 2 * C and header.file_length == P + 2 * C + 2 * MIN_MESSAGE
    big = container.MAX_DATA_MESSAGE
    assert parse(data_len=big).data_length == big
    assert parse(index_len=container.MAX_INDEX_MESSAGE).index_length == container.MAX_INDEX_MESSAGE
    signed = trailer.trailer_length(MIN_MESSAGE)
    assert parse(trailer_len=signed, trailer_digest=b"\x01" * 32).trailer_length == signed
    assert parse(active=1).copy_offset == P + C


def test_parse_accepts_the_most_slots():
    records = [slot_types.SlotRecord(1, i.to_bytes(16, "little"), bytes(104))
               for i in range(container.MAX_SLOTS)]
    table = b"".join(r.to_bytes() for r in records)
    capacity = container.capacity_for(len(table))
    header = container.parse(preamble(capacity=capacity),
                             copy(count=container.MAX_SLOTS, table=table, capacity=capacity))
    assert len(header.slots) == container.MAX_SLOTS


WHOLE_CHUNK_NO_FINAL = chunked.HEADER_SIZE + chunked.ENCRYPTED_CHUNK_SIZE
SIGNED_MIN = trailer.trailer_length(MIN_MESSAGE)


@pytest.mark.parametrize("fields", [
    dict(count=0), dict(count=container.MAX_SLOTS + 1), dict(count=2**32 - 1),
    dict(table_length=C - 88 - 32 + 1), dict(table_length=2**32 - 1),
    dict(index_len=0), dict(index_len=MIN_MESSAGE - 1), dict(index_len=2**63),
    dict(index_len=2**64 - 1), dict(index_len=container.MAX_INDEX_MESSAGE + 1),
    dict(index_len=WHOLE_CHUNK_NO_FINAL),
    dict(index_len=MIN_MESSAGE + 5 * chunked.ENCRYPTED_CHUNK_SIZE - 3),
    dict(data_len=0), dict(data_len=MIN_MESSAGE - 1), dict(data_len=2**63),
    dict(data_len=2**64 - 1),
    dict(data_len=container.MAX_DATA_MESSAGE + 1), dict(data_len=WHOLE_CHUNK_NO_FINAL),
    dict(data_len=WHOLE_CHUNK_NO_FINAL + 15),
    dict(data_len=container.MAX_DATA_MESSAGE + chunked.ENCRYPTED_CHUNK_SIZE),
    dict(trailer_len=1), dict(trailer_len=SIGNED_MIN - 1), dict(trailer_len=SIGNED_MIN + 32),
    dict(trailer_len=2**64 - 1), dict(trailer_len=trailer.FIXED_SIZE),
    dict(trailer_digest=b"\x00" * 31 + b"\x01"),
    dict(padding=b"\x01"), dict(padding=bytes(100) + b"\x80"),
])
def test_impossible_header_fields(fields):
    with pytest.raises(FormatError) as info:
        parse(**fields)
    assert not isinstance(info.value, UnsupportedFormatError)


def test_last_padding_byte_is_checked():
    raw = bytearray(copy())
    raw[-1] = 1
    with pytest.raises(FormatError, match="padding"):
        container.parse(preamble(), bytes(raw))


@given(st.binary(min_size=0, max_size=600))
def test_parse_random_copies(start):
    """Random header copies (random fields and table, then zeros) raise FormatError or parse;
    never struct.error, OverflowError or IndexError."""
    raw = start + bytes(C - len(start))
    for candidate in (raw, copy()[:88] + raw[88:], raw[:80] + b"\x01\x00\x00\x00" + raw[84:]):
        try:
            container.parse(preamble(), candidate)
        except (FormatError, IntegrityError):
            pass


@pytest.mark.parametrize("length", [0, 1, 87, 88, 200, C - 1])
def test_header_truncated_inside_the_active_copy(length):
    with pytest.raises(IntegrityError, match="truncated"):
        container.parse(preamble(), copy()[:length])


def test_file_truncated_inside_its_header_region():
    sealed = save({"a": np.arange(3, dtype=np.uint8)}, KEY)
    where = layout(sealed)
    for length in (P, P + 1, P + 88, where.mac_start, where.padding_start, where.spare_start - 1):
        with pytest.raises(IntegrityError, match="truncated"):
            SealedReader.from_bytes(sealed[:length], KEY)
    for length in (where.spare_start, where.region_end - 1, where.region_end):
        with pytest.raises(IntegrityError, match="truncated or extended"):
            SealedReader.from_bytes(sealed[:length], KEY)


@pytest.mark.parametrize("overrides", [
    dict(data_len=container.MAX_DATA_MESSAGE),
    dict(data_len=2 * MIN_MESSAGE - 16 + chunked.ENCRYPTED_CHUNK_SIZE),
    dict(index_len=container.MAX_INDEX_MESSAGE),
    dict(trailer_len=SIGNED_MIN, trailer_digest=bytes(range(32))),
])
def test_authenticated_lengths_larger_than_the_file(overrides):
    """Lengths under a valid MAC that the file cannot hold: refused by size, nothing allocated."""
    idx = index.serialize(index.layout([]))
    if "trailer_len" in overrides:
        overrides = dict(overrides, trailer_len=trailer.trailer_length(
            chunked.ciphertext_length(0)))
    sealed = craft(idx, b"", **overrides)
    with pytest.raises(IntegrityError, match="truncated or extended"):
        SealedReader.from_bytes(sealed, KEY)


def test_header_region_of_a_new_file_matches_build():
    data_key, file_id = secrets.token_bytes(32), secrets.token_bytes(16)
    records = [SymmetricKey(KEY).wrap(data_key, file_id)]
    header = container.new_header(file_id, MIN_MESSAGE, MIN_MESSAGE, 0, bytes(32), records)
    region = container.header_region(header, data_key)
    assert region == assemble(data_key=data_key, file_id=file_id, index_len=MIN_MESSAGE,
                              data_len=MIN_MESSAGE, records=records)


# --- index ----------------------------------------------------------------------------------------


def test_index_round_trip():
    idx = index.layout([("a", "F32", (2, 3)), ("ü名", "BF16", ()), ("z", "U8", (0,))], {"k": "v"})
    parsed = index.parse(index.serialize(idx), idx.data_length)
    assert parsed == idx
    assert [(t.begin, t.end) for t in parsed.tensors] == [(0, 24), (64, 66), (128, 128)]


UNICODE = st.text(st.characters(exclude_categories=("Cs",)), max_size=5)


def _valid_for(dtype: str, shape: list) -> bool:
    """Packed dtypes (F4) need a last dimension that fills whole bytes (FORMAT.md 8.3)."""
    return not is_packed(dtype) or (bool(shape) and shape[-1] % 2 == 0)


@given(st.lists(st.tuples(st.sampled_from(DTYPE_NAMES), st.lists(st.integers(0, 5), max_size=4))
                .filter(lambda spec: _valid_for(*spec)), max_size=8),
       st.none() | st.dictionaries(UNICODE, UNICODE, max_size=3))
def test_index_round_trip_property(specs, metadata):
    idx = index.layout([(f"t{i}", d, s) for i, (d, s) in enumerate(specs)], metadata)
    assert index.parse(index.serialize(idx), idx.data_length) == idx
    for t in idx.tensors:
        assert t.begin % index.ALIGNMENT == 0
        stored = storage_shape(t.dtype, t.shape)
        assert t.nbytes == int(np.prod(stored, dtype=np.int64)) * item_size(t.dtype)


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
    sealed = craft(encoded, bytes(data_length))
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
