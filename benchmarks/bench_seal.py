"""Is sealing disk bound or CPU bound? seal_file of the benchmark model next to plain writes of the
same size to the same places, in the same run.

    python benchmarks/bench_seal.py DIRECTORY [--runs 5] [--disk-dir PATH] [--shm-dir /dev/shm]
                                    [--cases seal_disk,write_disk,...] [--json results.json]
                                    [--no-prime]

DIRECTORY holds the benchmark model (run_all.py ``--dir DIR --keep``); its ``plain.safetensors``
(hot in the page cache) is sealed. Per round, each case in a fresh process, interleaved:

- ``seal_disk`` / ``seal_shm``: ``sealtensors.seal_file`` into a directory on the disk / on tmpfs
  (its temporary file, fsync and rename included); ``seal_disk_signed`` / ``seal_shm_signed``: the
  same with ``signer=`` (per-chunk SHA-256 digests and the signature trailer);
- ``write_disk`` / ``write_shm``: writing as many bytes as the model (random, 16 MiB at a time, one
  ``os.write`` each) and fsync: what the destination allows through the page cache;
  ``write_disk_kicked``: the same, handing each piece to the disk at once with sync_file_range
  (as the writer does), so the disk works while the writes go on rather than all in the fsync;
- ``direct_disk``: the same bytes with O_DIRECT from one aligned buffer, then fsync: the disk's own
  write speed, no page cache (what ``dd if=/dev/zero bs=16M count=64 oflag=direct`` measures).

Reports wall, user and system seconds (getrusage of all the child's threads), minor faults, CPU s /
wall s and GB/s of plaintext (the source file's bytes), min / median / max over the rounds, and the
ratio of each seal case's median to the plain write of the same target. A seal time near
``write_*`` with CPU s / wall s well under the number of cores means disk (or page cache) bound;
CPU s / wall s near the core count with a time well above ``write_*`` means CPU bound. ``uptime``
is recorded with every run because wall time on a shared machine means little without it.

Priming (on unless ``--no-prime``): before each timed case an untimed process writes, fsyncs and
deletes as many bytes on the same target. On a VM whose host backs guest memory lazily, the first
writer to take page-cache pages the guest has not used lately pays for the host faults inside its
copy into the page cache (perf: ``copy_folio_from_iter_atomic``), up to ~2 s of system time per
GiB; which case that hits depends on what ran before it, not on the case. Priming gives every case
recycled pages; ``--no-prime`` shows the cold figures (compare the same case across rounds).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("seal_disk", "seal_disk_signed", "write_disk", "write_disk_kicked", "direct_disk",
         "seal_shm", "seal_shm_signed", "write_shm")
PIECE = 16 << 20


def _usage() -> tuple[float, float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def _random_piece() -> mmap.mmap:
    # An anonymous mapping is page aligned, as O_DIRECT requires.
    piece = mmap.mmap(-1, PIECE)
    piece.write(os.urandom(PIECE))
    return piece


def _write_loop(target: Path, nbytes: int, piece: mmap.mmap, direct: bool,
                kick: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    if kick:
        import ctypes

        sync_file_range = ctypes.CDLL("libc.so.6", use_errno=True).sync_file_range
        sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fd = os.open(target, flags, 0o600)
    try:
        for number in range(-(-nbytes // PIECE)):
            os.write(fd, piece)
            if kick:
                sync_file_range(fd, number * PIECE, PIECE, 2)  # SYNC_FILE_RANGE_WRITE
        os.fsync(fd)
    finally:
        os.close(fd)


def child(case: str, source: Path, target_dir: Path, key: bytes) -> dict:
    target = target_dir / f"bench-seal-{os.getpid()}.out"
    nbytes = source.stat().st_size
    if case == "prime":
        _write_loop(target, nbytes, _random_piece(), direct=False)
        target.unlink()
        return {"case": case}
    if case.startswith("seal"):
        import sealtensors
        from sealtensors.keys import SigningKey

        options = {"signer": SigningKey.generate()} if case.endswith("signed") else {}
        before, start = _usage(), time.perf_counter()
        sealtensors.seal_file(source, target, key, **options)
    else:
        piece = _random_piece()  # outside the timed region
        before, start = _usage(), time.perf_counter()
        _write_loop(target, nbytes, piece, direct=case.startswith("direct"),
                    kick=case.endswith("kicked"))
    seconds = time.perf_counter() - start
    after = _usage()
    written = target.stat().st_size
    target.unlink()
    return {"case": case, "seconds": seconds, "user": after[0] - before[0],
            "sys": after[1] - before[1], "minor_faults": after[2] - before[2],
            "bytes": written, "plaintext_bytes": nbytes}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def summary(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| case | wall s (min / median / max) | GB/s (median) | user s | sys s | "
             "minor faults | CPU s / wall s | vs plain write |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    medians = {case: statistics.median(r["seconds"] for r in records)
               for case, records in results.items() if records}
    for case, records in results.items():
        if not records:
            continue
        wall = [r["seconds"] for r in records]
        median = medians[case]
        user = statistics.median(r["user"] for r in records)
        sys_s = statistics.median(r["sys"] for r in records)
        faults = statistics.median(r["minor_faults"] for r in records)
        cpu = statistics.median((r["user"] + r["sys"]) / r["seconds"] for r in records)
        baseline = "write_" + case.split("_")[1]
        ratio = (f"{median / medians[baseline]:.2f}x" if case.startswith("seal")
                 and baseline in medians else "")
        lines.append(f"| `{case}` | {min(wall):.2f} / {median:.2f} / {max(wall):.2f} | "
                     f"{records[0]['plaintext_bytes'] / median / 1e9:.2f} | {user:.2f} | "
                     f"{sys_s:.2f} | {faults:.0f} | {cpu:.2f} | {ratio} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--disk-dir", help="directory on the disk (default: DIRECTORY)")
    parser.add_argument("--shm-dir", default="/dev/shm")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--json", help="write every run's record here")
    parser.add_argument("--no-prime", action="store_true",
                        help="no untimed write of the same size to the target before each case")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "TARGET_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    source, key = directory / "plain.safetensors", bytes.fromhex(manifest["key"])
    if args.child:
        print(json.dumps(child(args.child[0], source, Path(args.child[1]), key)))
        return 0
    cases = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    targets = {"disk": Path(args.disk_dir or directory), "shm": Path(args.shm_dir)}
    results: dict[str, list[dict]] = {case: [] for case in cases}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; primed: {not args.no_prime}; "
          f"start: {uptime()}", flush=True)
    for round_number in range(args.runs):
        for case in cases:
            target = str(targets[case.split("_")[1]])
            if not args.no_prime:
                subprocess.run([sys.executable, __file__, str(directory), "--child", "prime",
                                target], capture_output=True, check=True)
            command = [sys.executable, __file__, str(directory), "--child", case, target]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record["uptime"] = uptime()
            results[case].append(record)
            print(f"round {round_number + 1} {case}: {record['seconds']:.2f} s wall, "
                  f"{record['user']:.2f} user, {record['sys']:.2f} sys | {record['uptime']}",
                  file=sys.stderr, flush=True)
    print(f"end: {uptime()}")
    print("\n".join(summary(results)))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "primed": not args.no_prime,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
