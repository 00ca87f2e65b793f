"""Tensor-parallel loading across spawned processes (torch.distributed, gloo on CPU), world sizes 2
and 4, from a local file and from the HTTP object server: every rank's tensors equal slicing the
full load, each rank decrypts about 1/world_size of the model, and "shared" mode decrypts once."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the torch extra; test_torch_api.py covers its absence
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import sealtensors.torch as stt  # noqa: E402
from sealtensors.engine.spec import CHUNK_SIZE  # noqa: E402

from remote_servers import FaultyObjectServer, free_port  # noqa: E402

KEY = bytes(range(32))
DIMS = {"wq": 0, "wo": 1, "norm": None, "emb": 0, "odd": 0}


def _model() -> dict:
    gen = torch.Generator().manual_seed(7)
    return {
        "emb": torch.randn(512, 256, generator=gen),                      # 512 KiB, 32 chunks
        "wq": torch.randn(256, 256, generator=gen).to(torch.bfloat16),    # 128 KiB
        "wo": torch.randn(64, 130, generator=gen).to(torch.float16),      # split along dim 1
        "norm": torch.randn(256, generator=gen),                          # replicated
        "odd": torch.arange(1001 * 3, dtype=torch.int64).reshape(1001, 3),  # unequal slices
    }


def _worker(rank: int, world: int, port: int, loads: list, out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from sealtensors.distributed import load_sharded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        report = {}
        for label, source, dims, modes in loads:
            for mode in modes:
                stats: dict = {}
                key = KEY if mode == "each" or rank == 0 else None  # shared: only the leader
                part = load_sharded(source, key, dims=dims, mode=mode, stats=stats)
                torch.save(part, os.path.join(out_dir, f"{label}-{mode}-{rank}.pt"))
                report[f"{label}-{mode}"] = stats
        with open(os.path.join(out_dir, f"stats-{rank}.json"), "w") as handle:
            json.dump(report, handle)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "model.sealed"
    stt.save_file(_model(), path, KEY)
    server = FaultyObjectServer()
    url = server.put("model", path.read_bytes())
    yield path, url
    server.stop()


def _expected(full: dict, name: str, dims, rank: int, world: int) -> torch.Tensor:
    dim = dims.get(name) if isinstance(dims, dict) else dims
    if dim is None or dim >= full[name].dim():
        return full[name]
    # numpy.array_split's rule: the first (length % world) ranks get one more element.
    return full[name].narrow(dim, *_bounds(full[name].shape[dim], rank, world))


def _bounds(length: int, rank: int, world: int) -> tuple[int, int]:
    base, extra = divmod(length, world)
    begin = rank * base + min(rank, extra)
    return begin, base + (1 if rank < extra else 0)


def _run(world: int, loads: list, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(world, free_port(), loads, os.fspath(tmp_path)), nprocs=world,
             join=True)
    return [json.loads((tmp_path / f"stats-{rank}.json").read_text()) for rank in range(world)]


@pytest.mark.engine_independent
@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_ranks_load_their_slices_and_decrypt_about_one_over_world_size(sealed, world, tmp_path):
    path, url = sealed
    both = ("each", "shared")
    loads = [("local", os.fspath(path), DIMS, both), ("http", url, DIMS, both),
             ("rows", url, 0, ("each",))]
    stats = _run(world, loads, tmp_path)
    full = stt.load_file(path, KEY)
    for label, _, dims, modes in loads:
        for mode in modes:
            for rank in range(world):
                part = torch.load(tmp_path / f"{label}-{mode}-{rank}.pt")
                assert list(part) == list(full)
                for name in full:
                    expected = _expected(full, name, dims, rank, world)
                    assert part[name].dtype == expected.dtype, (label, mode, name)
                    assert torch.equal(part[name], expected), (label, mode, rank, name)
    total = sum(t.nbytes for t in full.values())
    for label in ("local", "http"):
        shared = [stats[rank][f"{label}-shared"] for rank in range(world)]
        assert shared[0]["bytes_decrypted"] >= total
        assert all(s["bytes_decrypted"] == 0 and s["bytes_received"] > 0 for s in shared[1:])
    # Dimension-0 splits of every tensor: each rank decrypts its rows' chunks only.
    rounding = 2 * CHUNK_SIZE * len(full)  # at most two partial chunks per tensor slice
    decrypted = [stats[rank]["rows-each"]["bytes_decrypted"] for rank in range(world)]
    for amount in decrypted:
        assert total / world <= amount + rounding and amount <= total / world + rounding, decrypted
    print(f"\nworld {world}: model {total} B, per-rank decrypted {decrypted} "
          f"({[round(d / total, 3) for d in decrypted]} of the model)")


def _single_rank_worker(rank: int, port: int, source, out_dir: str) -> None:
    from sealtensors.distributed import load_sharded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=1)
    try:
        torch.save(load_sharded(source, KEY, dims=DIMS), os.path.join(out_dir, "part.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.engine_independent
def test_each_mode_overlaps_slice_reads_across_tensors(sealed, tmp_path):
    """One rank, every GET slowed down by the server: the reads of different tensors are in
    flight together (before prefetching, one GET at a time), bounded by the window, and the
    result is unchanged."""
    from sealtensors.engine.spec import ENCRYPTED_CHUNK_SIZE
    from sealtensors.io.remote import RemotePath

    path, url = sealed
    server = FaultyObjectServer()
    try:
        server.put("model", path.read_bytes())
        server.inject("model", "ok", *["slow"] * 200)
        # Parts larger than any tensor: one GET per tensor, so reading tensor by tensor would
        # never have two GETs in flight.
        source = RemotePath(f"{server.url}/model", part_bytes=64 * ENCRYPTED_CHUNK_SIZE,
                            concurrency=2)
        mp.spawn(_single_rank_worker, args=(free_port(), source, os.fspath(tmp_path)), nprocs=1,
                 join=True)
        peak = server.peak_gets
    finally:
        server.stop()
    part = torch.load(tmp_path / "part.pt")
    full = stt.load_file(path, KEY)
    assert list(part) == list(full)
    for name in full:
        assert torch.equal(part[name], full[name]), name
    # The rank's reads of different tensors overlapped, at most PREFETCH_TENSORS at once.
    from sealtensors.distributed import PREFETCH_TENSORS

    assert 2 <= peak <= PREFETCH_TENSORS, peak


def _checkpoint_worker(rank: int, world: int, port: int, good: str, swapped: str,
                       out_dir: str) -> None:
    from sealtensors.distributed import load_sharded_checkpoint

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        for mode in ("each", "shared"):
            key = KEY if mode == "each" or rank == 0 else None
            part = load_sharded_checkpoint(good, key, dims=0, mode=mode)
            torch.save(part, os.path.join(out_dir, f"ckpt-{mode}-{rank}.pt"))
            try:
                load_sharded_checkpoint(swapped, key, dims=0, mode=mode)
                outcome = "loaded"
            except Exception as exc:  # noqa: BLE001 - the type is what the test checks
                outcome = type(exc).__name__
            with open(os.path.join(out_dir, f"swapped-{mode}-{rank}.txt"), "w") as handle:
                handle.write(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.engine_independent
def test_checkpoint_directory_url_sharded_over_ranks(tmp_path):
    """A sealed checkpoint directory on the HTTP server (which cannot list): each rank's slices
    equal slicing the checked full load, in both modes; swapped shards are refused on the
    ranks that read them (an IntegrityError) and reported to the others in "shared" mode."""
    from safetensors.torch import save_file as plain_save

    from sealtensors.checkpoint import load_checkpoint, seal_checkpoint

    model = _model()
    plain = tmp_path / "plain"
    plain.mkdir()
    shards = {"a.safetensors": ["emb", "norm"], "b.safetensors": ["wq", "wo", "odd"]}
    for shard, names in shards.items():
        plain_save({n: model[n].contiguous() for n in names}, plain / shard)
    (plain / "config.json").write_text("{}")
    seal_checkpoint(plain, tmp_path / "sealed", KEY)
    server = FaultyObjectServer()
    try:
        for path in (tmp_path / "sealed").iterdir():
            data = path.read_bytes()
            server.put(f"good/{path.name}", data)
            swapped = {"a.safetensors": "b.safetensors", "b.safetensors": "a.safetensors"}
            server.put(f"swapped/{swapped.get(path.name, path.name)}", data)
        out = tmp_path / "out"
        out.mkdir()
        mp.spawn(_checkpoint_worker, args=(2, free_port(), f"{server.url}/good/",
                                           f"{server.url}/swapped/", os.fspath(out)),
                 nprocs=2, join=True)
    finally:
        server.stop()
    full = load_checkpoint(tmp_path / "sealed", KEY)
    for mode in ("each", "shared"):
        for rank in range(2):
            part = torch.load(out / f"ckpt-{mode}-{rank}.pt")
            assert sorted(part) == sorted(full)
            for name in full:
                assert torch.equal(part[name], _expected(full, name, 0, rank, 2)), (mode, name)
    assert [(out / f"swapped-each-{r}.txt").read_text() for r in range(2)] == \
        ["IntegrityError"] * 2
    assert [(out / f"swapped-shared-{r}.txt").read_text() for r in range(2)] == \
        ["IntegrityError", "RuntimeError"]
