"""Recipients of every slot type: round trips on every engine, mixed files, wrong identities, tampered slots."""

from __future__ import annotations

import numpy as np
import pytest

import sealtensors
from sealtensors import FormatError, IntegrityError, InvalidKeyError, WrongKeyError
from sealtensors.format import container
from sealtensors.keys import (
    Identity,
    Passphrase,
    Recipient,
    SymmetricKey,
    generate_identity,
    identity_text,
)
from sealtensors.keys.keyfile import load_identity
from sealtensors.numpy import load, load_file, save, save_file

ARRAYS = {
    "w": np.arange(30_000, dtype=np.float32).reshape(300, 100),
    "flag": np.array([True, False, True]),
    "empty": np.zeros((0, 4), dtype=np.int16),
}
KEY = bytes(range(32))
X25519 = generate_identity("x25519")
XWING = generate_identity("xwing")
PHRASE = "a long passphrase nobody guesses"


def fast_phrase(text: str = PHRASE) -> Passphrase:
    return Passphrase(text, log2_n=15)


def same(arrays) -> bool:
    return arrays.keys() == ARRAYS.keys() and all(np.array_equal(arrays[n], ARRAYS[n]) for n in ARRAYS)


def header_of(blob: bytes) -> container.Header:
    _v, _s, active, capacity = container.parse_preamble(blob[:32])
    return container.parse(blob[:32], blob[32 + active * capacity:32 + (active + 1) * capacity])


@pytest.mark.parametrize("kind", ["symmetric", "x25519", "xwing", "passphrase"])
def test_round_trip_every_slot_type(kind):
    recipient, identity = {
        "symmetric": (KEY, KEY),
        "x25519": (X25519.recipient().text(), X25519),
        "xwing": (XWING.recipient().text(), XWING),
        "passphrase": (fast_phrase(), Passphrase(PHRASE)),
    }[kind]
    blob = save(ARRAYS, recipient, metadata={"kind": kind})
    assert [r.type_name for r in header_of(blob).slots] == [kind]
    assert same(load(blob, identity))


def test_three_recipients_of_three_types_each_open_it(tmp_path):
    path = tmp_path / "mixed.sealed"
    save_file(ARRAYS, path, [KEY, X25519.recipient().text(), XWING.recipient()])
    for identity in (KEY, X25519, XWING):
        assert same(load_file(path, identity))
    assert sealtensors.verify(path, XWING)["tensors"] == len(ARRAYS)


def test_sealed_with_only_public_strings_opens_with_each_identity_file(tmp_path):
    strings = [X25519.recipient().text(), XWING.recipient().text()]
    path = tmp_path / "public.sealed"
    save_file(ARRAYS, path, strings)
    for number, identity in enumerate((X25519, XWING)):
        identity_file = tmp_path / f"id{number}.txt"
        sealtensors.keys.keyfile.write_secret_file(identity_file, identity_text(identity))
        assert same(load_file(path, str(identity_file)))
        assert same(load_file(path, Identity.load(identity_file)))


def test_recipient_parse_round_trips_and_rejects_damage():
    text = XWING.recipient().text()
    assert Recipient.parse(text) == XWING.recipient()
    for damaged in (text[:-1], text[:40], text.replace("st-xwing", "st-x25519", 1),
                    text[:20] + ("A" if text[20] != "A" else "B") + text[21:]):
        with pytest.raises(InvalidKeyError):
            Recipient.parse(damaged)


def test_wrong_identity_is_refused_before_any_data_is_decrypted(monkeypatch):
    blob = save(ARRAYS, [X25519.recipient(), KEY])
    from sealtensors.crypto import chunked

    calls = []
    original = chunked.decrypt

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(chunked, "decrypt", spy)
    for stranger in (generate_identity("x25519"), generate_identity("xwing"), bytes(32),
                     fast_phrase("not it")):
        with pytest.raises(WrongKeyError):
            load(blob, stranger)
    assert calls == []  # not even the index was decrypted


def test_wrong_key_error_lists_ids_only():
    blob = save(ARRAYS, [X25519.recipient(), KEY])
    stranger = SymmetricKey(bytes(range(1, 33)))
    with pytest.raises(WrongKeyError) as info:
        load(blob, stranger)
    message = str(info.value)
    for slot in header_of(blob).slots:
        assert slot.slot_id.hex() in message
    assert stranger.slot_id(header_of(blob).file_id).hex() in message
    assert stranger.secret.hex() not in message and KEY.hex() not in message


def slot_body_range(blob: bytes, position: int) -> tuple[int, int]:
    header = header_of(blob)
    offset = container.copy_offset(header.active, header.capacity) + container.COPY_FIXED_SIZE
    for record in header.slots[:position]:
        offset += 20 + len(record.body)
    return offset, offset + 20 + len(header.slots[position].body)


@pytest.mark.parametrize("kind", ["symmetric", "x25519", "xwing", "passphrase"])
def test_any_altered_slot_byte_is_an_integrity_or_format_error(kind):
    recipient, identity = {
        "symmetric": (KEY, KEY),
        "x25519": (X25519.recipient(), X25519),
        "xwing": (XWING.recipient(), XWING),
        "passphrase": (fast_phrase(), fast_phrase()),
    }[kind]
    blob = save({"w": ARRAYS["w"]}, [bytes(range(100, 132)), recipient])
    begin, end = slot_body_range(blob, 1)
    # every byte of small slots, a sample of the large X-Wing one; passphrase tries cost scrypt
    positions = list(range(begin, end))
    if kind == "xwing":
        positions = positions[:40] + positions[40::97] + positions[-40:]
    if kind == "passphrase":
        positions = positions[::9]
    # A passphrase slot's parameters, salt and commitment decide which passphrase opens it: once
    # altered, it is indistinguishable from another passphrase's slot (FORMAT.md 5.4).
    undetectable = range(begin + 20, begin + 20 + 4 + 16 + 56) if kind == "passphrase" else ()
    for position in positions:
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        expected = (IntegrityError, FormatError, WrongKeyError) if position in undetectable \
            else (IntegrityError, FormatError)
        with pytest.raises(expected):
            load(bytes(damaged), identity)


def test_moving_a_slot_into_another_file_opens_nothing():
    first = save(ARRAYS, [KEY, X25519.recipient()])
    second = save(ARRAYS, [KEY, bytes(range(1, 33))])
    # Transplant the x25519 slot over the second file's second slot and re-MAC the header with the
    # second file's data key (as a key holder could): the slot is bound to its own file id.
    from dataclasses import replace

    header = header_of(second)
    records = list(header.slots)
    records[1] = header_of(first).slots[1]
    data_key = container.unlock(header, [SymmetricKey(KEY)]).data_key
    moved = replace(header, slots=tuple(records))
    preamble, copy = container.build(moved, data_key)
    forged = preamble + copy + second[32 + header.capacity:]
    with pytest.raises(WrongKeyError):
        load(forged, X25519)
    assert same(load(forged, KEY))


def test_passphrase_is_normalised_and_never_printed():
    blob = save(ARRAYS, fast_phrase("caf\u00e9 au lait"))
    assert same(load(blob, Passphrase("cafe\u0301 au lait")))  # NFD input, NFC stored
    phrase = Passphrase("hunter2 is not a passphrase")
    assert "hunter2" not in repr(phrase) and "hunter2" not in phrase.describe()


@pytest.mark.parametrize("params", [(14, 8, 1), (21, 8, 1), (15, 7, 1), (15, 17, 1), (15, 8, 5),
                                    (20, 16, 1), (20, 8, 4)])
def test_passphrase_parameters_outside_limits_are_refused_when_sealing(params):
    with pytest.raises(ValueError):
        Passphrase("x" * 20, log2_n=params[0], r=params[1], p=params[2])


def test_at_most_four_passphrase_recipients():
    with pytest.raises(ValueError, match="passphrase"):
        save(ARRAYS, [fast_phrase(str(i) * 10) for i in range(5)])


def test_identity_loading_by_kind(tmp_path):
    for kind in ("symmetric", "x25519", "xwing"):
        identity = generate_identity(kind)
        path = tmp_path / kind
        sealtensors.keys.keyfile.write_secret_file(path, identity_text(identity))
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        loaded = load_identity(path)
        assert type(loaded) is type(identity)
        blob = save({"w": ARRAYS["w"]}, identity if kind == "symmetric" else identity.recipient())
        assert np.array_equal(load(blob, loaded)["w"], ARRAYS["w"])
