"""Raw span decrypt throughput of the C engine per provider and thread count, next to numpy.copyto of
the same bytes (the memory bound), measured in the same run. Used for the table in docs/ENGINE.md.

Every round times each configuration once, in turn (copy, then each provider x threads), so that all
of them see the same machine load; the table reports the median and the best round.

    python csrc/tests/bench_decrypt.py [--gib 1] [--repeat 5] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from sealtensors.engine.cengine import CEngine, available_providers
from sealtensors.engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, span_ciphertext_length


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    key, nonce = os.urandom(32), os.urandom(12)
    plaintext = np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)
    plaintext = np.tile(plaintext, size // plaintext.size + 1)[:size].copy()
    ciphertext = np.empty(span_ciphertext_length(size, True), dtype=np.uint8)
    dst = np.ones(size, dtype=np.uint8)  # pre-faulted
    CEngine("openssl").encrypt_span(key, nonce, 0, plaintext, ciphertext, final=True)

    configs = {"numpy.copyto (memory bound)": lambda: np.copyto(dst, plaintext)}
    for provider in available_providers():
        engine = CEngine(provider)
        for threads in (int(t) for t in args.threads.split(",")):
            label = f"decrypt {provider} ({engine.info()['cpu_path']}), {threads} thread(s)"
            configs[label] = (lambda e=engine, t=threads: e.decrypt_span(
                key, nonce, 0, ciphertext, dst, final=True, threads=t))
    times: dict[str, list[float]] = {label: [] for label in configs}
    for fn in configs.values():
        fn()  # warm up
    for _ in range(args.repeat):
        for label, fn in configs.items():
            times[label].append(seconds(fn))
            if label.startswith("decrypt"):
                assert np.array_equal(dst[:1 << 20], plaintext[:1 << 20])
                assert np.array_equal(dst[-(1 << 20):], plaintext[-(1 << 20):])

    print(f"{size / 2**30:.2f} GiB, {args.repeat} rounds, GB/s = 1e9 plaintext bytes per second, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for label, values in times.items():
        print(f"{label:66s} median {size / statistics.median(values) / 1e9:6.2f} GB/s, "
              f"best {size / min(values) / 1e9:6.2f} GB/s")
    # the cipher alone: a 1 MiB span that stays in cache, best of 200
    small_ct, small_out = ciphertext[:64 * ENCRYPTED_CHUNK_SIZE], dst[:64 * CHUNK_SIZE]
    for provider in available_providers():
        engine = CEngine(provider)
        best = min(seconds(lambda: engine.decrypt_span(key, nonce, 0, small_ct, small_out,
                                                       final=False, threads=1))
                   for _ in range(200))
        print(f"{'decrypt ' + provider + ' in cache (1 MiB span, 1 thread)':66s} "
              f"best {small_out.size / best / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
