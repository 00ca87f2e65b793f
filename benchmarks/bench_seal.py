"""Is sealing disk bound or CPU bound? seal_file of the benchmark model to disk and to /dev/shm.

    python benchmarks/bench_seal.py DIRECTORY [--runs 3] [--disk-dir PATH] [--shm-dir /dev/shm]

DIRECTORY holds the benchmark model (run_all.py ``--dir DIR --keep``); its ``plain.safetensors``
(hot in the page cache) is sealed. Per round, each in a fresh process, interleaved:

- ``seal_disk`` / ``seal_shm``: ``sealtensors.seal_file`` into a directory on the disk / on tmpfs;
- ``write_disk`` / ``write_shm``: writing the same number of bytes (random, 16 MiB at a time) and
  fsync: what the destination itself allows.

Reports wall, user and system seconds (getrusage of all the child's threads) and CPU s / wall s.
CPU/wall near the number of cores with the shm time close to the disk time means CPU bound; a disk
time near ``write_disk`` and well above ``seal_shm`` means disk bound. ``uptime`` is printed with
every run because wall time on a shared machine means little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("seal_disk", "seal_shm", "write_disk", "write_shm")


def _usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def child(case: str, source: Path, target_dir: Path, key: bytes) -> dict:
    target = target_dir / f"bench-seal-{os.getpid()}.out"
    nbytes = source.stat().st_size
    if case.startswith("seal"):
        import sealtensors

        before, start = _usage(), time.perf_counter()
        sealtensors.seal_file(source, target, key)
    else:
        piece = os.urandom(16 << 20)  # outside the timed region
        before, start = _usage(), time.perf_counter()
        with open(target, "wb") as out:
            for _ in range(-(-nbytes // len(piece))):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    after = _usage()
    written = target.stat().st_size
    target.unlink()
    return {"case": case, "seconds": seconds, "user": after[0] - before[0],
            "sys": after[1] - before[1], "bytes": written}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--disk-dir", help="directory on the disk (default: DIRECTORY)")
    parser.add_argument("--shm-dir", default="/dev/shm")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "TARGET_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    source, key = directory / "plain.safetensors", bytes.fromhex(manifest["key"])
    if args.child:
        print(json.dumps(child(args.child[0], source, Path(args.child[1]), key)))
        return 0
    targets = {"disk": Path(args.disk_dir or directory), "shm": Path(args.shm_dir)}
    results: dict[str, list[dict]] = {case: [] for case in CASES}
    for round_number in range(args.runs):
        for case in CASES:
            command = [sys.executable, __file__, str(directory), "--child", case,
                       str(targets[case.split("_")[1]])]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record["uptime"] = uptime()
            results[case].append(record)
            print(f"round {round_number + 1} {case}: {record['seconds']:.2f} s wall, "
                  f"{record['user']:.2f} user, {record['sys']:.2f} sys | {record['uptime']}",
                  file=sys.stderr, flush=True)
    print("| case | wall s (min / median / max) | user s | sys s | CPU s / wall s | MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, records in results.items():
        wall = [r["seconds"] for r in records]
        median = statistics.median(wall)
        user = statistics.median(r["user"] for r in records)
        sys_s = statistics.median(r["sys"] for r in records)
        cpu = statistics.median((r["user"] + r["sys"]) / r["seconds"] for r in records)
        print(f"| `{case}` | {min(wall):.2f} / {median:.2f} / {max(wall):.2f} | {user:.2f} | "
              f"{sys_s:.2f} | {cpu:.2f} | {records[0]['bytes'] / median / 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
