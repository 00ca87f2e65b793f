"""The sealed file's outer layer, format v2: preamble, two header copies (one active), typed key slots, header MAC.

Layout (integers little-endian; docs/FORMAT.md is normative)::

    0        32       preamble: magic "SEALTENS", version 2, suite 1, active copy (0/1), capacity C
    32       C        header copy 0
    32+C     C        header copy 1
    32+2C    ..       index message, data message (C2SP chunked, under the data key)
    ..       ..       signature trailer (optional, format/trailer.py)

A header copy is: fixed fields (file id, sequence, message lengths, trailer length and digest, slot
count, slot table length), the slot records, the header MAC, zero padding to C. Readers use only the
active copy; the other one is spare room, so that an in-place rewrap writes a complete new copy and
then flips one byte (crash-safe, no data copied).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field, replace

from ..crypto import chunked
from ..crypto.hkdf import hkdf_expand
from ..errors import FormatError, IntegrityError, UnsupportedFormatError, WrongKeyError
from ..keys import slots as slot_types
from ..keys.slots import Identity, Recipient, SlotRecord
from .index import MAX_INDEX_BYTES

MAGIC = b"SEALTENS"
FORMAT_VERSION = 2
SUITE_CHUNKED_AES256GCM_HKDF_SHA512 = 1
SUPPORTED_SUITES = (SUITE_CHUNKED_AES256GCM_HKDF_SHA512,)
PREAMBLE = struct.Struct("<8sHHB3sI12s")
PREAMBLE_SIZE = PREAMBLE.size  # 32
ACTIVE_OFFSET = 12
COPY_FIXED = struct.Struct("<16sQQQQ32sII")
COPY_FIXED_SIZE = COPY_FIXED.size  # 88
MAC_SIZE = 32
FILE_ID_SIZE = 16
DATA_KEY_SIZE = 32
CAPACITY_UNIT = 4096
MIN_CAPACITY = 4096
MAX_CAPACITY = 16 << 20
MAX_SLOTS = 1024
MIN_MESSAGE = chunked.HEADER_SIZE + chunked.TAG_SIZE
MAX_INDEX_MESSAGE = chunked.ciphertext_length(MAX_INDEX_BYTES)
MAX_DATA_MESSAGE = chunked.ciphertext_length(chunked.MAX_CHUNKS * chunked.CHUNK_SIZE - 1)
HEADROOM = 8192  # spare bytes a new file's header copies keep for recipients added later

INDEX_CONTEXT = b"sealtensors/v2/index\x00"
DATA_CONTEXT = b"sealtensors/v2/data\x00"
MAC_KEY_INFO = b"sealtensors/v2/header-mac"
EMPTY_TRAILER_DIGEST = bytes(32)

assert PREAMBLE_SIZE == 32 and COPY_FIXED_SIZE == 88


@dataclass(frozen=True)
class Header:
    """The active header copy of a sealed file, parsed (not yet authenticated)."""

    version: int
    suite: int
    active: int
    capacity: int
    file_id: bytes
    sequence: int
    index_length: int
    data_length: int
    trailer_length: int
    trailer_digest: bytes
    slots: tuple[SlotRecord, ...]
    mac: bytes = field(repr=False)

    @property
    def region_size(self) -> int:
        return PREAMBLE_SIZE + 2 * self.capacity

    @property
    def copy_offset(self) -> int:
        return copy_offset(self.active, self.capacity)

    @property
    def index_offset(self) -> int:
        return self.region_size

    @property
    def data_offset(self) -> int:
        return self.region_size + self.index_length

    @property
    def trailer_offset(self) -> int:
        return self.data_offset + self.data_length

    @property
    def file_length(self) -> int:
        return self.trailer_offset + self.trailer_length

    # v0.1 name, used by readers that only need where the index starts
    @property
    def size(self) -> int:
        return self.region_size


def copy_offset(active: int, capacity: int) -> int:
    return PREAMBLE_SIZE + active * capacity


def mac_key(data_key: bytes) -> bytes:
    return hkdf_expand(data_key, MAC_KEY_INFO, 32, "sha512")


def index_context(file_id: bytes) -> bytes:
    return INDEX_CONTEXT + file_id


def data_context(file_id: bytes, index_plaintext: bytes) -> bytes:
    """The data message's context binds it to this file and to this exact index."""
    return DATA_CONTEXT + file_id + hashlib.sha512(index_plaintext).digest()


def capacity_for(table_length: int) -> int:
    """The copy capacity a new file gets: its header plus HEADROOM, in 4 KiB units."""
    needed = COPY_FIXED_SIZE + table_length + MAC_SIZE + HEADROOM
    return max(MIN_CAPACITY, -(-needed // CAPACITY_UNIT) * CAPACITY_UNIT)


def parse_preamble(prefix: bytes) -> tuple[int, int, int, int]:
    """Check the first 32 bytes; returns (version, suite, active copy, capacity)."""
    if len(prefix) < len(MAGIC) or prefix[:len(MAGIC)] != MAGIC:
        raise FormatError("not a sealtensors file (bad magic)")
    # Name the version and suite as soon as their bytes are there, so that a short file of
    # another format version reads as unsupported rather than as truncated.
    if len(prefix) >= 10:
        (version,) = struct.unpack_from("<H", prefix, 8)
        if version != FORMAT_VERSION:
            hint = " (written by sealtensors 0.1; reseal it from the original weights)" \
                if version == 1 else ""
            raise UnsupportedFormatError(f"sealed file format version {version} is not supported "
                                         f"(this build reads version {FORMAT_VERSION}){hint}")
    if len(prefix) >= 12:
        (suite,) = struct.unpack_from("<H", prefix, 10)
        if suite not in SUPPORTED_SUITES:
            raise UnsupportedFormatError(f"cipher suite {suite} is not supported")
    if len(prefix) < PREAMBLE_SIZE:
        raise IntegrityError("file truncated inside its preamble")
    _magic, version, suite, active, reserved0, capacity, reserved1 = PREAMBLE.unpack_from(prefix)
    if reserved0 != bytes(3) or reserved1 != bytes(12):
        raise FormatError("reserved preamble fields must be zero")
    if active not in (0, 1):
        raise FormatError(f"active header copy {active} is neither 0 nor 1")
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity % CAPACITY_UNIT:
        raise FormatError(f"header copy capacity {capacity} is not a multiple of {CAPACITY_UNIT} "
                          f"in {MIN_CAPACITY}..{MAX_CAPACITY}")
    return version, suite, active, capacity


def _check_lengths(index_len: int, data_len: int) -> None:
    if not MIN_MESSAGE <= index_len <= MAX_INDEX_MESSAGE:
        raise FormatError(f"index length {index_len} out of range")
    if not MIN_MESSAGE <= data_len <= MAX_DATA_MESSAGE:
        raise FormatError(f"data length {data_len} out of range")
    for length, what in ((index_len, "index"), (data_len, "data")):
        try:
            chunked.plaintext_length(length)
        except IntegrityError:
            raise FormatError(f"{what} length {length} is not a possible chunked message length") \
                from None


def parse(preamble: bytes, copy: bytes) -> Header:
    """Parse the preamble and the active copy (``copy`` is the copy's ``capacity`` bytes)."""
    version, suite, active, capacity = parse_preamble(preamble)
    if len(copy) < capacity:
        raise IntegrityError("file truncated inside its header")
    (file_id, sequence, index_len, data_len, trailer_len, trailer_digest, count,
     table_length) = COPY_FIXED.unpack_from(copy)
    if not 1 <= count <= MAX_SLOTS:
        raise FormatError(f"key slot count {count} outside 1..{MAX_SLOTS}")
    if table_length > capacity - COPY_FIXED_SIZE - MAC_SIZE:
        raise FormatError(f"key slot table length {table_length} does not fit the header copy")
    _check_lengths(index_len, data_len)
    from .trailer import check_trailer_length

    check_trailer_length(trailer_len, data_len)
    if trailer_len == 0 and trailer_digest != EMPTY_TRAILER_DIGEST:
        raise FormatError("an unsigned file's trailer digest must be zero")
    table_end = COPY_FIXED_SIZE + table_length
    records = slot_types.parse_records(bytes(copy[COPY_FIXED_SIZE:table_end]), count)
    mac = bytes(copy[table_end:table_end + MAC_SIZE])
    if any(copy[table_end + MAC_SIZE:capacity]):
        raise FormatError("the header copy's padding after the MAC is not zero")
    return Header(version, suite, active, capacity, bytes(file_id), sequence, index_len, data_len,
                  trailer_len, bytes(trailer_digest), records, mac)


def authenticated_bytes(header: Header) -> bytes:
    """The bytes the header MAC covers: the preamble as it reads with this copy active, then the
    copy's fixed fields and slot table."""
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, header.suite, header.active, bytes(3),
                             header.capacity, bytes(12))
    table = b"".join(record.to_bytes() for record in header.slots)
    fixed = COPY_FIXED.pack(header.file_id, header.sequence, header.index_length, header.data_length,
                            header.trailer_length, header.trailer_digest, len(header.slots),
                            len(table))
    return preamble + fixed + table


def build(header: Header, data_key: bytes) -> tuple[bytes, bytes]:
    """(preamble, copy of exactly ``capacity`` bytes) for ``header``, MAC computed under the data
    key. ValueError when the slots do not fit the capacity."""
    if not 1 <= len(header.slots) <= MAX_SLOTS:
        raise ValueError(f"a sealed file needs 1..{MAX_SLOTS} recipients")
    body = authenticated_bytes(header)
    mac = hmac.new(mac_key(data_key), body, hashlib.sha256).digest()
    copy = body[PREAMBLE_SIZE:] + mac
    if len(copy) > header.capacity:
        raise ValueError(f"the header needs {len(copy)} bytes, the copy capacity is {header.capacity}")
    return body[:PREAMBLE_SIZE], copy + bytes(header.capacity - len(copy))


def slot_table_length(records) -> int:
    """Bytes the slot records take in a header copy (record headers and bodies)."""
    return sum(slot_types.RECORD_HEADER.size + len(r.body) for r in records)


def new_header(file_id: bytes, index_len: int, data_len: int, trailer_len: int,
               trailer_digest: bytes, records: list[SlotRecord], capacity: int | None = None) -> Header:
    return Header(FORMAT_VERSION, SUITE_CHUNKED_AES256GCM_HKDF_SHA512, 0,
                  capacity or capacity_for(slot_table_length(records)), file_id, 0, index_len,
                  data_len, trailer_len, trailer_digest, tuple(records), b"")


def header_region(header: Header, data_key: bytes) -> bytes:
    """The whole header region of a new file: preamble, the active copy 0, a zeroed copy 1."""
    preamble, copy = build(replace(header, active=0), data_key)
    return preamble + copy + bytes(header.capacity)


def fits(header: Header) -> bool:
    return COPY_FIXED_SIZE + slot_table_length(header.slots) + MAC_SIZE <= header.capacity


@dataclass(frozen=True)
class Unlocked:
    """The result of opening a header: the data key and the slot that gave it."""

    data_key: bytes = field(repr=False)
    slot_index: int
    identity: Identity


def _ids_report(header: Header, identities: list[Identity]) -> str:
    present = ", ".join(f"{r.type_name} {r.slot_id.hex()}" for r in header.slots[:8])
    if len(header.slots) > 8:
        present += f", ... ({len(header.slots)} slots)"
    tried = []
    for identity in identities:
        ids = identity.candidate_slot_ids(header.file_id)
        kind = identity.describe().split(" ")[0]
        tried.append(f"{kind} " + ("/".join(i.hex() for i in sorted(ids)) if ids else "(any slot)"))
    return f"the file has slots [{present}]; tried [{', '.join(tried)}]"


def unlock(header: Header, identities: list[Identity]) -> Unlocked:
    """Find the data key with the first identity (in the caller's order) that owns a slot, then
    verify the header MAC. WrongKeyError when none does; IntegrityError when a slot that belongs
    to one of them, or the header, was altered."""
    found = None
    for identity in identities:
        wanted = identity.candidate_slot_ids(header.file_id)
        for position, record in enumerate(header.slots):
            if record.slot_type not in identity.slot_types:
                continue
            if wanted is not None and not any(hmac.compare_digest(record.slot_id, w) for w in wanted):
                continue
            data_key = identity.unwrap(record, header.file_id)
            if data_key is not None:
                found = Unlocked(data_key, position, identity)
                break
        if found is not None:
            break
    if found is None:
        # No slot id matched. If an identity still opens a slot, that slot's id was altered.
        for identity in identities:
            for record in header.slots:
                if identity.opens_ignoring_id(record, header.file_id):
                    raise IntegrityError("a key slot's slot id was altered")
        raise WrongKeyError("none of the given keys or identities can open this file: "
                            + _ids_report(header, identities))
    expected = hmac.new(mac_key(found.data_key), authenticated_bytes(header), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, header.mac):
        raise IntegrityError("header authentication failed (the header was altered)")
    return found


def with_slots(header: Header, records: list[SlotRecord]) -> Header:
    """The next version of ``header`` with another slot list, written to the other copy."""
    return replace(header, slots=tuple(records), active=1 - header.active,
                   sequence=header.sequence + 1)


def wrap_for(recipients: list[Recipient], data_key: bytes, file_id: bytes) -> list[SlotRecord]:
    records = [recipient.wrap(data_key, file_id) for recipient in recipients]
    if len({r.slot_id for r in records}) != len(records):
        raise ValueError("two recipients are the same")
    if sum(r.slot_type == slot_types.PASSPHRASE for r in records) > slot_types.MAX_PASSPHRASE_SLOTS:
        raise ValueError(f"at most {slot_types.MAX_PASSPHRASE_SLOTS} passphrase recipients per file")
    return records
