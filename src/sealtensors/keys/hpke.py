"""Public-key slot types on HPKE (RFC 9180, base mode): x25519 (DHKEM(X25519, HKDF-SHA256)) and
xwing (the X-Wing ML-KEM-768 + X25519 hybrid KEM, post-quantum), both with HKDF-SHA256 and AES-256-GCM.

Slot body = enc || HPKE ciphertext of the 32-byte data key (48 bytes), with
            info = "sealtensors/v2/slot/<type>" || 0x00 || file id and empty AAD.
Slot id   = SHA-256("sealtensors/v2/slot-id/<type>" || 0x00 || recipient public key || file id)[0:16]:
            different in every file; only someone holding the recipient's public key can tell which
            slot is theirs.
All KEM and HPKE work is pycryptodome's (Crypto.Protocol.HPKE).
"""

from __future__ import annotations

import hashlib
import hmac

from Crypto.Protocol import HPKE
from Crypto.PublicKey import ECC, Hybrid
from Crypto.PublicKey.Hybrid import HybridKey

from ..errors import IntegrityError, InvalidKeyError
from . import textcodec
from .slots import BODY_SIZES, SLOT_ID_SIZE, X25519, XWING, Identity, Recipient, SlotRecord

ENC_SIZES = {X25519: 32, XWING: 1120}
PUBLIC_SIZES = {X25519: 32, XWING: 1216}
_NAMES = {X25519: "x25519", XWING: "xwing"}
PUBLIC_TAGS = {X25519: "st-x25519", XWING: "st-xwing"}
SECRET_TAGS = {X25519: "ST-X25519-SECRET", XWING: "ST-XWING-SECRET"}


def _info(slot_type: int, file_id: bytes) -> bytes:
    return b"sealtensors/v2/slot/" + _NAMES[slot_type].encode() + b"\x00" + file_id


def slot_id_for(slot_type: int, public_key: bytes, file_id: bytes) -> bytes:
    label = b"sealtensors/v2/slot-id/" + _NAMES[slot_type].encode() + b"\x00"
    return hashlib.sha256(label + public_key + file_id).digest()[:SLOT_ID_SIZE]


def _public_key_object(slot_type: int, public_key: bytes):
    try:
        if slot_type == X25519:
            return HPKE.import_x25519_public_key(public_key)
        # pycryptodome 4.4 has no public constructor for hybrid public keys yet; HybridKey(pk=...)
        # is the documented class and validates the encoding.
        return HybridKey(param_set=Hybrid.MLKEM768_X25519, pk=public_key)
    except (ValueError, TypeError) as exc:
        raise InvalidKeyError(f"invalid {_NAMES[slot_type]} public key: {exc}") from None


class PublicKeyRecipient(Recipient):
    """An x25519 or xwing recipient, from its public key (``Recipient.parse`` of its string)."""

    def __init__(self, slot_type: int, public_key: bytes) -> None:
        if slot_type not in PUBLIC_SIZES or len(public_key) != PUBLIC_SIZES[slot_type]:
            raise InvalidKeyError("invalid public key size")
        self.slot_type = slot_type
        self.public_key = bytes(public_key)
        self._key = _public_key_object(slot_type, self.public_key)

    def wrap(self, data_key: bytes, file_id: bytes) -> SlotRecord:
        sender = HPKE.new(receiver_key=self._key, aead_id=HPKE.AEAD.AES256_GCM,
                          info=_info(self.slot_type, file_id))
        body = sender.enc + sender.seal(data_key)
        return SlotRecord(self.slot_type, slot_id_for(self.slot_type, self.public_key, file_id), body)

    def text(self) -> str:
        return textcodec.encode(PUBLIC_TAGS[self.slot_type], self.public_key)

    def describe(self) -> str:
        return self.text()

    def __eq__(self, other) -> bool:
        return isinstance(other, PublicKeyRecipient) and other.slot_type == self.slot_type \
            and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash((self.slot_type, self.public_key))


class PublicKeyIdentity(Identity):
    """The secret key of an x25519 or xwing recipient (a 32-byte seed)."""

    def __init__(self, slot_type: int, seed: bytes) -> None:
        if slot_type not in PUBLIC_SIZES or len(seed) != 32:
            raise InvalidKeyError("invalid identity")
        self.slot_type = slot_type
        self.slot_types = (slot_type,)
        self._seed = bytes(seed)
        if slot_type == X25519:
            self._key = ECC.construct(curve="Curve25519", seed=self._seed)
            public = self._key.public_key().export_key(format="raw")
        else:
            self._key = HybridKey(param_set=Hybrid.MLKEM768_X25519, seed=self._seed)
            public = self._key.public_key()._pk  # no public accessor in pycryptodome 4.4
        self._recipient = PublicKeyRecipient(slot_type, bytes(public))

    @classmethod
    def generate(cls, slot_type: int) -> "PublicKeyIdentity":
        import secrets

        return cls(slot_type, secrets.token_bytes(32))

    def recipient(self) -> PublicKeyRecipient:
        return self._recipient

    def text(self) -> str:
        return textcodec.encode(SECRET_TAGS[self.slot_type], self._seed)

    def candidate_slot_ids(self, file_id: bytes) -> frozenset[bytes]:
        return frozenset((slot_id_for(self.slot_type, self._recipient.public_key, file_id),))

    def _open(self, record: SlotRecord, file_id: bytes) -> bytes:
        enc_size = ENC_SIZES[self.slot_type]
        receiver = HPKE.new(receiver_key=self._key, aead_id=HPKE.AEAD.AES256_GCM,
                            info=_info(self.slot_type, file_id), enc=record.body[:enc_size])
        return receiver.unseal(record.body[enc_size:])

    def unwrap(self, record: SlotRecord, file_id: bytes) -> bytes | None:
        if record.slot_type != self.slot_type:
            return None
        wanted = slot_id_for(self.slot_type, self._recipient.public_key, file_id)
        if not hmac.compare_digest(record.slot_id, wanted):
            return None
        try:
            data_key = self._open(record, file_id)
        except (ValueError, TypeError):
            raise IntegrityError("a key slot for this identity was altered") from None
        if len(data_key) != 32:
            raise IntegrityError("a key slot for this identity was altered")
        return data_key

    def opens_ignoring_id(self, record: SlotRecord, file_id: bytes) -> bool:
        # Judged by the body alone: an altered type byte must not turn tampering into "wrong key".
        if len(record.body) != BODY_SIZES[self.slot_type]:
            return False
        try:
            self._open(record, file_id)
        except (ValueError, TypeError):
            return False
        return True

    def describe(self) -> str:
        return f"{_NAMES[self.slot_type]} identity for {self._recipient.text()[:32]}..."
