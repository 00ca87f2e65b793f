"""An independent reader and writer of sealed files (format v2), written only from docs/FORMAT.md.

Nothing here imports the format, key, reader, writer or crypto code of sealtensors. The reader and
writer below use the standard library (struct, hmac, hashlib, json, base64, unicodedata), AES-GCM
from ``cryptography``, and pycryptodome's HPKE, scrypt, Ed25519, ML-DSA-65 and X-Wing keys.
sealtensors is only the thing under test, through its public API: ``sealtensors.numpy`` save/load,
``sealtensors.keys`` (SymmetricKey, generate_identity, Passphrase, SigningKey, VerifyingKey,
Recipient.parse, load_identity, KeyProvider), ``sealtensors.rewrap`` / ``verify`` and the classes
of ``sealtensors.errors``. Section numbers (§) refer to docs/FORMAT.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

AESGCM = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM
InvalidTag = pytest.importorskip("cryptography.exceptions").InvalidTag
from Crypto.Protocol import HPKE  # noqa: E402
from Crypto.Protocol.KDF import scrypt  # noqa: E402
from Crypto.PublicKey import ECC, MLDSA, MLKEM, Hybrid  # noqa: E402
from Crypto.Signature import eddsa, mldsa  # noqa: E402

import sealtensors  # noqa: E402
import sealtensors.errors as st_errors  # noqa: E402
import sealtensors.numpy as st_numpy  # noqa: E402
from sealtensors.keys import (  # noqa: E402
    KeyProvider,
    Passphrase,
    Recipient,
    SigningKey,
    SymmetricKey,
    VerifyingKey,
    generate_identity,
    identity_text,
    load_identity,
)

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


# --------------------------------------------------------------------------------------------------
# Errors of the independent reader (§9), named like the reference's so results can be compared.

class IndError(Exception):
    reference = "SealError"

    def __init__(self, message: str, chunk_index: int | None = None):
        super().__init__(message)
        self.chunk_index = chunk_index


class IndFormatError(IndError):
    reference = "FormatError"


class IndUnsupportedFormatError(IndFormatError):
    reference = "UnsupportedFormatError"


class IndWrongKeyError(IndError):
    reference = "WrongKeyError"


class IndIntegrityError(IndError):
    reference = "IntegrityError"


class IndCommitmentError(IndIntegrityError):
    reference = "CommitmentError"


class IndSignatureError(IndIntegrityError):
    reference = "SignatureError"


# --------------------------------------------------------------------------------------------------
# Primitives (§2) and C2SP chunked encryption (§3).

CHUNK = 16384
TAG = 16
ENC_CHUNK = CHUNK + TAG
SALT = 24
COMMIT = 32
MSG_HEADER = SALT + COMMIT
MAX_CHUNKS = 1 << 38
C2SP_INFO = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"


def hkdf_expand_sha512(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha512).digest()
        out += block
        counter += 1
    return out[:length]


def c2sp_derive(key: bytes, salt: bytes, context: bytes) -> tuple[bytes, bytes, bytes]:
    okm = hkdf_expand_sha512(key, C2SP_INFO + salt + context, 76)
    return okm[:32], okm[32:44], okm[44:76]


def c2sp_nonce(base: bytes, i: int) -> bytes:
    return (int.from_bytes(base, "big") ^ i).to_bytes(12, "big")


def c2sp_chunks(plain_len: int) -> int:
    return plain_len // CHUNK + 1


def c2sp_message_length(plain_len: int) -> int:
    return MSG_HEADER + plain_len + TAG * c2sp_chunks(plain_len)


def c2sp_plain_length(msg_len: int) -> int | None:
    """§3.4: the plaintext length of a message of ``msg_len`` bytes, None if impossible."""
    if msg_len < MSG_HEADER + TAG:
        return None
    full, rem = divmod(msg_len - MSG_HEADER, ENC_CHUNK)
    if not TAG <= rem <= ENC_CHUNK - 1 or full + 1 > MAX_CHUNKS:
        return None
    return msg_len - MSG_HEADER - TAG * (full + 1)


def c2sp_open(key: bytes, message: bytes, context: bytes) -> tuple[bytes, bytes]:
    """Check the commitment (§3.2) before anything is decrypted; returns (aead key, base nonce)."""
    aead_key, base, commitment = c2sp_derive(key, message[:SALT], context)
    if not hmac.compare_digest(commitment, message[SALT:MSG_HEADER]):
        raise IndCommitmentError("commitment mismatch")
    return aead_key, base


def c2sp_decrypt(key: bytes, message: bytes, context: bytes, before_chunk=None) -> bytes:
    """Commitment, then every chunk in order; ``before_chunk(i, stored)`` may refuse a chunk before
    it is decrypted (the signature's digest table, §9 step 17)."""
    plain_len = c2sp_plain_length(len(message))
    if plain_len is None:
        raise IndIntegrityError("impossible message length")
    aead_key, base = c2sp_open(key, message, context)
    aead = AESGCM(aead_key)
    out = []
    for i in range(c2sp_chunks(plain_len)):
        stored = message[MSG_HEADER + i * ENC_CHUNK:MSG_HEADER + (i + 1) * ENC_CHUNK]
        if before_chunk is not None:
            before_chunk(i, stored)
        try:
            out.append(aead.decrypt(c2sp_nonce(base, i), stored, None))
        except InvalidTag:
            raise IndIntegrityError(f"chunk {i} failed authentication", chunk_index=i) from None
    return b"".join(out)


def c2sp_encrypt(key: bytes, plaintext: bytes, context: bytes, salt: bytes) -> bytes:
    aead_key, base, commitment = c2sp_derive(key, salt, context)
    aead = AESGCM(aead_key)
    pieces = [salt, commitment]
    for i in range(c2sp_chunks(len(plaintext))):
        pieces.append(aead.encrypt(c2sp_nonce(base, i), plaintext[i * CHUNK:(i + 1) * CHUNK], None))
    return b"".join(pieces)


def stored_chunks(message: bytes) -> list[bytes]:
    count = c2sp_chunks(c2sp_plain_length(len(message)))
    return [message[MSG_HEADER + i * ENC_CHUNK:MSG_HEADER + (i + 1) * ENC_CHUNK]
            for i in range(count)]


# --------------------------------------------------------------------------------------------------
# Text forms (§4.3).

PUBLIC_TAGS = {"st-x25519": 32, "st-xwing": 1216, "st-sign": 1984}
SECRET_TAGS = {"ST-SYMMETRIC-SECRET": 32, "ST-X25519-SECRET": 32, "ST-XWING-SECRET": 32,
               "ST-SIGN-SECRET": 64}
B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def text_encode(tag: str, payload: bytes) -> str:
    check = hashlib.sha256(tag.encode() + b":" + payload).digest()[:4]
    return tag + ":" + base64.urlsafe_b64encode(payload + check).decode().rstrip("=")


def text_decode(text: str, tag: str) -> bytes:
    got_tag, sep, body = text.strip().partition(":")
    if not sep or got_tag != tag or not B64URL.match(body) or len(body) % 4 == 1:
        raise ValueError("malformed text key")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != body:
        raise ValueError("non-canonical base64")
    payload, check = raw[:-4], raw[-4:]
    sizes = {**PUBLIC_TAGS, **SECRET_TAGS}
    if len(payload) != sizes[tag]:
        raise ValueError("wrong payload length")
    if hashlib.sha256(tag.encode() + b":" + payload).digest()[:4] != check:
        raise ValueError("wrong check")
    return payload


def secret_line(identity_file_text: str) -> str:
    """§4.3: exactly one secret line, other lines start with '#'."""
    lines = [ln for ln in identity_file_text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Slot types, slot ids and slot bodies (§4.1, §4.2, §5.3, §5.4).

SYMMETRIC, X25519, XWING, PASSPHRASE, PROVIDER = 1, 2, 3, 4, 128
BODY_LENGTHS = {SYMMETRIC: 104, X25519: 80, XWING: 1168, PASSPHRASE: 124}
TYPE_NAMES = {SYMMETRIC: "symmetric", X25519: "x25519", XWING: "xwing", PASSPHRASE: "passphrase",
              PROVIDER: "provider"}
PROVIDER_MIN_BODY, PROVIDER_MAX_BODY = 2, 1 + 64 + 8192
MAX_PASSPHRASE_SLOTS = 4
XWING_PUBLIC = 1216


def slot_context(slot_type: int, file_id: bytes) -> bytes:
    return b"sealtensors/v2/slot/" + TYPE_NAMES[slot_type].encode() + b"\x00" + file_id


def symmetric_slot_id(key: bytes, file_id: bytes) -> bytes:
    return hkdf_expand_sha512(key, b"sealtensors/v2/slot-id\x00" + file_id, 16)


def public_slot_id(slot_type: int, public: bytes, file_id: bytes) -> bytes:
    label = b"sealtensors/v2/slot-id/" + TYPE_NAMES[slot_type].encode() + b"\x00"
    return hashlib.sha256(label + public + file_id).digest()[:16]


def provider_binding(file_id: bytes) -> bytes:
    return b"sealtensors/v2/provider-slot\x00" + file_id


def x25519_public(private: bytes) -> bytes:
    return ECC.construct(curve="Curve25519", seed=private).public_key().export_key(format="raw")


def xwing_public(seed: bytes) -> bytes:
    """§2: the seed expanded with SHAKE-256 to 96 bytes; bytes 0..64 are the ML-KEM-768 key
    generation seed (d || z), bytes 64..96 the X25519 private key; public = ek (1184) || pk_X."""
    expanded = hashlib.shake_256(seed).digest(96)
    ek = MLKEM.construct(param_set=MLKEM.ML_KEM_768, seed=expanded[:64]).ek
    return ek + x25519_public(expanded[64:])


def passphrase_body_check(body: bytes) -> None:
    """§5.4, checked for every passphrase slot at slot-table parse time (§9 step 7)."""
    log2_n, r, p, reserved = body[:4]
    if reserved:
        raise IndFormatError("reserved byte of a passphrase slot body")
    if not (15 <= log2_n <= 20 and 8 <= r <= 16 and 1 <= p <= 4):
        raise IndFormatError("passphrase parameters out of range")
    n = 1 << log2_n
    if 128 * r * n > 2**30 or n * r * p > 2**22:
        raise IndFormatError("passphrase parameters over the memory or work cap")


def provider_body_check(body: bytes) -> None:
    """§5.4, checked for every provider slot at slot-table parse time (§9 step 7)."""
    name_len = body[0]
    if not 1 <= name_len <= 64:
        raise IndFormatError("provider name length")
    if 1 + name_len > len(body):
        raise IndFormatError("provider name runs past the body")
    if any(not 0x20 <= c <= 0x7e for c in body[1:1 + name_len]):
        raise IndFormatError("provider name not printable ASCII")
    if not 1 <= len(body) - 1 - name_len <= 8192:
        raise IndFormatError("provider payload length")


def passphrase_kek(text: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    secret = unicodedata.normalize("NFC", text).encode("utf-8")
    return scrypt(secret, salt, 32, N=1 << log2_n, r=r, p=p)


@dataclass
class SlotRecord:
    type: int
    slot_id: bytes
    body: bytes
    reserved: int = 0

    def to_bytes(self) -> bytes:
        return struct.pack("<BBH", self.type, self.reserved, len(self.body)) + self.slot_id + \
            self.body


# Recipients (what the independent writer seals for). ``make`` returns one SlotRecord; ``fixed``
# carries randomness taken from another file, to rebuild it byte for byte.

@dataclass
class SymRecipient:
    key: bytes

    def make(self, dek, file_id, fixed=None):
        salt = (fixed or {}).get("salt") or secrets.token_bytes(SALT)
        body = c2sp_encrypt(self.key, dek, slot_context(SYMMETRIC, file_id), salt)
        return SlotRecord(SYMMETRIC, symmetric_slot_id(self.key, file_id), body)


@dataclass
class HpkeRecipient:
    type: int
    public: bytes

    def make(self, dek, file_id, fixed=None):
        body = (fixed or {}).get("body")
        if body is None:          # HPKE's ephemeral randomness cannot be chosen: fresh seal
            if self.type == X25519:
                receiver = ECC.construct(curve="Curve25519",
                                             point_x=int.from_bytes(self.public, "little"))
            else:
                receiver = Hybrid.HybridKey(param_set=Hybrid.MLKEM768_X25519, pk=self.public)
            cipher = HPKE.new(receiver_key=receiver, aead_id=HPKE.AEAD.AES256_GCM,
                              info=slot_context(self.type, file_id))
            ct = cipher.seal(dek)
            body = cipher.enc + ct
        return SlotRecord(self.type, public_slot_id(self.type, self.public, file_id), body)


@dataclass
class PassRecipient:
    text: str
    params: tuple = (15, 8, 1)

    def make(self, dek, file_id, fixed=None):
        fixed = fixed or {}
        slot_id = fixed.get("slot_id") or secrets.token_bytes(16)
        scrypt_salt = fixed.get("scrypt_salt") or secrets.token_bytes(16)
        salt = fixed.get("salt") or secrets.token_bytes(SALT)
        log2_n, r, p = fixed.get("params", self.params)
        head = bytes([log2_n, r, p, 0]) + scrypt_salt
        kek = passphrase_kek(self.text, scrypt_salt, log2_n, r, p)
        wrapped = c2sp_encrypt(kek, dek, slot_context(PASSPHRASE, file_id) + head, salt)
        return SlotRecord(PASSPHRASE, slot_id, head + wrapped)


@dataclass
class ProviderRecipient:
    name: str
    wrap: object

    def make(self, dek, file_id, fixed=None):
        fixed = fixed or {}
        slot_id = fixed.get("slot_id") or secrets.token_bytes(16)
        payload = fixed.get("payload") or self.wrap(dek, provider_binding(file_id))
        name = self.name.encode("ascii")
        return SlotRecord(PROVIDER, slot_id, bytes([len(name)]) + name + payload)


# Identities (what the independent reader opens with).

@dataclass
class SymIdentity:
    key: bytes
    type = SYMMETRIC

    def slot_id(self, file_id):
        return symmetric_slot_id(self.key, file_id)

    def unwrap(self, record, file_id):
        """The DEK, or an IndError: the caller decides what a failure means."""
        return c2sp_decrypt(self.key, record.body, slot_context(SYMMETRIC, file_id))


@dataclass
class HpkeIdentity:
    type: int
    secret: bytes               # X25519 private key or X-Wing seed

    def public(self):
        return x25519_public(self.secret) if self.type == X25519 else xwing_public(self.secret)

    def slot_id(self, file_id):
        return public_slot_id(self.type, self.public(), file_id)

    def unwrap(self, record, file_id):
        enc_len = 32 if self.type == X25519 else 1120
        if self.type == X25519:
            key = ECC.construct(curve="Curve25519", seed=self.secret)
        else:
            key = Hybrid.HybridKey(param_set=Hybrid.MLKEM768_X25519, seed=self.secret)
        try:
            cipher = HPKE.new(receiver_key=key, aead_id=HPKE.AEAD.AES256_GCM,
                              enc=record.body[:enc_len], info=slot_context(self.type, file_id))
            return cipher.unseal(record.body[enc_len:])
        except ValueError:
            raise IndIntegrityError("HPKE open failed") from None


@dataclass
class PassIdentity:
    text: str
    type = PASSPHRASE


@dataclass
class ProviderIdentity:
    name: str
    unwrap_payload: object
    type = PROVIDER


# --------------------------------------------------------------------------------------------------
# Header (§5).

MAGIC = b"SEALTENS"
PREAMBLE = struct.Struct("<8sHHB3sI12s")
FIXED = struct.Struct("<16sQQQQ32sII")
MAC_SIZE = 32
MAX_SLOTS = 1024
MAX_CAPACITY = 16777216
MAX_INDEX_BYTES = 104857600
MAX_INDEX_MESSAGE = 104960072
MAX_DATA_MESSAGE = 4507997673881655
TRAILER_FIXED = 5621
STATEMENT = struct.Struct("<32s16sQQQQ64s56s64s")
STATEMENT_LABEL = b"sealtensors/v2/signed-statement\x00"
MLDSA_CONTEXT = b"sealtensors/v2/signature"
ED_PUBLIC, ML_PUBLIC, ED_SIG, ML_SIG = 32, 1952, 64, 3309


def mac_key(dek: bytes) -> bytes:
    return hkdf_expand_sha512(dek, b"sealtensors/v2/header-mac", 32)


def index_context(file_id: bytes) -> bytes:
    return b"sealtensors/v2/index\x00" + file_id


def data_context(file_id: bytes, index_plain: bytes) -> bytes:
    return b"sealtensors/v2/data\x00" + file_id + hashlib.sha512(index_plain).digest()


def header_mac(dek: bytes, preamble: bytes, copy_number: int, copy_bytes: bytes) -> bytes:
    """§5.5: the preamble with its active-copy byte set to this copy's number."""
    primed = preamble[:12] + bytes([copy_number]) + preamble[13:32]
    return hmac.new(mac_key(dek), primed + copy_bytes, hashlib.sha256).digest()


def capacity_for(table_length: int) -> int:
    """§10 step 7."""
    return -(-(88 + table_length + 32 + 8192) // 4096) * 4096


# --------------------------------------------------------------------------------------------------
# Index (§8).

ALIGN = 64
MAX_NAME_BYTES = 4096
MAX_RANK = 64
DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    # F4 (§8.3): two float4 values per byte; returned as the raw bytes, last dimension halved.
    "F4": np.dtype("u1"),
}
ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8,
              "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 8, "F8_E4M3": 1,
              "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1}
HALF_BYTE_DTYPES = {"F4"}  # §8.3: item size 1/2, shape counts values, last dimension even


def storage_bytes(dtype: str, shape) -> int:
    """§8.3/§8.4: the byte length of a tensor (F4: half a byte per value)."""
    if dtype in HALF_BYTE_DTYPES:
        if not shape or shape[-1] % 2:
            raise IndFormatError("F4 needs a last dimension that is even")
        count = 1
        for d in shape:
            count *= d
        return count // 2
    count = ITEM_SIZES[dtype]
    for d in shape:
        count *= d
    return count


def align_up(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise IndFormatError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def _no_constants(name):
    raise IndFormatError(f"constant {name}")


def _valid_string(s) -> bool:
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")           # a lone surrogate from a \uXXXX escape does not encode
    except UnicodeEncodeError:
        return False
    return True


def parse_index(plain: bytes, data_plain_len: int):
    """§8: returns ([(name, dtype, shape, begin, end)], metadata)."""
    if len(plain) > MAX_INDEX_BYTES:
        raise IndFormatError("index too large")
    try:
        text = plain.decode("utf-8")
        if text.startswith("\ufeff"):
            raise IndFormatError("byte order mark")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IndFormatError(f"bad index: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"metadata", "tensors"}:
        raise IndFormatError("top level")
    metadata = doc["metadata"]
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            _valid_string(k) and _valid_string(v) for k, v in metadata.items())):
        raise IndFormatError("metadata")
    if not isinstance(doc["tensors"], list):
        raise IndFormatError("tensors")
    entries, names, position = [], set(), 0
    for entry in doc["tensors"]:
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape", "offsets"}:
            raise IndFormatError("entry keys")
        name, dtype = entry["name"], entry["dtype"]
        shape, offsets = entry["shape"], entry["offsets"]
        if (not _valid_string(name) or not name or len(name.encode("utf-8")) > MAX_NAME_BYTES
                or name == "__metadata__" or name in names):
            raise IndFormatError(f"name {name!r}")
        names.add(name)
        if dtype not in ITEM_SIZES and dtype not in HALF_BYTE_DTYPES:
            raise IndFormatError(f"dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or any(type(d) is not int or not 0 <= d < 2**63 for d in shape)):
            raise IndFormatError("shape")
        nonzero = 1 if dtype in HALF_BYTE_DTYPES else ITEM_SIZES[dtype]
        for d in shape:
            nonzero *= d or 1
        if dtype in HALF_BYTE_DTYPES:
            nonzero //= 2
        if nonzero > 2**63 - 1:
            raise IndFormatError("shape too large")
        if not isinstance(offsets, list) or len(offsets) != 2 or any(type(v) is not int
                                                                     for v in offsets):
            raise IndFormatError("offsets")
        nbytes = storage_bytes(dtype, shape)
        begin, end = offsets
        if begin != align_up(position) or end != begin + nbytes or end > data_plain_len:
            raise IndFormatError(f"tiling at {name!r}")
        entries.append((name, dtype, tuple(shape), begin, end))
        position = end
    if position != data_plain_len:
        raise IndFormatError("data length")
    return entries, metadata


def serialize_index(entries, metadata) -> bytes:
    """§8.1 canonical form."""
    doc = {"metadata": metadata,
           "tensors": [{"name": n, "dtype": d, "shape": list(s), "offsets": [b, e]}
                       for n, d, s, b, e in entries]}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dtype_name(dtype: np.dtype) -> str:
    for name, candidate in DTYPES.items():
        if np.dtype(dtype) == candidate:
            return name
    raise ValueError(f"no sealtensors dtype for {dtype}")


def layout(tensors: dict) -> tuple[list, bytes]:
    """§8.4: entries in the caller's order, zero padding to each aligned begin."""
    entries, data = [], bytearray()
    for name, array in tensors.items():
        array = np.ascontiguousarray(array) if np.ndim(array) else np.asarray(array)
        data += bytes(align_up(len(data)) - len(data))
        begin = len(data)
        data += array.tobytes(order="C")
        entries.append((name, dtype_name(array.dtype), array.shape, begin, len(data)))
    return entries, bytes(data)


# --------------------------------------------------------------------------------------------------
# The reader (§9).

@dataclass
class Opened:
    tensors: dict
    metadata: object
    dek: bytes
    file_id: bytes
    active: int
    capacity: int
    sequence: int
    slots: list
    unlocked_slot: int
    index_plain: bytes
    index_msg: bytes
    data_msg: bytes
    data: bytes
    entries: list
    trailer: bytes
    statement: dict | None = None
    signer: bytes | None = None


def parse_statement(raw: bytes) -> dict:
    label, fid, gen, when, ilen, dlen, idig, dhead, tdig = STATEMENT.unpack(raw)
    return {"label": label, "file_id": fid, "generation": gen, "signed_at": when,
            "index_length": ilen, "data_length": dlen, "index_digest": idig, "data_header": dhead,
            "table_digest": tdig}


def verify_signatures(public: bytes, statement: bytes, ed_sig: bytes, ml_sig: bytes) -> bool:
    try:
        ed = eddsa.import_public_key(public[:ED_PUBLIC])
        eddsa.new(ed, "rfc8032").verify(statement, ed_sig)
        ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, pk=public[ED_PUBLIC:])
        mldsa.new(ml, context=MLDSA_CONTEXT).verify(statement, ml_sig)
    except ValueError:
        return False
    return True


def _find_slot(records, identities, file_id):
    """§9 steps 9 and 10: returns (slot number, DEK)."""
    for identity in identities:
        for number, record in enumerate(records):
            if record.type != identity.type:
                continue
            if isinstance(identity, (SymIdentity, HpkeIdentity)):
                if not hmac.compare_digest(record.slot_id, identity.slot_id(file_id)):
                    continue
                try:
                    return number, identity.unwrap(record, file_id)
                except IndError:
                    raise IndIntegrityError("a key slot for this key was altered") from None
            elif isinstance(identity, PassIdentity):
                # The parameters were checked when the table was parsed (§9 step 7).
                log2_n, r, p = record.body[0], record.body[1], record.body[2]
                kek = passphrase_kek(identity.text, record.body[4:20], log2_n, r, p)
                context = slot_context(PASSPHRASE, file_id) + record.body[:20]
                try:
                    return number, c2sp_decrypt(kek, record.body[20:], context)
                except IndCommitmentError:
                    continue                    # another passphrase's slot
                except IndError:
                    raise IndIntegrityError("passphrase slot altered") from None
            else:                               # body shape checked at parse time (step 7)
                name_len = record.body[0]
                if record.body[1:1 + name_len] != identity.name.encode("ascii"):
                    continue
                dek = identity.unwrap_payload(record.body[1 + name_len:], provider_binding(file_id))
                if dek is not None:
                    return number, dek
    for identity in identities:                 # step 10: an altered slot id or type byte?
        if not isinstance(identity, (SymIdentity, HpkeIdentity)):
            continue
        for record in records:
            if len(record.body) != BODY_LENGTHS[identity.type]:
                continue
            try:
                if isinstance(identity, SymIdentity):       # the commitment is enough
                    c2sp_open(identity.key, record.body, slot_context(SYMMETRIC, file_id))
                else:
                    identity.unwrap(record, file_id)
            except IndError:
                continue
            raise IndIntegrityError("a slot id or slot type was altered")
    raise IndWrongKeyError("no slot for these identities")


def parse_header(blob: bytes):
    """§9 steps 1-8 (unauthenticated parsing)."""
    if len(blob) < 8 or blob[:8] != MAGIC:
        raise IndFormatError("bad magic")
    if len(blob) >= 10 and struct.unpack_from("<H", blob, 8)[0] != 2:
        raise IndUnsupportedFormatError("version")
    if len(blob) >= 12 and struct.unpack_from("<H", blob, 10)[0] != 1:
        raise IndUnsupportedFormatError("suite")
    if len(blob) < PREAMBLE.size:
        raise IndIntegrityError("truncated in the preamble")
    _, _, _, active, reserved0, capacity, reserved1 = PREAMBLE.unpack_from(blob)
    if any(reserved0) or any(reserved1) or active not in (0, 1) or capacity % 4096 \
            or not 4096 <= capacity <= MAX_CAPACITY:
        raise IndFormatError("preamble fields")
    start = 32 + active * capacity
    if len(blob) < start + capacity:
        raise IndIntegrityError("truncated in the active header copy")
    copy = blob[start:start + capacity]
    file_id, sequence, index_len, data_len, trailer_len, digest, n, table_len = \
        FIXED.unpack_from(copy)
    if not 1 <= n <= MAX_SLOTS:
        raise IndFormatError("slot count")
    if table_len > capacity - 120:
        raise IndFormatError("slot table length")
    if not 72 <= index_len <= MAX_INDEX_MESSAGE:
        raise IndFormatError("index_length out of range")
    if not 72 <= data_len <= MAX_DATA_MESSAGE:
        raise IndFormatError("data_length out of range")
    if c2sp_plain_length(index_len) is None:
        raise IndFormatError("index_length impossible")
    data_plain_len = c2sp_plain_length(data_len)
    if data_plain_len is None:
        raise IndFormatError("data_length impossible")
    if trailer_len not in (0, TRAILER_FIXED + 32 * c2sp_chunks(data_plain_len)):
        raise IndFormatError("trailer_length")
    if trailer_len == 0 and any(digest):
        raise IndFormatError("trailer digest without a trailer")
    table = copy[88:88 + table_len]
    records, pos = [], 0
    for _ in range(n):
        if pos + 20 > table_len:
            raise IndFormatError("table ends inside a record header")
        slot_type, reserved, body_len = struct.unpack_from("<BBH", table, pos)
        if reserved:
            raise IndFormatError("reserved byte of a slot record")
        if slot_type not in TYPE_NAMES:
            raise IndUnsupportedFormatError(f"unknown slot type {slot_type}")
        if pos + 20 + body_len > table_len:
            raise IndFormatError("slot body runs past the table")
        if slot_type != PROVIDER and body_len != BODY_LENGTHS[slot_type] or \
                slot_type == PROVIDER and not PROVIDER_MIN_BODY <= body_len <= PROVIDER_MAX_BODY:
            raise IndFormatError("wrong body length for the slot type")
        records.append(SlotRecord(slot_type, table[pos + 4:pos + 20],
                                  table[pos + 20:pos + 20 + body_len]))
        pos += 20 + body_len
    if pos != table_len:
        raise IndFormatError("records do not fill the table")
    for record in records:
        if record.type == PASSPHRASE:
            passphrase_body_check(record.body)
        elif record.type == PROVIDER:
            provider_body_check(record.body)
    if len({r.slot_id for r in records}) != len(records):
        raise IndFormatError("duplicate slot id")
    if sum(r.type == PASSPHRASE for r in records) > MAX_PASSPHRASE_SLOTS:
        raise IndFormatError("too many passphrase slots")
    if any(copy[120 + table_len:]):
        raise IndFormatError("non-zero padding after the MAC")
    return {"active": active, "capacity": capacity, "copy": copy, "file_id": file_id,
            "sequence": sequence, "index_len": index_len, "data_len": data_len,
            "trailer_len": trailer_len, "digest": digest, "table_len": table_len,
            "records": records, "data_plain_len": data_plain_len}


def read_sealed(blob: bytes, identities: list, *, signers: list[bytes] | None = None,
                min_generation: int | None = None, expect_file_id: bytes | None = None) -> Opened:
    """Open, authenticate and decrypt a whole sealed file, checking in the order of §9."""
    h = parse_header(blob)
    file_id, records = h["file_id"], h["records"]
    number, dek = _find_slot(records, identities, file_id)
    copy, table_len = h["copy"], h["table_len"]
    expected = header_mac(dek, blob[:32], h["active"], copy[:88 + table_len])
    if not hmac.compare_digest(expected, copy[88 + table_len:120 + table_len]):
        raise IndIntegrityError("header MAC")
    region = 32 + 2 * h["capacity"]
    if len(blob) != region + h["index_len"] + h["data_len"] + h["trailer_len"]:
        raise IndIntegrityError("file length")
    index_msg = blob[region:region + h["index_len"]]
    data_msg = blob[region + h["index_len"]:region + h["index_len"] + h["data_len"]]
    trailer = blob[region + h["index_len"] + h["data_len"]:]
    index_plain = c2sp_decrypt(dek, index_msg, index_context(file_id))
    entries, metadata = parse_index(index_plain, h["data_plain_len"])
    dctx = data_context(file_id, index_plain)
    c2sp_open(dek, data_msg, dctx)
    statement = signer = table = None
    if signers is not None or min_generation is not None or expect_file_id is not None:
        statement, signer, table = check_signature(
            h, trailer, index_msg, data_msg, signers or [], min_generation, expect_file_id)
    elif h["trailer_len"]:
        statement = parse_statement(trailer[:STATEMENT.size])

    def before_chunk(i, stored):
        if table is not None and hashlib.sha256(stored).digest() != table[32 * i:32 * i + 32]:
            raise IndSignatureError(f"data chunk {i} is not what was signed", chunk_index=i)

    data = c2sp_decrypt(dek, data_msg, dctx, before_chunk)
    covered = bytearray(len(data))
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        covered[begin:end] = b"\x01" * (end - begin)
        if dtype == "BOOL" and any(b > 1 for b in data[begin:end]):
            raise IndFormatError("BOOL byte other than 0 or 1")
        count = (end - begin) // DTYPES[dtype].itemsize
        stored = tuple(shape[:-1]) + (shape[-1] // 2,) if dtype in HALF_BYTE_DTYPES else shape
        tensors[name] = np.frombuffer(data, DTYPES[dtype], count=count, offset=begin).reshape(stored)
    if any(data[i] for i in range(len(data)) if not covered[i]):
        raise IndFormatError("non-zero padding between tensors")
    return Opened(tensors, metadata, dek, file_id, h["active"], h["capacity"], h["sequence"],
                  records, number, index_plain, index_msg, data_msg, data, entries, trailer,
                  statement, signer)


def check_signature(h, trailer, index_msg, data_msg, signers, min_generation, expect_file_id):
    """§7a, in the order given there (§9 step 16)."""
    if not h["trailer_len"]:
        raise IndSignatureError("the file is not signed")
    if not hmac.compare_digest(hashlib.sha256(trailer).digest(), h["digest"]):
        raise IndIntegrityError("trailer digest")
    raw_statement = trailer[:264]
    st = parse_statement(raw_statement)
    if st["label"] != STATEMENT_LABEL or st["generation"] > 2**63 - 1:
        raise IndSignatureError("malformed statement")
    public = trailer[264:2248]
    if public not in signers:
        raise IndSignatureError("signer not accepted")
    if not verify_signatures(public, raw_statement, trailer[2248:2312], trailer[2312:5621]):
        raise IndSignatureError("signature does not verify")
    table = trailer[5621:]
    if st["file_id"] != h["file_id"] \
            or st["index_length"] != h["index_len"] or st["data_length"] != h["data_len"] \
            or st["index_digest"] != hashlib.sha512(index_msg).digest() \
            or st["data_header"] != data_msg[:MSG_HEADER] \
            or st["table_digest"] != hashlib.sha512(table).digest():
        raise IndSignatureError("statement does not match the file")
    if expect_file_id is not None and st["file_id"] != expect_file_id:
        raise IndSignatureError("file id pin")
    if min_generation is not None and st["generation"] < min_generation:
        raise IndSignatureError("generation pin")
    return st, public, table


# --------------------------------------------------------------------------------------------------
# The writer (§10) and an in-place rewrap (§11).

@dataclass
class Signer:
    seeds: bytes                    # Ed25519 seed || ML-DSA-65 seed (ST-SIGN-SECRET payload)

    def public(self) -> bytes:
        ed = ECC.construct(curve="Ed25519", seed=self.seeds[:32])
        ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, seed=self.seeds[32:])
        return ed.public_key().export_key(format="raw") + ml.public_key().pk

    deterministic_mldsa: bool = False   # §7a: writers sign hedged; verifiers accept either

    def sign(self, statement: bytes) -> tuple[bytes, bytes]:
        ed = ECC.construct(curve="Ed25519", seed=self.seeds[:32])
        ml = MLDSA.construct(param_set=MLDSA.ML_DSA_65, seed=self.seeds[32:])
        return (eddsa.new(ed, "rfc8032").sign(statement),
                mldsa.new(ml, context=MLDSA_CONTEXT,
                          deterministic=self.deterministic_mldsa).sign(statement))


def build_trailer(signer: Signer, file_id, generation, signed_at, index_msg, data_msg,
                  ml_signature: bytes | None = None, statement_overrides=None) -> bytes:
    table = b"".join(hashlib.sha256(c).digest() for c in stored_chunks(data_msg))
    fields = {"label": STATEMENT_LABEL, "file_id": file_id, "generation": generation,
              "signed_at": signed_at, "index_length": len(index_msg),
              "data_length": len(data_msg), "index_digest": hashlib.sha512(index_msg).digest(),
              "data_header": data_msg[:MSG_HEADER], "table_digest": hashlib.sha512(table).digest()}
    fields.update(statement_overrides or {})
    statement = STATEMENT.pack(*fields.values())
    ed_sig, ml_sig = signer.sign(statement)
    if ml_signature is not None:      # reproduce another file: ML-DSA signing is hedged (§7a)
        ml_sig = ml_signature
    return statement + signer.public() + ed_sig + ml_sig + table


def assemble(dek, file_id, records, index_msg, data_msg, trailer=b"", *, sequence=0, active=0,
             capacity=None) -> bytes:
    table = b"".join(r.to_bytes() for r in records)
    capacity = capacity or capacity_for(len(table))
    preamble = PREAMBLE.pack(MAGIC, 2, 1, active, bytes(3), capacity, bytes(12))
    digest = hashlib.sha256(trailer).digest() if trailer else bytes(32)
    fixed = FIXED.pack(file_id, sequence, len(index_msg), len(data_msg), len(trailer), digest,
                       len(records), len(table))
    body = fixed + table
    copy = body + header_mac(dek, preamble, active, body)
    copy += bytes(capacity - len(copy))
    copies = [copy, bytes(capacity)] if active == 0 else [bytes(capacity), copy]
    return preamble + copies[0] + copies[1] + index_msg + data_msg + trailer


def write_sealed(tensors: dict, recipients: list, metadata=None, *, signer: Signer | None = None,
                 generation: int = 0, signed_at: int = 0, dek=None, file_id=None,
                 index_salt=None, data_salt=None, fixed_slots=None, ml_signature=None) -> bytes:
    """§10. Random values may be given (``fixed_slots``: per recipient, see ``make``)."""
    dek = dek or secrets.token_bytes(32)
    file_id = file_id or secrets.token_bytes(16)
    entries, data = layout(tensors)
    index_plain = serialize_index(entries, metadata)
    index_msg = c2sp_encrypt(dek, index_plain, index_context(file_id),
                             index_salt or secrets.token_bytes(SALT))
    data_msg = c2sp_encrypt(dek, data, data_context(file_id, index_plain),
                            data_salt or secrets.token_bytes(SALT))
    fixed_slots = fixed_slots or [None] * len(recipients)
    records = [r.make(dek, file_id, f) for r, f in zip(recipients, fixed_slots)]
    trailer = b""
    if signer is not None:
        trailer = build_trailer(signer, file_id, generation, signed_at, index_msg, data_msg,
                                ml_signature)
    return assemble(dek, file_id, records, index_msg, data_msg, trailer)


def rewrap_in_place(blob: bytes, dek: bytes, records: list) -> bytes:
    """§11 step 3-4 without the locking: next header into the spare copy, flip, zero the old."""
    h = parse_header(blob)
    capacity, old = h["capacity"], h["active"]
    new = 1 - old
    table = b"".join(r.to_bytes() for r in records)
    body = FIXED.pack(h["file_id"], h["sequence"] + 1, h["index_len"], h["data_len"],
                      h["trailer_len"], h["digest"], len(records), len(table)) + table
    copy = body + header_mac(dek, blob[:32], new, body)
    copy += bytes(capacity - len(copy))
    out = bytearray(blob)
    out[32 + new * capacity:32 + (new + 1) * capacity] = copy
    out[12] = new
    out[32 + old * capacity:32 + (old + 1) * capacity] = bytes(capacity)
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# Keys for both worlds, and a test key provider.

class AesGcmTestProvider(KeyProvider):
    """A key provider for tests: AES-256-GCM under a key it holds, the binding as AAD."""

    name = "test-aesgcm"

    def __init__(self, key: bytes):
        self._key = key

    def wrap(self, data_key, binding):
        return provider_wrap(self._key, data_key, binding)

    def unwrap(self, payload, binding):
        return provider_unwrap(self._key, payload, binding)


def provider_wrap(key: bytes, data_key: bytes, binding: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, data_key, binding)


def provider_unwrap(key: bytes, payload: bytes, binding: bytes) -> bytes | None:
    try:
        return AESGCM(key).decrypt(payload[:12], payload[12:], binding)
    except InvalidTag:
        return None                 # not this provider's key (the reader tries other slots)


class Keys:
    """One recipient of each type, known to both sealtensors and the independent code."""

    def __init__(self):
        self.sym = secrets.token_bytes(32)
        self.x25519 = generate_identity("x25519")
        self.xwing = generate_identity("xwing")
        self.passphrase = "corrëct horse battery staple"          # NFC form
        self.provider_key = secrets.token_bytes(32)
        self.provider = AesGcmTestProvider(self.provider_key)
        self.signing = SigningKey.generate()
        # The independent side reads the secrets from their §4.3 text forms only.
        self.x25519_secret = text_decode(self.x25519.text(), "ST-X25519-SECRET")
        self.xwing_secret = text_decode(self.xwing.text(), "ST-XWING-SECRET")
        self.x25519_public = text_decode(self.x25519.recipient().text(), "st-x25519")
        self.xwing_public = text_decode(self.xwing.recipient().text(), "st-xwing")
        self.sign_seeds = text_decode(self.signing.text(), "ST-SIGN-SECRET")
        self.sign_public = text_decode(self.signing.verifying_key.text(), "st-sign")

    def st_recipient(self, kind):
        return {"symmetric": SymmetricKey(self.sym), "x25519": self.x25519.recipient(),
                "xwing": self.xwing.recipient(),
                "passphrase": Passphrase(self.passphrase, log2_n=15),
                "provider": self.provider}[kind]

    def st_identity(self, kind):
        return {"symmetric": SymmetricKey(self.sym), "x25519": self.x25519, "xwing": self.xwing,
                "passphrase": Passphrase(self.passphrase), "provider": self.provider}[kind]

    def ind_recipient(self, kind):
        return {"symmetric": SymRecipient(self.sym),
                "x25519": HpkeRecipient(X25519, self.x25519_public),
                "xwing": HpkeRecipient(XWING, self.xwing_public),
                "passphrase": PassRecipient(self.passphrase, (15, 8, 1)),
                "provider": ProviderRecipient(
                    "test-aesgcm", lambda dek, b: provider_wrap(self.provider_key, dek, b))}[kind]

    def ind_identity(self, kind):
        return {"symmetric": SymIdentity(self.sym),
                "x25519": HpkeIdentity(X25519, self.x25519_secret),
                "xwing": HpkeIdentity(XWING, self.xwing_secret),
                "passphrase": PassIdentity(self.passphrase),
                "provider": ProviderIdentity(
                    "test-aesgcm", lambda p, b: provider_unwrap(self.provider_key, p, b))}[kind]


KINDS = ["symmetric", "x25519", "xwing", "passphrase", "provider"]


@pytest.fixture(scope="module")
def keys():
    return Keys()


def _assert_same_arrays(got: dict, want: dict):
    assert list(got) == list(want)
    for name in want:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), name


def _reference_error(blob, identities, **verification) -> tuple[str, int | None] | None:
    try:
        st_numpy.load(blob, identities, **verification)
    except Exception as exc:  # any class, so that a stray ValueError shows up as a mismatch
        return type(exc).__name__, getattr(exc, "chunk_index", None)
    return None


def _independent_error(blob, identities, **verification) -> tuple[str, int | None] | None:
    try:
        read_sealed(blob, identities, **verification)
    except IndError as exc:
        return type(exc).reference, exc.chunk_index
    return None


# --------------------------------------------------------------------------------------------------
# Test content.

def _tensor_cases():
    rng = np.random.default_rng(20240611)
    return {
        "dtypes": ({
            "f32": rng.standard_normal((3, 5)).astype(np.float32),
            "f64": rng.standard_normal(7),
            "f16": rng.standard_normal((2, 3)).astype(np.float16),
            "bf16": rng.standard_normal(9).astype(ml_dtypes.bfloat16),
            "e4m3": rng.standard_normal(5).astype(ml_dtypes.float8_e4m3fn),
            "e5m2": rng.standard_normal(5).astype(ml_dtypes.float8_e5m2),
            "e8m0": np.array([0.25, 1.0, 8.0], dtype=ml_dtypes.float8_e8m0fnu),
            "e4m3fnuz": rng.standard_normal(5).astype(ml_dtypes.float8_e4m3fnuz),
            "e5m2fnuz": rng.standard_normal(5).astype(ml_dtypes.float8_e5m2fnuz),
            "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
            "bool": rng.integers(0, 2, 11).astype(bool),
            "u8": rng.integers(0, 256, 13, dtype=np.uint8),
            "i8": rng.integers(-128, 128, (2, 2), dtype=np.int8),
            "u16": rng.integers(0, 2**16, 3, dtype=np.uint16),
            "i16": rng.integers(-2**15, 2**15, 3, dtype=np.int16),
            "u32": rng.integers(0, 2**32, 3, dtype=np.uint32),
            "i32": rng.integers(-2**31, 2**31, 3, dtype=np.int32),
            "u64": rng.integers(0, 2**63, 3, dtype=np.uint64),
            "i64": rng.integers(-2**63, 2**63 - 1, 3, dtype=np.int64),
            "nan": np.array([np.nan, np.inf, -0.0], dtype=np.float32),
        }, None),
        "zero-size-and-scalars": ({
            "a": np.arange(3, dtype=np.uint8),
            "empty": np.zeros((0,), dtype=np.float32),
            "empty2d": np.zeros((4, 0, 2), dtype=np.int64),
            "scalar": np.array(2.5, dtype=np.float64),
            "trailing_empty": np.zeros((0, 3), dtype=np.float16),
        }, None),
        "unicode-and-metadata": ({
            "ünïcødé.weight": np.arange(6, dtype=np.int32).reshape(2, 3),
            "模型/层.0": np.ones(5, dtype=np.float32),
            "emoji 🦀\"quote\\": np.array([1, 2], dtype=np.int16),
        }, {"format": "pt", "note": "naïve \u2028 \n\t \"x\"\x01", "": "empty key", "ключ": "",
            "b": "metadata order is kept", "a": "not sorted"}),
        "empty-model": ({}, None),
        "empty-model-empty-metadata": ({}, {}),
        "metadata-empty-dict": ({"x": np.ones(2, dtype=np.float32)}, {}),
        "data-16384": ({"x": rng.integers(0, 256, CHUNK, dtype=np.uint8)}, None),
        "multi-chunk": ({"a": rng.integers(0, 256, 100, dtype=np.uint8),
                         "b": rng.standard_normal((37, 311)).astype(np.float32),
                         "c": rng.standard_normal(1000).astype(ml_dtypes.bfloat16)},
                        {"who": "multi"}),
        "index-straddles-chunk": ({"x": np.arange(4, dtype=np.float32)},
                                  {"blob": "z" * (CHUNK + 10)}),
    }


CASES = _tensor_cases()


def _recipients_for(keys, kinds, side):
    make = keys.st_recipient if side == "st" else keys.ind_recipient
    return [make(k) for k in kinds]


def _fixed_from(opened: Opened) -> list[dict]:
    """The randomness sealtensors drew for each slot, recovered from the file (§5.4)."""
    fixed = []
    for record in opened.slots:
        if record.type == SYMMETRIC:
            fixed.append({"salt": record.body[:SALT]})
        elif record.type in (X25519, XWING):
            fixed.append({"body": record.body})           # ephemeral keys: keep the body
        elif record.type == PASSPHRASE:
            fixed.append({"slot_id": record.slot_id, "params": tuple(record.body[:3]),
                          "scrypt_salt": record.body[4:20], "salt": record.body[20:20 + SALT]})
        else:
            name_len = record.body[0]
            fixed.append({"slot_id": record.slot_id, "payload": record.body[1 + name_len:]})
    return fixed


def _rebuild(opened: Opened, tensors, metadata, keys, kinds, *, signer=None) -> bytes:
    kwargs = {}
    if opened.statement is not None and opened.trailer:
        kwargs = {"signer": signer, "generation": opened.statement["generation"],
                  "signed_at": opened.statement["signed_at"],
                  "ml_signature": opened.trailer[2312:5621]}
    return write_sealed(tensors, _recipients_for(keys, kinds, "ind"), metadata, dek=opened.dek,
                        file_id=opened.file_id, index_salt=opened.index_msg[:SALT],
                        data_salt=opened.data_msg[:SALT], fixed_slots=_fixed_from(opened), **kwargs)


# --------------------------------------------------------------------------------------------------
# 1 and 2: every slot type both ways; byte-identical rebuilds.

@pytest.mark.parametrize("kind", KINDS)
def test_each_slot_type_sealed_by_sealtensors_opens_independently(keys, kind):
    tensors, metadata = CASES["unicode-and-metadata"]
    blob = st_numpy.save(tensors, keys.st_recipient(kind), metadata=metadata)
    opened = read_sealed(blob, [keys.ind_identity(kind)])
    _assert_same_arrays(opened.tensors, tensors)
    assert opened.metadata == metadata
    assert [r.type for r in opened.slots] == [{"symmetric": 1, "x25519": 2, "xwing": 3,
                                               "passphrase": 4, "provider": 128}[kind]]
    assert opened.active == 0 and opened.sequence == 0
    assert opened.capacity == capacity_for(20 + len(opened.slots[0].body))
    # The slot ids are as §4.2 says (deterministic ones recomputed; random ones differ per file).
    if kind in ("symmetric", "x25519", "xwing"):
        assert opened.slots[0].slot_id == keys.ind_identity(kind).slot_id(opened.file_id)
    rebuilt = _rebuild(opened, tensors, metadata, keys, [kind])
    assert rebuilt == blob


@pytest.mark.parametrize("kind", KINDS)
def test_each_slot_type_written_independently_opens_with_sealtensors(keys, kind, tmp_path):
    tensors, metadata = CASES["dtypes"]
    blob = write_sealed(tensors, [keys.ind_recipient(kind)], metadata)
    _assert_same_arrays(st_numpy.load(blob, keys.st_identity(kind)), tensors)
    # sealtensors' identity file holds one secret line (§4.3) that decodes to the same secret.
    if kind in ("x25519", "xwing"):
        tag = {"x25519": "ST-X25519-SECRET", "xwing": "ST-XWING-SECRET"}[kind]
        st_text = identity_text(keys.st_identity(kind))
        assert text_decode(secret_line(st_text), tag) == keys.ind_identity(kind).secret
    # The identity's text form, as written from §4.3, is read by sealtensors too.
    if kind != "passphrase" and kind != "provider":
        secret = {"symmetric": ("ST-SYMMETRIC-SECRET", keys.sym),
                  "x25519": ("ST-X25519-SECRET", keys.x25519_secret),
                  "xwing": ("ST-XWING-SECRET", keys.xwing_secret)}[kind]
        path = tmp_path / "identity.txt"
        path.write_text("# written by the independent test\n" + text_encode(*secret) + "\n")
        path.chmod(0o600)
        _assert_same_arrays(st_numpy.load(blob, load_identity(path)), tensors)


def test_independent_recipient_strings_parse_in_sealtensors(keys):
    for tag, public, kind in (("st-x25519", keys.x25519_public, "x25519"),
                              ("st-xwing", keys.xwing_public, "xwing")):
        text = text_encode(tag, public)
        assert text == getattr(keys, kind).recipient().text()
        blob = st_numpy.save({"x": np.arange(3)}, Recipient.parse(text))
        assert read_sealed(blob, [keys.ind_identity(kind)]).tensors["x"].tolist() == [0, 1, 2]
    assert xwing_public(keys.xwing_secret) == keys.xwing_public
    assert x25519_public(keys.x25519_secret) == keys.x25519_public
    assert Signer(keys.sign_seeds).public() == keys.sign_public
    for bad in (text_encode("st-x25519", keys.x25519_public)[:-1] + "A",     # check / bits
                text_encode("st-x25519", keys.x25519_public) + "A"):          # length
        with pytest.raises(ValueError):
            text_decode(bad, "st-x25519")
        with pytest.raises(st_errors.SealError):
            Recipient.parse(bad)


MIXED = ["xwing", "symmetric", "x25519"]
MIXED_ALL = ["passphrase", "x25519", "provider", "symmetric", "xwing"]


@pytest.fixture(scope="module")
def mixed_files(keys):
    """Sealed by sealtensors: three recipients of three types, and one of every type (signed)."""
    tensors, metadata = CASES["multi-chunk"]
    three = st_numpy.save(tensors, _recipients_for(keys, MIXED, "st"), metadata=metadata)
    every = st_numpy.save(tensors, _recipients_for(keys, MIXED_ALL, "st"), metadata=metadata,
                          signer=keys.signing, generation=42)
    return {"three": three, "every": every}


def test_mixed_files_open_with_every_identity_independently(keys, mixed_files):
    tensors, metadata = CASES["multi-chunk"]
    for name, kinds in (("three", MIXED), ("every", MIXED_ALL)):
        blob = mixed_files[name]
        for number, kind in enumerate(kinds):
            opened = read_sealed(blob, [keys.ind_identity(kind)])
            _assert_same_arrays(opened.tensors, tensors)
            assert opened.metadata == metadata
            assert opened.unlocked_slot == number
            assert [TYPE_NAMES[r.type] for r in opened.slots] == kinds
        # The identities are tried in the caller's order: the first one that owns a slot wins.
        stranger = SymIdentity(secrets.token_bytes(32))
        opened = read_sealed(blob, [stranger, keys.ind_identity("x25519")])
        assert opened.unlocked_slot == kinds.index("x25519")
    opened = read_sealed(mixed_files["every"], [SymIdentity(keys.sym)], signers=[keys.sign_public])
    assert opened.statement["generation"] == 42
    assert opened.signer == keys.sign_public


def test_mixed_files_rebuild_byte_for_byte(keys, mixed_files):
    tensors, metadata = CASES["multi-chunk"]
    for name, kinds in (("three", MIXED), ("every", MIXED_ALL)):
        blob = mixed_files[name]
        opened = read_sealed(blob, [keys.ind_identity("symmetric")])
        signer = Signer(keys.sign_seeds) if name == "every" else None
        assert _rebuild(opened, tensors, metadata, keys, kinds, signer=signer) == blob


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_mixed_files_written_independently_open_with_sealtensors(keys, signed):
    tensors, metadata = CASES["multi-chunk"]
    signer = Signer(keys.sign_seeds) if signed else None
    blob = write_sealed(tensors, _recipients_for(keys, MIXED_ALL, "ind"), metadata, signer=signer,
                        generation=7, signed_at=1700000000)
    verification = {"signer": keys.signing.verifying_key} if signed else {}
    for kind in MIXED_ALL:
        _assert_same_arrays(st_numpy.load(blob, keys.st_identity(kind), **verification), tensors)
    if signed:
        text = text_encode("st-sign", keys.sign_public)
        assert text == keys.signing.verifying_key.text()
        _assert_same_arrays(st_numpy.load(blob, keys.sym, signer=VerifyingKey.parse(text),
                                          min_generation=7), tensors)


@pytest.mark.parametrize("name", list(CASES))
def test_sealtensors_files_rebuild_byte_for_byte(keys, name, tmp_path):
    """With the random values of a sealtensors file (DEK, file id, salts), the writer built from
    FORMAT.md produces the identical file: every derivation, context, the canonical JSON, the
    capacity rule and the layout agree."""
    tensors, metadata = CASES[name]
    path = tmp_path / "sealed.st"
    st_numpy.save_file(tensors, path, keys.sym, metadata=metadata)
    blob = path.read_bytes()
    opened = read_sealed(blob, [SymIdentity(keys.sym)])
    _assert_same_arrays(opened.tensors, tensors)
    assert opened.metadata == metadata             # None and {} stay distinct
    entries, data = opened.entries, opened.data
    assert all(begin % ALIGN == 0 for _, _, _, begin, _ in entries)
    assert len(data) == (entries[-1][4] if entries else 0)
    assert len(opened.index_msg) == c2sp_message_length(len(opened.index_plain))
    assert len(opened.data_msg) == c2sp_message_length(len(data))
    assert _rebuild(opened, tensors, metadata, keys, ["symmetric"]) == blob
    # And the other way round: sealtensors reads the independent writer's fresh file.
    fresh = write_sealed(tensors, [SymRecipient(keys.sym)], metadata)
    _assert_same_arrays(st_numpy.load(fresh, keys.sym), tensors)


@pytest.mark.parametrize("name", ["empty-model", "multi-chunk", "metadata-empty-dict"])
def test_signed_files_rebuild_byte_for_byte(keys, name):
    """Ed25519 is deterministic; ML-DSA-65 signing is randomized (hedged), so the rebuild takes
    sealtensors' ML-DSA signature bytes and verifies them over the statement it computed itself."""
    tensors, metadata = CASES[name]
    blob = st_numpy.save(tensors, keys.sym, metadata=metadata, signer=keys.signing, generation=5)
    opened = read_sealed(blob, [SymIdentity(keys.sym)], signers=[keys.sign_public])
    st = opened.statement
    assert st["label"] == STATEMENT_LABEL and st["generation"] == 5
    assert st["file_id"] == opened.file_id
    trailer = opened.trailer
    assert len(trailer) == TRAILER_FIXED + 32 * len(stored_chunks(opened.data_msg))
    signer = Signer(keys.sign_seeds)
    rebuilt = _rebuild(opened, tensors, metadata, keys, ["symmetric"], signer=signer)
    assert rebuilt == blob
    # Without borrowing: only the ML-DSA signature, the trailer digest and the MAC may differ.
    own = write_sealed(tensors, [SymRecipient(keys.sym)], metadata, signer=signer, generation=5,
                       signed_at=st["signed_at"], dek=opened.dek, file_id=opened.file_id,
                       index_salt=opened.index_msg[:SALT], data_salt=opened.data_msg[:SALT],
                       fixed_slots=_fixed_from(opened))
    region = 32 + 2 * opened.capacity
    ml_start = len(blob) - len(trailer) + 2312
    differ = {i for i in range(len(blob)) if blob[i] != own[i]}
    allowed = set(range(ml_start, ml_start + ML_SIG)) | set(range(32 + 48, 32 + 80)) | \
        set(range(32 + 88 + 124, 32 + 120 + 124))
    assert len(own) == len(blob) and differ <= allowed
    assert region < ml_start
    _assert_same_arrays(st_numpy.load(own, keys.sym, signer=keys.signing.verifying_key), tensors)


def test_provider_slot_layout(keys):
    blob = st_numpy.save({"x": np.arange(5)}, [keys.provider, keys.sym])
    opened = read_sealed(blob, [keys.ind_identity("provider")])
    record = opened.slots[0]
    assert record.type == PROVIDER and record.body[0] == len(b"test-aesgcm")
    assert record.body[1:12] == b"test-aesgcm" and len(record.body) == 1 + 11 + 12 + 48
    # Another provider instance (another key) does not own the slot: the reader goes on.
    stranger = ProviderIdentity("test-aesgcm", lambda p, b: provider_unwrap(bytes(32), p, b))
    assert _independent_error(blob, [stranger]) == ("WrongKeyError", None)
    assert _reference_error(blob, AesGcmTestProvider(bytes(32))) == ("WrongKeyError", None)
    # A reader without the provider skips the slot (§9 step 9 only tries matching names).
    assert read_sealed(blob, [SymIdentity(keys.sym)]).unlocked_slot == 1


def _symmetric_file(keys) -> Opened:
    return read_sealed(write_sealed({"x": np.arange(3)}, [SymRecipient(keys.sym)], None),
                       [SymIdentity(keys.sym)])


def _with_slots_first(opened: Opened, *records: SlotRecord) -> bytes:
    """``opened``'s file with ``records`` put first in its slot table (MAC fixed up by the DEK)."""
    return assemble(opened.dek, opened.file_id, [*records, *opened.slots], opened.index_msg,
                    opened.data_msg)


def test_malformed_provider_bodies(keys):
    """§5.4 / §9 step 7: a malformed provider body is a FormatError for every reader, whichever
    identity it holds; a well-formed one (a space is printable) is skipped by other identities."""
    opened = _symmetric_file(keys)
    payload = provider_wrap(keys.provider_key, opened.dek, provider_binding(opened.file_id))
    name = b"test-aesgcm"
    bodies = {"empty name": bytes([0]) + payload, "name past the body": bytes([200]) + name + b"x",
              "no payload": bytes([11]) + name, "name past the end by one": bytes([12]) + name,
              "control character": bytes([11]) + b"test\x01" + name[5:] + payload,
              "DEL": bytes([11]) + b"test\x7f" + name[5:] + payload,
              "non-ASCII": bytes([11]) + b"test\xe9" + name[5:] + payload,
              "65-byte name": bytes([65]) + b"a" * 65 + payload,
              "8193-byte payload": bytes([11]) + name + bytes(8193)}
    for what, body in bodies.items():
        forged = _with_slots_first(opened, SlotRecord(PROVIDER, secrets.token_bytes(16), body))
        for ind_id, st_id in (([SymIdentity(keys.sym)], keys.sym),
                              ([keys.ind_identity("provider")], keys.provider),
                              ([keys.ind_identity("passphrase")], keys.st_identity("passphrase"))):
            got, want = _agree(forged, ind_id, st_id)
            assert got == want == ("FormatError", None), (what, ind_id[0].type)
    for what, body in {"space in the name": bytes([11]) + b"test aesgcm" + payload,
                       "64-byte name, 8192-byte payload": bytes([64]) + b"~" * 64 + bytes(8192),
                       "one-byte name and payload": b"\x01 \x00"}.items():
        forged = _with_slots_first(opened, SlotRecord(PROVIDER, secrets.token_bytes(16), body))
        assert _agree(forged, [SymIdentity(keys.sym)], keys.sym) == (None, None), what
        got, want = _agree(forged, [keys.ind_identity("provider")], keys.provider)
        assert got == want == ("WrongKeyError", None), what


@pytest.mark.parametrize("slot_type", [0, 5, 127, 129, 255])
def test_unknown_slot_types_are_unsupported(keys, slot_type):
    """§5.3 / §9 step 7: a record of a type not in §4.1 is an UnsupportedFormatError while the
    table is parsed, before any identity is tried, and even when another slot would open."""
    opened = _symmetric_file(keys)
    forged = _with_slots_first(opened, SlotRecord(slot_type, secrets.token_bytes(16),
                                                  b"future slot body"))
    got, want = _agree(forged, [SymIdentity(keys.sym)], keys.sym)
    assert got == want == ("UnsupportedFormatError", None)
    assert issubclass(st_errors.UnsupportedFormatError, st_errors.FormatError)
    # Record by record (§9 step 7): a wrong reserved byte in an earlier record comes first.
    bad_reserved = SlotRecord(SYMMETRIC, secrets.token_bytes(16), bytes(104), reserved=1)
    unknown = SlotRecord(slot_type, secrets.token_bytes(16), b"x")
    forged = _with_slots_first(opened, bad_reserved, unknown)
    assert _agree(forged, [SymIdentity(keys.sym)], keys.sym) == (("FormatError", None),) * 2
    forged = _with_slots_first(opened, unknown, bad_reserved)
    assert _agree(forged, [SymIdentity(keys.sym)], keys.sym) == \
        (("UnsupportedFormatError", None),) * 2


def test_slot_type_byte_altered_to_a_valid_type(keys):
    """§9 step 10: a slot is tried by its body's length, whatever its type byte says. A symmetric
    slot whose salt starts 0x01 and a printable byte is also a well-formed provider body, so
    retyping it to provider passes step 7; the key's holder then finds it: IntegrityError."""
    opened = _symmetric_file(keys)
    salt = b"\x01A" + secrets.token_bytes(SALT - 2)
    record = SymRecipient(keys.sym).make(opened.dek, opened.file_id, {"salt": salt})
    blob = assemble(opened.dek, opened.file_id, [record], opened.index_msg, opened.data_msg)
    assert read_sealed(blob, [SymIdentity(keys.sym)]).tensors["x"].tolist() == [0, 1, 2]
    retyped = bytearray(blob)
    assert retyped[32 + 88] == SYMMETRIC
    retyped[32 + 88] = PROVIDER
    got, want = _agree(bytes(retyped), [SymIdentity(keys.sym)], keys.sym)
    assert got == want == ("IntegrityError", None)
    got, want = _agree(bytes(retyped), [keys.ind_identity("provider")], keys.provider)
    assert got == want == ("WrongKeyError", None)              # a provider named "A": not ours


# --------------------------------------------------------------------------------------------------
# 3: the worked example of §14 is a real file.

EXAMPLE_KEY = bytes(range(32))


def _format_md_section_14() -> str:
    text = FORMAT_MD.read_text(encoding="utf-8")
    return text.split("## 14. Worked example", 1)[1].split("## 15.", 1)[0]


def _example_from_format_md() -> bytes:
    """The `xxd -a -g1` dump: a `*` line stands for all-zero lines up to the next offset."""
    block = _format_md_section_14().split("<!-- example-hexdump -->", 2)[1]
    out, pending_zeros = bytearray(), False
    for line in block.splitlines():
        if line.strip() == "*":
            pending_zeros = True
            continue
        m = re.match(r"^([0-9a-f]{8}):((?: [0-9a-f]{2})+)", line)
        if not m:
            continue
        offset = int(m.group(1), 16)
        if pending_zeros:
            assert offset > len(out) and (offset - len(out)) % 16 == 0
            out += bytes(offset - len(out))
            pending_zeros = False
        assert offset == len(out), hex(offset)
        out += bytes.fromhex("".join(m.group(2).split()))
    return bytes(out)


def _example_values() -> dict[str, str]:
    block = _format_md_section_14().split("Intermediate values:", 1)[1].split("```")[1]
    values, current = {}, None
    for line in block.splitlines():
        if not line.strip():
            continue
        if line.startswith(" "):
            values[current] += " " + line.strip()
        else:
            # The label may hold a double space ("slot  aead key"); the value never does.
            m = re.match(r"^(.*\S)\s{2,}(\S(?:(?! {2}).)*)$", line.strip())
            current = m.group(1)
            values[current] = m.group(2)
    return values


def test_format_md_example_opens_and_its_values_recompute():
    section = _format_md_section_14()
    blob = _example_from_format_md()
    size = int(re.search(r"Whole file \((\d+) bytes", section).group(1))
    assert len(blob) == size
    want = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 2,
            "bias": np.array([-1, 0, 1], dtype=np.int8)}
    opened = read_sealed(blob, [SymIdentity(EXAMPLE_KEY)])
    _assert_same_arrays(opened.tensors, want)
    assert opened.metadata == {"model": "example"}
    _assert_same_arrays(st_numpy.load(blob, EXAMPLE_KEY), want)

    values = _example_values()

    def hexval(label):
        return bytes.fromhex(values[label].split("=")[-1].replace(" ", ""))

    fid = opened.file_id
    assert hexval("recipient key") == EXAMPLE_KEY
    assert hexval("file id") == fid
    assert hexval("slot id") == symmetric_slot_id(EXAMPLE_KEY, fid) == opened.slots[0].slot_id
    assert '"sealtensors/v2/slot/symmetric" 00 || file id' in values["slot context"]
    slot = opened.slots[0].body
    key, nonce, commitment = c2sp_derive(EXAMPLE_KEY, slot[:SALT], slot_context(SYMMETRIC, fid))
    assert (hexval("slot  aead key"), hexval("slot  base nonce"), hexval("slot  commitment")) == \
        (key, nonce, commitment)
    assert hexval("DEK") == opened.dek
    assert hexval("mac key") == mac_key(opened.dek)
    m = re.fullmatch(r"HMAC-SHA-256\(mac key, file\[0x000:0x020\] \|\| "
                     r"file\[0x020:0x([0-9a-f]+)\]\)", values["header MAC"])
    end = int(m.group(1), 16)
    assert hmac.new(mac_key(opened.dek), blob[:end], hashlib.sha256).digest() == blob[end:end + 32]
    for role, message, context in (
            ("index", opened.index_msg, index_context(fid)),
            ("data", opened.data_msg, data_context(fid, opened.index_plain))):
        derived = c2sp_derive(opened.dek, message[:SALT], context)
        assert (hexval(f"{role} aead key"), hexval(f"{role} base nonce"),
                hexval(f"{role} commitment")) == derived
    assert hexval("SHA-512(index)") == hashlib.sha512(opened.index_plain).digest()

    # The structure table: each 32+-digit hex value sits at the offset of its row.
    for row in re.finditer(r"^\| `([0-9a-f]+)` \|[^|]*\|[^|]*\| (.*) \|$", section, re.M):
        token = re.search(r"[0-9a-f]{32,}", row.group(2))
        if token:
            offset = int(row.group(1), 16)
            assert blob[offset:offset + len(token.group()) // 2].hex() == token.group(), row.group()
    capacity = int(re.search(r"capacity `C` = (\d+)", section).group(1))
    assert capacity == opened.capacity == capacity_for(len(opened.slots[0].body) + 20)
    index_text = section.split("Index plaintext", 1)[1].split("```")[1].strip()
    assert index_text.encode("utf-8") == opened.index_plain
    assert opened.index_plain == serialize_index(opened.entries, opened.metadata)
    # Rebuilt from the listed randomness, the example is reproduced byte for byte.
    rebuilt = write_sealed(want, [SymRecipient(EXAMPLE_KEY)], {"model": "example"},
                           dek=opened.dek, file_id=fid, index_salt=opened.index_msg[:SALT],
                           data_salt=opened.data_msg[:SALT], fixed_slots=[{"salt": slot[:SALT]}])
    assert rebuilt == blob


# --------------------------------------------------------------------------------------------------
# 4: error-class agreement for flipped and truncated bytes.

@pytest.fixture(scope="module")
def flip_file(keys):
    """Unsigned, three recipients of three types, a multi-chunk data message."""
    tensors = {"w": np.arange(5000, dtype=np.float32), "b": np.arange(3, dtype=np.int8)}
    return st_numpy.save(tensors, [SymmetricKey(keys.sym), keys.x25519.recipient(),
                                   keys.xwing.recipient()], metadata={"m": "1"})


def _flip(blob, pos, mask=0x01):
    tampered = bytearray(blob)
    tampered[pos] ^= mask
    return bytes(tampered)


def _agree(blob, ind_ids, st_ids, **verification):
    ind_v = {"signers" if k == "signer" else k: v for k, v in verification.items()}
    if "signers" in ind_v:
        ind_v["signers"] = [text_decode(ind_v["signers"].text(), "st-sign")]
    got = _independent_error(blob, ind_ids, **ind_v)
    want = _reference_error(blob, st_ids, **verification)
    return got, want


def _header_flips(keys, flip_file, step: int) -> dict[str, set]:
    """Flip every ``step``-th byte up to the end of the MAC and read with each of the three
    identities (the bytes of the identity's own slot exercise §9 steps 9 and 10)."""
    end = 32 + 120 + parse_header(flip_file)["table_len"]
    by_class: dict[str, set] = {}
    for kind in ("symmetric", "x25519", "xwing"):
        for pos in range(0, end, step):
            got, want = _agree(_flip(flip_file, pos), [keys.ind_identity(kind)],
                               keys.st_identity(kind))
            assert got is not None and got == want, (kind, pos, got, want)
            by_class.setdefault(got[0], set()).add(pos)
    return by_class


@pytest.fixture(scope="module")
def every_header_flip(keys, flip_file):
    """The whole loop runs once per module (under the first engine): no chunk is decrypted before
    the header MAC, so the engine plays no part in these results."""
    return _header_flips(keys, flip_file, 1)


def test_every_preamble_and_active_header_byte_flip_agrees(keys, flip_file, every_header_flip):
    by_class = every_header_flip
    end = 32 + 120 + parse_header(flip_file)["table_len"]
    assert set().union(*by_class.values()) == set(range(end))
    # Spot checks against §9.
    assert 0 in by_class["FormatError"] and 12 in by_class["FormatError"]
    assert {8, 10} <= by_class["UnsupportedFormatError"]
    file_id = set(range(32, 48))            # §9 notes: no identity recognises a slot
    assert file_id <= by_class["WrongKeyError"]
    assert all(file_id.isdisjoint(v) for k, v in by_class.items() if k != "WrongKeyError")
    assert 32 + 88 in by_class["UnsupportedFormatError"]      # slot type 1 -> 0 (§5.3)
    assert set(range(48, 56)) <= by_class["IntegrityError"]    # sequence: the MAC
    assert end - 1 in by_class["IntegrityError"]               # the MAC itself
    # And a sample again under this test's engine.
    _header_flips(keys, flip_file, 41)


def test_flips_of_the_padding_and_a_zeroed_spare_copy(keys, flip_file):
    h = parse_header(flip_file)
    capacity = h["capacity"]
    end = 32 + 120 + h["table_len"]
    ind, st = [keys.ind_identity("symmetric")], keys.st_identity("symmetric")
    for pos in list(range(end, end + 64)) + [32 + capacity - 1]:           # padding: step 8
        assert _agree(_flip(flip_file, pos), ind, st) == (("FormatError", None),) * 2, pos
    # The spare copy carries no meaning (§5.1): flips there, or garbage in all of it, change
    # nothing.
    tensors = read_sealed(flip_file, ind).tensors
    spare = range(32 + capacity, 32 + 2 * capacity)
    for pos in list(spare)[::251] + [spare[0], spare[-1]]:
        blob = _flip(flip_file, pos, 0xff)
        assert _agree(blob, ind, st) == (None, None), pos
    garbage = bytearray(flip_file)
    garbage[spare[0]:spare[-1] + 1] = secrets.token_bytes(capacity)
    _assert_same_arrays(read_sealed(bytes(garbage), ind).tensors, tensors)
    _assert_same_arrays(st_numpy.load(bytes(garbage), st), tensors)


def test_index_data_and_truncation_agree(keys, flip_file):
    h = parse_header(flip_file)
    region = 32 + 2 * h["capacity"]
    index_end = region + h["index_len"]
    ind, st = [keys.ind_identity("symmetric")], keys.st_identity("symmetric")
    positions = sorted({region, region + 23, region + 24, region + 55, region + 56, index_end - 1,
                        index_end, index_end + 23, index_end + 30, index_end + 56, index_end + 100,
                        index_end + MSG_HEADER + ENC_CHUNK - 1, index_end + MSG_HEADER + ENC_CHUNK,
                        len(flip_file) - 17, len(flip_file) - 1}
                       | set(range(region, len(flip_file), 1499)))
    for pos in positions:
        got, want = _agree(_flip(flip_file, pos), ind, st)
        assert got is not None and got == want, pos
    assert _agree(_flip(flip_file, index_end + 5), ind, st)[0] == ("CommitmentError", None)
    assert _agree(_flip(flip_file, len(flip_file) - 1), ind, st)[0] == ("IntegrityError", 1)
    lengths = sorted({*range(0, 40), 32 + h["capacity"] - 1, 32 + h["capacity"], region - 1, region,
                      region + 1, index_end - 1, index_end, index_end + 56,
                      index_end + MSG_HEADER + ENC_CHUNK, len(flip_file) - 1,
                      *range(41, len(flip_file), 997)})
    for length in lengths:
        got, want = _agree(flip_file[:length], ind, st)
        assert got is not None and got == want, length
    assert _agree(flip_file + b"\x00", ind, st) == (("IntegrityError", None),) * 2


def test_passphrase_and_provider_slot_flips_agree(keys):
    """A sample of bytes of a passphrase slot (with the passphrase: scrypt per try) and every byte
    of a provider slot (with the provider); the slot-table rules (§9 step 7) also with a reader
    that holds neither, which must not run scrypt or the provider to refuse the file."""
    blob = st_numpy.save({"x": np.arange(7)}, [keys.st_recipient("passphrase"), keys.provider,
                                              keys.sym])
    h = parse_header(blob)
    pass_start = 32 + 88
    prov_start = pass_start + 20 + 124
    prov_end = prov_start + 20 + len(h["records"][1].body)
    expected = {pass_start: "UnsupportedFormatError",      # type 4 -> 5
                pass_start + 1: "FormatError",             # record reserved byte
                pass_start + 20: "FormatError",            # log2_N 15 -> 14
                pass_start + 21: "WrongKeyError",          # r 8 -> 9: another passphrase's slot
                pass_start + 22: "FormatError",            # p 1 -> 0
                pass_start + 23: "FormatError",            # body reserved byte (§5.4)
                pass_start + 24: "WrongKeyError",          # scrypt salt
                pass_start + 44: "WrongKeyError",          # C2SP salt
                pass_start + 143: "IntegrityError",        # tag of the wrapped DEK
                prov_start: "UnsupportedFormatError"}      # type 128 -> 129
    for pos in sorted(expected) + [pass_start + 4]:
        got, want = _agree(_flip(blob, pos), [keys.ind_identity("passphrase")],
                           keys.st_identity("passphrase"))
        assert got is not None and got == want, (pos - pass_start, got, want)
        assert pos not in expected or got[0] == expected[pos], (pos - pass_start, got)
    for pos in range(prov_start, prov_end):
        tampered = _flip(blob, pos)
        got, want = _agree(tampered, [keys.ind_identity("provider")], keys.st_identity("provider"))
        assert got is not None and got == want, (pos - prov_start, got, want)
        if got[0] in ("FormatError", "UnsupportedFormatError"):
            assert _agree(tampered, [SymIdentity(keys.sym)], keys.sym) == (got, got), pos
    for pos in (pass_start + 20, pass_start + 22, pass_start + 23, prov_start + 20):
        got, want = _agree(_flip(blob, pos, 0x80), [SymIdentity(keys.sym)], keys.sym)
        assert got == want == ("FormatError", None), pos - pass_start


def test_passphrase_parameters_out_of_range_agree(keys):
    """§5.4: parameters outside the floor/ceiling, over 1 GiB or over 2**22 work, are refused when
    the slot table is parsed, by every reader (so without running scrypt); the MAC is fixed up by
    the writer, so only the parameter rule can refuse the file. The limits themselves pass: a
    reader holding another key opens the file without touching the passphrase slot."""
    blob = write_sealed({"x": np.arange(3)}, [PassRecipient("pw", params=(15, 8, 1))], None)
    opened = read_sealed(blob, [PassIdentity("pw")])
    record = opened.slots[0]
    sym_slot = SymRecipient(keys.sym).make(opened.dek, opened.file_id)

    def with_params(params):
        bad = SlotRecord(PASSPHRASE, record.slot_id, bytes(params) + record.body[4:])
        return assemble(opened.dek, opened.file_id, [bad, sym_slot], opened.index_msg,
                        opened.data_msg)

    for params in [(14, 8, 1, 0), (21, 8, 1, 0), (15, 7, 1, 0), (15, 17, 1, 0), (15, 8, 0, 0),
                   (15, 8, 5, 0), (15, 8, 1, 1), (15, 8, 1, 0x80),   # ranges, reserved byte
                   (20, 16, 1, 0),                                    # 2 GiB
                   (20, 8, 1, 0), (19, 8, 2, 0), (18, 16, 2, 0), (17, 16, 4, 0),  # 2**23 work
                   (20, 8, 4, 0)]:
        forged = with_params(params)
        for ind_id, st_id in (([PassIdentity("pw")], Passphrase("pw")),
                              ([SymIdentity(keys.sym)], keys.sym)):
            got, want = _agree(forged, ind_id, st_id)
            assert got == want == ("FormatError", None), params
    for params in [(19, 8, 1, 0), (18, 16, 1, 0), (17, 8, 4, 0), (15, 16, 4, 0)]:
        forged = with_params(params)                       # exactly 2**22 work, or less
        assert read_sealed(forged, [SymIdentity(keys.sym)]).tensors["x"].tolist() == [0, 1, 2]
        assert st_numpy.load(forged, keys.sym)["x"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# 5: signatures.

@pytest.fixture(scope="module")
def signed_file(keys):
    tensors = {"w": np.arange(9000, dtype=np.float32), "b": np.ones(3, dtype=bool)}
    blob = st_numpy.save(tensors, [keys.sym, keys.x25519.recipient()], metadata={"v": "1"},
                         signer=keys.signing, generation=9)
    return blob, tensors


def test_signature_of_sealtensors_verifies_independently(keys, signed_file):
    blob, tensors = signed_file
    opened = read_sealed(blob, [SymIdentity(keys.sym)], signers=[keys.sign_public],
                         min_generation=9, expect_file_id=None)
    st = opened.statement
    assert st["generation"] == 9 and st["file_id"] == opened.file_id
    assert st["index_length"] == len(opened.index_msg) and st["data_length"] == len(opened.data_msg)
    assert st["data_header"] == opened.data_msg[:MSG_HEADER]
    trailer = opened.trailer
    assert trailer[264:2248] == keys.sign_public
    # No key needed: anyone can check the signature over the ciphertext.
    assert verify_signatures(keys.sign_public, trailer[:264], trailer[2248:2312],
                             trailer[2312:5621])
    with pytest.raises(IndSignatureError):
        read_sealed(blob, [SymIdentity(keys.sym)], signers=[keys.sign_public], min_generation=10)
    with pytest.raises(st_errors.SignatureError):
        st_numpy.load(blob, keys.sym, signer=keys.signing.verifying_key, min_generation=10)
    other_id = bytes(16)
    with pytest.raises(IndSignatureError):
        read_sealed(blob, [SymIdentity(keys.sym)], signers=[keys.sign_public],
                    expect_file_id=other_id)
    with pytest.raises(st_errors.SignatureError):
        st_numpy.load(blob, keys.sym, signer=keys.signing.verifying_key, expect_file_id=other_id)


def test_trailer_flips_agree_with_and_without_signer(keys, signed_file):
    blob, _ = signed_file
    h = parse_header(blob)
    trailer_start = len(blob) - h["trailer_len"]
    ind, st = [SymIdentity(keys.sym)], SymmetricKey(keys.sym)
    signer = keys.signing.verifying_key
    positions = [trailer_start, trailer_start + 40, trailer_start + 100, trailer_start + 264,
                 trailer_start + 2250, trailer_start + 3000, trailer_start + 5621, len(blob) - 1]
    for pos in positions:
        tampered = _flip(blob, pos)
        assert _agree(tampered, ind, st) == (None, None), pos              # trailer ignored
        got, want = _agree(tampered, ind, st, signer=signer)
        assert got == want == ("IntegrityError", None), pos                # trailer digest
    # Unsigned file, signer required.
    unsigned = st_numpy.save({"x": np.arange(3)}, keys.sym)
    assert _agree(unsigned, ind, st, signer=signer) == (("SignatureError", None),) * 2


def test_signed_file_data_flips_agree(keys, signed_file):
    """§9 notes: with a signature, an altered data chunk fails its digest (SignatureError, the
    chunk's index) before its tag; without one, its tag (IntegrityError). The data message's
    salt and commitment fail the commitment (step 15) before the signature is looked at."""
    blob, _ = signed_file
    h = parse_header(blob)
    data_start = 32 + 2 * h["capacity"] + h["index_len"]
    ind, st = [SymIdentity(keys.sym)], SymmetricKey(keys.sym)
    vk = keys.signing.verifying_key
    chunks = len(stored_chunks(blob[data_start:data_start + h["data_len"]]))
    assert chunks == 3
    for pos, chunk in [(data_start + MSG_HEADER, 0), (data_start + MSG_HEADER + ENC_CHUNK - 1, 0),
                       (data_start + MSG_HEADER + ENC_CHUNK + 77, 1),
                       (data_start + h["data_len"] - 1, chunks - 1)]:
        tampered = _flip(blob, pos)
        assert _agree(tampered, ind, st) == (("IntegrityError", chunk),) * 2, pos
        assert _agree(tampered, ind, st, signer=vk) == (("SignatureError", chunk),) * 2, pos
    for pos in (data_start, data_start + SALT, data_start + MSG_HEADER - 1):
        tampered = _flip(blob, pos)
        for verification in ({}, {"signer": vk}):
            got, want = _agree(tampered, ind, st, **verification)
            assert got == want == ("CommitmentError", None), (pos, verification)


def _refit_trailer(blob: bytes, dek: bytes, trailer: bytes) -> bytes:
    """What a DEK holder can do: replace the trailer and fix the header (digest, length, MAC)."""
    h = parse_header(blob)
    region = 32 + 2 * h["capacity"]
    index_msg = blob[region:region + h["index_len"]]
    data_msg = blob[region + h["index_len"]:region + h["index_len"] + h["data_len"]]
    return assemble(dek, h["file_id"], h["records"], index_msg, data_msg, trailer,
                    sequence=h["sequence"], capacity=h["capacity"])


def test_signature_statement_mismatches_agree(keys, signed_file):
    """Each §7a check in turn, with everything before it made valid by a DEK holder (and, for the
    statement fields, by the publisher's own key signing the wrong statement)."""
    blob, _ = signed_file
    ind, st = [SymIdentity(keys.sym)], SymmetricKey(keys.sym)
    opened = read_sealed(blob, ind)
    signer = Signer(keys.sign_seeds)
    vk = keys.signing.verifying_key

    def trailer_with(**overrides):
        return build_trailer(signer, opened.file_id, 9, 0, opened.index_msg, opened.data_msg,
                             statement_overrides=overrides)

    cases = {
        "faithful": (trailer_with(), None),
        "other signer": (build_trailer(Signer(secrets.token_bytes(64)), opened.file_id, 9, 0,
                                       opened.index_msg, opened.data_msg), "SignatureError"),
        "file id": (trailer_with(file_id=bytes(16)), "SignatureError"),
        "index length": (trailer_with(index_length=len(opened.index_msg) + 1), "SignatureError"),
        "data length": (trailer_with(data_length=len(opened.data_msg) - 1), "SignatureError"),
        "index digest": (trailer_with(index_digest=bytes(64)), "SignatureError"),
        "data header": (trailer_with(data_header=bytes(56)), "SignatureError"),
        "table digest": (trailer_with(table_digest=bytes(64)), "SignatureError"),
    }
    good = trailer_with()
    ed_bad = bytearray(good)
    ed_bad[2248] ^= 1
    ml_bad = bytearray(good)
    ml_bad[4000] ^= 1
    label_bad = trailer_with(label=b"sealtensors/v2/signed-statemenX\x00")
    table_bad = bytearray(good)
    table_bad[5621] ^= 1
    cases.update({"ed25519 signature": (bytes(ed_bad), "SignatureError"),
                  "ml-dsa signature": (bytes(ml_bad), "SignatureError"),
                  "label": (label_bad, "SignatureError"),
                  "label without its 0x00": (trailer_with(label=STATEMENT_LABEL[:-1] + b"!"),
                                             "SignatureError"),
                  "generation 2**63": (trailer_with(generation=2**63), "SignatureError"),
                  "generation 2**64 - 1": (trailer_with(generation=2**64 - 1), "SignatureError"),
                  "generation 2**63 - 1": (trailer_with(generation=2**63 - 1), None),
                  "chunk digest table": (bytes(table_bad), "SignatureError")})
    for name, (trailer, expected) in cases.items():
        forged = _refit_trailer(blob, opened.dek, trailer)
        assert _agree(forged, ind, st) == (None, None), name          # no signer: accepted
        got, want = _agree(forged, ind, st, signer=vk)
        assert got == want, (name, got, want)
        assert (got and got[0]) == expected, name


def test_data_key_holder_forgery(keys, signed_file, tmp_path):
    """A co-recipient re-encrypts a data chunk under the DEK: no MAC or length changes, so readers
    without a signer accept it; with the signer both refuse it at that chunk (§12)."""
    blob, tensors = signed_file
    ind, st = [SymIdentity(keys.sym)], SymmetricKey(keys.sym)
    opened = read_sealed(blob, ind)
    data = bytearray(opened.data)
    data[CHUNK + 8] ^= 0x40                                  # a byte of "w" in chunk 1
    aead_key, base, _ = c2sp_derive(opened.dek, opened.data_msg[:SALT],
                                    data_context(opened.file_id, opened.index_plain))
    chunk = AESGCM(aead_key).encrypt(c2sp_nonce(base, 1), bytes(data[CHUNK:2 * CHUNK]), None)
    start = len(blob) - len(opened.trailer) - len(opened.data_msg) + MSG_HEADER + ENC_CHUNK
    forged = blob[:start] + chunk + blob[start + ENC_CHUNK:]
    assert forged != blob
    changed = read_sealed(forged, ind).tensors["w"]
    assert changed.tobytes() != tensors["w"].tobytes()
    assert st_numpy.load(forged, st)["w"].tobytes() == changed.tobytes()
    got, want = _agree(forged, ind, st, signer=keys.signing.verifying_key)
    assert got == want == ("SignatureError", 1)
    # Forging the index (new metadata) means a new data context: everything re-encrypted.
    index_plain = opened.index_plain.replace(b'"v":"1"', b'"v":"2"')
    index_msg = c2sp_encrypt(opened.dek, index_plain, index_context(opened.file_id), bytes(24))
    data_msg = c2sp_encrypt(opened.dek, opened.data, data_context(opened.file_id, index_plain),
                            bytes(24))
    forged = assemble(opened.dek, opened.file_id, opened.slots, index_msg, data_msg,
                      opened.trailer[:5621] + b"".join(hashlib.sha256(c).digest()
                                                      for c in stored_chunks(data_msg)),
                      capacity=opened.capacity)
    assert read_sealed(forged, ind).metadata == {"v": "2"}
    assert _agree(forged, ind, st) == (None, None)
    got, want = _agree(forged, ind, st, signer=keys.signing.verifying_key)
    assert got == want == ("SignatureError", None)
    # Dropping the signature: unsigned file, signer required.
    stripped = assemble(opened.dek, opened.file_id, opened.slots, opened.index_msg,
                        opened.data_msg, capacity=opened.capacity)
    assert _agree(stripped, ind, st) == (None, None)
    assert _agree(stripped, ind, st, signer=keys.signing.verifying_key) == \
        (("SignatureError", None),) * 2
    # The reference's whole-file verify checks the trailer digest even without a signer (§7a).
    path = tmp_path / "signed.st"
    path.write_bytes(_flip(blob, len(blob) - 1))
    with pytest.raises(st_errors.IntegrityError):
        sealtensors.verify(path, keys.sym)


def test_sealtensors_verifies_independent_signatures(keys):
    tensors = {"w": np.arange(20000, dtype=np.uint8)}
    signer = Signer(keys.sign_seeds)
    blob = write_sealed(tensors, [SymRecipient(keys.sym)], {"a": "b"}, signer=signer,
                        generation=2**63 - 1, signed_at=1234)
    vk = VerifyingKey.parse(text_encode("st-sign", signer.public()))
    _assert_same_arrays(st_numpy.load(blob, keys.sym, signer=vk, min_generation=2**63 - 1), tensors)
    got, want = _agree(blob, [SymIdentity(keys.sym)], SymmetricKey(keys.sym),
                       signer=SigningKey.generate().verifying_key)
    assert got == want == ("SignatureError", None)
    # §7a: ML-DSA-65 is signed hedged, so one statement signed twice gives different ML-DSA bytes
    # (Ed25519 is deterministic); a reader must accept either kind, deterministic ones included.
    statement = blob[len(blob) - TRAILER_FIXED - 32 * 2:][:STATEMENT.size]    # two data chunks
    first, again = signer.sign(statement), signer.sign(statement)
    assert first[0] == again[0] and first[1] != again[1]
    assert verify_signatures(signer.public(), statement, *again)
    deterministic = Signer(keys.sign_seeds, deterministic_mldsa=True)
    blob = write_sealed(tensors, [SymRecipient(keys.sym)], None, signer=deterministic, generation=3)
    _assert_same_arrays(st_numpy.load(blob, keys.sym, signer=vk, min_generation=3), tensors)


# --------------------------------------------------------------------------------------------------
# 6: in-place rewrap.

def test_in_place_rewrap_by_sealtensors(keys, tmp_path):
    tensors, metadata = CASES["multi-chunk"]
    path = tmp_path / "model.st"
    st_numpy.save_file(tensors, path, keys.sym, metadata=metadata)
    before = path.read_bytes()
    first = read_sealed(before, [SymIdentity(keys.sym)])
    report = sealtensors.rewrap(path, keys.sym, add=[keys.x25519.recipient(),
                                                     keys.st_recipient("passphrase")])
    assert report["in_place"] and not report["rewrote_data"]
    after = path.read_bytes()
    assert len(after) == len(before)
    capacity = first.capacity
    for kind in ("symmetric", "x25519", "passphrase"):
        opened = read_sealed(after, [keys.ind_identity(kind)])
        _assert_same_arrays(opened.tensors, tensors)
        assert opened.active == 1 and opened.sequence == 1 and opened.capacity == capacity
        assert opened.dek == first.dek and opened.file_id == first.file_id
    assert after[32:32 + capacity] == bytes(capacity)                  # old copy zeroed
    assert after[32 + 2 * capacity:] == before[32 + 2 * capacity:]    # index and data untouched
    assert after[:12] == before[:12] and after[13:32] == before[13:32]
    # §11: the kept slots (byte for byte) in their order, then the added ones in the order given.
    slots = opened.slots
    assert slots[0] == first.slots[0]
    assert [r.type for r in slots] == [SYMMETRIC, X25519, PASSPHRASE]
    assert slots[1].slot_id == keys.ind_identity("x25519").slot_id(first.file_id)
    # Adding and removing the same recipient in one request is refused; nothing is written.
    with pytest.raises(st_errors.RecipientError):
        sealtensors.rewrap(path, keys.sym, add=[keys.x25519.recipient()],
                           remove=[keys.x25519.recipient().text()])
    assert path.read_bytes() == after
    # Again, back to copy 0; then the independent rewrap (spare copy, flip, zero) opens in both.
    sealtensors.rewrap(path, keys.sym, remove=[keys.x25519.recipient().text()])
    again = path.read_bytes()
    opened = read_sealed(again, [SymIdentity(keys.sym)])
    assert opened.active == 0 and opened.sequence == 2
    assert opened.slots == [slots[0], slots[2]]
    assert again[32 + capacity:32 + 2 * capacity] == bytes(capacity)
    assert _independent_error(again, [keys.ind_identity("x25519")]) == ("WrongKeyError", None)
    new_records = opened.slots + [HpkeRecipient(XWING, keys.xwing_public).make(opened.dek,
                                                                               opened.file_id)]
    ours = rewrap_in_place(again, opened.dek, new_records)
    for kind in ("symmetric", "xwing"):
        _assert_same_arrays(st_numpy.load(ours, keys.st_identity(kind)), tensors)
        assert read_sealed(ours, [keys.ind_identity(kind)]).sequence == 3


def test_half_byte_f4_tensors_agree(keys):
    """§8.3 F4: a torch float4_e2m1fn_x2 tensor sealed by sealtensors is read by the independent
    reader as its raw bytes with the value-counting shape; an odd last dimension is refused."""
    torch = pytest.importorskip("torch")
    import sealtensors.torch as st_torch

    packed = torch.arange(12, dtype=torch.uint8).reshape(2, 6).view(torch.float4_e2m1fn_x2)
    blob = st_torch.save({"q": packed, "s": torch.ones(3)}, keys.sym)
    opened = read_sealed(blob, [SymIdentity(keys.sym)])
    (name, dtype, shape, begin, end), _ = opened.entries[0], None
    assert (name, dtype, shape, end - begin) == ("q", "F4", (2, 12), 12)
    assert opened.tensors["q"].tobytes() == bytes(range(12))
    back = st_torch.load(blob, keys.sym)["q"]
    assert back.view(torch.uint8).flatten().tolist() == list(range(12))
    odd = [("q", "F4", (2, 3), 0, 3)]
    with pytest.raises(IndFormatError):
        parse_index(serialize_index(odd, None), 3)
