"""Hostile sealed files: crafted headers and crafted (but properly authenticated) indexes.

Every case must end in a typed sealtensors error (a :class:`SealError` subclass) and must not
allocate what a hostile length claims: the peak Python allocation while opening stays within a few
MiB (plus a small multiple of the file's real size). Files are built from the format's own pieces
(``container``, ``chunked``, through tests/sealcraft.py) so that the interesting cases get *past*
authentication: a header field is changed and the header MAC recomputed under the data key, or an
index is encrypted under the data key with the right context, so the test reaches the parser check
it is aimed at.

A sanity test proves the crafting helpers are faithful (an unmodified crafted file loads), so a
rejection below is the parser's doing and not a crafting mistake.
"""

from __future__ import annotations

import json
import secrets
import tracemalloc

import numpy as np
import pytest

import sealcraft
from sealcraft import header_of, layout, random_record, rebuild
from sealtensors import (
    CommitmentError,
    FormatError,
    IntegrityError,
    SealError,
    UnsupportedFormatError,
    WrongKeyError,
    safe_open,
)
from sealtensors.crypto import chunked
from sealtensors.format import container
from sealtensors import numpy as stnp
from sealtensors.format.index import ALIGNMENT, MAX_NAME_BYTES

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
MiB = 1 << 20
BASE_BUDGET = 4 * MiB


# --- crafting helpers ---------------------------------------------------------------------------


def craft(index_plaintext: bytes, data_plaintext: bytes = b"", *, key: bytes = KEY,
          data_key: bytes | None = None, file_id: bytes | None = None) -> bytes:
    """A complete, fully authenticated sealed file with exactly these index and data plaintexts."""
    return sealcraft.craft(index_plaintext, data_plaintext, (key,), data_key=data_key,
                           file_id=file_id)


def index_doc(tensors, metadata=None) -> bytes:
    return json.dumps({"metadata": metadata, "tensors": tensors},
                      separators=(",", ":")).encode("utf-8")


def entry(name="t", dtype="U8", shape=(4,), offsets=(0, 4)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "offsets": list(offsets)}


def with_slots(blob: bytes, total: int, **overrides) -> bytes:
    """Re-header ``blob`` with ``total`` slots (the real one first, then random symmetric fillers),
    MAC recomputed over what is stored; ``overrides`` go to sealcraft.assemble (e.g. a claimed
    ``count`` or ``table_length`` that disagrees with the records)."""
    header = header_of(blob)
    records = list(header.slots) + [random_record() for _ in range(total - 1)]
    return rebuild(blob, records=tuple(records),
                   capacity=container.capacity_for(124 * len(records)), **overrides)


# --- the oracle ---------------------------------------------------------------------------------


def _open_bytes(blob, keys):
    return stnp.load(blob, keys)


def _open_file(blob, keys, path):
    path.write_bytes(blob)
    return stnp.load_file(path, keys)


def _open_safe(blob, keys, path):
    path.write_bytes(blob)
    with safe_open(path, "np", key=keys) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


OPENERS = ["bytes", "file", "safe_open"]


def forget_traceback(error: BaseException) -> BaseException:
    """Drop the tracebacks of ``error`` and its chain so that no frame stays in a reference cycle.

    A kept exception whose traceback reaches the catching frame is a cycle; with the C engine those
    frames hold cffi buffers exported from memoryviews, and when the garbage collector breaks such a
    cycle CPython <= 3.12.6 could crash (see test_kept_engine_error_does_not_crash_the_collector);
    the tests here must not depend on the library getting that right everywhere.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    return error


def rejects(blob: bytes, expected=SealError, *, keys=KEY, how: str = "bytes", tmp_path=None,
            budget: int | None = None) -> SealError:
    """Open ``blob`` and require a typed error of class ``expected`` with a bounded peak allocation."""
    budget = BASE_BUDGET + 8 * len(blob) if budget is None else budget
    error = None
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        try:
            if how == "bytes":
                _open_bytes(blob, keys)
            elif how == "file":
                _open_file(blob, keys, tmp_path / "hostile.sealed")
            else:
                _open_safe(blob, keys, tmp_path / "hostile.sealed")
        except SealError as exc:
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if error is not None:
            forget_traceback(error)
    assert error is not None, "a hostile file was accepted"
    assert isinstance(error, expected), f"{type(error).__name__}: {error}"
    assert peak < budget, f"peak Python allocation {peak} bytes while rejecting (budget {budget})"
    return error


@pytest.fixture(scope="module")
def good() -> bytes:
    """A real small sealed file (two tensors, metadata) made by the library's writer."""
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": np.arange(5, dtype=np.int64)}
    return stnp.save(tensors, KEY, metadata={"who": "test"})


# --- the helpers themselves ---------------------------------------------------------------------


def test_crafted_file_loads():
    data = bytes(range(4)) + bytes(ALIGNMENT - 4) + bytes(range(8))
    blob = craft(index_doc([entry("x", "U8", [4], [0, 4]),
                            entry("y", "U8", [2, 4], [64, 72])], {"k": "v"}), data)
    out = stnp.load(blob, KEY)
    assert out["x"].tolist() == [0, 1, 2, 3]
    assert out["y"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_patch_helpers_keep_a_valid_file(good):
    assert rebuild(good) == good and rebuild(good, remac=False) == good
    assert set(stnp.load(with_slots(good, 1), KEY)) == {"a", "b"}
    assert set(stnp.load(with_slots(good, 3), KEY)) == {"a", "b"}
    assert set(stnp.load(rebuild(good, sequence=7), KEY)) == {"a", "b"}


# --- the file's outer shape ---------------------------------------------------------------------


@pytest.mark.parametrize("how", OPENERS)
@pytest.mark.parametrize("blob", [b"", b"S", b"SEALTEN", b"x" * 100, b"\x00" * 4096,
                                  b"SEALTENX" + bytes(200)], ids=repr)
def test_not_a_sealed_file(blob, how, tmp_path):
    rejects(blob, FormatError, how=how, tmp_path=tmp_path)


@pytest.mark.parametrize("cut", [8, 10, 12, 16, 17, 31])
def test_truncated_inside_the_preamble(good, cut):
    rejects(good[:cut], IntegrityError)


def test_truncated_inside_the_active_copy(good):
    where = layout(good)
    for cut in (32, 33, 100, where.table_start + 5, where.mac_start + 3, where.padding_start + 9,
                where.spare_start - 1):
        rejects(good[:cut], IntegrityError)


def test_truncated_inside_the_spare_copy(good):
    where = layout(good)
    for cut in (where.spare_start, where.spare_start + 100, where.region_end - 1):
        rejects(good[:cut], IntegrityError)


@pytest.mark.parametrize("how", OPENERS)
def test_truncated_and_extended_files(good, how, tmp_path):
    for blob in (good[:-1], good[:-17], good + b"\x00", good + bytes(16400)):
        rejects(blob, IntegrityError, how=how, tmp_path=tmp_path)


@pytest.mark.parametrize("version", [0, 1, 3, 0xFFFF])
def test_unknown_version(good, version):
    err = rejects(rebuild(good, version=version), UnsupportedFormatError)
    if version == 1:
        assert "0.1" in str(err)


@pytest.mark.parametrize("suite", [0, 2, 0xFFFF])
def test_unknown_suite(good, suite):
    rejects(rebuild(good, suite=suite), UnsupportedFormatError)


@pytest.mark.parametrize("fields", [
    dict(reserved0=b"\x01\x00\x00"), dict(reserved0=b"\xff" * 3),
    dict(reserved1=b"\x80" + bytes(11)), dict(reserved1=bytes(11) + b"\x01"),
    dict(active=2), dict(active=255),
    dict(capacity=4095), dict(capacity=12288 + 1), dict(capacity=0), dict(capacity=2**32 - 1),
], ids=repr)
@pytest.mark.parametrize("remac", [True, False])
def test_impossible_preamble_fields(good, fields, remac):
    err = rejects(rebuild(good, remac=remac, **fields), FormatError)
    assert not isinstance(err, UnsupportedFormatError)


def test_active_copy_byte_is_authenticated(good):
    """The file with copy 1 as the active copy (same header there, MAC for copy 1) loads; moving
    the copy without recomputing the MAC, or only flipping the byte, is refused."""
    assert set(stnp.load(rebuild(good, active=1), KEY)) == {"a", "b"}
    header_of(rebuild(good, active=1))
    rejects(rebuild(good, active=1, remac=False), IntegrityError)
    flipped = bytearray(good)
    flipped[container.ACTIVE_OFFSET] = 1
    rejects(bytes(flipped), FormatError)  # copy 1 of a new file is zero: slot count 0


# --- header lengths -----------------------------------------------------------------------------

HOSTILE_LENGTHS = [0, 1, 71, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("how", OPENERS)
@pytest.mark.parametrize("field", ["index_len", "data_len"])
@pytest.mark.parametrize("value", HOSTILE_LENGTHS)
def test_hostile_lengths(good, field, value, how, tmp_path):
    """Out of range or not a chunked-message length: FormatError before any cryptography, MAC or
    not. A possible length that disagrees with the file: IntegrityError (MAC, or file length)."""
    limit = container.MAX_INDEX_MESSAGE if field == "index_len" else container.MAX_DATA_MESSAGE
    rem = (value - chunked.HEADER_SIZE) % chunked.ENCRYPTED_CHUNK_SIZE
    possible = 72 <= value <= limit and 16 <= rem <= 16399
    for remac in (True, False):
        rejects(rebuild(good, remac=remac, **{field: value}),
                IntegrityError if possible else FormatError, how=how, tmp_path=tmp_path)


def _valid_length_near(n: int) -> int:
    """The smallest valid chunked-message length >= n (remainder in 16..16399)."""
    body = max(n - chunked.HEADER_SIZE, 16)
    full, rem = divmod(body, chunked.ENCRYPTED_CHUNK_SIZE)
    if rem < 16:
        rem = 16
    return chunked.HEADER_SIZE + full * chunked.ENCRYPTED_CHUNK_SIZE + rem


@pytest.mark.parametrize("how", OPENERS)
@pytest.mark.parametrize("field,value", [
    ("index_len", container.MAX_INDEX_MESSAGE),
    ("index_len", _valid_length_near(10 * MiB)),
    ("data_len", container.MAX_DATA_MESSAGE),
    ("data_len", _valid_length_near(2**50)),
    ("data_len", _valid_length_near(2**40)),
])
def test_valid_but_larger_than_the_file(good, field, value, how, tmp_path):
    """Plausible huge lengths with a correct MAC: the file length check refuses them, and nothing the
    size of the claim is allocated."""
    assert value != getattr(header_of(good), "index_length" if field == "index_len"
                            else "data_length")
    rejects(rebuild(good, **{field: value}), IntegrityError, how=how, tmp_path=tmp_path)


@pytest.mark.parametrize("field", ["index_len", "data_len"])
def test_swapped_lengths_without_mac(good, field):
    """An attacker without the key moves the index/data boundary: the header MAC catches it."""
    header = header_of(good)
    value = _valid_length_near((header.index_length if field == "index_len"
                                else header.data_length) + 16400)
    rejects(rebuild(good, remac=False, **{field: value}), IntegrityError)


@pytest.mark.parametrize("how", OPENERS)
def test_signature_trailer_claimed_by_an_unsigned_file(good, how, tmp_path):
    """A trailer length and digest under a valid MAC but no trailer bytes: the file length check
    refuses it; a wrong trailer length is a FormatError before any cryptography."""
    from sealtensors.format import trailer

    exact = trailer.trailer_length(header_of(good).data_length)
    rejects(rebuild(good, trailer_len=exact, trailer_digest=b"\x01" * 32), IntegrityError, how=how,
            tmp_path=tmp_path)
    for value in (1, exact - 1, exact + 32, 2**64 - 1):
        rejects(rebuild(good, trailer_len=value, trailer_digest=b"\x01" * 32), FormatError,
                how=how, tmp_path=tmp_path)
    rejects(rebuild(good, trailer_digest=b"\x01" * 32), FormatError, how=how, tmp_path=tmp_path)


# --- slot counts and the slot table -------------------------------------------------------------


@pytest.mark.parametrize("how", OPENERS)
@pytest.mark.parametrize("count", [0, 1025, 2**16, 2**31, 2**32 - 1])
def test_slot_count_out_of_range(good, count, how, tmp_path):
    for remac in (True, False):
        rejects(rebuild(good, remac=remac, count=count), FormatError, how=how, tmp_path=tmp_path)


@pytest.mark.parametrize("claimed", [2, 7, 1024])
def test_slot_count_larger_than_the_table(good, claimed):
    """More slots claimed than the table holds: the table ends inside a record (FormatError)."""
    for remac in (True, False):
        err = rejects(rebuild(good, remac=remac, count=claimed), FormatError)
        assert "ends inside" in str(err)


def test_slot_count_smaller_than_stored(good):
    err = rejects(with_slots(good, 3, count=2), FormatError)
    assert "length does not match" in str(err)


@pytest.mark.parametrize("delta", [-1, -20, 1, 32, 33, 500])
def test_slot_table_length_disagrees_with_the_records(good, delta):
    """The table length claims more or fewer bytes than the records hold (the MAC and padding are
    then read as slot bytes, or a record is cut): FormatError, MAC recomputed or not."""
    for remac in (True, False):
        rejects(rebuild(good, remac=remac, table_length=124 + delta), FormatError)


def test_slot_table_length_past_the_copy(good):
    capacity = header_of(good).capacity
    for value in (capacity - 88 - 32 + 1, capacity, 2**32 - 1):
        err = rejects(rebuild(good, table_length=value), FormatError)
        assert "does not fit" in str(err)


def test_max_slots_with_a_stranger_key_is_cheap(good):
    """1024 slots, none ours: WrongKeyError after one commitment check per slot, bounded memory."""
    blob = with_slots(good, container.MAX_SLOTS)
    assert set(stnp.load(blob, KEY)) == {"a", "b"}
    rejects(blob, WrongKeyError, keys=OTHER_KEY)
    rejects(blob, WrongKeyError, keys=[OTHER_KEY, bytes(32), bytes([7]) * 32])
    rejects(with_slots(good, 3, count=container.MAX_SLOTS + 1), FormatError)


def test_wrong_key_vs_altered_slot(good):
    rejects(good, WrongKeyError, keys=OTHER_KEY)
    where = layout(good)
    slot_at = where.table_start
    altered_id = bytearray(good)
    altered_id[slot_at + 4] ^= 1  # slot id: the commitment still matches under KEY
    err = rejects(bytes(altered_id), IntegrityError)
    assert not isinstance(err, CommitmentError) and "slot id" in str(err)
    altered_wrap = bytearray(good)
    altered_wrap[slot_at + 20 + 60] ^= 1  # inside the wrapped DEK's ciphertext
    rejects(bytes(altered_wrap), IntegrityError)
    altered_mac = bytearray(good)
    altered_mac[where.padding_start - 1] ^= 1
    err = rejects(bytes(altered_mac), IntegrityError)
    assert "header" in str(err)


def _authenticated_part(where) -> list[int]:
    """Every byte of the preamble and of the active copy up to its MAC's end, then the padding's
    first 64 bytes, every 61st padding byte and its last byte."""
    positions = list(range(where.padding_start + 64))
    copy_end = where.copy_start + where.header.capacity
    positions += list(range(where.padding_start + 64, copy_end, 61)) + [copy_end - 1]
    return positions


def test_every_header_byte_is_authenticated(good):
    """Flipping any single byte of the preamble and the active copy is a typed error; never a load.

    The file id is the one field whose alteration makes the key's slot unrecognisable rather than
    altered: the symmetric slot id and the slot's context are derived from it, so the reader
    reports WrongKeyError (FORMAT.md 9, notes). A flipped slot type byte names an unknown type
    (UnsupportedFormatError, 5.3). Every other byte is refused as malformed or altered."""
    where = layout(good)
    file_id = set(range(where.copy_start, where.copy_start + 16))
    for position in _authenticated_part(where):
        blob = bytearray(good)
        blob[position] ^= 0x80
        err = rejects(bytes(blob))
        if position in file_id:
            assert isinstance(err, WrongKeyError), repr(err)
        elif position == where.table_start:
            assert isinstance(err, UnsupportedFormatError), repr(err)
        else:
            assert not isinstance(err, WrongKeyError), f"flip at {position}: {err!r}"


@pytest.mark.engine_independent
def test_every_padding_byte_is_checked(good):
    """The zero padding after the MAC is part of the copy's format: every byte is checked (on one
    engine: parsing does not depend on it)."""
    where = layout(good)
    for position in range(where.padding_start, where.copy_start + where.header.capacity):
        blob = bytearray(good)
        blob[position] ^= 0x01
        with pytest.raises(FormatError, match="padding"):
            stnp.load(bytes(blob), KEY)


def _same_tensors(blob: bytes, expected: dict) -> None:
    out = stnp.load(blob, KEY)
    assert list(out) == list(expected)
    for name, array in expected.items():
        assert out[name].dtype == array.dtype and np.array_equal(out[name], array)


def test_spare_copy_bytes_change_nothing(good):
    """FORMAT.md 5.1: readers ignore the spare copy. Flipping any sample of its bytes, all of them
    at once, or filling it with noise or another valid header changes nothing the reader returns."""
    expected = stnp.load(good, KEY)
    with stnp_reader(good) as reader:
        metadata = reader.metadata()
    where = layout(good)
    capacity = where.header.capacity
    spare = range(where.spare_start, where.spare_start + capacity)
    sample = list(spare[:256]) + list(spare[256:-256:97]) + list(spare[-256:])
    for position in sample:
        blob = bytearray(good)
        blob[position] ^= 1 << (position % 8)
        _same_tensors(bytes(blob), expected)
    other = stnp.save({"z": np.zeros(3, np.uint8)}, KEY)
    other_copy = other[32:32 + capacity] if header_of(other).capacity == capacity else None
    fillers = [bytes(b ^ 0xFF for b in good[spare.start:spare.stop]), secrets.token_bytes(capacity),
               good[where.copy_start:where.copy_start + capacity]]
    if other_copy is not None:
        fillers.append(other_copy)  # a valid header of another file, same key
    for filler in fillers:
        blob = good[:spare.start] + filler + good[spare.stop:]
        _same_tensors(blob, expected)
        with stnp_reader(blob) as reader:
            assert reader.metadata() == metadata and reader.header == where.header


def stnp_reader(blob):
    from sealtensors.reader import SealedReader

    return SealedReader.from_bytes(blob, KEY)


def test_splicing_messages_between_files(good):
    """Same key, two files: neither index nor data message moves from one file into the other."""
    other = stnp.save({"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.int64)}, KEY,
                      metadata={"who": "test"})
    h1, h2 = header_of(good), header_of(other)
    assert (h1.index_length, h1.data_length, h1.region_size) \
        == (h2.index_length, h2.data_length, h2.region_size)
    spliced_index = good[:h1.index_offset] + other[h2.index_offset:h2.data_offset] \
        + good[h1.data_offset:]
    rejects(spliced_index, CommitmentError)
    spliced_data = good[:h1.data_offset] + other[h2.data_offset:]
    rejects(spliced_data, CommitmentError)
    spliced_header = other[:h2.region_size] + good[h1.region_size:]
    rejects(spliced_header, CommitmentError)
    spliced_copy = good[:32] + other[32:32 + h2.capacity] + good[32 + h1.capacity:]
    rejects(spliced_copy, CommitmentError)


# --- hostile index documents (authenticated: they reach the parser) ------------------------------


def _bad_index(document: bytes, data: bytes = b"") -> FormatError:
    return rejects(craft(document, data), FormatError)


@pytest.mark.parametrize("document", [
    b"\xff\xfe",
    b'{"metadata":null,"tensors":[]}\xff',
    b"\xc0\xaf",
    '{"metadata":{"k":"\udc80"},"tensors":[]}'.encode("utf-8", "surrogatepass"),
], ids=["ff-fe", "trailing-ff", "overlong", "encoded-surrogate"])
def test_index_not_utf8(document):
    _bad_index(document)


@pytest.mark.parametrize("document", [
    b"", b" ", b"{", b"[", b"null", b"[]", b"0", b'"x"', b"{}",
    b'{"metadata":null}', b'{"tensors":[]}',
    b'{"metadata":null,"tensors":[]}x',
    b'{"metadata":null,"tensors":[],}',
    b'{"metadata":null,"tensors":[],"extra":1}',
    b"\xef\xbb\xbf" + b'{"metadata":null,"tensors":[]}',
    b'{"metadata":NaN,"tensors":[]}',
    b'{"metadata":null,"tensors":[{"name":"t","dtype":"U8","shape":[Infinity],"offsets":[0,0]}]}',
    b'{"metadata":null,"tensors":{}}',
    b'{"metadata":null,"tensors":[[]]}',
    b'{"metadata":null,"tensors":[null]}',
    b'{"metadata":null,"tensors":"t"}',
], ids=repr)
def test_index_invalid_json_or_schema(document):
    _bad_index(document)


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")], ids=["array", "object"])
def test_index_deep_nesting(opener, closer):
    depth = 100_000
    for document in (
        opener * depth + closer * depth,
        b'{"metadata":' + opener * depth + b"1" + closer * depth + b',"tensors":[]}',
        b'{"metadata":null,"tensors":' + opener * depth + closer * depth + b"}",
        opener * depth,  # unterminated
    ):
        _bad_index(document)


@pytest.mark.parametrize("document", [
    b'{"metadata":null,"metadata":null,"tensors":[]}',
    b'{"metadata":{"k":"1","k":"2"},"tensors":[]}',
    b'{"metadata":null,"tensors":[{"name":"t","name":"u","dtype":"U8","shape":[],"offsets":[0,1]}]}',
    b'{"metadata":null,"tensors":[{"name":"t","dtype":"U8","shape":[1],"offsets":[0,1],'
    b'"x":{"a":1,"a":2}}]}',
], ids=["top", "metadata", "entry", "nested"])
def test_index_duplicate_keys(document):
    _bad_index(document, bytes(1))


def test_index_duplicate_tensor_names():
    document = index_doc([entry("t", "U8", [1], [0, 1]), entry("t", "U8", [1], [64, 65])])
    _bad_index(document, bytes(65))


@pytest.mark.parametrize("shape", [
    [-1], [2, -2], [1.0], [4.0], [True], [False, 1], [None], ["4"], [[4]], [{"d": 4}],
    [2**63], [2**64], [2**63 - 1, 2**63 - 1], [2, 2**63 - 1], [10**100],
    [1] * 65, 4, "4", None, {"0": 4},
], ids=repr)
def test_index_bad_shapes(shape):
    document = index_doc([{"name": "t", "dtype": "U8", "shape": shape, "offsets": [0, 4]}])
    _bad_index(document, bytes(4))


@pytest.mark.parametrize("literal", [b"1e2", b"4.0", b"4e0", b"-0.0", b"1" * 5000, b"-" + b"9" * 5000],
                         ids=["exp", "frac", "frac-exp", "neg-zero-float", "5000-digits",
                              "neg-5000-digits"])
def test_index_number_forms(literal):
    """Non-integer number forms and integers too long to convert are format errors."""
    document = (b'{"metadata":null,"tensors":[{"name":"t","dtype":"U8","shape":[' + literal
                + b'],"offsets":[0,4]}]}')
    _bad_index(document, bytes(4))


@pytest.mark.parametrize("shape", [[0, 2**63 - 1], [2**40, 2**40, 0], [0] + [2**62] * 2])
def test_index_zero_element_shape_with_huge_dims(shape):
    blob = craft(index_doc([entry("t", "F32", shape, [0, 0])]), b"")
    rejects(blob, FormatError)


@pytest.mark.parametrize("dtype", ["", "F128", "f32", "float32", "U4", "__proto__", "F32 ", 4, None,
                                   ["F32"]], ids=repr)
def test_index_unknown_dtypes(dtype):
    _bad_index(index_doc([entry("t", dtype, [1], [0, 4])]), bytes(4))


@pytest.mark.parametrize("tensors,data_length", [
    ([entry("t", "U8", [4], [1, 5])], 5),                               # does not start at 0
    ([entry("t", "U8", [4], [0, 4]), entry("u", "U8", [4], [4, 8])], 8),   # not aligned
    ([entry("t", "U8", [4], [0, 4]), entry("u", "U8", [4], [128, 132])], 132),  # gap
    ([entry("t", "U8", [100], [0, 100]), entry("u", "U8", [4], [64, 68])], 100),  # overlap
    ([entry("t", "U8", [4], [0, 4]), entry("u", "U8", [4], [0, 4])], 4),  # same bytes twice
    ([entry("t", "U8", [4], [0, 8])], 8),                               # end disagrees with shape
    ([entry("t", "U8", [4], [0, 2])], 4),                               # end short
    ([entry("t", "U8", [4], [4, 0])], 4),                               # reversed
    ([entry("t", "U8", [4], [-64, -60])], 4),                           # negative
    ([entry("t", "U8", [4], [0, 4])], 3),                               # past the end of the data
    ([entry("t", "F64", [2**20], [0, 2**23])], 8),                      # far past the end
    ([entry("t", "U8", [2, 2**62], [0, 2**63])], 64),                   # huge, past the end
    ([entry("t", "U8", [4], [0, 4])], 5),                               # trailing bytes
    ([entry("t", "U8", [4], [0, 4])], 64),                              # trailing padding
    ([], 1),                                                            # data but no tensors
    ([entry("t", "U8", [4], [0, 4, 8])], 4),                            # three offsets
    ([entry("t", "U8", [4], [0])], 4),                                  # one offset
    ([entry("t", "U8", [4], [0.0, 4.0])], 4),                           # float offsets
    ([entry("t", "U8", [4], [False, 4])], 4),                           # bool offset
    ([entry("t", "U8", [4], [0, 2**64 + 4])], 4),                       # overflowing offset
    ([entry("t", "U8", [4], ["0", "4"])], 4),                           # string offsets
], ids=lambda v: None if isinstance(v, list) else str(v))
def test_index_bad_offsets(tensors, data_length):
    for entry_ in tensors:  # offsets given as tuples above would serialize fine; keep lists
        entry_["offsets"] = list(entry_["offsets"])
    _bad_index(index_doc(tensors), bytes(data_length))


@pytest.mark.parametrize("name", ["", "__metadata__", "a" * (MAX_NAME_BYTES + 1), "x" * MiB,
                                  "é" * (MAX_NAME_BYTES // 2 + 1), 4, None, ["t"], {"t": 1}],
                         ids=lambda n: repr(n)[:20])
def test_index_bad_names(name):
    _bad_index(index_doc([entry(name, "U8", [4], [0, 4])]), bytes(4))


def test_index_lone_surrogate_name():
    document = b'{"metadata":null,"tensors":[{"name":"\\ud800","dtype":"U8","shape":[4],' \
               b'"offsets":[0,4]}]}'
    _bad_index(document, bytes(4))


def test_index_longest_name_is_accepted():
    name = "n" * MAX_NAME_BYTES
    out = stnp.load(craft(index_doc([entry(name, "U8", [4], [0, 4])]), bytes(4)), KEY)
    assert list(out) == [name]


@pytest.mark.parametrize("metadata", [[], "m", 1, True, [["k", "v"]], {"k": 1}, {"k": None},
                                      {"k": ["v"]}, {"k": {"v": "w"}}, {"k": 1.5}, {"k": True}],
                         ids=repr)
def test_index_non_string_metadata(metadata):
    _bad_index(index_doc([], metadata))


def test_index_metadata_lone_surrogate():
    _bad_index(b'{"metadata":{"\\udfff":"v"},"tensors":[]}')
    _bad_index(b'{"metadata":{"k":"\\ud800"},"tensors":[]}')


def test_index_many_tiny_entries_stay_bounded():
    """A large authenticated index is parsed in memory proportional to its size, no more."""
    tensors = [entry(f"t{i}", "U8", [0], [0, 0]) for i in range(20_000)]
    tensors.append(entry("t0", "U8", [0], [0, 0]))  # duplicate at the very end
    blob = craft(index_doc(tensors))
    # Python objects for 20000 parsed entries: about 16 bytes per index byte, nothing more.
    rejects(blob, FormatError, budget=BASE_BUDGET + 32 * len(blob))


@pytest.mark.parametrize("how", OPENERS)
def test_index_past_authentication_on_disk(how, tmp_path):
    """The same parser path through a mapped file and through safe_open."""
    document = index_doc([entry("t", "U8", [2, 2**63 - 1], [0, 4])])
    rejects(craft(document, bytes(4)), FormatError, how=how, tmp_path=tmp_path)


# --- the data message under a valid index ---------------------------------------------------------


def test_data_commitment_binds_the_index():
    """An index altered by someone holding the data key still cannot reuse the old data message."""
    data_key, file_id = secrets.token_bytes(32), secrets.token_bytes(16)
    first = craft(index_doc([entry("t", "U8", [4], [0, 4])]), b"abcd", data_key=data_key,
                  file_id=file_id)
    second = craft(index_doc([entry("u", "U8", [4], [0, 4])]), b"abcd", data_key=data_key,
                   file_id=file_id)
    h = header_of(first)
    rejects(second[:h.data_offset] + first[h.data_offset:], CommitmentError)


@pytest.mark.parametrize("how", OPENERS)
def test_tampered_tensor_chunk_never_returns_plaintext(how, tmp_path):
    data = bytes(range(256)) * 200  # 51200 bytes: four chunks
    blob = bytearray(craft(index_doc([entry("t", "U8", [len(data)], [0, len(data)])]), data))
    blob[-100] ^= 1  # inside the final chunk
    err = rejects(bytes(blob), IntegrityError, how=how, tmp_path=tmp_path)
    assert err.chunk_index == 3


# --- a kept engine error and the garbage collector --------------------------------------------------

_KEPT_ERROR_SCRIPT = r"""
import gc, secrets, json, sys
import numpy as np
from sealtensors import IntegrityError
from sealtensors.crypto import chunked
from sealtensors.format import container
from sealtensors import numpy as stnp

key = bytes(range(32))
blob = bytearray(stnp.save({"t": np.arange(20000, dtype=np.float32)}, key))
blob[-100] ^= 1
blob = bytes(blob)

def attempt():
    try:
        stnp.load(blob, key)
    except IntegrityError as exc:
        kept = exc  # ordinary code: the frame keeps its exception, a reference cycle
        return kept

for i in range(100):
    attempt()
    gc.collect()
    junk = [[] for _ in range(200)]
print("survived")
"""


def test_kept_engine_error_does_not_crash_the_collector(backend, tmp_path):
    """A tampered file's IntegrityError kept in a reference cycle (``except ... as e: keep = e``)
    must not crash the interpreter when the garbage collector breaks the cycle.

    Regression test: the C engine wrapper used to keep its ``ffi.from_buffer`` exports alive in the
    raising frames; CPython before 3.12.7 (gh-77894) then raised BufferError from ``gc.collect()``
    or segfaulted while clearing the memoryview. Fixed in 35b0ac5 (exports released before raising).
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    result = subprocess.run([sys.executable, "-c", _KEPT_ERROR_SCRIPT], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "survived" in result.stdout, \
        f"rc={result.returncode}\n{result.stderr[-2000:]}"
    assert "BufferError" not in result.stderr, result.stderr[-2000:]


# --- storage that changes under an open handle --------------------------------------------------------

_SHRINKING_FILE_SCRIPT = r"""
import os, sys
import numpy as np
from sealtensors import SealError, safe_open
from sealtensors import numpy as stnp

key = bytes(range(32))
path = sys.argv[1]
stnp.save_file({"w": np.zeros(200_000, np.float32)}, path, key)
with safe_open(path, "np", key=key) as handle:
    os.truncate(path, 4096)  # the storage shrinks the file after it was opened and authenticated
    try:
        handle.get_tensor("w")
        print("accepted")
    except (SealError, OSError) as exc:
        print("typed", type(exc).__name__)
"""


def test_file_truncated_under_an_open_handle_is_a_typed_error(backend, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    result = subprocess.run([sys.executable, "-c", _SHRINKING_FILE_SCRIPT,
                             str(tmp_path / "shrinking.sealed")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"process died: rc={result.returncode} {result.stderr[-500:]}"
    assert result.stdout.startswith("typed"), result.stdout
