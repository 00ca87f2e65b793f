"""Which engine runs: the one place that reads ``SEALTENSORS_BACKEND``.

``auto`` (the default) takes the C engine when it was built and imports cleanly, else the pure-Python
engine. ``c`` demands the C engine and fails loudly without it; ``python`` forces the fallback. Any
other value is an error, so a typo never silently changes what runs. When ``auto`` falls back, a
:class:`SlowEngineWarning` says so once per process: the fallback is many times slower, and usually
means the package was installed without a C compiler or OpenSSL's headers.
"""

from __future__ import annotations

import os
import threading
import warnings

from ..errors import BackendError

VALID_CHOICES = ("auto", "c", "python")

_lock = threading.Lock()
_current = None
_warned_fallback = False


class SlowEngineWarning(UserWarning):
    """The C engine is unavailable and ``SEALTENSORS_BACKEND`` did not ask for the Python engine:
    sealtensors runs on the much slower pure-Python engine."""


def _warn_fallback(reason: ImportError) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    warnings.warn(
        f"the C engine is unavailable ({reason}); using the pure-Python engine, which is much "
        "slower. To fix it, install a C compiler and OpenSSL's headers (e.g. apt-get install gcc "
        "libssl-dev) and reinstall sealtensors; `sealtensors info` shows the engine in use. "
        "SEALTENSORS_BACKEND=python chooses the Python engine and silences this warning.",
        SlowEngineWarning, stacklevel=4)


def _load_c_engine(provider: str | None = None):
    from .cengine import CEngine  # noqa: PLC0415 - optional compiled module

    return CEngine(provider)


def _load(choice: str, provider: str | None = None):
    from .pyengine import PythonEngine

    if choice == "python":
        return PythonEngine()
    if choice == "c":
        try:
            return _load_c_engine(provider)
        except ImportError as exc:
            raise BackendError(f"SEALTENSORS_BACKEND=c but the C engine is unavailable: {exc}") from exc
    try:
        return _load_c_engine(provider)
    except ImportError as exc:
        _warn_fallback(exc)
        return PythonEngine()


def _choice_from_environment() -> str:
    choice = os.environ.get("SEALTENSORS_BACKEND", "auto").strip().lower() or "auto"
    if choice not in VALID_CHOICES:
        raise BackendError(
            f"SEALTENSORS_BACKEND={choice!r} is not one of {', '.join(VALID_CHOICES)}"
        )
    return choice


def engine():
    """The engine in use, selected on first use from the environment."""
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = _load(_choice_from_environment())
            current = _current
    return current


def use(choice: str, provider: str | None = None):
    """Switch engines at run time (``auto``, ``c`` or ``python``); returns the new engine.

    ``provider`` picks the C engine's AES provider (``ipsecmb``, ``openssl``, ``auto``); None reads
    ``SEALTENSORS_AES``.

    Meant for tests and benchmarks; a serving process normally sets the environment variable once.
    """
    global _current
    choice = choice.strip().lower()
    if choice not in VALID_CHOICES:
        raise BackendError(f"backend {choice!r} is not one of {', '.join(VALID_CHOICES)}")
    new = _load(choice, provider)
    with _lock:
        _current = new
    return new


def backend_name() -> str:
    return engine().name
