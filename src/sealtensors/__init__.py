"""sealtensors: encrypted, authenticated model weights that load as fast as plain ones."""

from __future__ import annotations

from ._version import __version__
from .errors import (
    BackendError,
    CommitmentError,
    FormatError,
    IntegrityError,
    InvalidKeyError,
    SealError,
    UnsupportedFormatError,
    WrongKeyError,
)


def __getattr__(name: str):
    # ``sealtensors.backend`` is computed on access: the engine can be switched at run time.
    if name == "backend":
        from ._backends import backend_name

        return backend_name()
    raise AttributeError(f"module 'sealtensors' has no attribute {name!r}")


__all__ = [
    "__version__",
    "backend",
    "SealError",
    "FormatError",
    "UnsupportedFormatError",
    "IntegrityError",
    "CommitmentError",
    "WrongKeyError",
    "InvalidKeyError",
    "BackendError",
]
