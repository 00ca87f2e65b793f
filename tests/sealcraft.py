"""Crafting sealed files of format v2 byte by byte, for tests that must reach checks behind the header MAC.

The pieces come from the format's own modules (``container``, ``chunked``, ``slots``) so that a
crafted file differs from a written one only where a test says so: ``assemble`` packs a header
region from explicit field values (any of them hostile: counts, lengths, reserved bytes) and
computes the header MAC under a known data key as FORMAT.md 5.5 says; ``rebuild`` takes a real file,
recovers its data key with a recipient key and re-packs its header with some fields changed; a
sanity test in every user proves an unchanged round trip still loads, so a rejection is the
reader's doing, not a crafting mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sealtensors.crypto import chunked
from sealtensors.format import container
from sealtensors.keys import slots as slot_types
from sealtensors.keys.keyfile import as_identities, as_recipients
from sealtensors.keys.slots import SlotRecord

KEY = bytes(range(32))
P = container.PREAMBLE_SIZE
FIXED = container.COPY_FIXED_SIZE
RECORD = slot_types.RECORD_HEADER.size


def table_bytes(records) -> bytes:
    return b"".join(record.to_bytes() for record in records)


def mac_over(data_key: bytes, preamble: bytes, fixed_and_table: bytes) -> bytes:
    return hmac.new(container.mac_key(data_key), preamble + fixed_and_table,
                    hashlib.sha256).digest()


def assemble(*, data_key: bytes, file_id: bytes, index_len: int, data_len: int, records=(),
             table: bytes | None = None, count: int | None = None, table_length: int | None = None,
             trailer_len: int = 0, trailer_digest: bytes = bytes(32), sequence: int = 0,
             version: int = container.FORMAT_VERSION, suite: int = 1, active: int = 0,
             capacity: int | None = None, reserved0: bytes = bytes(3), reserved1: bytes = bytes(12),
             mac: bytes | None = None, padding: bytes = b"", spare: bytes | None = None,
             magic: bytes = container.MAGIC) -> bytes:
    """A whole header region (preamble, copy 0, copy 1) from explicit values. The MAC covers what is
    stored, computed under ``data_key`` (FORMAT.md 5.5) unless ``mac`` is given. ``table``
    overrides the records' bytes, ``count`` / ``table_length`` the stored counts; ``padding``
    replaces the first bytes after the MAC; ``spare`` fills the other copy (default zeros)."""
    table = table_bytes(records) if table is None else table
    count = len(records) if count is None else count
    table_length = len(table) if table_length is None else table_length
    if capacity is None:
        capacity = container.capacity_for(len(table))
    preamble = container.PREAMBLE.pack(magic, version, suite, active, reserved0, capacity,
                                       reserved1)
    fixed = container.COPY_FIXED.pack(file_id, sequence, index_len, data_len, trailer_len,
                                      trailer_digest, count, table_length)
    body = fixed + table
    mac = mac_over(data_key, preamble, body) if mac is None else mac
    # A hostile capacity is only a number in the preamble: the copies get a sane size.
    size = capacity if container.MIN_CAPACITY <= capacity <= container.MAX_CAPACITY \
        else container.capacity_for(len(table))
    copy = body + mac + padding
    copy += bytes(max(0, size - len(copy)))
    spare = bytes(size) if spare is None else spare
    copies = (copy, spare) if active == 0 else (spare, copy)
    return preamble + copies[0] + copies[1]


def header_of(blob: bytes) -> container.Header:
    """The parsed active header of a well-formed file (not authenticated)."""
    _, _, active, capacity = container.parse_preamble(blob[:P])
    start = container.copy_offset(active, capacity)
    return container.parse(blob[:P], blob[start:start + capacity])


def data_key_of(blob: bytes, keys=KEY) -> bytes:
    return container.unlock(header_of(blob), as_identities(keys)).data_key


@dataclass(frozen=True)
class Layout:
    """Where the parts of a well-formed file are."""

    header: container.Header
    copy_start: int        # the active copy
    spare_start: int       # the other copy
    table_start: int
    mac_start: int
    padding_start: int     # zero padding after the MAC, to the end of the active copy
    region_end: int        # = index offset
    data_offset: int
    trailer_offset: int

    def record_starts(self) -> list[int]:
        starts, at = [], self.table_start
        for record in self.header.slots:
            starts.append(at)
            at += RECORD + len(record.body)
        return starts


def layout(blob: bytes) -> Layout:
    header = header_of(blob)
    copy_start = header.copy_offset
    spare_start = container.copy_offset(1 - header.active, header.capacity)
    table_start = copy_start + FIXED
    mac_start = table_start + sum(RECORD + len(r.body) for r in header.slots)
    return Layout(header, copy_start, spare_start, table_start, mac_start, mac_start + 32,
                  header.region_size, header.data_offset, header.trailer_offset)


def fields_of(header: container.Header, records=None) -> dict:
    """The keyword arguments of ``assemble`` that reproduce ``header``."""
    return dict(file_id=header.file_id, index_len=header.index_length,
                data_len=header.data_length, records=tuple(header.slots if records is None
                                                            else records),
                trailer_len=header.trailer_length, trailer_digest=header.trailer_digest,
                sequence=header.sequence, version=header.version, suite=header.suite,
                active=header.active, capacity=header.capacity)


def rebuild(blob: bytes, keys=KEY, *, remac: bool = True, data_key: bytes | None = None,
            **overrides) -> bytes:
    """``blob`` with its header region re-packed from its own fields and ``overrides`` (any keyword
    of ``assemble``). With ``remac`` the MAC is computed under the file's data key (what a holder of
    a recipient key can do); without it the original MAC is kept (what anyone can do)."""
    header = header_of(blob)
    if data_key is None:
        data_key = data_key_of(blob, keys)
    fields = fields_of(header)
    fields.update(overrides)
    if not remac and "mac" not in overrides:
        fields["mac"] = header.mac
    return assemble(data_key=data_key, **fields) + blob[header.region_size:]


def craft(index_plaintext: bytes, data_plaintext: bytes = b"", recipients=(KEY,), *,
          data_key: bytes | None = None, file_id: bytes | None = None, **header_overrides) -> bytes:
    """A fully authenticated sealed file around an arbitrary index and data plaintext (the writer
    would refuse a malformed index; the reader must not trust it either). ``header_overrides`` go
    to ``assemble`` (e.g. ``index_len`` / ``data_len`` claiming other lengths)."""
    data_key = data_key or secrets.token_bytes(32)
    file_id = file_id or secrets.token_bytes(16)
    index_message = chunked.encrypt(data_key, index_plaintext, container.index_context(file_id))
    data_message = chunked.encrypt(data_key, data_plaintext,
                                   container.data_context(file_id, index_plaintext))
    records = [r.wrap(data_key, file_id) for r in as_recipients(list(recipients))]
    fields = dict(data_key=data_key, file_id=file_id, index_len=len(index_message),
                  data_len=len(data_message), records=records)
    fields.update(header_overrides)
    return assemble(**fields) + index_message + data_message


def random_record(slot_type: int = slot_types.SYMMETRIC, body_length: int | None = None):
    """A filler slot of ``slot_type`` with a random id and a random body (opens nothing)."""
    if body_length is None:
        body_length = slot_types.BODY_SIZES.get(slot_type, 40)
    return SlotRecord(slot_type, secrets.token_bytes(16), secrets.token_bytes(body_length))
