"""Regression tests for defects found in an adversarial review of the Python API."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import sealtensors
from sealtensors import safe_open
from sealtensors.numpy import save_file

KEY = bytes(range(32))


@pytest.fixture
def sealed(tmp_path):
    arrays = {"a": np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3),
              "big": np.arange(3000 * 11, dtype=np.float32).reshape(3000, 11)}
    path = tmp_path / "m.sealed"
    save_file(arrays, path, key=KEY)
    return path, arrays


@pytest.mark.parametrize("index", [
    (slice(None, None, -1), [0, 1]),
    (slice(None, None, -2), np.array([[0], [1]]), 0),
    (slice(4, 0, -1), slice(None), [2, 0]),
    (slice(None, None, -3),),
    (slice(3, None, -1), 1),
])
def test_negative_steps_and_advanced_indices_are_refused_like_safetensors(sealed, index):
    # safetensors' numpy get_slice refuses negative steps and lists/arrays (SafetensorError);
    # sealtensors matches with ValueError / IndexError (tests/test_safetensors_parity.py).
    path, arrays = sealed
    with safe_open(path, "np", key=KEY) as f:
        for name in arrays:
            if len(index) > arrays[name].ndim:
                continue
            with pytest.raises((IndexError, ValueError)):
                f.get_slice(name)[index]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_unclosed_safe_open_handle_releases_its_file_descriptor_when_dropped(sealed):
    path, _ = sealed
    before = _open_fds()
    for _ in range(20):
        handle = safe_open(path, "np", key=KEY)
        handle.get_tensor("a")
        del handle
    gc.collect()
    assert _open_fds() == before


def test_reading_a_closed_handle_is_a_value_error(sealed):
    path, _ = sealed
    with safe_open(path, "np", key=KEY) as handle:
        piece = handle.get_slice("a")
    for read in (lambda: handle.get_tensor("a"), lambda: piece[:2]):
        with pytest.raises(ValueError, match="closed"):
            read()
    handle.close()  # closing twice is harmless


@pytest.mark.parametrize("dims", [-1, {"w": -1}])
def test_load_shard_negative_dim_counts_from_the_last_dimension(tmp_path, dims):
    torch = pytest.importorskip("torch")
    from sealtensors.torch import load_shard, save_file as torch_save_file

    w = torch.arange(24.0).reshape(4, 6)
    path = tmp_path / "t.sealed"
    torch_save_file({"w": w}, path, key=KEY)
    for rank in range(2):
        shard = load_shard(path, key=KEY, rank=rank, world_size=2, dims=dims)["w"]
        assert torch.equal(shard, torch.tensor_split(w, 2, dim=-1)[rank])


def test_load_shard_negative_dim_beyond_the_rank_replicates(tmp_path):
    torch = pytest.importorskip("torch")
    from sealtensors.torch import load_shard, save_file as torch_save_file

    v = torch.arange(5)
    path = tmp_path / "t.sealed"
    torch_save_file({"v": v}, path, key=KEY)
    assert torch.equal(load_shard(path, key=KEY, rank=1, world_size=2, dims=-2)["v"], v)


def test_rewrap_of_a_directory_is_an_os_error_naming_it_and_leaks_no_descriptor(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    before = _open_fds()
    with pytest.raises(IsADirectoryError) as info:
        sealtensors.rewrap(directory, KEY, add=[KEY])
    assert info.value.filename == str(directory)
    assert _open_fds() == before


def test_an_output_path_ending_in_a_slash_is_refused_not_written_without_it(tmp_path):
    target = str(tmp_path / "newdir") + "/"
    with pytest.raises(IsADirectoryError):
        save_file({"a": np.zeros(2)}, target, key=KEY)
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("kind", ["nested", "meta"])
def test_torch_tensors_without_dense_host_bytes_are_refused_with_value_error(kind):
    torch = pytest.importorskip("torch")
    from sealtensors.torch import save

    if kind == "nested":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensor = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    else:
        tensor = torch.empty(3, device="meta")
    with pytest.raises(ValueError):
        save({"x": tensor}, KEY)


def test_negative_threads_is_a_value_error_on_every_engine(sealed):
    path, _ = sealed
    with pytest.raises(ValueError, match="threads"):
        sealtensors.verify(path, KEY, threads=-1)
    with pytest.raises(ValueError, match="threads"):
        sealtensors.load_into(path, KEY, bytearray(sealtensors.buffer_size(path, KEY)), threads=-1)
