"""Throughput of sealtensors against its baselines, each measured in the same session.

Groups (compare within a group; ``pytest benchmarks --benchmark-group-by=group``):

- ``engine``: raw decrypt into a pre-faulted buffer, per provider, 1 thread and all threads, next to
  numpy.copyto of the same bytes (the memory bound);
- ``load-numpy`` / ``load-torch``: whole loads against safetensors (unencrypted), a hand-written
  cryptography AESGCM loader and cryptotensors;
- ``load-slice``: the pure-Python engine against the C engine on a ~96 MiB slice.

Every benchmark checks what it loaded (names, dtypes, shapes, checksums of several tensors). No
timing is asserted here: the targets are judged by run_all.py from fresh-process medians.
"""

from __future__ import annotations

import pytest

import bench_cases

GROUPS = {
    "copy": "engine", "raw_ipsecmb": "engine", "raw_openssl": "engine",
    "raw_ipsecmb_1t": "engine", "raw_openssl_1t": "engine",
    "seal_torch": "load-torch", "cryptotensors_torch": "load-torch",
    "seal_python_slice": "load-slice", "seal_c_slice": "load-slice",
}


def _param(name):
    group = GROUPS.get(name, "load-numpy")
    marks = [pytest.mark.benchmark(group=group)]
    return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", [_param(n) for n in bench_cases.CASES])
def test_throughput(benchmark, bench_context, name):
    case = bench_cases.CASES[name]
    if name.startswith("cryptotensors"):
        pytest.importorskip("cryptotensors")
        if bench_context.manifest["cryptotensors"] is None:
            pytest.skip("model built without cryptotensors")
    if "ipsecmb" in name:
        from sealtensors.engine import cengine as _cengine

        if "ipsecmb" not in _cengine.available_providers():
            pytest.skip("ipsec-mb provider not available")
    run, verify, nbytes = case.make(bench_context)
    rounds = 5 if case.kind == "steady" else 3
    # Steady cases warm up once; loads are timed from the first one (each allocates fresh memory).
    result = benchmark.pedantic(run, rounds=rounds, iterations=1,
                                warmup_rounds=1 if case.kind == "steady" else 0)
    verify(result)
    benchmark.extra_info["plaintext_bytes"] = nbytes
    benchmark.extra_info["scale_to_model"] = case.scale
