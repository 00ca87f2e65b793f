"""Signed versus unsigned loads, and in-place rewrap of a large file: fresh processes, interleaved.

    .venv/bin/python benchmarks/bench_signed.py [--gib 1] [--runs 5] [--rewrap-gib 4] [--dir DIR]

Loads: the same model sealed twice (without and with a publisher signature); each run is a fresh
process timing one ``sealtensors.numpy.load_file`` (with ``signer=`` for the signed file, so every
chunk's SHA-256 is checked in the engine's threads), alternating the two. Reports min / median / max
and the median ratio. Rewrap: a ``--rewrap-gib`` file gets one recipient added in place, with and
without authenticating the data first (``verify_data``). Results are checked (equal arrays, a
recipient that opens the file); numbers go to docs/PERFORMANCE.md with the CPU and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEY = bytes(range(32))
_CHILD = r"""
import json, sys, time
import numpy as np
import sealtensors
from sealtensors.numpy import load_file
path, signer = sys.argv[1], sys.argv[2]
options = {"signer": signer} if signer != "-" else {}
started = time.perf_counter(); times = __import__("os").times()
arrays = load_file(path, bytes(range(32)), **options)
elapsed = time.perf_counter() - started; after = __import__("os").times()
assert float(arrays["t0"][0]) == 0.0
print(json.dumps({"seconds": elapsed, "cpu": (after.user - times.user) + (after.system - times.system)}))
"""


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def make_model(gib: float) -> dict[str, np.ndarray]:
    count = max(1, int(gib * 16))
    per = int(gib * (1 << 30)) // count // 2
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(per, dtype=np.float32).astype(np.float16)
               for i in range(count)}
    tensors["t0"][0] = 0
    return tensors


def timed_load(path: Path, signer: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), signer], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rewrap-gib", type=float, default=4.0)
    parser.add_argument("--dir")
    args = parser.parse_args()
    import sealtensors
    from sealtensors.keys import SigningKey
    from sealtensors.numpy import save_file

    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-signed-"))
    publisher = SigningKey.generate()
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": os.getloadavg(),
              "engine": sealtensors.engine_info()}
    tensors = make_model(args.gib)
    unsigned, signed = directory / "unsigned.sealed", directory / "signed.sealed"
    save_file(tensors, unsigned, KEY, overwrite=True)
    save_file(tensors, signed, KEY, overwrite=True, signer=publisher, generation=1)
    del tensors
    for path in (unsigned, signed):  # page cache warm, as in the reference benchmark
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    verifying = publisher.verifying_key.text()
    plain_runs, signed_runs = [], []
    for _ in range(args.runs):
        plain_runs.append(timed_load(unsigned, "-"))
        signed_runs.append(timed_load(signed, verifying))
    report["load_gib"] = args.gib
    report["unsigned"] = summary([r["seconds"] for r in plain_runs])
    report["signed"] = summary([r["seconds"] for r in signed_runs])
    report["unsigned_cpu_median"] = statistics.median(r["cpu"] for r in plain_runs)
    report["signed_cpu_median"] = statistics.median(r["cpu"] for r in signed_runs)
    report["signed_over_unsigned"] = report["signed"]["median"] / report["unsigned"]["median"]
    unsigned.unlink()
    signed.unlink()

    if args.rewrap_gib:
        big = directory / "big.sealed"
        tensors = make_model(args.rewrap_gib)
        save_file(tensors, big, KEY, overwrite=True)
        del tensors
        timings = {}
        for verify_data in (False, True):
            newcomer = os.urandom(32)
            started = time.perf_counter()
            sealtensors.rewrap(big, KEY, add=[newcomer], verify_data=verify_data)
            timings["verify" if verify_data else "header_only"] = time.perf_counter() - started
            with sealtensors.safe_open(big, "np", key=newcomer) as handle:
                assert float(handle.get_slice("t0")[:1][0]) == 0.0
        report["rewrap_gib"] = args.rewrap_gib
        report["rewrap_seconds"] = timings
        big.unlink()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
