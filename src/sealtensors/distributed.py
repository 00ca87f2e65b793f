"""Tensor-parallel loading across processes with torch.distributed: every rank decrypts only its
own slice ("each"), or one process per host reads and decrypts and the others receive their slices
through collectives ("shared", one key unwrap and one download per host).

Both modes work on local paths, URLs (``s3://``, ``gs://``, ``https://``) and ``fs=`` paths, with
the gloo backend (CPU) and NCCL (GPU tensors) alike. See docs/REMOTE.md for running at scale.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping

import torch
import torch.distributed as dist

from .torch import _shard_bounds, check_device

__all__ = ["load_sharded", "load_sharded_checkpoint", "host_group", "MODES"]

MODES = ("each", "shared")


def _dim_for(dims, name: str, ndim: int) -> int | None:
    dim = dims.get(name) if isinstance(dims, Mapping) else dims
    if dim is not None and dim < 0:
        dim += ndim  # counted from the last dimension, as in torch
    return dim if dim is not None and 0 <= dim < ndim else None


def _counting(handle, stats: dict) -> None:
    """Count the plaintext bytes this handle's reader decrypts (chunk rounding included); reads
    may run on several threads at once (prefetch)."""
    reader = handle._reader
    inner = reader._decrypt_chunks
    lock = threading.Lock()

    def counted(first, stop, dst, threads):
        inner(first, stop, dst, threads)
        with lock:
            stats["bytes_decrypted"] += memoryview(dst).nbytes

    reader._decrypt_chunks = counted


def host_group(ranks_per_host: int | None = None):
    """The process group of this rank's host (consecutive ranks, ``ranks_per_host`` of them;
    default ``LOCAL_WORLD_SIZE`` as torchrun sets it, else the whole world). Every rank must call
    it, in the same order, as :func:`torch.distributed.new_group` requires."""
    world = dist.get_world_size()
    per_host = ranks_per_host or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if per_host <= 0 or world % per_host:
        raise ValueError(f"{per_host} ranks per host do not divide a world of {world}")
    if per_host == world:
        return dist.group.WORLD
    mine = None
    for start in range(0, world, per_host):
        group = dist.new_group(list(range(start, start + per_host)))
        if start <= dist.get_rank() < start + per_host:
            mine = group
    return mine


def load_sharded(filename, key=None, *, dims: int | Mapping[str, int | None] | None = 0,
                 mode: str = "each", group=None, device: str = "cpu", names=None, fs=None,
                 stats: dict | None = None, **verification) -> dict[str, torch.Tensor]:
    """This rank's tensor-parallel part of each tensor of a sealed file (local path, URL, or a
    path in the fsspec filesystem ``fs``), split over the ranks of ``group`` (default: the world).

    ``dims`` as in :func:`sealtensors.torch.load_shard` (one dim for all, a mapping name -> dim,
    None to replicate); splits follow ``numpy.array_split``. The result equals slicing the full
    load, on every rank.

    ``mode="each"``: every rank opens the file and decrypts only the chunks holding its slice (for
    splits along dimension 0; other dimensions need the whole tensor). ``mode="shared"``: rank 0 of
    ``group`` (one per host: see :func:`host_group`) opens the file, decrypts each tensor once and
    scatters the slices (broadcasts replicated tensors); the other ranks need no key and make no
    request to the store. ``stats``: a dict that receives ``bytes_decrypted`` (plaintext, chunk
    rounding included), ``bytes_received`` (through collectives) and ``seconds``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised (call init_process_group first)")
    group = dist.group.WORLD if group is None else group
    target = check_device(device)
    counters = {"bytes_decrypted": 0, "bytes_received": 0}
    started = time.perf_counter()
    check = verification.pop("_check", None)
    if mode == "each":
        result = _load_each(filename, key, dims, group, names, fs, counters, verification, check)
    else:
        result = _load_shared(filename, key, dims, group, names, fs, counters, verification,
                              check)
    if target.type != "cpu":
        result = {name: tensor.to(target) for name, tensor in result.items()}
    if stats is not None:
        stats.update(counters, seconds=time.perf_counter() - started)
    return result


def load_sharded_checkpoint(directory, key=None, *, dims: int | Mapping[str, int | None] | None = 0,
                            mode: str = "each", group=None, device: str = "cpu", fs=None,
                            stats: dict | None = None, **verification) -> dict[str, torch.Tensor]:
    """:func:`load_sharded` over every shard of a sealed checkpoint directory (local directory,
    URL such as ``s3://bucket/model/`` or ``https://host/model/``, or a path in the fsspec
    filesystem ``fs``): this rank's part of every tensor, each shard checked against the
    authenticated manifest first (a dropped, swapped or foreign shard is an IntegrityError).

    ``mode="each"``: every rank reads the manifest and its slices. ``mode="shared"``: the leader of
    ``group`` reads the manifest and every shard and sends the slices; the other ranks need no key
    and make no request. ``stats`` sums over the shards.
    """
    from .checkpoint import _Directory, read_manifest

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised (call init_process_group first)")
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    leader = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0
    where = _Directory.of(directory, fs)  # no request: only names the location
    manifest, failure, plan = None, None, [None]
    if mode == "each" or rank == 0:
        try:
            manifest = read_manifest(where, key, **verification)
            manifest.check_directory(where)
            plan[0] = sorted(manifest.shards)
        except Exception as exc:  # noqa: BLE001 - shared: told to every rank, then re-raised
            if mode == "each":
                raise
            plan[0], failure = f"{type(exc).__name__}: {exc}", exc
    if mode == "shared":
        dist.broadcast_object_list(plan, src=leader, group=group)
        if isinstance(plan[0], str):
            if rank == 0:
                raise failure
            raise RuntimeError(f"the leader (rank {leader}) could not open the checkpoint: "
                               f"{plan[0]}")
    totals = {"bytes_decrypted": 0, "bytes_received": 0}
    started = time.perf_counter()
    result: dict[str, torch.Tensor] = {}
    for name in plan[0]:
        shard_stats: dict = {}
        check = None if manifest is None else (lambda reader, name=name:
                                               manifest.check_shard(name, reader))
        result.update(load_sharded(where.member(name), key, dims=dims, mode=mode, group=group,
                                   device=device, stats=shard_stats, _check=check,
                                   **verification))
        for counter in totals:
            totals[counter] += shard_stats[counter]
    if stats is not None:
        stats.update(totals, seconds=time.perf_counter() - started)
    return result


PREFETCH_TENSORS = 4  # slice reads in flight per rank in "each" mode
_LOCAL_WINDOW_BYTES = 64 << 20


def _window_bytes(handle) -> int:
    """How many bytes of slices may be in flight at once: for a remote file the bound one large
    read already has (``concurrency`` parts of ``part_bytes``), so prefetching across tensors
    adds at most that much ciphertext in flight; for a local file 64 MiB."""
    from .engine.spec import ENCRYPTED_CHUNK_SIZE

    remote = handle._reader._source.remote
    if remote is None:
        return _LOCAL_WINDOW_BYTES
    return remote.concurrency * remote.part_chunks * ENCRYPTED_CHUNK_SIZE


def _load_each(filename, key, dims, group, names, fs, counters, verification, check=None):
    from .safe_open import safe_open

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    with safe_open(filename, "pt", key=key, fs=fs, **verification) as handle:
        if check is not None:
            check(handle._reader)
        _counting(handle, counters)
        wanted = handle.offset_keys() if names is None else list(names)

        def plan(name: str):
            """(how to index the tensor, bytes the read decrypts, about)."""
            info = handle._reader.info(name)
            shape = handle.get_slice(name).get_shape()
            dim = _dim_for(dims, name, len(shape))
            if dim is None:
                return Ellipsis, info.end - info.begin
            begin, end = _shard_bounds(shape[dim], rank, world)
            share = (end - begin) / shape[dim] if dim == 0 and shape[dim] else 1.0
            return (slice(None),) * dim + (slice(begin, end),), int((info.end - info.begin) * share)

        def read(name: str, index):
            return handle.get_slice(name)[index]

        # The slices are read several at once (each read fetches and decrypts its chunk range),
        # so one tensor's GETs overlap the next ones' instead of waiting for them: bounded by
        # PREFETCH_TENSORS reads and by _window_bytes of slices in flight (one read always runs,
        # however large). Results are taken in order, so the dict's order is the file's.
        budget = _window_bytes(handle)
        result, pending, in_flight = {}, deque(), 0
        with ThreadPoolExecutor(PREFETCH_TENSORS, thread_name_prefix="sealtensors-each") as pool:
            try:
                for name in wanted:
                    index, size = plan(name)
                    while pending and (len(pending) >= PREFETCH_TENSORS
                                       or in_flight + size > budget):
                        done_name, future, done_size = pending.popleft()
                        result[done_name] = future.result()
                        in_flight -= done_size
                    pending.append((name, pool.submit(read, name, index), size))
                    in_flight += size
                while pending:
                    done_name, future, _ = pending.popleft()
                    result[done_name] = future.result()
            except BaseException:
                for _, future, _ in pending:
                    future.cancel()
                raise
    return result


def _comm_device(group) -> torch.device:
    """NCCL moves CUDA tensors only; gloo (and MPI) work on CPU tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _load_shared(filename, key, dims, group, names, fs, counters, verification, check=None):
    from .safe_open import safe_open

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    leader = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0
    comm = _comm_device(group)
    handle = None
    try:
        # The leader's open (and any failure: wrong key, integrity, store errors) decides for all:
        # it broadcasts the plan, or the error text so that no rank waits forever.
        plan: list = [None]
        failure: BaseException | None = None
        if rank == 0:
            try:
                handle = safe_open(filename, "pt", key=key, fs=fs, **verification)
                if check is not None:
                    check(handle._reader)
                _counting(handle, counters)
                wanted = handle.offset_keys() if names is None else list(names)
                plan[0] = wanted
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                plan[0] = f"{type(exc).__name__}: {exc}"
                failure = exc
        dist.broadcast_object_list(plan, src=leader, group=group)
        if isinstance(plan[0], str):
            if rank == 0:
                raise failure
            raise RuntimeError(f"the leader (rank {leader}) could not open the file: {plan[0]}")
        result = {}
        for name in plan[0]:
            # Decrypted one tensor at a time: the leader holds at most one whole tensor extra.
            full, layout = None, [None]
            if rank == 0:
                try:
                    full = handle.get_tensor(name).to(comm)
                    layout[0] = (str(full.dtype), list(full.shape))
                except Exception as exc:  # noqa: BLE001 - told to every rank, then re-raised
                    layout[0] = f"{type(exc).__name__}: {exc}"
                    failure = exc
            dist.broadcast_object_list(layout, src=leader, group=group)
            if isinstance(layout[0], str):
                if rank == 0:
                    raise failure
                raise RuntimeError(f"the leader (rank {leader}) failed on {name!r}: {layout[0]}")
            dtype, shape = getattr(torch, layout[0][0].removeprefix("torch.")), layout[0][1]
            dim = _dim_for(dims, name, len(shape))
            if dim is None:
                tensor = full if rank == 0 else torch.empty(shape, dtype=dtype, device=comm)
                dist.broadcast(tensor, src=leader, group=group)
                if rank != 0:
                    counters["bytes_received"] += tensor.nbytes
                result[name] = tensor
                continue
            bounds = [_shard_bounds(shape[dim], r, world) for r in range(world)]
            mine_shape = list(shape)
            mine_shape[dim] = bounds[rank][1] - bounds[rank][0]
            out = torch.empty(mine_shape, dtype=dtype, device=comm)
            pieces = None
            if rank == 0:
                pieces = [full.narrow(dim, b, e - b).contiguous() for b, e in bounds]
            if len({e - b for b, e in bounds}) == 1:
                dist.scatter(out, pieces, src=leader, group=group)
            elif rank == 0:  # unequal slices: scatter wants equal sizes, send them one by one
                for other in range(1, world):
                    dist.send(pieces[other], dst=dist.get_global_rank(group, other)
                              if group is not dist.group.WORLD else other, group=group)
            else:
                dist.recv(out, src=leader, group=group)
            if rank == 0:
                out = pieces[0]
            else:
                counters["bytes_received"] += out.nbytes
            result[name] = out
        return result
    finally:
        if handle is not None:
            handle.close()

