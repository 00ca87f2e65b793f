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

Every subclass's ``wrap`` and ``unwrap`` are guarded by this base class (``__init_subclass__``), so
built-in and third-party providers alike: have their arguments and results checked (32-byte data
keys, payload size), have unexpected exceptions turned into :class:`KeyProviderError` (one line,
the exception class and message, never key bytes), and are recorded in the audit trail
(:mod:`sealtensors.keys.audit`): one event per wrap, unwrap, refusal or failure.
"""

from __future__ import annotations

import abc
import functools
import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ..errors import FormatError, KeyProviderError

ENTRY_POINT_GROUP = "sealtensors.key_providers"
MAX_PAYLOAD_BYTES = 8192
MAX_NAME_BYTES = 64
DATA_KEY_BYTES = 32
# The label the v2 format puts in front of the 16-byte file id (see provider_slot.binding); used
# here only to name the file id in audit records. Providers treat the whole binding as opaque.
BINDING_LABEL = b"sealtensors/v2/provider-slot\x00"


class KeyProvider(abc.ABC):
    """Wraps and unwraps 32-byte data keys with a key the provider holds.

    ``name`` is the provider's registered name (ASCII, 1..64 bytes, e.g. ``"aws-kms"``); it is
    stored in the slot. Instances carry their configuration (key ARN, token label, PCR policy...);
    they must not put secrets in ``repr``.

    ``audit`` (instance or class attribute, optional): where this provider's audit events go, as
    accepted by :func:`sealtensors.keys.audit.record` (a callable taking the event dict, or a
    path); ``None`` means the ``SEALTENSORS_AUDIT_LOG`` file, if that variable is set.
    """

    name: str = ""
    audit: Callable[[dict], Any] | str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Guard the methods this class itself defines; inherited ones are guarded already.
        if "wrap" in cls.__dict__ and not getattr(cls.__dict__["wrap"], "_guarded", False):
            cls.wrap = _guard_wrap(cls.__dict__["wrap"])
        if "unwrap" in cls.__dict__ and not getattr(cls.__dict__["unwrap"], "_guarded", False):
            cls.unwrap = _guard_unwrap(cls.__dict__["unwrap"])

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
        """A short public description for ``inspect`` and audit records (no secrets)."""
        return self.name


def file_id_of(binding: bytes) -> str:
    """The file id named by ``binding``, as hex (the whole binding's hex for a foreign label)."""
    if binding.startswith(BINDING_LABEL):
        return binding[len(BINDING_LABEL):].hex()
    return binding.hex()


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _audit(provider: KeyProvider, operation: str, binding: bytes, outcome: str,
           detail: str | None = None) -> None:
    from . import audit

    event: dict[str, Any] = {
        "operation": operation,
        "provider": provider.name,
        "key": provider.slot_hint(),
        "file_id": file_id_of(binding),
        "outcome": outcome,
    }
    if detail is not None:
        event["detail"] = detail
    audit.record(event, sink=getattr(provider, "audit", None))


def _as_provider_error(provider: KeyProvider, operation: str, exc: Exception) -> KeyProviderError:
    """A plug-in's unexpected exception as one line (class and first line of its message)."""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return KeyProviderError(f"{provider.name}: {operation} failed: {type(exc).__name__}"
                            + (f": {first_line}" if first_line else ""))


def _guard_wrap(method):
    @functools.wraps(method)
    def wrap(self: KeyProvider, data_key: bytes, binding: bytes) -> bytes:
        data_key = _check_bytes(data_key, "data_key")
        binding = _check_bytes(binding, "binding")
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"data_key must be {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        try:
            payload = method(self, data_key, binding)
            payload = _check_bytes(payload, f"{self.name} payload")
            if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
                raise KeyProviderError(f"{self.name}: wrap returned a {len(payload)}-byte payload "
                                       f"(allowed 1..{MAX_PAYLOAD_BYTES})")
        except KeyProviderError as exc:
            _audit(self, "wrap", binding, "KeyProviderError", str(exc))
            raise
        except Exception as exc:
            error = _as_provider_error(self, "wrap", exc)
            _audit(self, "wrap", binding, "KeyProviderError", str(error))
            raise error from exc
        _audit(self, "wrap", binding, "success")
        return payload

    wrap._guarded = True  # type: ignore[attr-defined]
    return wrap


def _guard_unwrap(method):
    @functools.wraps(method)
    def unwrap(self: KeyProvider, payload: bytes, binding: bytes) -> bytes | None:
        payload = _check_bytes(payload, "payload")
        binding = _check_bytes(binding, "binding")
        if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
            raise FormatError(f"{self.name}: provider payload of {len(payload)} bytes "
                              f"(allowed 1..{MAX_PAYLOAD_BYTES})")
        try:
            data_key = method(self, payload, binding)
            if data_key is not None:
                data_key = _check_bytes(data_key, f"{self.name} data key")
                if len(data_key) != DATA_KEY_BYTES:
                    raise KeyProviderError(f"{self.name}: unwrap returned a {len(data_key)}-byte "
                                           f"data key, not {DATA_KEY_BYTES}")
        except (KeyProviderError, FormatError) as exc:
            _audit(self, "unwrap", binding, type(exc).__name__, str(exc))
            raise
        except Exception as exc:
            error = _as_provider_error(self, "unwrap", exc)
            _audit(self, "unwrap", binding, "KeyProviderError", str(error))
            raise error from exc
        _audit(self, "unwrap", binding, "success" if data_key is not None else "not-this-provider")
        return data_key

    unwrap._guarded = True  # type: ignore[attr-defined]
    return unwrap


_BUILTIN: dict[str, str] = {}  # name -> "module:Class", filled by sealtensors.keys.providers


def register_builtin(name: str, target: str) -> None:
    _BUILTIN[name] = target


def provider_names() -> list[str]:
    """Names of the installed providers: built-in and entry points, sorted."""
    from . import providers  # noqa: F401 - registers the built-in providers

    names = set(_BUILTIN)
    names.update(entry.name for entry in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def provider_class(name: str) -> type[KeyProvider]:
    """The provider class registered under ``name`` (built-in first, then entry points)."""
    from . import providers  # noqa: F401 - registers the built-in providers

    target = _BUILTIN.get(name)
    if target is not None:
        module_name, _, class_name = target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                loaded = entry.load()
            except Exception as exc:
                raise KeyProviderError(f"key provider {name!r} ({entry.value}) cannot be loaded: "
                                       f"{type(exc).__name__}: {exc}") from exc
            if not (isinstance(loaded, type) and issubclass(loaded, KeyProvider)):
                raise KeyProviderError(f"entry point {name!r} ({entry.value}) in group "
                                       f"{ENTRY_POINT_GROUP!r} is not a KeyProvider subclass")
            return loaded
    raise KeyProviderError(f"no key provider named {name!r} is installed "
                           f"(entry point group {ENTRY_POINT_GROUP!r})")
