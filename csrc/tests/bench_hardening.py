"""Cost of the hardening pass, before against after in the same run: whole-span decrypts of 1 GiB
(memory and pread, 2 threads), 16 MiB pread spans (64 calls, as the staging ring issues them), and
the 1 GiB pread decrypt with per-chunk SHA-256 digests checked. Used for the tables in docs/ENGINE.md.

``--before DIR`` is a copy of the package (``DIR/sealtensors``) with the old compiled engine; each
round runs one subprocess per build, alternating, so both see the same machine load; the table
reports medians (and the best round). Without ``--before`` only the current build is measured.

    python csrc/tests/bench_hardening.py [--before DIR] [--after DIR] [--rounds 5] [--provider ipsecmb]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GIB = 1 << 30
SPAN = 16 << 20


def measure(path: str, digests_path: str, provider: str, threads: int) -> dict:
    """One round in this process: seconds per configuration."""
    from sealtensors.engine.cengine import CEngine
    from sealtensors.engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE

    engine = CEngine(provider)
    key, nonce = b"k" * 32, b"n" * 12
    size = os.path.getsize(path)
    plain = GIB
    dst = bytearray(plain)
    dst[:] = b"\x01" * plain  # pre-faulted
    view = memoryview(dst)
    out = {}
    with open(path, "rb") as f:
        fd = f.fileno()
        ciphertext = os.pread(fd, size, 0)

        start = time.perf_counter()
        engine.decrypt_span(key, nonce, 0, ciphertext, dst, final=True, threads=threads)
        out["1 GiB memory"] = time.perf_counter() - start

        start = time.perf_counter()
        engine.decrypt_span_fd(key, nonce, 0, fd, 0, size, dst, final=True, threads=threads)
        out["1 GiB pread"] = time.perf_counter() - start

        per = SPAN // CHUNK_SIZE
        total = plain // CHUNK_SIZE
        start = time.perf_counter()
        for first in range(0, total, per):
            engine.decrypt_span_fd(key, nonce, first, fd, first * ENCRYPTED_CHUNK_SIZE,
                                   per * ENCRYPTED_CHUNK_SIZE, view[first * CHUNK_SIZE:][:SPAN],
                                   final=False, threads=threads)
        out["64 x 16 MiB pread"] = time.perf_counter() - start

        if digests_path:
            with open(digests_path, "rb") as d:
                digests = d.read()
            try:
                start = time.perf_counter()
                engine.decrypt_span_fd(key, nonce, 0, fd, 0, size, dst, final=True,
                                       threads=threads, digests=digests)
                out["1 GiB pread + SHA-256 digests"] = time.perf_counter() - start
            except TypeError:
                pass  # a build without digest support
    view.release()
    return out


def prepare(directory: str) -> tuple[str, str]:
    """A 1 GiB span (final, so one more empty chunk) and its per-chunk SHA-256 digests."""
    from sealtensors.engine.cengine import CEngine
    from sealtensors.engine.spec import ENCRYPTED_CHUNK_SIZE, span_ciphertext_length

    plaintext = os.urandom(1 << 20) * (GIB >> 20)
    ciphertext = bytearray(span_ciphertext_length(GIB, True))
    CEngine().encrypt_span(b"k" * 32, b"n" * 12, 0, plaintext, ciphertext, final=True, threads=0)
    path = os.path.join(directory, "span.bin")
    with open(path, "wb") as f:
        f.write(ciphertext)
    view = memoryview(ciphertext)
    digests = b"".join(hashlib.sha256(view[i:i + ENCRYPTED_CHUNK_SIZE]).digest()
                       for i in range(0, len(ciphertext), ENCRYPTED_CHUNK_SIZE))
    view.release()
    digests_path = os.path.join(directory, "digests.bin")
    with open(digests_path, "wb") as f:
        f.write(digests)
    return path, digests_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before")
    parser.add_argument("--after", help="like --before, for the new build (default: installed)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--provider", default="ipsecmb")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2)  # internal: path digests_path
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.provider, args.threads)))
        return
    builds = {"after": args.after}
    if args.before:
        builds = {"before": args.before, "after": args.after}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in builds}
    with tempfile.TemporaryDirectory() as tmp:
        path, digests_path = prepare(tmp)
        for _ in range(args.rounds):
            for name, pythonpath in builds.items():
                env = dict(os.environ)
                if pythonpath:
                    env["PYTHONPATH"] = pythonpath
                run = subprocess.run([sys.executable, __file__, "--provider", args.provider,
                                      "--threads", str(args.threads), "--child", path,
                                      digests_path], env=env, capture_output=True, text=True,
                                     check=True)
                for row, value in json.loads(run.stdout.splitlines()[-1]).items():
                    results[name].setdefault(row, []).append(value)
    print(f"provider {args.provider}, threads {args.threads}, {args.rounds} rounds; "
          f"median (best) seconds")
    rows = list(results["after"])
    for row in rows:
        cells = []
        for name in builds:
            values = results[name].get(row)
            cells.append(f"{name} {statistics.median(values):.4f} ({min(values):.4f})"
                         if values else f"{name} -")
        print(f"{row:32s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
