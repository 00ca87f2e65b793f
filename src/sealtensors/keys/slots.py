"""Key slots: the on-disk record of one recipient, and the Recipient / Identity interface every slot type implements.

A *recipient* can wrap a file's data key into a slot (it needs only public material, except for the
symmetric and passphrase types, which are their own secret); an *identity* can unwrap a slot it
owns. One module per slot type (symmetric, hpke, passphrase, provider_slot) implements both sides;
this module holds what they share: the record layout, the type codes and the lookup order.
"""

from __future__ import annotations

import abc
import struct
from dataclasses import dataclass, field

from ..errors import FormatError, UnsupportedFormatError

SLOT_ID_SIZE = 16
RECORD_HEADER = struct.Struct("<BBH16s")  # type, reserved, body length, slot id
assert RECORD_HEADER.size == 20

SYMMETRIC = 1
X25519 = 2
XWING = 3
PASSPHRASE = 4
PROVIDER = 0x80

TYPE_NAMES = {SYMMETRIC: "symmetric", X25519: "x25519", XWING: "xwing", PASSPHRASE: "passphrase",
              PROVIDER: "provider"}

# Exact body sizes of the fixed-size types; provider bodies are checked by provider_slot.
BODY_SIZES = {SYMMETRIC: 104, X25519: 32 + 48, XWING: 1120 + 48, PASSPHRASE: 4 + 16 + 104}
MAX_PASSPHRASE_SLOTS = 4


@dataclass(frozen=True)
class SlotRecord:
    """One key slot as stored: its type code, its per-file slot id and the type's body."""

    slot_type: int
    slot_id: bytes
    body: bytes = field(repr=False)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.slot_type, f"unknown-{self.slot_type}")

    def to_bytes(self) -> bytes:
        return RECORD_HEADER.pack(self.slot_type, 0, len(self.body), self.slot_id) + self.body


def parse_records(buffer: bytes, count: int) -> tuple[SlotRecord, ...]:
    """Split the slot table (exactly ``len(buffer)`` bytes) into ``count`` records; FormatError on
    any inconsistency (lengths, reserved byte, body size of a known type, duplicate slot ids)."""
    records, offset = [], 0
    for _ in range(count):
        if len(buffer) - offset < RECORD_HEADER.size:
            raise FormatError("key slot table ends inside a slot record")
        slot_type, reserved, body_length, slot_id = RECORD_HEADER.unpack_from(buffer, offset)
        offset += RECORD_HEADER.size
        if reserved:
            raise FormatError("a key slot's reserved byte is not zero")
        if slot_type not in TYPE_NAMES:
            raise UnsupportedFormatError(f"key slot type {slot_type} is not supported by this reader")
        if body_length > len(buffer) - offset:
            raise FormatError("a key slot's body runs past the slot table")
        expected = BODY_SIZES.get(slot_type)
        if expected is not None and body_length != expected:
            raise FormatError(f"a {TYPE_NAMES[slot_type]} key slot must have a {expected}-byte body, "
                              f"not {body_length}")
        records.append(SlotRecord(slot_type, bytes(slot_id), bytes(buffer[offset:offset + body_length])))
        offset += body_length
    if offset != len(buffer):
        raise FormatError("key slot table length does not match its slots")
    for record in records:
        _check_body(record)
    if len({record.slot_id for record in records}) != len(records):
        raise FormatError("two key slots carry the same slot id")
    if sum(record.slot_type == PASSPHRASE for record in records) > MAX_PASSPHRASE_SLOTS:
        raise FormatError(f"more than {MAX_PASSPHRASE_SLOTS} passphrase slots")
    return tuple(records)


def _check_body(record: SlotRecord) -> None:
    """Structural rules of the typed bodies that every reader applies (FORMAT.md 5.4, section 9
    step 7): reserved bytes, scrypt limits, provider name and payload sizes."""
    if record.slot_type == PASSPHRASE:
        from .passphrase import check_body

        check_body(record.body)
    elif record.slot_type == PROVIDER:
        from .provider_slot import split_body

        split_body(record.body)


class Recipient(abc.ABC):
    """Who a file is sealed for: wraps a data key into a slot bound to one file."""

    slot_type: int

    @abc.abstractmethod
    def wrap(self, data_key: bytes, file_id: bytes) -> SlotRecord:
        """A new slot holding ``data_key`` for this recipient, usable only in file ``file_id``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Public text for messages and listings (a recipient string or a key's public name)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()[:40]}>"


class Identity(abc.ABC):
    """What opens a file: the secret side of a recipient."""

    slot_types: tuple[int, ...] = ()

    def candidate_slot_ids(self, file_id: bytes) -> frozenset[bytes] | None:
        """The slot ids this identity would have in file ``file_id``; None when it cannot tell
        (every slot of its types must be tried)."""
        return None

    @abc.abstractmethod
    def unwrap(self, record: SlotRecord, file_id: bytes) -> bytes | None:
        """The data key from ``record``, or None when the slot is not this identity's. Raises
        IntegrityError when the slot is this identity's but was altered."""

    def opens_ignoring_id(self, record: SlotRecord, file_id: bytes) -> bool:
        """Whether this identity would open ``record`` if its slot id were right (used to tell an
        altered slot id from a stranger's key). Default: cannot tell."""
        return False

    @abc.abstractmethod
    def describe(self) -> str:
        """A public description (type and public name, never secret material)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()[:40]}>"
