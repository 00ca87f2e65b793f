"""rewrap: add and remove recipients by rewriting only the header, atomically."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sealtensors
from sealtensors import InvalidKeyError, WrongKeyError, key_id
from sealtensors.io.atomic import DestinationExistsError
from sealtensors.numpy import load_file

A, B, C = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
ARRAYS = {
    "w": np.arange(50_000, dtype=np.float32).reshape(500, 100),  # several chunks of data
    "b": np.arange(7, dtype=np.int8),
}
META = {"owner": "tests"}


def ids(*keys) -> list[str]:
    return sorted(key_id(k).hex() for k in keys)


def split(path) -> tuple[bytes, bytes]:
    """(header, everything after it) of a sealed file."""
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


def test_add_recipient_rewrites_only_the_header(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A, META)
    old_header, old_rest = split(path)
    inode = os.stat(path).st_ino
    result = sealtensors.rewrap(path, A, add=[B])
    assert sorted(result) == ids(A, B)
    assert sorted(sealtensors.inspect(path)["recipients"]) == ids(A, B)
    new_header, new_rest = split(path)
    assert new_rest == old_rest
    assert new_header != old_header and len(new_header) > len(old_header)
    assert opens_with(path, A) and opens_with(path, B) and not opens_with(path, C)
    assert sealtensors.verify(path, B)["tensors"] == 2
    with sealtensors.safe_open(path, "np", key=B) as handle:
        assert handle.metadata() == META
    assert os.stat(path).st_ino != inode  # replaced by rename, not rewritten in place
    assert no_temporaries(tmp_path)


def test_remove_recipient_by_key_keeps_data_bytes(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, [A, B, C])
    _, old_rest = split(path)
    result = sealtensors.rewrap(path, A, remove=[B])
    assert sorted(result) == ids(A, C)
    assert split(path)[1] == old_rest
    assert opens_with(path, A) and opens_with(path, C) and not opens_with(path, B)
    assert no_temporaries(tmp_path)


@pytest.mark.parametrize("form", ["hex", "HEX", "raw_id", "key_file", "path_object"])
def test_remove_by_key_id_or_key_file(make_sealed, tmp_path, form):
    path = make_sealed(ARRAYS, [A, B])
    key_file = tmp_path / "b.key"
    sealtensors.write_key_file(key_file, B)
    handle = {"hex": key_id(B).hex(), "HEX": key_id(B).hex().upper(), "raw_id": key_id(B),
              "key_file": str(key_file), "path_object": key_file}[form]
    assert sorted(sealtensors.rewrap(path, A, remove=[handle])) == ids(A)
    assert opens_with(path, A) and not opens_with(path, B)


def test_remove_by_the_opening_key_itself(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    sealtensors.rewrap(path, A, remove=[A])
    assert not opens_with(path, A) and opens_with(path, B)


def test_add_and_remove_in_one_call(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    assert sorted(sealtensors.rewrap(path, A, add=[C], remove=[B])) == ids(A, C)
    assert opens_with(path, C) and not opens_with(path, B)


def test_adding_an_existing_recipient_does_not_duplicate_it(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    assert sorted(sealtensors.rewrap(path, A, add=[B, B])) == ids(A, B)
    assert len(sealtensors.inspect(path)["recipients"]) == 2


def test_same_key_added_and_removed_is_refused(make_sealed):
    path = make_sealed(ARRAYS, [A, B])
    before = path.read_bytes()
    with pytest.raises(ValueError):
        sealtensors.rewrap(path, A, add=[C], remove=[C])
    assert path.read_bytes() == before


@pytest.mark.parametrize("remove", [[A], [A, B], [key_id(A).hex(), B]], ids=["only", "both", "mixed"])
def test_removing_every_recipient_is_refused(make_sealed, tmp_path, remove):
    keys = [A] if remove == [A] else [A, B]
    path = make_sealed(ARRAYS, keys)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="every recipient"):
        sealtensors.rewrap(path, A, remove=remove)
    assert path.read_bytes() == before
    assert no_temporaries(tmp_path)


@pytest.mark.parametrize("bad", ["not-hex-and-not-a-file", "abcd", "00" * 15, b"short"])
def test_malformed_removal_handles_are_invalid_key_errors(make_sealed, bad):
    path = make_sealed(ARRAYS, [A, B])
    before = path.read_bytes()
    with pytest.raises(InvalidKeyError):
        sealtensors.rewrap(path, A, remove=[bad])
    assert path.read_bytes() == before


def test_wrong_key_leaves_the_file_untouched(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, [A, B])
    before, stat_before = path.read_bytes(), os.stat(path)
    with pytest.raises(WrongKeyError):
        sealtensors.rewrap(path, C, add=[C])
    with pytest.raises(WrongKeyError):
        sealtensors.rewrap(path, C, remove=[B])
    assert path.read_bytes() == before
    assert os.stat(path).st_ino == stat_before.st_ino
    assert os.stat(path).st_mtime_ns == stat_before.st_mtime_ns
    assert no_temporaries(tmp_path)


def test_rewrap_to_a_separate_destination(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A, META)
    before = path.read_bytes()
    destination = tmp_path / "shared.sealed"
    assert sorted(sealtensors.rewrap(path, A, add=[B], dst=destination)) == ids(A, B)
    assert path.read_bytes() == before
    assert opens_with(destination, B) and not opens_with(path, B)
    assert split(destination)[1] == split(path)[1]
    assert no_temporaries(tmp_path)


def test_rewrap_destination_is_not_overwritten_without_permission(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A)
    destination = tmp_path / "existing"
    destination.write_bytes(b"keep me")
    with pytest.raises(DestinationExistsError):
        sealtensors.rewrap(path, A, add=[B], dst=destination)
    assert destination.read_bytes() == b"keep me"
    sealtensors.rewrap(path, A, add=[B], dst=destination, overwrite=True)
    assert opens_with(destination, B)
    assert no_temporaries(tmp_path)


def test_rewrap_destination_that_is_the_source_via_a_link_is_refused(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A)
    before = path.read_bytes()
    hard, soft = tmp_path / "hard", tmp_path / "soft"
    os.link(path, hard)
    os.symlink(path, soft)
    for destination in (path, hard, soft):
        with pytest.raises(ValueError):
            sealtensors.rewrap(path, A, add=[B], dst=destination, overwrite=True)
    assert path.read_bytes() == before


def test_rewrap_refuses_a_truncated_or_extended_file(make_sealed):
    path = make_sealed(ARRAYS, A)
    raw = path.read_bytes()
    for damaged in (raw[:-1], raw + b"\x00"):
        path.write_bytes(damaged)
        with pytest.raises(sealtensors.IntegrityError):
            sealtensors.rewrap(path, A, add=[B])
        assert path.read_bytes() == damaged


def test_many_rewraps_keep_the_data_and_never_leave_temporaries(make_sealed, tmp_path):
    path = make_sealed(ARRAYS, A)
    _, rest = split(path)
    for step in range(6):
        if step % 2 == 0:
            sealtensors.rewrap(path, A, add=[B, C])
        else:
            sealtensors.rewrap(path, A, remove=[B, key_id(C).hex()])
        assert split(path)[1] == rest
        assert no_temporaries(tmp_path)
    assert sorted(sealtensors.inspect(path)["recipients"]) == ids(A)
    assert opens_with(path, A)
