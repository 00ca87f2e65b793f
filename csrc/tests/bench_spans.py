"""Per-call overhead of the C engine: decrypt a hot 1 GiB sealed file as 1 call, 64 calls of 16 MiB
and 1024 calls of 1 MiB (SealedReader.read_chunks_into, the default threads) into one pre-faulted
buffer. Prints the median and best of `rounds` runs per row; each round times every row in turn.

    python csrc/tests/bench_spans.py [path/to/model.sealed [manifest.json [rounds]]]
"""
import json
import statistics
import sys
import time

from sealtensors.engine import memory as _memory
from sealtensors.reader import SealedReader

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sb/m/model.sealed"
manifest = sys.argv[2] if len(sys.argv) > 2 else "/tmp/sb/m/manifest.json"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
key = bytes.fromhex(json.load(open(manifest))["key"])
reader = SealedReader.open(path, key)
total = reader._chunk_total
span_chunks = 1 << 30 >> 14  # 1 GiB of chunks
stop_all = min(total, span_chunks)
dst = _memory.allocate(reader._plaintext_of_chunks(0, stop_all))
dst[:] = 1  # pre-fault


def run(per_call):
    start = time.perf_counter()
    for first in range(0, stop_all, per_call):
        stop = min(first + per_call, stop_all)
        off = first * 16384
        n = reader._plaintext_of_chunks(first, stop)
        reader.read_chunks_into(first, stop, memoryview(dst)[off:off + n])
    return time.perf_counter() - start


rows = {"1 call of 1 GiB": stop_all, "64 calls of 16 MiB": 1024, "1024 calls of 1 MiB": 64}
for per in rows.values():  # warm the page cache and the pool
    run(per)
times = {name: [] for name in rows}
for _ in range(rounds):
    for name, per in rows.items():
        times[name].append(run(per))
for name, t in times.items():
    print(f"{name:22s} median {statistics.median(t):.4f} s  best {min(t):.4f} s")
