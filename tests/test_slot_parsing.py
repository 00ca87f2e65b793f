"""The key slot table parser (keys.slots.parse_records) and the typed bodies it checks, on crafted input:
truncated records, reserved bytes, body lengths, duplicate ids, passphrase parameters (refused fast,
before scrypt), provider bodies; each also through a whole file whose header MAC is valid."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sealcraft
from sealtensors.errors import FormatError, IntegrityError, UnsupportedFormatError, WrongKeyError
from sealtensors.keys import passphrase as passphrase_slot
from sealtensors.keys import slots
from sealtensors.keys.passphrase import Passphrase
from sealtensors.keys.provider import MAX_NAME_BYTES, MAX_PAYLOAD_BYTES
from sealtensors.keys.slots import SlotRecord, parse_records
from sealtensors.numpy import load, save

KEY = sealcraft.KEY


def record(slot_type=slots.SYMMETRIC, body=None, slot_id=None, reserved=0, body_length=None):
    body = bytes(slots.BODY_SIZES.get(slot_type, 40)) if body is None else body
    slot_id = bytes(range(16)) if slot_id is None else slot_id
    length = len(body) if body_length is None else body_length
    return slots.RECORD_HEADER.pack(slot_type, reserved, length, slot_id) + body


def passphrase_body(log2_n=15, r=8, p=1, reserved=0) -> bytes:
    return struct.pack("<BBBB16s", log2_n, r, p, reserved, bytes(16)) + bytes(104)


def provider_body(name: bytes = b"kms", payload: bytes = b"\x01",
                  length: int | None = None) -> bytes:
    return bytes([len(name) if length is None else length]) + name + payload


def ids(n):
    return [i.to_bytes(16, "big") for i in range(n)]


def rejects(table: bytes, count: int, match: str | None = None, error=FormatError):
    with pytest.raises(error, match=match) as info:
        parse_records(table, count)
    if error is FormatError:
        assert not isinstance(info.value, UnsupportedFormatError)


# --- accepted tables ------------------------------------------------------------------------------


def test_every_type_parses():
    bodies = {slots.SYMMETRIC: bytes(104), slots.X25519: bytes(80), slots.XWING: bytes(1168),
              slots.PASSPHRASE: passphrase_body(), slots.PROVIDER: provider_body()}
    table = b"".join(record(t, b, i) for (t, b), i in zip(bodies.items(), ids(5)))
    parsed = parse_records(table, 5)
    assert [r.slot_type for r in parsed] == list(bodies)
    assert [r.body for r in parsed] == list(bodies.values())
    assert b"".join(r.to_bytes() for r in parsed) == table


def test_provider_body_limits_are_accepted():
    longest = provider_body(b"n" * MAX_NAME_BYTES, b"p" * MAX_PAYLOAD_BYTES)
    assert len(longest) == 1 + 64 + 8192
    shortest = provider_body(b"n", b"p")
    for body in (longest, shortest, provider_body(b" ~", b"\x00")):
        assert parse_records(record(slots.PROVIDER, body), 1)[0].body == body


def test_four_passphrase_slots_are_accepted():
    table = b"".join(record(slots.PASSPHRASE, passphrase_body(), i) for i in ids(4))
    assert len(parse_records(table, 4)) == 4


@pytest.mark.parametrize("params", [(15, 8, 1), (17, 16, 1), (17, 8, 4), (16, 16, 4), (19, 8, 1),
                                    (15, 16, 4)])
def test_passphrase_parameters_inside_the_limits(params):
    parse_records(record(slots.PASSPHRASE, passphrase_body(*params)), 1)


# --- malformed tables -----------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 4, 19])
def test_table_ends_inside_a_record_header(cut):
    rejects(record()[:cut], 1, "ends inside")
    rejects(record() + record(slot_id=bytes(16))[:cut], 2, "ends inside")


def test_more_records_claimed_than_stored():
    rejects(record(), 2, "ends inside")
    rejects(record(), 1024, "ends inside")


@pytest.mark.parametrize("reserved", [1, 0x80, 0xFF])
def test_reserved_byte(reserved):
    rejects(record(reserved=reserved), 1, "reserved")


@pytest.mark.parametrize("slot_type, length", [
    (slots.SYMMETRIC, 0), (slots.SYMMETRIC, 103), (slots.SYMMETRIC, 105),
    (slots.X25519, 79), (slots.X25519, 81), (slots.X25519, 104),
    (slots.XWING, 1167), (slots.XWING, 1169), (slots.XWING, 80),
    (slots.PASSPHRASE, 123), (slots.PASSPHRASE, 125), (slots.PASSPHRASE, 104),
])
def test_body_length_wrong_for_the_type(slot_type, length):
    rejects(record(slot_type, bytes(length)), 1, "byte body")


@pytest.mark.parametrize("extra", [1, 100, 0xFFFF - 104])
def test_body_runs_past_the_table(extra):
    rejects(record(body_length=104 + extra), 1, "past the slot table")
    rejects(record(slots.PROVIDER, provider_body(), body_length=0xFFFF), 1, "past the slot table")


@pytest.mark.parametrize("trailing", [b"\x00", bytes(19), bytes(20), record()])
def test_table_length_does_not_match_the_records(trailing):
    rejects(record() + trailing, 1, "does not match")


def test_duplicate_slot_ids():
    rejects(record() + record(), 2, "same slot id")
    rejects(record(slots.SYMMETRIC) + record(slots.PROVIDER, provider_body()), 2, "same slot id")
    table = record(slot_id=bytes(16)) + record(slot_id=bytes(range(16))) + record(slot_id=bytes(16))
    rejects(table, 3, "same slot id")


def test_more_than_four_passphrase_slots():
    table = b"".join(record(slots.PASSPHRASE, passphrase_body(), i) for i in ids(5))
    rejects(table, 5, "more than 4 passphrase")


@pytest.mark.parametrize("slot_type", [0, 5, 6, 0x7F, 0x81, 0xFF])
def test_unknown_slot_types_are_unsupported(slot_type):
    """FORMAT.md 5.3: a type not in section 4.1 is an UnsupportedFormatError (a later version
    adding one will say so in its version number or suite)."""
    rejects(record(slot_type, bytes(40)), 1, "not supported", error=UnsupportedFormatError)
    rejects(record() + record(slot_type, bytes(40), bytes(16)), 2, error=UnsupportedFormatError)


PROVIDER_BODIES = {
    "empty": b"",
    "name-length-0": provider_body(b"", b"\x01"),
    "name-length-65": provider_body(b"n" * 65, b"\x01"),
    "name-length-255": provider_body(b"n" * 60, b"\x01", length=255),
    "name-past-body": provider_body(b"kms", b"", length=10),
    "name-only": provider_body(b"kms", b""),
    "non-ascii": provider_body(b"km\xc3\xa9", b"\x01"),
    "high-byte": provider_body(b"\x80", b"\x01"),
    "control-nul": provider_body(b"k\x00s", b"\x01"),
    "control-newline": provider_body(b"kms\n", b"\x01"),
    "control-esc": provider_body(b"\x1b[2J", b"\x01"),
    "del": provider_body(b"kms\x7f", b"\x01"),
    "payload-8193": provider_body(b"kms", bytes(MAX_PAYLOAD_BYTES + 1)),
    "payload-huge": provider_body(b"kms", bytes(0xFFFF - 4)),
}


@pytest.mark.parametrize("body", list(PROVIDER_BODIES.values()), ids=list(PROVIDER_BODIES))
def test_malformed_provider_bodies(body):
    rejects(record(slots.PROVIDER, body), 1)


@pytest.mark.parametrize("params", [
    (14, 8, 1), (0, 8, 1), (21, 8, 1), (255, 8, 1),        # log2 N below the floor, above the cap
    (17, 7, 1), (17, 0, 1), (17, 17, 1), (17, 255, 1),     # r
    (17, 8, 0), (17, 8, 5), (17, 8, 255),                   # p
    (20, 16, 1),                                            # 128 * r * N = 2 GiB > 1 GiB
    (18, 8, 4), (20, 8, 1), (19, 16, 2), (19, 8, 2),        # N * r * p > 2**22
])
def test_passphrase_parameters_outside_the_limits(params):
    rejects(record(slots.PASSPHRASE, passphrase_body(*params)), 1, "passphrase slot parameters")


@pytest.mark.parametrize("reserved", [1, 0xFF])
def test_passphrase_reserved_byte(reserved):
    rejects(record(slots.PASSPHRASE, passphrase_body(reserved=reserved)), 1, "reserved")


@given(st.binary(max_size=400), st.integers(0, 8))
def test_random_tables(table, count):
    """Random bytes parse or raise FormatError; never struct.error, IndexError, UnicodeError."""
    try:
        parsed = parse_records(table, count)
    except FormatError:
        return
    assert b"".join(r.to_bytes() for r in parsed) == table and len(parsed) == count


# --- the same through whole files with a valid header MAC -----------------------------------------


@pytest.fixture(scope="module")
def good() -> bytes:
    return save({"w": np.arange(6, dtype=np.float32)}, KEY)


def test_crafted_records_in_a_file_load(good):
    header = sealcraft.header_of(good)
    extra = (SlotRecord(slots.PROVIDER, bytes(16), provider_body(b"absent", b"\x01")),
             SlotRecord(slots.PASSPHRASE, bytes(range(1, 17)), passphrase_body()))
    blob = sealcraft.rebuild(good, records=header.slots + extra)
    assert load(blob, KEY)["w"].tolist() == list(range(6))


@pytest.mark.parametrize("case", ["reserved", "unknown-type", "short-body", "duplicate-id",
                                  "provider-control", "provider-empty-payload", "five-passphrases",
                                  "passphrase-cap", "passphrase-floor"])
def test_malformed_slots_in_an_authenticated_header(good, case):
    header = sealcraft.header_of(good)
    ours = header.slots[0]
    table = None
    records = list(header.slots)
    if case == "reserved":
        raw = bytearray(ours.to_bytes())
        raw[1] = 1
        table = bytes(raw)
    elif case == "unknown-type":
        records.append(SlotRecord(0x42, bytes(16), bytes(40)))
    elif case == "short-body":
        records.append(SlotRecord(slots.X25519, bytes(16), bytes(79)))
    elif case == "duplicate-id":
        records.append(SlotRecord(slots.PROVIDER, ours.slot_id, provider_body()))
    elif case == "provider-control":
        records.append(SlotRecord(slots.PROVIDER, bytes(16), provider_body(b"a\tb")))
    elif case == "provider-empty-payload":
        records.append(SlotRecord(slots.PROVIDER, bytes(16), provider_body(b"kms", b"")))
    elif case == "five-passphrases":
        records += [SlotRecord(slots.PASSPHRASE, i, passphrase_body()) for i in ids(5)]
    elif case == "passphrase-cap":
        records.append(SlotRecord(slots.PASSPHRASE, bytes(16), passphrase_body(20, 16, 4)))
    elif case == "passphrase-floor":
        records.append(SlotRecord(slots.PASSPHRASE, bytes(16), passphrase_body(10, 1, 1)))
    overrides = {"table": table} if table is not None else {"records": tuple(records)}
    blob = sealcraft.rebuild(good, **overrides)
    expected = UnsupportedFormatError if case == "unknown-type" else FormatError
    with pytest.raises(expected):
        load(blob, KEY)


@pytest.mark.parametrize("params", [(21, 8, 1), (20, 16, 4), (14, 8, 1), (17, 8, 5)])
def test_hostile_passphrase_parameters_are_refused_before_scrypt(good, params, monkeypatch):
    """A file whose only slot is a passphrase slot with parameters outside the limits, under a
    valid header MAC: refused at once with FormatError, and scrypt never runs."""
    data_key = sealcraft.data_key_of(good)
    slot = SlotRecord(slots.PASSPHRASE, bytes(16), passphrase_body(*params))
    blob = sealcraft.rebuild(good, data_key=data_key, records=(slot,))

    def no_scrypt(*args, **kwargs):
        raise AssertionError("scrypt ran on hostile parameters")

    monkeypatch.setattr(passphrase_slot, "scrypt", no_scrypt)
    started = time.perf_counter()
    with pytest.raises(FormatError, match="passphrase slot parameters"):
        load(blob, Passphrase("correct horse"))
    with pytest.raises(FormatError, match="passphrase slot parameters"):
        load(blob, KEY)  # every reader checks them when it parses the table
    assert time.perf_counter() - started < 1.0


def test_cheapest_passphrase_slot_opens_and_a_wrong_one_does_not(good):
    """The crafting path is faithful: a real passphrase slot at the floor parameters, added under
    the file's data key, opens the file; another passphrase is WrongKeyError; an altered wrapped key
    under the right passphrase is IntegrityError."""
    data_key = sealcraft.data_key_of(good)
    header = sealcraft.header_of(good)
    slot = Passphrase("correct horse", log2_n=15, r=8, p=1).wrap(data_key, header.file_id)
    blob = sealcraft.rebuild(good, data_key=data_key, records=(slot,))
    assert load(blob, Passphrase("correct horse"))["w"].tolist() == list(range(6))
    with pytest.raises(WrongKeyError):
        load(blob, Passphrase("battery staple"))
    altered = SlotRecord(slot.slot_type, slot.slot_id, slot.body[:-1] + bytes([slot.body[-1] ^ 1]))
    with pytest.raises(IntegrityError):
        load(sealcraft.rebuild(good, data_key=data_key, records=(altered,)),
             Passphrase("correct horse"))
