"""The key-provider interface: external services (KMS, HSM, TPM, plug-ins) that wrap a file's data key.

A provider slot in a sealed file holds the provider's *name* and an opaque *payload* that only the
provider can turn back into the data key. sealtensors never sees the provider's key-encryption key.
Every wrap and unwrap is bound to the file: the ``binding`` argument (the file id, 16 bytes, with a
fixed label) MUST be passed to the service as encryption context / AAD / policy data, so a payload
copied into another file does not unwrap there.

Providers are found by name through the entry-point group ``sealtensors.key_providers`` (each entry
point names a class implementing :class:`KeyProvider`), plus the built-in ones registered in
:mod:`sealtensors.keys.providers`. Optional dependencies (boto3, python-pkcs11, tpm2-pytss) are
imported lazily inside each provider, with an error naming the extra to install.
"""

from __future__ import annotations

import abc
from importlib import metadata

from ..errors import KeyProviderError

ENTRY_POINT_GROUP = "sealtensors.key_providers"
MAX_PAYLOAD_BYTES = 8192
MAX_NAME_BYTES = 64


class KeyProvider(abc.ABC):
    """Wraps and unwraps 32-byte data keys with a key the provider holds.

    ``name`` is the provider's registered name (ASCII, 1..64 bytes, e.g. ``"aws-kms"``); it is
    stored in the slot. Instances carry their configuration (key ARN, token label, PCR policy...);
    they must not put secrets in ``repr``.
    """

    name: str = ""

    @abc.abstractmethod
    def wrap(self, data_key: bytes, binding: bytes) -> bytes:
        """Return the payload (at most MAX_PAYLOAD_BYTES) that :meth:`unwrap` turns back into
        ``data_key``, bound to ``binding``. Failures raise KeyProviderError."""

    @abc.abstractmethod
    def unwrap(self, payload: bytes, binding: bytes) -> bytes | None:
        """Return the 32-byte data key, or None when this provider instance is not the one the
        payload was made for (another key, another token): the reader then tries other slots.
        Refusals by the service (denied, disabled, wrong binding, PCR mismatch) raise
        KeyProviderError; a payload that cannot be parsed raises FormatError."""

    def slot_hint(self) -> str:
        """A short public description for ``inspect`` (no secrets)."""
        return self.name


_BUILTIN: dict[str, str] = {}  # name -> "module:Class", filled by sealtensors.keys.providers


def register_builtin(name: str, target: str) -> None:
    _BUILTIN[name] = target


def provider_class(name: str) -> type[KeyProvider]:
    """The provider class registered under ``name`` (built-in or entry point)."""
    from . import providers  # noqa: F401 - registers the built-in providers

    target = _BUILTIN.get(name)
    if target is None:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                return entry.load()
        raise KeyProviderError(f"no key provider named {name!r} is installed "
                               f"(entry point group {ENTRY_POINT_GROUP!r})")
    module_name, _, class_name = target.partition(":")
    import importlib

    return getattr(importlib.import_module(module_name), class_name)
