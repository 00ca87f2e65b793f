"""Tensor-parallel shards: each rank gets exactly its numpy.array_split part."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sealtensors.torch as stt  # noqa: E402


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shards_reassemble_to_the_full_tensors(tmp_path, world_size):
    key = bytes(32)
    tensors = {
        "rows": torch.arange(7 * 6, dtype=torch.float32).reshape(7, 6),
        "cols": torch.arange(4 * 9, dtype=torch.bfloat16).reshape(4, 9),
        "bias": torch.arange(5, dtype=torch.int64),
        "scalar": torch.tensor(3.5),
    }
    path = tmp_path / "m.sealed"
    stt.save_file(tensors, path, key)
    dims = {"rows": 0, "cols": 1, "bias": 0, "scalar": 0}
    shards = [stt.load_shard(path, key, rank=r, world_size=world_size, dims=dims)
              for r in range(world_size)]
    assert torch.equal(torch.cat([s["rows"] for s in shards], 0), tensors["rows"])
    assert torch.equal(torch.cat([s["cols"] for s in shards], 1), tensors["cols"])
    assert torch.equal(torch.cat([s["bias"] for s in shards], 0), tensors["bias"])
    for rank, shard in enumerate(shards):
        expected = np.array_split(np.arange(7), world_size)[rank]
        assert shard["rows"].shape[0] == len(expected)
        assert torch.equal(shard["scalar"], tensors["scalar"])


def test_replicated_and_selected_names(tmp_path):
    key = bytes(32)
    tensors = {"a": torch.ones(4, 4), "b": torch.zeros(2)}
    path = tmp_path / "m.sealed"
    stt.save_file(tensors, path, key)
    shard = stt.load_shard(path, key, rank=1, world_size=2, dims=None, names=["a"])
    assert list(shard) == ["a"] and torch.equal(shard["a"], tensors["a"])
    with pytest.raises(ValueError):
        stt.load_shard(path, key, rank=2, world_size=2)
