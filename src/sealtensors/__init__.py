"""sealtensors: encrypted, authenticated model weights that load as fast as plain ones."""

from __future__ import annotations

from ._version import __version__
from .errors import (
    BackendError,
    CommitmentError,
    FormatError,
    IntegrityError,
    InvalidKeyError,
    KeyProviderError,
    PolicyError,
    RecipientError,
    SealError,
    SignatureError,
    UnsupportedFormatError,
    WrongKeyError,
)
from .api import (
    buffer_size,
    engine_info,
    inspect,
    load_into,
    reseal,
    rewrap,
    seal_file,
    unseal_file,
    verify,
)
from .io.atomic import DestinationExistsError
from .engine.memory import PinningWarning
from .engine.backends import SlowEngineWarning
from .keys.policy import OpenRequest, set_policy
from .keys import (
    Identity,
    KeyProvider,
    Passphrase,
    Recipient,
    SigningKey,
    VerifyingKey,
    generate_identity,
    load_identity,
)
from .keys.keyfile import generate_key, key_id, read_key_file, write_key_file
from .safe_open import safe_open


def __getattr__(name: str):
    # ``sealtensors.backend`` is computed on access: the engine can be switched at run time.
    if name == "backend":
        from .engine.backends import backend_name

        return backend_name()
    raise AttributeError(f"module 'sealtensors' has no attribute {name!r}")


__all__ = [
    "__version__",
    "backend",
    "safe_open",
    "load_into",
    "buffer_size",
    "seal_file",
    "unseal_file",
    "rewrap",
    "reseal",
    "set_policy",
    "OpenRequest",
    "Recipient",
    "Identity",
    "Passphrase",
    "SigningKey",
    "VerifyingKey",
    "KeyProvider",
    "generate_identity",
    "load_identity",
    "inspect",
    "verify",
    "engine_info",
    "generate_key",
    "key_id",
    "read_key_file",
    "write_key_file",
    "SealError",
    "FormatError",
    "UnsupportedFormatError",
    "IntegrityError",
    "CommitmentError",
    "WrongKeyError",
    "SignatureError",
    "RecipientError",
    "KeyProviderError",
    "PolicyError",
    "InvalidKeyError",
    "BackendError",
    "DestinationExistsError",
    "PinningWarning",
    "SlowEngineWarning",
]
