"""The passphrase slot type: the data key wrapped under a key derived from a passphrase with scrypt.

Slot body (124 bytes) = log2(N) u8 || r u8 || p u8 || 0x00 || salt (16) || wrapped key (104), where
the wrapped key is a C2SP chunked message of the data key with input key
scrypt(passphrase as UTF-8 (NFC), salt, N, r, p, 32) and context
"sealtensors/v2/slot/passphrase" || 0x00 || file id || body[0:20].
Slot id = 16 random bytes (a passphrase-derived id would let anyone test guesses without scrypt).

Readers refuse parameters below the floor or above the cap *before* running scrypt, so a hostile
file cannot make a reader spend minutes or GiBs (docs/FORMAT.md section 5.4).
"""

from __future__ import annotations

import secrets
import struct
import unicodedata

from Crypto.Protocol.KDF import scrypt

from ..crypto import chunked
from ..errors import CommitmentError, FormatError, IntegrityError, InvalidKeyError
from .slots import PASSPHRASE, SLOT_ID_SIZE, Identity, Recipient, SlotRecord

CONTEXT_LABEL = b"sealtensors/v2/slot/passphrase\x00"
PARAMS = struct.Struct("<BBBB16s")
# Calibrated on the reference 2-core VM (Intel Xeon, AVX-512): N=2**17, r=8, p=1 takes ~0.49 s and
# 128 MiB (docs/FORMAT.md 5.4 records the measurement).
DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P = 17, 8, 1
MIN_LOG2_N, MAX_LOG2_N = 15, 20
MIN_R, MAX_R = 8, 16
MIN_P, MAX_P = 1, 4
MAX_MEMORY = 1 << 30           # 128 * r * N bytes
MAX_WORK = 1 << 22             # N * r * p: 4x the default's work (about 2 s here)


def check_parameters(log2_n: int, r: int, p: int) -> None:
    """FormatError when the scrypt parameters are below the floor or above the cap."""
    if not (MIN_LOG2_N <= log2_n <= MAX_LOG2_N and MIN_R <= r <= MAX_R and MIN_P <= p <= MAX_P):
        raise FormatError(f"passphrase slot parameters N=2**{log2_n}, r={r}, p={p} are outside the "
                          f"accepted range (N 2**{MIN_LOG2_N}..2**{MAX_LOG2_N}, r {MIN_R}..{MAX_R}, "
                          f"p {MIN_P}..{MAX_P})")
    if 128 * r * (1 << log2_n) > MAX_MEMORY or (1 << log2_n) * r * p > MAX_WORK:
        raise FormatError(f"passphrase slot parameters N=2**{log2_n}, r={r}, p={p} would need more "
                          "memory or time than a reader accepts")


def check_body(body: bytes) -> None:
    """FormatError unless a passphrase slot body has a zero reserved byte and parameters within
    the limits (checked for every file at parse time, before anything runs scrypt)."""
    log2_n, r, p, reserved, _salt = PARAMS.unpack_from(body)
    if reserved:
        raise FormatError("a passphrase slot's reserved byte is not zero")
    check_parameters(log2_n, r, p)


def _normalise(passphrase) -> bytes:
    if isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, (bytes, bytearray, memoryview)):
        raw = bytes(passphrase)
    else:
        raise InvalidKeyError("a passphrase must be str or bytes")
    if not raw:
        raise InvalidKeyError("the passphrase is empty")
    return raw


class Passphrase(Recipient, Identity):
    """A passphrase, usable to seal (with scrypt parameters) and to open. Never printed."""

    slot_type = PASSPHRASE
    slot_types = (PASSPHRASE,)

    def __init__(self, passphrase, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R,
                 p: int = DEFAULT_P) -> None:
        self._secret = _normalise(passphrase)
        try:
            check_parameters(log2_n, r, p)
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        self.params = (log2_n, r, p)

    def _kek(self, log2_n: int, r: int, p: int, salt: bytes) -> bytes:
        return scrypt(self._secret, salt, 32, N=1 << log2_n, r=r, p=p)

    def wrap(self, data_key: bytes, file_id: bytes) -> SlotRecord:
        log2_n, r, p = self.params
        salt = secrets.token_bytes(16)
        params = PARAMS.pack(log2_n, r, p, 0, salt)
        wrapped = chunked.encrypt(self._kek(log2_n, r, p, salt), data_key,
                                  CONTEXT_LABEL + file_id + params)
        return SlotRecord(PASSPHRASE, secrets.token_bytes(SLOT_ID_SIZE), params + wrapped)

    def unwrap(self, record: SlotRecord, file_id: bytes) -> bytes | None:
        if record.slot_type != PASSPHRASE:
            return None
        log2_n, r, p, reserved, salt = PARAMS.unpack_from(record.body)
        if reserved:
            raise FormatError("a passphrase slot's reserved byte is not zero")
        check_parameters(log2_n, r, p)
        params = record.body[:PARAMS.size]
        kek = self._kek(log2_n, r, p, salt)
        try:
            return chunked.decrypt(kek, record.body[PARAMS.size:], CONTEXT_LABEL + file_id + params)
        except CommitmentError:
            return None  # another passphrase
        except IntegrityError:
            raise IntegrityError("a passphrase slot was altered") from None

    def describe(self) -> str:
        return "passphrase"

    def __eq__(self, other) -> bool:
        import hmac

        return isinstance(other, Passphrase) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(("passphrase", len(self._secret)))
