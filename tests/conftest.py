"""Shared test configuration: Hypothesis profiles, the every-backend fixture, sealed-file helpers.

Every test runs once per engine: ``python`` (pycryptodome) and ``c-<provider>`` for each AES provider
the C engine reports on this machine. The parametrization is an autouse fixture (the shape of
markupsafe's conftest), so a test needs nothing to be covered on all engines; a test that wants to know
which engine runs takes the ``backend`` fixture (or reads ``sealtensors.engine.backends.engine().name``
inside Hypothesis tests, which must not request function-scoped fixtures by name).

Environment:

- ``HYPOTHESIS_PROFILE``: ``dev`` (default), ``ci`` (fewer examples, for two-core runners) or
  ``thorough``.
- ``SEALTENSORS_REQUIRE_C=1``: fail the run at collection unless the C engine imports and reports at
  least one provider, so a broken build cannot silently shrink the matrix to Python only.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sealtensors.engine import backends as _backends

# --- Hypothesis profiles -------------------------------------------------------------------------

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=40, **_COMMON)
settings.register_profile("ci", max_examples=15, print_blob=True, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# --- backends ------------------------------------------------------------------------------------

VECTORS = Path(__file__).parent / "vectors"


def _require_c() -> bool:
    return os.environ.get("SEALTENSORS_REQUIRE_C", "").strip() == "1"


def _discover_backends() -> tuple[list[str], str | None]:
    """(backend ids, why the C engine is missing or None)."""
    try:
        from sealtensors.engine import cengine as _cengine
    except ImportError as exc:
        return ["python"], f"sealtensors.engine.cengine cannot be imported: {exc}"
    providers = list(_cengine.available_providers())
    if not providers:
        return ["python"], "the C engine reports no available AES provider"
    return ["python"] + [f"c-{provider}" for provider in providers], None


BACKENDS, _C_MISSING = _discover_backends()


def pytest_configure(config):
    if _C_MISSING is not None and _require_c():
        raise pytest.UsageError(f"SEALTENSORS_REQUIRE_C=1 but {_C_MISSING}")


def pytest_report_header(config):
    note = f" ({_C_MISSING})" if _C_MISSING else ""
    return f"sealtensors backends: {', '.join(BACKENDS)}{note}"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``c_engine_only`` exercise the C engine's own API: they run once per C provider
    and are deselected (not skipped) for the Python backend. Tests marked ``engine_independent``
    (subprocess races, key parsing) run once, on the last engine listed (the C engine when built),
    and are deselected for the others."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("backend") if callspec is not None else None
        on_python = engine == "python"
        once_elsewhere = item.get_closest_marker("engine_independent") and engine is not None \
            and engine != BACKENDS[-1]
        (drop if (on_python and item.get_closest_marker("c_engine_only")) or once_elsewhere
         else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _switch_to(backend: str):
    """Make ``backend`` the current engine; returns it."""
    if backend == "python":
        return _backends.use("python")
    provider = backend.split("-", 1)[1]
    return _backends.use("c", provider=provider)


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    """The engine every test runs on (its id, e.g. ``"python"`` or ``"c-openssl"``)."""
    previous = _backends._current
    _switch_to(request.param)
    try:
        yield request.param
    finally:
        _backends._current = previous


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def make_sealed(tmp_path):
    """A factory that seals ``tensors`` to a fresh file under ``tmp_path`` and returns its path.

    ``make_sealed(tensors, key_or_keys, metadata=None, name=None)``.
    """
    from sealtensors.numpy import save_file

    counter = iter(range(1 << 30))

    def make(tensors, keys, metadata=None, name=None):
        path = tmp_path / (name or f"sealed-{next(counter)}.sealed")
        save_file(tensors, path, keys, metadata)
        return path

    return make
