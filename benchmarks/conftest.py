"""pytest-benchmark setup: the synthetic 1 GiB model, built once per session in a temporary directory.

Run with ``pytest benchmarks`` (not part of the default test run: testpaths is tests/). Set
``SEALTENSORS_BENCH_DIR`` to build into (or reuse) a fixed directory instead. The files are read once
after building so that every benchmark starts with a hot page cache.

These in-process benchmarks repeat each load in one interpreter; ``run_all.py`` is the reference
measurement (fresh processes, medians, the targets).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cases  # noqa: E402
import bench_model  # noqa: E402
import run_all  # noqa: E402


@pytest.fixture(scope="session")
def bench_context(tmp_path_factory) -> bench_cases.Context:
    fixed = os.environ.get("SEALTENSORS_BENCH_DIR")
    directory = Path(fixed) if fixed else tmp_path_factory.mktemp("model")
    if not (directory / "manifest.json").exists():
        bench_model.build(directory)
    run_all.warm_page_cache(directory)
    return bench_cases.Context.open(directory)


@pytest.fixture(autouse=True)
def _restore_engine_and_threads():
    """Cases switch the engine and SEALTENSORS_THREADS; put both back after each benchmark."""
    saved = os.environ.get("SEALTENSORS_THREADS")
    yield
    if saved is None:
        os.environ.pop("SEALTENSORS_THREADS", None)
    else:
        os.environ["SEALTENSORS_THREADS"] = saved
    from sealtensors.engine import backends as _backends

    _backends.use("auto")
