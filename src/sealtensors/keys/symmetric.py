"""The symmetric slot type: a 32-byte secret key that is both recipient and identity.

Slot id   = HKDF-Expand-SHA-512(key, "sealtensors/v2/slot-id" || 0x00 || file id, 16): different in
            every file, so files sealed for one key do not link, and only the key's holder can
            recognise its slot.
Slot body = C2SP chunked message (104 bytes) of the data key, input key = the key, context =
            "sealtensors/v2/slot/symmetric" || 0x00 || file id.
"""

from __future__ import annotations

import hmac

from ..crypto import chunked
from ..crypto.hkdf import hkdf_expand
from ..errors import CommitmentError, IntegrityError, InvalidKeyError
from .slots import BODY_SIZES, SLOT_ID_SIZE, SYMMETRIC, Identity, Recipient, SlotRecord

KEY_SIZE = 32
SLOT_ID_LABEL = b"sealtensors/v2/slot-id\x00"
CONTEXT_LABEL = b"sealtensors/v2/slot/symmetric\x00"
KEY_NAME_LABEL = b"sealtensors/v2/key-name"


class SymmetricKey(Recipient, Identity):
    """A 32-byte symmetric key. ``repr`` shows only its public name."""

    slot_type = SYMMETRIC
    slot_types = (SYMMETRIC,)

    def __init__(self, key) -> None:
        raw = bytes(key)
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"a symmetric key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._key = raw

    @property
    def secret(self) -> bytes:
        return self._key

    def name(self) -> bytes:
        """A 16-byte public name of the key, the same in every file (for `key id`; never stored in
        sealed files)."""
        return hkdf_expand(self._key, KEY_NAME_LABEL, 16, "sha512")

    def slot_id(self, file_id: bytes) -> bytes:
        return hkdf_expand(self._key, SLOT_ID_LABEL + file_id, SLOT_ID_SIZE, "sha512")

    def wrap(self, data_key: bytes, file_id: bytes) -> SlotRecord:
        body = chunked.encrypt(self._key, data_key, CONTEXT_LABEL + file_id)
        return SlotRecord(SYMMETRIC, self.slot_id(file_id), body)

    def candidate_slot_ids(self, file_id: bytes) -> frozenset[bytes]:
        return frozenset((self.slot_id(file_id),))

    def unwrap(self, record: SlotRecord, file_id: bytes) -> bytes | None:
        if record.slot_type != SYMMETRIC or not hmac.compare_digest(record.slot_id,
                                                                    self.slot_id(file_id)):
            return None
        try:
            return chunked.decrypt(self._key, record.body, CONTEXT_LABEL + file_id)
        except IntegrityError:
            raise IntegrityError("a key slot for this key was altered") from None

    def opens_ignoring_id(self, record: SlotRecord, file_id: bytes) -> bool:
        # Judged by the body alone: an altered type byte must not turn tampering into "wrong key".
        if len(record.body) != BODY_SIZES[SYMMETRIC]:
            return False
        try:
            chunked.open_message(self._key, record.body[:chunked.HEADER_SIZE], CONTEXT_LABEL + file_id)
        except CommitmentError:
            return False
        return True

    def describe(self) -> str:
        return f"symmetric key {self.name().hex()}"

    def __eq__(self, other) -> bool:
        return isinstance(other, SymmetricKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.name())
