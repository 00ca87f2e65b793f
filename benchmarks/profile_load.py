"""Where the time and memory of ``sealtensors.numpy.load_file`` go: a breakdown in fresh processes.

    python benchmarks/profile_load.py DIRECTORY [--runs 5]

Per fresh process, one of these steps (interleaved round by round, medians reported):

- ``fault``: allocate the plaintext buffer (``_memory.allocate``) and touch every page (fill), 1 thread;
- ``decrypt_prefaulted``: read_all_into a buffer that is already faulted in (the engine alone);
- ``load_mmap``: the library's load (``read_all_into`` from the mmap of the file) into fresh memory;
- ``load_fd``: the same load through the engine's pread path (``decrypt_chunk_range_fd_into`` on the
  reader's fd: 1 MiB per-thread read buffers, the file never mapped), the proposed fix for peak RSS.

Each reports wall seconds, CPU seconds (user+sys of all threads: CPU/wall near 2 means both cores
worked, near 1 means one core did) and the peak RSS delta (VmHWM, reset before the step). DIRECTORY is a model built by run_all.py
(``--dir DIR --keep``) or conftest.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEPS = ("fault", "decrypt_prefaulted", "load_mmap", "load_fd")


def _usage():
    from bench_worker import peak_rss

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, peak_rss()


def step(directory: str, name: str) -> dict:
    import bench_model
    from sealtensors.engine import memory as _memory
    from sealtensors.crypto import chunked
    from sealtensors.reader import SealedReader

    manifest = bench_model.load_manifest(directory)
    reader = SealedReader.open(str(Path(directory) / "model.sealed"), bytes.fromhex(manifest["key"]))
    n = reader.data_length
    buffer = None
    if name == "decrypt_prefaulted":
        buffer = _memory.allocate(n)
        reader.read_all_into(buffer)  # faults the buffer in and maps the file; not timed
    from bench_worker import reset_peak_rss

    reset_peak_rss()
    cpu0, rss0 = _usage()
    t0 = time.perf_counter()
    if name == "fault":
        buffer = _memory.allocate(n)
        buffer.fill(1)
    elif name == "decrypt_prefaulted" or name == "load_mmap":
        if buffer is None:
            buffer = _memory.allocate(n)
        reader.read_all_into(buffer)
    elif name == "load_fd":
        buffer = _memory.allocate(n)
        header = reader.header
        chunked.decrypt_chunk_range_fd_into(
            reader._data_keys, reader._source.fd, header.data_offset,
            header.file_length - header.data_offset, 0, chunked.chunk_count(n), buffer)
    wall = time.perf_counter() - t0
    cpu1, rss1 = _usage()
    if name != "fault":
        bench_model.check_bytes(buffer, reader.index, manifest["model"])
    return {"step": name, "wall": wall, "cpu": cpu1 - cpu0, "rss_delta": rss1 - rss0,
            "nbytes": n}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step(args.directory, args.step)))
        return 0
    records = {s: [] for s in STEPS}
    for _ in range(args.runs):
        for s in STEPS:
            out = subprocess.run([sys.executable, __file__, args.directory, "--step", s],
                                 capture_output=True, text=True, check=True).stdout
            records[s].append(json.loads(out))
    print("| step | median wall s | GB/s | CPU s / wall s | peak RSS delta MiB |")
    print("|---|---:|---:|---:|---:|")
    for s, rs in records.items():
        wall = statistics.median(r["wall"] for r in rs)
        ratio = statistics.median(r["cpu"] / r["wall"] for r in rs)
        rss = statistics.median(r["rss_delta"] for r in rs) / (1 << 20)
        print(f"| {s} | {wall:.3f} | {rs[0]['nbytes'] / wall / 1e9:.2f} | {ratio:.2f} | "
              f"{rss:.0f} |")
    print(json.dumps(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
