"""Tampering with real sealed files: every modification must raise a SealError, never return.

Files: 0 tensors, 1 chunk, 3 chunks, ~20 chunks, and 2 recipients. Modifications: byte flips in every
region (every byte of the small files, a dense sample of the larger ones), truncation at every region
boundary and sampled offsets, appended bytes, swapped / duplicated / deleted data chunks, and splices
of the index, a key slot or the data from another file sealed with the same key.

The rule the library follows (``container.unlock``, FORMAT.md section 9): once a key's slot is found,
every later failure is an IntegrityError (a CommitmentError for a salt/commitment). An altered slot id
does not turn into WrongKeyError, because the key's commitment still matches the slot's wrapped key.
The one exception is the file id: every slot id and slot binding derives from it, so an altered file
id leaves the key no slot it recognises (WrongKeyError, FORMAT.md 9 notes). Preamble damage is a
FormatError (bad magic, reserved bits, active copy, capacity) or an UnsupportedFormatError (version,
suite); a slot record's type, reserved byte or body length is a FormatError; padding after the MAC
is a FormatError. The spare header copy is not read at all (FORMAT.md 5.1): flipping its bytes
changes nothing the reader returns.
"""

from __future__ import annotations

import functools
import hmac
import hashlib
import random
from dataclasses import dataclass

import numpy as np
import pytest

import sealcraft
from sealcraft import header_of, layout
from sealtensors.crypto import chunked
from sealtensors.format import container
from sealtensors.errors import (
    CommitmentError,
    FormatError,
    IntegrityError,
    SealError,
    UnsupportedFormatError,
    WrongKeyError,
)
from sealtensors.numpy import load, load_file, save
from sealtensors.reader import SealedReader

KEY_A = bytes(range(32))
KEY_B = bytes(range(64, 96))
ECS = chunked.ENCRYPTED_CHUNK_SIZE
CHUNK = chunked.CHUNK_SIZE


def _tensors(data_bytes: int) -> dict:
    """Tensors whose data section is about ``data_bytes`` long."""
    rng = np.random.default_rng(data_bytes)
    if data_bytes == 0:
        return {}
    return {
        "embed": rng.integers(0, 255, size=max(1, data_bytes - 200), dtype=np.uint8),
        "bias": rng.standard_normal(10).astype(np.float32),
        "scalar": np.array(3, dtype=np.int64),
    }


FILES = {
    # name: (data bytes, recipients)
    "empty": (0, (KEY_A,)),
    "one-chunk": (2000, (KEY_A,)),
    "three-chunks": (2 * CHUNK + 5000, (KEY_A,)),
    "twenty-chunks": (19 * CHUNK + 300, (KEY_A,)),
    "two-recipients": (1500, (KEY_A, KEY_B)),
}
SMALL = ("empty", "one-chunk", "two-recipients")  # every byte flipped in the default run


@dataclass(frozen=True)
class Sealed:
    name: str
    blob: bytes
    keys: tuple
    where: sealcraft.Layout
    index_offset: int
    data_offset: int
    chunks: int

    @property
    def header_size(self) -> int:
        return self.where.region_end

    @property
    def slot_count(self) -> int:
        return len(self.where.header.slots)

    @property
    def copy_end(self) -> int:
        return self.where.copy_start + self.where.header.capacity

    def spare(self) -> range:
        return range(self.where.spare_start, self.where.spare_start + self.where.header.capacity)

    def chunk_start(self, i: int) -> int:
        return self.data_offset + chunked.HEADER_SIZE + i * ECS

    def boundaries(self) -> list[int]:
        w = self.where
        marks = {0, 8, 10, 12, 13, 16, 20, 32, w.table_start, w.mac_start, w.padding_start,
                 w.spare_start, w.region_end, self.index_offset + chunked.HEADER_SIZE,
                 self.data_offset, self.data_offset + chunked.HEADER_SIZE, len(self.blob)}
        marks.update(w.copy_start + offset for offset in (16, 24, 32, 40, 48, 80, 84))
        for start in w.record_starts():
            marks.update({start, start + 1, start + 2, start + 4, start + 20,
                          start + 20 + chunked.HEADER_SIZE})
        for i in range(self.chunks):
            start = self.chunk_start(i)
            marks.update({start, min(start + ECS, len(self.blob)) - chunked.TAG_SIZE})
        return sorted(marks)


@functools.lru_cache(maxsize=None)
def sealed(name: str) -> Sealed:
    data_bytes, keys = FILES[name]
    blob = save(_tensors(data_bytes), list(keys), {"name": name})
    where = layout(blob)
    data_plain = chunked.plaintext_length(where.header.data_length)
    return Sealed(name, blob, keys, where, where.header.index_offset, where.header.data_offset,
                  chunked.chunk_count(data_plain))


UNCHANGED = ()  # expected_errors for bytes the reader ignores


def expected_errors(s: Sealed, position: int):
    """(acceptable exception types, expected chunk_index or None) for a flip at ``position``;
    ``UNCHANGED`` for the spare copy, whose bytes readers ignore."""
    w = s.where
    if position < 8:
        return (FormatError,), None  # magic
    if position < 12:
        return (UnsupportedFormatError,), None  # version, suite
    if position < 16 or 20 <= position < 32:
        return (FormatError,), None  # active copy byte, reserved
    if position < 20:
        # capacity: not a multiple of 4096 (FormatError), or another valid capacity that moves the
        # copy's end into the spare copy or the index (padding not zero, or the MAC)
        return (FormatError, IntegrityError), None
    if position in s.spare():
        return UNCHANGED, None
    if w.copy_start <= position < w.copy_start + 16:
        return (WrongKeyError,), None  # the file id: no slot is recognisable (FORMAT.md 9, notes)
    if position < w.table_start:
        # sequence, lengths, trailer fields, slot count, table length: refused by the parser or
        # by the MAC
        return (FormatError, IntegrityError), None
    if position < w.mac_start:
        offset = position - max(start for start in w.record_starts() if start <= position)
        if offset < 4:
            return (FormatError,), None  # type (unknown or wrong length), reserved, body length
        return (IntegrityError,), None  # slot id, wrapped key
    if position < w.padding_start:
        return (IntegrityError,), None  # the MAC
    if position < s.copy_end:
        return (FormatError,), None  # padding after the MAC
    if position < s.data_offset + chunked.HEADER_SIZE:
        return (IntegrityError,), None  # index message, data salt/commitment
    return (IntegrityError,), (position - s.data_offset - chunked.HEADER_SIZE) // ECS


def attempt(blob, key):
    """Open and fully read ``blob``; returns the exception raised (fails the test if none)."""
    try:
        load(blob, key)
    except SealError as exc:
        return exc
    pytest.fail("a modified file loaded without error")


@functools.lru_cache(maxsize=None)
def _pristine(name: str, key_index: int) -> dict:
    s = sealed(name)
    return load(s.blob, s.keys[key_index])


def check_flip(s: Sealed, position: int, key: bytes) -> None:
    tampered = bytearray(s.blob)
    tampered[position] ^= 1 << (position % 8)
    types, chunk_index = expected_errors(s, position)
    where = f"{s.name}: flip at {position}"
    if types == UNCHANGED:
        loaded = load(bytes(tampered), key)
        expected = _pristine(s.name, s.keys.index(key))
        assert list(loaded) == list(expected), where
        for name, array in expected.items():
            assert np.array_equal(loaded[name], array), where
        return
    exc = attempt(bytes(tampered), key)
    if WrongKeyError not in types:
        assert not isinstance(exc, WrongKeyError), f"{where}: {exc!r}"
    assert isinstance(exc, types), f"{where}: {exc!r}"
    # UnsupportedFormatError only for the version, the suite and a slot type byte (an unknown
    # type, FORMAT.md 5.3); any other malformed byte is a plain FormatError.
    if isinstance(exc, FormatError) and UnsupportedFormatError not in types \
            and position not in s.where.record_starts():
        assert not isinstance(exc, UnsupportedFormatError), where
    if chunk_index is not None:
        assert type(exc) is IntegrityError and exc.chunk_index == chunk_index, f"{where}: {exc!r}"
        assert_caller_buffer_wiped(bytes(tampered), key, chunk_index, where)
    elif isinstance(exc, IntegrityError) and position >= s.data_offset:
        assert isinstance(exc, CommitmentError), f"{where}: {exc!r}"  # data salt/commitment


def assert_caller_buffer_wiped(blob: bytes, key: bytes, chunk_index: int, where: str) -> None:
    """Decrypting a tampered data section into a caller's buffer leaves the buffer all zeros."""
    with SealedReader.from_bytes(blob, key) as reader:
        destination = np.full(reader.data_length, 0xA5, dtype=np.uint8)
        with pytest.raises(IntegrityError) as failure:
            reader.read_all_into(destination)
    assert failure.value.chunk_index == chunk_index, where
    assert not destination.any(), f"{where}: plaintext left in the caller's buffer"


def dense_sample(s: Sealed, stride: int, edge: int) -> list[int]:
    """Every byte outside chunk bodies, the padding after the MAC and the spare copy; of the
    padding and the spare copy the first and last ``edge`` bytes and every ``stride``-th byte; in
    each chunk body likewise; every tag byte."""
    positions = set(range(s.data_offset + chunked.HEADER_SIZE))
    sparse = [range(s.where.padding_start, s.copy_end), s.spare()]
    for region in sparse:
        positions.difference_update(region)
        positions.update(region[:edge], region[-edge:], region[::stride])
    for i in range(s.chunks):
        start = s.chunk_start(i)
        end = min(start + ECS, len(s.blob))
        body_end = end - chunked.TAG_SIZE
        positions.update(range(start, min(start + edge, body_end)))
        positions.update(range(max(start, body_end - edge), end))
        positions.update(range(start, body_end, stride))
    return sorted(positions)


def _recipient_params():
    return [pytest.param(name, key_index, id=f"{name}-key{key_index}")
            for name, (_, keys) in FILES.items() for key_index in range(len(keys))]


# Exhaustive sweeps: every file up to three chunks runs in CI's slow stage; the twenty-chunk file
# (~330 KB, hours on the Python engine) is `huge`, run by hand. The default run flips a dense
# sample of it (test_flip_dense_sample_large_files).
def _exhaustive(params, name_of):
    return [pytest.param(*p.values, id=p.id,
                         marks=[pytest.mark.huge] if name_of(p) == "twenty-chunks"
                         else [pytest.mark.slow])
            for p in params]


def test_pristine_files_load():
    for name in FILES:
        s = sealed(name)
        for key in s.keys:
            loaded = load(s.blob, key)
            assert list(loaded) == list(_tensors(FILES[name][0]))
    assert [sealed(n).chunks for n in FILES] == [1, 1, 3, 20, 1]
    assert sealed("two-recipients").slot_count == 2


@pytest.mark.parametrize("name, key_index",
                         [p for p in _recipient_params() if p.values[0] in SMALL])
def test_flip_every_byte_small_files(name, key_index):
    """Every byte of the preamble, the active copy up to its MAC, the messages and tags; of the
    copy's zero padding and the spare copy (about 24 KiB of a small file, each byte checked by
    test_flip_every_byte_of_every_file) the edges and every 61st byte."""
    s = sealed(name)
    positions = dense_sample(s, 61, 64)
    assert set(range(s.where.padding_start)) <= set(positions)
    for position in positions:
        check_flip(s, position, s.keys[key_index])


@pytest.mark.parametrize("name, stride, edge", [("three-chunks", 61, 48),
                                                ("twenty-chunks", 1009, 32)])
def test_flip_dense_sample_large_files(name, stride, edge):
    s = sealed(name)
    positions = dense_sample(s, stride, edge)
    assert len(positions) > 1000
    for position in positions:
        check_flip(s, position, KEY_A)


@pytest.mark.parametrize("name, key_index",
                         _exhaustive(_recipient_params(), lambda p: p.values[0]))
def test_flip_every_byte_of_every_file(name, key_index):
    s = sealed(name)
    for position in range(len(s.blob)):
        check_flip(s, position, s.keys[key_index])


@pytest.mark.parametrize("name, key_index", _recipient_params())
def test_truncation(name, key_index):
    s = sealed(name)
    rng = random.Random(name)
    cuts = set()
    for mark in s.boundaries():
        cuts.update(range(mark - 2, mark + 3))
    cuts.update(rng.randrange(len(s.blob)) for _ in range(60))
    cuts.update(range(0, 64))
    for length in sorted(c for c in cuts if 0 <= c < len(s.blob)):
        exc = attempt(s.blob[:length], s.keys[key_index])
        expected = FormatError if length < len(container.MAGIC) else IntegrityError
        assert isinstance(exc, expected), f"{name}: truncated to {length}: {exc!r}"


@pytest.mark.parametrize("name", _exhaustive([pytest.param(n, id=n) for n in FILES],
                                             lambda p: p.values[0]))
def test_every_truncation(name):
    s = sealed(name)
    for length in range(len(s.blob)):
        assert attempt(s.blob[:length], KEY_A) is not None


@pytest.mark.parametrize("name, key_index", _recipient_params())
def test_appended_data(name, key_index):
    s = sealed(name)
    last_chunk = s.blob[s.chunk_start(s.chunks - 1):]
    for suffix in (b"\x00", b"\xff" * 16, last_chunk, s.blob[s.chunk_start(0):s.chunk_start(0) + ECS],
                   bytes(ECS)):
        exc = attempt(s.blob + suffix, s.keys[key_index])
        assert type(exc) is IntegrityError, f"{name}: +{len(suffix)} bytes: {exc!r}"


def _chunks(s: Sealed) -> list[bytes]:
    return [s.blob[s.chunk_start(i):min(s.chunk_start(i) + ECS, len(s.blob))]
            for i in range(s.chunks)]


def _with_chunks(s: Sealed, chunks: list[bytes]) -> bytes:
    return s.blob[:s.chunk_start(0)] + b"".join(chunks)


@pytest.mark.parametrize("name", ["three-chunks", "twenty-chunks"])
def test_reordered_or_duplicated_chunks(name):
    s = sealed(name)
    chunks = _chunks(s)
    full = s.chunks - 1  # the last chunk is the short final one
    cases = []
    for i in range(full):
        for j in range(i + 1, full):
            swapped = list(chunks)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            cases.append((swapped, i))
            duplicated = list(chunks)
            duplicated[j] = chunks[i]
            cases.append((duplicated, j))
            if len(cases) > 40:
                break
    # The short final chunk swapped with the full one before it: same total length, but the chunk
    # boundaries no longer line up, so the first chunk read is already wrong.
    cases.append((chunks[:full - 1] + [chunks[-1], chunks[full - 1]], full - 1))
    for blob_chunks, lowest in cases:
        blob = _with_chunks(s, blob_chunks)
        assert len(blob) == len(s.blob)
        exc = attempt(blob, KEY_A)
        assert type(exc) is IntegrityError, repr(exc)
        assert exc.chunk_index == lowest


@pytest.mark.parametrize("name", ["three-chunks", "twenty-chunks", "two-recipients"])
def test_deleted_chunks(name):
    s = sealed(name)
    chunks = _chunks(s)
    for i in range(s.chunks):
        blob = _with_chunks(s, chunks[:i] + chunks[i + 1:])
        exc = attempt(blob, KEY_A)
        assert type(exc) is IntegrityError, f"chunk {i} deleted: {exc!r}"


def _data_key(s: Sealed, key: bytes) -> bytes:
    return sealcraft.data_key_of(s.blob, key)


@pytest.mark.parametrize("name", ["three-chunks", "twenty-chunks"])
def test_deleted_chunk_with_a_consistent_header(name):
    """Even a recipient who rewrites the header to match (correct lengths, valid MAC) cannot drop,
    reorder or cut chunks: each chunk's nonce fixes its position and the final chunk ends the data."""
    s = sealed(name)
    data_key = _data_key(s, KEY_A)
    chunks = _chunks(s)
    variants = {
        "drop-first": chunks[1:],
        "drop-middle": chunks[:1] + chunks[2:],
        "drop-final": chunks[:-1],
        "final-only": chunks[-1:],
        "swap": [chunks[1], chunks[0]] + chunks[2:],
    }
    for what, new_chunks in variants.items():
        data = s.blob[s.data_offset:s.chunk_start(0)] + b"".join(new_chunks)
        try:
            chunked.plaintext_length(len(data))
        except IntegrityError:
            continue  # no header can even claim this length
        blob = sealcraft.rebuild(s.blob[:s.data_offset] + data, data_key=data_key,
                                 data_len=len(data))
        exc = attempt(blob, KEY_A)
        # The index no longer fits the claimed data length (FormatError) or the chunks fail.
        assert isinstance(exc, (IntegrityError, FormatError)), f"{what}: {exc!r}"


@functools.lru_cache(maxsize=None)
def _twin(name: str) -> Sealed:
    """Another file with the same tensors, sealed with the same key(s): same sizes, fresh ids/keys."""
    data_bytes, keys = FILES[name]
    blob = save(_tensors(data_bytes), list(keys), {"name": name})
    twin = Sealed(**{**sealed(name).__dict__, "blob": blob})
    assert len(twin.blob) == len(sealed(name).blob) and twin.blob != sealed(name).blob
    return twin


@pytest.mark.parametrize("name, key_index", _recipient_params())
def test_splices_from_another_file(name, key_index):
    s, t = sealed(name), _twin(name)
    key = s.keys[key_index]
    regions = {
        "index": (s.index_offset, s.data_offset),
        "data": (s.data_offset, len(s.blob)),
        "data-header": (s.data_offset, s.data_offset + chunked.HEADER_SIZE),
        "first-chunk": (s.chunk_start(0), min(s.chunk_start(0) + ECS, len(s.blob))),
        "mac": (s.where.mac_start, s.where.padding_start),
        "header": (0, s.header_size),
        "active-copy": (s.where.copy_start, s.copy_end),
        "copy-without-mac": (s.where.copy_start, s.where.mac_start),
        "index-and-data": (s.index_offset, len(s.blob)),
    }
    for slot, start in enumerate(s.where.record_starts()):
        end = start + 20 + len(s.where.header.slots[slot].body)
        regions[f"slot{slot}"] = (start, end)
        regions[f"slot{slot}-id"] = (start + 4, start + 20)
        regions[f"slot{slot}-wrapped"] = (start + 20, end)
    for what, (begin, end) in regions.items():
        assert s.blob[begin:end] != t.blob[begin:end], what
        blob = s.blob[:begin] + t.blob[begin:end] + s.blob[end:]
        exc = attempt(blob, key)
        if what == f"slot{key_index}":
            # The key's own slot replaced by its slot in the other file: another slot id and
            # another file's binding, so the key recognises no slot (FORMAT.md 9 step 10).
            assert type(exc) is WrongKeyError, f"{name}: {what}: {exc!r}"
            continue
        assert type(exc) in (IntegrityError, CommitmentError), f"{name}: {what}: {exc!r}"
    # The other file's file id: no slot of this file is recognisable any more (FORMAT.md 9 notes).
    file_id = (s.where.copy_start, s.where.copy_start + 16)
    blob = s.blob[:file_id[0]] + t.blob[file_id[0]:file_id[1]] + s.blob[file_id[1]:]
    assert type(attempt(blob, key)) is WrongKeyError
    # The other file's spare copy (zeros, like ours) changes nothing; its whole header region
    # with our messages is refused.
    spare = s.spare()
    loaded = load(s.blob[:spare.start] + t.blob[spare.start:spare.stop] + s.blob[spare.stop:], key)
    assert list(loaded) == list(_pristine(name, key_index))


def test_slot_transplanted_between_files_with_the_mac_recomputed():
    """A slot copied from another file does not open this one, even under a recomputed MAC: the
    slot's context binds the file id."""
    s, t = sealed("two-recipients"), _twin("two-recipients")
    header, other = header_of(s.blob), header_of(t.blob)
    slots = (header.slots[0], other.slots[1])
    blob = sealcraft.rebuild(s.blob, KEY_A, records=slots)
    load(blob, KEY_A)  # the untouched slot still works
    # KEY_B's slot of the other file has that file's slot id and binding: nothing here is KEY_B's.
    exc = attempt(blob, KEY_B)
    assert type(exc) is WrongKeyError
    # Given the right slot id for this file, it is recognised and refused as altered.
    moved = sealcraft.SlotRecord(other.slots[1].slot_type, header.slots[1].slot_id,
                                 other.slots[1].body)
    exc = attempt(sealcraft.rebuild(s.blob, KEY_A, records=(header.slots[0], moved)), KEY_B)
    assert type(exc) is IntegrityError and "slot" in str(exc)


def test_slot_id_altered_is_integrity_not_wrong_key():
    s = sealed("one-chunk")
    start = s.where.table_start + 4
    for offset in (0, 7, 15):
        tampered = bytearray(s.blob)
        tampered[start + offset] ^= 0x40
        exc = attempt(bytes(tampered), KEY_A)
        assert type(exc) is IntegrityError and "slot id" in str(exc)
        # A key that never had a slot still gets WrongKeyError.
        with pytest.raises(WrongKeyError):
            load(bytes(tampered), bytes(32))


def test_reader_verify_and_ranges_fail_on_tampered_chunks():
    s = sealed("three-chunks")
    tampered = bytearray(s.blob)
    tampered[s.chunk_start(1) + 5] ^= 1
    with SealedReader.from_bytes(bytes(tampered), KEY_A) as reader:
        reader.read_range(0, 100)  # chunk 0 is intact
        with pytest.raises(IntegrityError) as info:
            reader.read_range(CHUNK + 10, CHUNK + 20)
        assert info.value.chunk_index == 1
        with pytest.raises(IntegrityError):
            reader.verify()
        dst = np.full(reader.data_length, 0xA5, dtype=np.uint8)
        with pytest.raises(IntegrityError):
            reader.read_all_into(dst)
        assert not dst.any()


def test_tampered_files_on_disk(tmp_path):
    """The file path (mmap + fd) reports the same as bytes, for a sample of modifications."""
    s = sealed("three-chunks")
    path = tmp_path / "model.sealed"
    for position in (3, 9, 12, 20, 60, s.where.table_start + 1, s.where.mac_start,
                     s.where.padding_start + 3, s.copy_end - 1, s.index_offset + 60,
                     s.data_offset + 3, s.chunk_start(0) + 100, s.chunk_start(2) + 1,
                     len(s.blob) - 1):
        tampered = bytearray(s.blob)
        tampered[position] ^= 0x10
        path.write_bytes(bytes(tampered))
        with pytest.raises(SealError) as info:
            load_file(path, KEY_A)
        types, _ = expected_errors(s, position)
        assert isinstance(info.value, types)
    for position in (s.where.spare_start, s.where.spare_start + 1000, s.header_size - 1):
        tampered = bytearray(s.blob)
        tampered[position] ^= 0x10
        path.write_bytes(bytes(tampered))
        assert load_file(path, KEY_A).keys() == _pristine("three-chunks", 0).keys()
    for length in (0, 10, 100, s.data_offset, len(s.blob) - 1):
        path.write_bytes(s.blob[:length])
        with pytest.raises(SealError):
            load_file(path, KEY_A)
    path.write_bytes(s.blob + b"\x00")
    with pytest.raises(IntegrityError):
        load_file(path, KEY_A)


def test_mac_covers_the_whole_header():
    """The MAC is HMAC-SHA-256 under a key derived from the DEK (HKDF-Expand-SHA-512, label
    "sealtensors/v2/header-mac") over the preamble and every active-copy byte before it."""
    s = sealed("two-recipients")
    data_key = _data_key(s, KEY_B)
    first_block = hmac.new(data_key, b"sealtensors/v2/header-mac\x01", hashlib.sha512).digest()
    assert container.mac_key(data_key) == first_block[:32]
    body = s.blob[:s.where.mac_start]
    assert hmac.new(first_block[:32], body, hashlib.sha256).digest() == \
        s.blob[s.where.mac_start:s.where.padding_start]
