"""The provider slot type: the data key wrapped by an external key provider (KMS, HSM, TPM, plug-in).

Slot body = name length u8 || provider name (ASCII) || provider payload (opaque, at most 8192
bytes), the payload made by :meth:`KeyProvider.wrap` with binding
"sealtensors/v2/provider-slot" || 0x00 || file id. Slot id = 16 random bytes.
"""

from __future__ import annotations

import secrets

from ..errors import FormatError
from .provider import MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, KeyProvider
from .slots import PROVIDER, SLOT_ID_SIZE, Identity, Recipient, SlotRecord

BINDING_LABEL = b"sealtensors/v2/provider-slot\x00"


def binding(file_id: bytes) -> bytes:
    return BINDING_LABEL + file_id


def split_body(body: bytes) -> tuple[str, bytes]:
    """(provider name, payload); FormatError when the body is malformed."""
    if not body:
        raise FormatError("empty provider slot")
    length = body[0]
    name = body[1:1 + length]
    if not 1 <= length <= MAX_NAME_BYTES or len(name) != length:
        raise FormatError("provider slot name length out of range")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("provider slot name is not ASCII") from None
    if not text.isprintable():
        raise FormatError("provider slot name has control characters")
    payload = body[1 + length:]
    if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise FormatError("provider slot payload size out of range")
    return text, payload


class ProviderRecipient(Recipient, Identity):
    """A configured :class:`KeyProvider` as recipient (seal, rewrap) and identity (open)."""

    slot_type = PROVIDER
    slot_types = (PROVIDER,)

    def __init__(self, provider: KeyProvider) -> None:
        name = provider.name.encode("ascii")
        if not 1 <= len(name) <= MAX_NAME_BYTES:
            raise ValueError("provider name must be 1..64 ASCII bytes")
        self.provider = provider

    def wrap(self, data_key: bytes, file_id: bytes) -> SlotRecord:
        payload = self.provider.wrap(data_key, binding(file_id))
        if not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"provider {self.provider.name!r} returned a payload of {len(payload)} bytes")
        name = self.provider.name.encode("ascii")
        return SlotRecord(PROVIDER, secrets.token_bytes(SLOT_ID_SIZE),
                          bytes([len(name)]) + name + payload)

    def unwrap(self, record: SlotRecord, file_id: bytes) -> bytes | None:
        if record.slot_type != PROVIDER:
            return None
        name, payload = split_body(record.body)
        if name != self.provider.name:
            return None
        data_key = self.provider.unwrap(payload, binding(file_id))
        if data_key is not None and len(data_key) != 32:
            raise FormatError(f"provider {name!r} returned a {len(data_key)}-byte data key")
        return data_key

    def describe(self) -> str:
        return f"provider {self.provider.slot_hint()}"
