"""rewrap: add and remove recipients of every type in place (spare header copy + one-byte flip), under a lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sealtensors
from sealtensors import IntegrityError, InvalidKeyError, RecipientError, WrongKeyError
from sealtensors.format import container
from sealtensors.io.atomic import DestinationExistsError
from sealtensors.keys import Passphrase, SymmetricKey, generate_identity
from sealtensors.numpy import load_file

A, B, C = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
ARRAYS = {
    "w": np.arange(50_000, dtype=np.float32).reshape(500, 100),  # several chunks of data
    "b": np.arange(7, dtype=np.int8),
}
META = {"owner": "tests"}
X = generate_identity("x25519")
XW = generate_identity("xwing")


def slot_ids(path) -> list[str]:
    return [slot["slot_id"] for slot in sealtensors.inspect(path)["slots"]]


def split(path) -> tuple[bytes, bytes]:
    """(header region, everything after it) of a sealed file."""
    size = sealtensors.inspect(path)["header_size"]
    raw = open(path, "rb").read()
    return raw[:size], raw[size:]


def opens_with(path, key) -> bool:
    try:
        arrays = load_file(path, key)
    except WrongKeyError:
        return False
    assert all(np.array_equal(arrays[n], ARRAYS[n]) for n in ARRAYS)
    return True


def no_temporaries(directory) -> bool:
    return not [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_in_place_add_writes_only_the_header_region(make_sealed):
    path = make_sealed(ARRAYS, A, META)
    old_header, old_rest = split(path)
    inode = os.stat(path).st_ino
    result = sealtensors.rewrap(path, A, add=[B, X.recipient().text(), XW.recipient()])
    assert result["in_place"] and not result["rewrote_data"]
    assert [s["type"] for s in result["slots"]] == ["symmetric", "symmetric", "x25519", "xwing"]
    new_header, new_rest = split(path)
    assert new_rest == old_rest and len(new_header) == len(old_header)
    assert os.stat(path).st_ino == inode  # same file, not a copy renamed into place
    raw = open(path, "rb").read()
    capacity = sealtensors.inspect(path)["header_capacity"]
    assert raw[container.ACTIVE_OFFSET] == 1
    assert not any(raw[32:32 + capacity])  # the old copy is cleared
    assert sealtensors.inspect(path)["header_sequence"] == 1
    for key in (A, B, X, XW):
        assert opens_with(path, key)
    assert not opens_with(path, C)
    with sealtensors.safe_open(path, "np", key=XW) as handle:
        assert handle.metadata() == META


def test_remove_each_type_by_public_material(make_sealed):
    path = make_sealed(ARRAYS, [A, B, X.recipient(), XW.recipient()])
    ids = slot_ids(path)
    sealtensors.rewrap(path, A, remove=[X.recipient().text()])
    assert not opens_with(path, X)
    sealtensors.rewrap(path, A, remove=[ids[1]])  # B by its slot id in this file
    assert not opens_with(path, B)
    sealtensors.rewrap(path, A, remove=[XW])  # an identity object
    assert not opens_with(path, XW)
    assert opens_with(path, A) and slot_ids(path) == ids[:1]


def test_passphrase_slots_are_added_and_removed(make_sealed):
    path = make_sealed(ARRAYS, A)
    phrase = Passphrase("correct horse battery staple", log2_n=15)
    sealtensors.rewrap(path, A, add=[phrase])
    assert opens_with(path, Passphrase("correct horse battery staple"))
    assert not opens_with(path, Passphrase("wrong horse"))
    sealtensors.rewrap(path, A, remove=[Passphrase("correct horse battery staple")])
    assert [s["type"] for s in sealtensors.inspect(path)["slots"]] == ["symmetric"]


def test_slot_ids_differ_between_files_of_the_same_recipient(make_sealed):
    first = make_sealed(ARRAYS, [A, X.recipient()])
    second = make_sealed(ARRAYS, [A, X.recipient()])
    assert not set(slot_ids(first)) & set(slot_ids(second))
    # ...while the owner still finds its own slot in each
    for path in (first, second):
        assert sealtensors.inspect(path, X)["your_slot"] == slot_ids(path)[1]


def test_removing_an_absent_recipient_is_an_error(make_sealed):
    path = make_sealed(ARRAYS, A)
    before = open(path, "rb").read()
    for absent in ([B], [X.recipient().text()], ["0" * 32]):
        with pytest.raises(RecipientError):
            sealtensors.rewrap(path, A, remove=absent)
    assert open(path, "rb").read() == before


def test_adding_a_present_recipient_is_an_error(make_sealed):
    path = make_sealed(ARRAYS, [A, X.recipient()])
    before = open(path, "rb").read()
    for present in ([A], [X.recipient().text()]):
        with pytest.raises(RecipientError, match="already has a slot"):
            sealtensors.rewrap(path, A, add=present)
    assert open(path, "rb").read() == before


def test_same_recipient_added_and_removed_is_refused(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    with pytest.raises(RecipientError):
        sealtensors.rewrap(path, A, add=[B], remove=[B])


def test_removing_every_recipient_is_refused(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    with pytest.raises(ValueError, match="every recipient"):
        sealtensors.rewrap(path, A, remove=[A, B])
    assert opens_with(path, A) and opens_with(path, B)


@pytest.mark.parametrize("bad", ["abcd", "00" * 15, "00" * 17, "AB" * 16, b"short"])
def test_slot_ids_are_parsed_strictly_and_never_as_paths_first(make_sealed, bad, tmp_path):
    path = make_sealed(ARRAYS, A)
    with pytest.raises((InvalidKeyError, RecipientError)):
        sealtensors.rewrap(path, A, remove=[bad])
    # a file named like a slot id is not looked up: the id form wins
    decoy = tmp_path / ("0" * 32)
    decoy.write_bytes(A)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RecipientError, match="no slot with that id"):
            sealtensors.rewrap(path, A, remove=["0" * 32])
    finally:
        os.chdir(cwd)


def test_key_material_given_as_a_removal_is_not_echoed(make_sealed):
    path = make_sealed(ARRAYS, A)
    secret_text = B.hex() * 2
    with pytest.raises(InvalidKeyError) as info:
        sealtensors.rewrap(path, A, remove=[secret_text])
    assert B.hex() not in str(info.value)


def test_wrong_key_leaves_the_file_untouched(make_sealed):
    path = make_sealed(ARRAYS, A)
    before = open(path, "rb").read()
    with pytest.raises(WrongKeyError):
        sealtensors.rewrap(path, B, add=[C])
    assert open(path, "rb").read() == before


def test_damaged_data_is_refused_before_the_header_changes(make_sealed):
    path = make_sealed(ARRAYS, A)
    raw = bytearray(open(path, "rb").read())
    raw[-100] ^= 1
    open(path, "wb").write(raw)
    with pytest.raises(IntegrityError):
        sealtensors.rewrap(path, A, add=[B])
    assert open(path, "rb").read() == bytes(raw)
    # verify_data=False rewrites the header anyway (the damage stays visible to readers)
    sealtensors.rewrap(path, A, add=[B], verify_data=False)
    with pytest.raises(IntegrityError):
        load_file(path, B)


def test_truncated_or_extended_file_is_refused(make_sealed):
    path = make_sealed(ARRAYS, A)
    raw = open(path, "rb").read()
    for damaged in (raw[:-1], raw + b"\0"):
        open(path, "wb").write(damaged)
        with pytest.raises(IntegrityError):
            sealtensors.rewrap(path, A, add=[B], verify_data=False)
        assert open(path, "rb").read() == damaged


def test_full_header_grows_the_file_atomically(make_sealed):
    path = make_sealed(ARRAYS, A)
    capacity = sealtensors.inspect(path)["header_capacity"]
    xwings = [generate_identity("xwing") for _ in range(capacity // 1188 + 1)]
    result = sealtensors.rewrap(path, A, add=[x.recipient() for x in xwings])
    assert result["rewrote_data"]
    assert sealtensors.inspect(path)["header_capacity"] > capacity
    assert opens_with(path, xwings[-1]) and opens_with(path, A)
    assert no_temporaries(os.path.dirname(path))


def test_rewrap_to_a_separate_destination(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A)
    before = open(path, "rb").read()
    out = tmp_path / "copy.sealed"
    sealtensors.rewrap(path, A, add=[B], dst=out)
    assert open(path, "rb").read() == before
    assert opens_with(out, B) and not opens_with(path, B)
    with pytest.raises(DestinationExistsError):
        sealtensors.rewrap(path, A, add=[C], dst=out)


def test_rewrap_destination_that_is_the_source_via_a_link_is_refused(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A)
    link = tmp_path / "link.sealed"
    os.symlink(path, link)
    with pytest.raises(ValueError, match="same file"):
        sealtensors.rewrap(path, A, add=[B], dst=link, overwrite=True)


def test_signature_survives_rewraps(make_sealed, tmp_path):
    signer = sealtensors.SigningKey.generate()
    path = tmp_path / "signed.sealed"
    sealtensors.numpy.save_file(ARRAYS, path, A, signer=signer, generation=7)
    sealtensors.rewrap(path, A, add=[X.recipient()])
    sealtensors.rewrap(path, A, remove=[A])
    summary = sealtensors.verify(path, X, signer=signer.verifying_key)
    assert summary["generation"] == 7


_RACER = textwrap.dedent("""
    import sys
    import sealtensors
    path, key_hex, new_hex = sys.argv[1:4]
    sealtensors.rewrap(path, bytes.fromhex(key_hex), add=[bytes.fromhex(new_hex)], verify_data=False)
""")


@pytest.mark.engine_independent
def test_concurrent_rewraps_never_lose_an_update(make_sealed):
    path = make_sealed(ARRAYS, A)
    keys = [os.urandom(32) for _ in range(40)]
    processes = [subprocess.Popen([sys.executable, "-c", _RACER, str(path), A.hex(), key.hex()],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for key in keys]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    for key, (status, err) in zip(keys, results):
        if status == 0:
            assert opens_with(path, key), err
        else:  # a loser must say so, never exit 0 without its recipient
            assert err
    assert sum(status == 0 for status, _ in results) >= 1
    assert opens_with(path, A)
    assert sealtensors.inspect(path)["header_sequence"] == sum(s == 0 for s, _ in results)


def test_same_passphrase_added_and_removed_is_refused(make_sealed):
    path = make_sealed(ARRAYS, A)
    sealtensors.rewrap(path, A, add=[Passphrase("pw for both", log2_n=15)])
    before = open(path, "rb").read()
    with pytest.raises(RecipientError):
        sealtensors.rewrap(path, A, add=[Passphrase("pw for both", log2_n=15)],
                           remove=[Passphrase("pw for both")])
    assert open(path, "rb").read() == before
