"""A third-party key provider used by the tests: AES-256-GCM under a key the instance holds."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealtensors.errors import KeyProviderError
from sealtensors.keys.provider import KeyProvider


class LocalAesProvider(KeyProvider):
    """Wraps with AES-256-GCM under ``kek``; payload = nonce (12) || ciphertext || tag.

    ``behaviour`` lets tests make it misbehave: "ok", "crash" (raises a non-sealtensors
    exception), "short-key" (unwrap returns 16 bytes), "deny" (raises KeyProviderError).
    """

    name = "test-local-aes"

    def __init__(self, kek: bytes, behaviour: str = "ok", audit=None) -> None:
        self._kek = kek
        self.behaviour = behaviour
        self.audit = audit

    def __repr__(self) -> str:
        return f"LocalAesProvider(behaviour={self.behaviour!r})"

    def wrap(self, data_key: bytes, binding: bytes) -> bytes:
        if self.behaviour == "crash":
            raise ZeroDivisionError("plug-in bug")
        nonce = os.urandom(12)
        return nonce + AESGCM(self._kek).encrypt(nonce, data_key, binding)

    def unwrap(self, payload: bytes, binding: bytes) -> bytes | None:
        if self.behaviour == "deny":
            raise KeyProviderError("test-local-aes: denied by policy")
        if self.behaviour == "crash":
            raise ZeroDivisionError("plug-in bug")
        if self.behaviour == "short-key":
            return b"\x00" * 16
        try:
            return AESGCM(self._kek).decrypt(payload[:12], payload[12:], binding)
        except Exception:
            raise KeyProviderError("test-local-aes: payload refused (binding or key)") from None


class NotAProvider:
    """Declared under the entry-point group by mistake: provider_class must refuse it."""
