"""Run one benchmark case in this (fresh) process and print one JSON line; used by run_all.py.

    python benchmarks/bench_worker.py DIRECTORY CASE [--inner K]
    python benchmarks/bench_worker.py DIRECTORY CASE --rss

Timing: a ``load`` case is timed once (the process's first load: fresh memory, like a server
starting); a ``steady`` case runs once as warm-up, then K times (default 3), and the median counts.
The result is verified after timing; a wrong result exits non-zero. ``cpu_seconds`` (user+sys of all threads)
next to ``seconds`` shows how many cores the run actually got; ``user_seconds``, ``sys_seconds``,
``minflt`` and ``majflt`` (getrusage of all threads) split it and count the page faults, and
``loadavg`` is the 1-minute load when the run ended.

``--rss``: peak resident memory of the load. The baseline is the RSS after the imports and the case's
setup, where the peak is reset (``/proc/self/clear_refs``); the peak is VmHWM after the load. The
delta is what the load added on top of the interpreter (file pages mapped into the process count:
RSS is what the kernel charges). ru_maxrss is not used because Linux carries the parent's
high-water mark across fork+exec. The peak is the larger of VmHWM and VmRSS sampled every
millisecond during the load (:class:`RssSampler`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cases  # noqa: E402


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (clear_refs 5); returns the current RSS.

    Not ru_maxrss: Linux carries the parent's high-water mark over fork+exec, so a worker started
    by a process that once held GiBs would report no growth at all."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then VmHWM still starts at exec, which is fresh for this process's own memory
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    return _status_bytes("VmHWM")


class RssSampler:
    """Samples VmRSS every millisecond from a thread (the loads release the GIL while decrypting):
    the kernel's high-water mark can miss file pages that were mapped and unmapped in between."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as f:
            while not self._stop.is_set():
                f.seek(0)
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
                self._stop.wait(0.001)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def _usage() -> tuple[float, float, int, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_majflt


def _usage_delta(before: tuple) -> dict:
    """User and system CPU seconds and page faults (minor, major) of all threads since ``before``:
    system time and faults barely depend on how busy the machine is, unlike wall time."""
    after = _usage()
    return {"user_seconds": after[0] - before[0], "sys_seconds": after[1] - before[1],
            "minflt": after[2] - before[2], "majflt": after[3] - before[3]}


def _loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("case", choices=sorted(bench_cases.CASES))
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--rss", action="store_true")
    args = parser.parse_args(argv)

    case = bench_cases.CASES[args.case]
    ctx = bench_cases.Context.open(args.directory)
    run, verify, nbytes = case.make(ctx)
    record = {"case": case.name, "nbytes": nbytes, "scale": case.scale}
    if args.rss:
        before = reset_peak_rss()
        with RssSampler() as sampler:
            result = run()
        record["rss_delta"] = max(peak_rss(), sampler.peak) - before
        record["rss_sampled_delta"] = sampler.peak - before
        record["rss_hwm_delta"] = peak_rss() - before
        record["rss_baseline"] = before
    elif case.kind == "steady":
        result = run()
        times, cpus, usages = [], [], []
        for _ in range(args.inner):
            cpu = _cpu_seconds()
            usage = _usage()
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
            cpus.append(_cpu_seconds() - cpu)
            usages.append(_usage_delta(usage))
        record["seconds"] = statistics.median(times)
        record["cpu_seconds"] = statistics.median(cpus)
        for field in usages[0]:
            record[field] = statistics.median(u[field] for u in usages)
        record["inner"] = times
    else:
        cpu = _cpu_seconds()
        usage = _usage()
        start = time.perf_counter()
        result = run()
        record["seconds"] = time.perf_counter() - start
        record["cpu_seconds"] = _cpu_seconds() - cpu
        record.update(_usage_delta(usage))
    record["loadavg"] = _loadavg()
    verify(result)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
