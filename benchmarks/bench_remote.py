"""Remote loading benchmark on loopback: a sealed load from a local moto S3 server against a plain
safetensors download of the same model from the same server through s3fs (ratio in the same run),
and tensor-parallel loading with every rank reading itself against one reader sharing ("shared").

    .venv/bin/python benchmarks/bench_remote.py [--mib 128] [--repeat 3] [--world 2]
        [--each-prefetch 1,4]

``--each-prefetch`` runs "each" mode once per value of ``sealtensors.distributed.PREFETCH_TENSORS``
(1: tensor by tensor, as before prefetching), the configurations interleaved run by run; every
distributed figure is the median over ``--repeat`` runs of the slowest rank.

Both loads are checked for equality with the original tensors before any time is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from remote_servers import MotoS3Server, free_port  # noqa: E402

import sealtensors.numpy as stnp  # noqa: E402

KEY = bytes(range(32))


def _model(mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    layers = max(1, mib // 8)
    return {f"layer{i}.weight": rng.standard_normal((1024, 2048), dtype=np.float32)
            for i in range(layers)}


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - only a label
        return platform.processor() or "unknown"


def _distributed_worker(rank, world, port, url, endpoint, mode, prefetch, out, label):
    import torch.distributed as dist

    import s3fs

    import sealtensors.distributed
    from sealtensors.distributed import load_sharded

    if prefetch:
        sealtensors.distributed.PREFETCH_TENSORS = prefetch

    fs = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        dist.barrier()
        stats: dict = {}
        load_sharded(url, KEY if mode == "each" or rank == 0 else None, dims=0, mode=mode, fs=fs,
                     stats=stats)
        dist.barrier()
        with open(os.path.join(out, f"{label}-{rank}.txt"), "w") as handle:
            handle.write(f"{stats['seconds']} {stats['bytes_decrypted']} {stats['bytes_received']}")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--world", type=int, default=2, help="0 skips the distributed part")
    parser.add_argument("--each-prefetch", default="",
                        help="comma-separated PREFETCH_TENSORS values for 'each' mode "
                             "(default: the library's)")
    args = parser.parse_args()

    import safetensors.numpy as plain

    tensors = _model(args.mib)
    size = sum(t.nbytes for t in tensors.values())
    server = MotoS3Server()
    try:
        server.make_bucket("bench")
        fs = server.filesystem()
        with tempfile.TemporaryDirectory() as tmp:
            sealed, raw = os.path.join(tmp, "m.sealed"), os.path.join(tmp, "m.safetensors")
            stnp.save_file(tensors, sealed, KEY)
            plain.save_file(tensors, raw)
            fs.put(sealed, "bench/m.sealed")
            fs.put(raw, "bench/m.safetensors")

        def sealed_load():
            return stnp.load_file("bench/m.sealed", KEY, fs=fs)

        def plain_load():
            return plain.load(fs.cat_file("bench/m.safetensors"))

        for load in (sealed_load, plain_load):  # warm up and check equality
            result = load()
            assert all(np.array_equal(result[n], tensors[n]) for n in tensors)
            del result
        times = {"sealed": [], "plain": []}
        for _ in range(args.repeat):
            for name, load in (("sealed", sealed_load), ("plain", plain_load)):
                started = time.perf_counter()
                result = load()
                times[name].append(time.perf_counter() - started)
                del result
        sealed_s, plain_s = statistics.median(times["sealed"]), statistics.median(times["plain"])
        print(f"CPU: {_cpu()}, {os.cpu_count()} cores; load average {os.getloadavg()}")
        print(f"model: {size / 2**20:.0f} MiB in {len(tensors)} tensors; moto S3 on loopback")
        print(f"sealed load (s3fs range GETs, decrypt): {sealed_s:.2f} s "
              f"({size / 2**20 / sealed_s:.0f} MiB/s)")
        print(f"plain safetensors download + load (s3fs cat_file): {plain_s:.2f} s "
              f"({size / 2**20 / plain_s:.0f} MiB/s)")
        print(f"ratio sealed/plain: {sealed_s / plain_s:.2f}")

        if args.world:
            import torch.multiprocessing as mp

            prefetches = [int(v) for v in args.each_prefetch.split(",") if v] or [0]
            configs = [(f"each-prefetch{p}" if p else "each", "each", p) for p in prefetches]
            configs.append(("shared", "shared", 0))
            slowest: dict[str, list[float]] = {label: [] for label, _, _ in configs}
            amounts = {}
            with tempfile.TemporaryDirectory() as out:
                for _ in range(args.repeat):
                    for label, mode, prefetch in configs:
                        mp.spawn(_distributed_worker,
                                 args=(args.world, free_port(), "bench/m.sealed", server.url,
                                       mode, prefetch, out, label),
                                 nprocs=args.world, join=True)
                        rows = []
                        for rank in range(args.world):
                            with open(os.path.join(out, f"{label}-{rank}.txt")) as handle:
                                seconds, decrypted, received = handle.read().split()
                            rows.append((float(seconds), int(decrypted), int(received)))
                        slowest[label].append(max(r[0] for r in rows))
                        amounts[label] = rows
            for label, _, _ in configs:
                rows = amounts[label]
                print(f"world {args.world}, {label}: slowest rank median "
                      f"{statistics.median(slowest[label]):.2f} s "
                      f"(runs {[round(t, 2) for t in slowest[label]]}); per-rank decrypted MiB "
                      f"{[round(r[1] / 2**20, 1) for r in rows]}, received MiB "
                      f"{[round(r[2] / 2**20, 1) for r in rows]}")
        print(f"load average after: {os.getloadavg()}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
