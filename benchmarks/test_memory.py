"""Peak resident memory of a load, each in a fresh subprocess (ru_maxrss over the post-import baseline).

Reported in the benchmark's extra_info and printed; not asserted (targets are judged by run_all.py).
The loaded result is still verified by the worker, which exits non-zero on a wrong result.
"""

from __future__ import annotations

import pytest

import run_all


@pytest.mark.benchmark(group="peak-rss")
@pytest.mark.parametrize("name", run_all.RSS_CASES)
def test_peak_rss(benchmark, bench_context, name):
    if name.startswith("cryptotensors") and bench_context.manifest["cryptotensors"] is None:
        pytest.skip("model built without cryptotensors")
    record = benchmark.pedantic(run_all.run_worker, args=(bench_context.directory, name, "--rss"),
                                rounds=1, iterations=1)
    model = bench_context.manifest["model"]["nbytes"]
    benchmark.extra_info["rss_delta_bytes"] = record["rss_delta"]
    benchmark.extra_info["rss_delta_over_model"] = record["rss_delta"] / model
    print(f"\n{name}: peak RSS +{record['rss_delta'] / (1 << 20):.0f} MiB over baseline, "
          f"{record['rss_delta'] / model:.2f}x the model's {model / (1 << 20):.0f} MiB")
