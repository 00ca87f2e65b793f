"""The sealed file's outer layer, format v1: preamble, header with key slots, header MAC.

Layout (all integers little-endian; see docs/FORMAT.md for the normative description)::

    0    8   magic "SEALTENS"
    8    2   format version (1)
    10   2   cipher suite (1: C2SP chunked AES-256-GCM / HKDF-SHA-512, HMAC-SHA-256 header MAC)
    12   4   reserved, zero
    16   16  file id (random)
    32   8   index message length (bytes)
    40   8   data message length (bytes)
    48   4   key slot count n (1..MAX_SLOTS)
    52   4   reserved, zero
    56   120*n  key slots: key id (16) || wrapped data key (104: a chunked message of the 32-byte DEK)
    ..   32  header MAC: HMAC-SHA-256(mac key, every header byte before it)

followed by the index message and the data message, both C2SP chunked messages under the DEK.
"""

from __future__ import annotations

import hmac
import hashlib
import struct
from dataclasses import dataclass, field

from ..crypto import chunked
from ..crypto.hkdf import hkdf_expand
from ..errors import CommitmentError, FormatError, IntegrityError, UnsupportedFormatError, WrongKeyError
from .index import MAX_INDEX_BYTES
from ..keys.keyfile import KEY_ID_SIZE, KEY_SIZE, key_id

MAGIC = b"SEALTENS"
FORMAT_VERSION = 1
SUITE_CHUNKED_AES256GCM_HKDF_SHA512 = 1
SUPPORTED_SUITES = (SUITE_CHUNKED_AES256GCM_HKDF_SHA512,)
PREAMBLE_SIZE = 16
FIXED_HEADER_SIZE = 56
MAC_SIZE = 32
WRAPPED_KEY_SIZE = chunked.ciphertext_length(KEY_SIZE)  # 104
SLOT_SIZE = KEY_ID_SIZE + WRAPPED_KEY_SIZE  # 120
MAX_SLOTS = 1024
MAX_INDEX_MESSAGE = chunked.ciphertext_length(MAX_INDEX_BYTES)
MAX_DATA_MESSAGE = chunked.ciphertext_length(chunked.MAX_CHUNKS * chunked.CHUNK_SIZE - 1)

_FIXED = struct.Struct("<8sHHI16sQQII")
assert _FIXED.size == FIXED_HEADER_SIZE

SLOT_CONTEXT = b"sealtensors/v1/key-slot\x00"
INDEX_CONTEXT = b"sealtensors/v1/index\x00"
DATA_CONTEXT = b"sealtensors/v1/data\x00"
MAC_KEY_INFO = b"sealtensors/v1/header-mac"


@dataclass(frozen=True)
class Slot:
    key_id: bytes
    wrapped_key: bytes = field(repr=False)


@dataclass(frozen=True)
class Header:
    version: int
    suite: int
    file_id: bytes
    index_length: int
    data_length: int
    slots: tuple[Slot, ...]
    mac: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return header_size(len(self.slots))

    @property
    def index_offset(self) -> int:
        return self.size

    @property
    def data_offset(self) -> int:
        return self.size + self.index_length

    @property
    def file_length(self) -> int:
        return self.size + self.index_length + self.data_length


def header_size(slot_count: int) -> int:
    return FIXED_HEADER_SIZE + SLOT_SIZE * slot_count + MAC_SIZE


def mac_key(data_key: bytes) -> bytes:
    return hkdf_expand(data_key, MAC_KEY_INFO, 32, "sha512")


def index_context(file_id: bytes) -> bytes:
    return INDEX_CONTEXT + file_id


def data_context(file_id: bytes, index_plaintext: bytes) -> bytes:
    """The data message's context binds it to this file and to this exact index."""
    return DATA_CONTEXT + file_id + hashlib.sha512(index_plaintext).digest()


def parse_fixed(prefix: bytes) -> tuple[int, int, bytes, int, int, int]:
    """Validate the first 56 bytes; returns (version, suite, file id, index len, data len, slots)."""
    if len(prefix) < len(MAGIC) or prefix[:len(MAGIC)] != MAGIC:
        raise FormatError("not a sealtensors file (bad magic)")
    # Name the version and suite as soon as their bytes are there, so that a short file of a
    # future format reads as unsupported rather than as truncated.
    if len(prefix) >= 10:
        (version,) = struct.unpack_from("<H", prefix, 8)
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(f"sealed file format version {version} is not supported "
                                         f"(this build reads version {FORMAT_VERSION})")
    if len(prefix) >= 12:
        (suite,) = struct.unpack_from("<H", prefix, 10)
        if suite not in SUPPORTED_SUITES:
            raise UnsupportedFormatError(f"cipher suite {suite} is not supported")
    if len(prefix) < FIXED_HEADER_SIZE:
        raise IntegrityError("file truncated inside its header")
    magic, version, suite, reserved0, file_id, index_len, data_len, slots, reserved1 = \
        _FIXED.unpack_from(prefix)
    if reserved0 or reserved1:
        raise FormatError("reserved header fields must be zero")
    if not 1 <= slots <= MAX_SLOTS:
        raise FormatError(f"key slot count {slots} outside 1..{MAX_SLOTS}")
    if not chunked.HEADER_SIZE + chunked.TAG_SIZE <= index_len <= MAX_INDEX_MESSAGE:
        raise FormatError(f"index length {index_len} out of range")
    if not chunked.HEADER_SIZE + chunked.TAG_SIZE <= data_len <= MAX_DATA_MESSAGE:
        raise FormatError(f"data length {data_len} out of range")
    for length, what in ((index_len, "index"), (data_len, "data")):
        try:
            chunked.plaintext_length(length)
        except IntegrityError:
            raise FormatError(f"{what} length {length} is not a possible chunked message length") \
                from None
    return version, suite, file_id, index_len, data_len, slots


def parse(buffer: bytes) -> Header:
    """Parse a complete header (``buffer`` holds at least ``header_size(n)`` bytes)."""
    version, suite, file_id, index_len, data_len, count = parse_fixed(buffer[:FIXED_HEADER_SIZE])
    size = header_size(count)
    if len(buffer) < size:
        raise IntegrityError("file truncated inside its header")
    slots = []
    for i in range(count):
        start = FIXED_HEADER_SIZE + i * SLOT_SIZE
        raw = bytes(buffer[start:start + SLOT_SIZE])
        slots.append(Slot(raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:]))
    if len({slot.key_id for slot in slots}) != len(slots):
        raise FormatError("two key slots carry the same key id")
    mac = bytes(buffer[size - MAC_SIZE:size])
    return Header(version, suite, file_id, index_len, data_len, tuple(slots), mac)


def _authenticated_bytes(file_id: bytes, index_len: int, data_len: int, slots) -> bytes:
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, SUITE_CHUNKED_AES256GCM_HKDF_SHA512, 0, file_id,
                        index_len, data_len, len(slots), 0)
    return fixed + b"".join(slot.key_id + slot.wrapped_key for slot in slots)


def wrap_key(recipient_key: bytes, data_key: bytes, file_id: bytes) -> Slot:
    wrapped = chunked.encrypt(recipient_key, data_key, SLOT_CONTEXT + file_id)
    return Slot(key_id(recipient_key), wrapped)


def build(file_id: bytes, index_len: int, data_len: int, slots, data_key: bytes) -> bytes:
    """Serialize a header for ``slots`` and authenticate it under the data key."""
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise ValueError(f"a sealed file needs 1..{MAX_SLOTS} recipients")
    body = _authenticated_bytes(file_id, index_len, data_len, slots)
    return body + hmac.new(mac_key(data_key), body, hashlib.sha256).digest()


def unlock(header: Header, header_bytes: bytes, keys: list[bytes]) -> bytes:
    """Find the data key with any of ``keys`` and verify the header MAC; returns the DEK.

    WrongKeyError when none of the keys has a slot; IntegrityError when a key's slot (or the header)
    was altered.
    """
    context = SLOT_CONTEXT + header.file_id
    data_key = None
    for key in keys:
        wanted = key_id(key)
        for slot in header.slots:
            if hmac.compare_digest(slot.key_id, wanted):
                try:
                    data_key = chunked.decrypt(key, slot.wrapped_key, context)
                except IntegrityError:
                    raise IntegrityError("a key slot for this key was altered") from None
                break
        if data_key is not None:
            break
    if data_key is None:
        # No key id matched. If a key's commitment still matches a slot, its id was tampered with.
        for key in keys:
            for slot in header.slots:
                try:
                    chunked.open_message(key, slot.wrapped_key, context)
                except CommitmentError:
                    continue
                raise IntegrityError("a key slot's key id was altered")
        raise WrongKeyError("none of the given keys can open this file")
    expected = hmac.new(mac_key(data_key), header_bytes[:header.size - MAC_SIZE],
                        hashlib.sha256).digest()
    if not hmac.compare_digest(expected, header.mac):
        raise IntegrityError("header authentication failed (the header was altered)")
    return data_key


def rebuild_with_slots(header: Header, data_key: bytes, recipient_keys: list[bytes],
                       keep: list[Slot]) -> bytes:
    """A new header for the same data: kept slots plus fresh slots for ``recipient_keys``."""
    slots = list(keep)
    present = {slot.key_id for slot in slots}
    for key in recipient_keys:
        slot = wrap_key(key, data_key, header.file_id)
        if slot.key_id not in present:
            slots.append(slot)
            present.add(slot.key_id)
    return build(header.file_id, header.index_length, header.data_length, slots, data_key)
