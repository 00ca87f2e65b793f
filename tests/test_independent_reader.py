"""An independent reader and writer of sealed files, written only from docs/FORMAT.md.

Nothing here imports the format code of sealtensors: the reader and writer below use the standard
library (struct, hmac, hashlib, json) and AES-GCM from the ``cryptography`` package. sealtensors is
used only to produce files to read (``sealtensors.numpy.save`` / ``save_file``,
``sealtensors.keys.keyfile.keyfile.generate_key``) and, as the reference, to read the files written here and to say
which error it raises. Section numbers (§) refer to docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

AESGCM = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM
InvalidTag = pytest.importorskip("cryptography.exceptions").InvalidTag

import sealtensors.numpy as st_numpy
from sealtensors.keys.keyfile.keyfile import generate_key

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


# --------------------------------------------------------------------------------------------------
# Errors of the independent reader (§9), named like the reference's so results can be compared.

class IndFormatError(Exception):
    reference = "FormatError"


class IndUnsupportedFormatError(IndFormatError):
    reference = "UnsupportedFormatError"


class IndWrongKeyError(Exception):
    reference = "WrongKeyError"


class IndIntegrityError(Exception):
    reference = "IntegrityError"


class IndCommitmentError(IndIntegrityError):
    reference = "CommitmentError"


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


def c2sp_message_length(plain_len: int) -> int:
    return MSG_HEADER + plain_len + TAG * (plain_len // CHUNK + 1)


def c2sp_plain_length(msg_len: int) -> int | None:
    """§3.4: the plaintext length of a message of ``msg_len`` bytes, None if impossible."""
    if msg_len < MSG_HEADER + TAG:
        return None
    full, rem = divmod(msg_len - MSG_HEADER, ENC_CHUNK)
    if not TAG <= rem <= ENC_CHUNK - 1:
        return None
    if full + 1 > MAX_CHUNKS:
        return None
    return msg_len - MSG_HEADER - TAG * (full + 1)


def c2sp_open(key: bytes, message: bytes, context: bytes) -> tuple[bytes, bytes]:
    """Check the commitment (§3.2); returns (aead key, base nonce)."""
    if len(message) < MSG_HEADER:
        raise IndIntegrityError("message shorter than 56 bytes")
    aead_key, base, commitment = c2sp_derive(key, message[:SALT], context)
    if not hmac.compare_digest(commitment, message[SALT:MSG_HEADER]):
        raise IndCommitmentError("commitment mismatch")
    return aead_key, base


def c2sp_decrypt(key: bytes, message: bytes, context: bytes) -> bytes:
    aead_key, base = c2sp_open(key, message, context)
    plain_len = c2sp_plain_length(len(message))
    if plain_len is None:
        raise IndIntegrityError("impossible message length")
    aead = AESGCM(aead_key)
    out = []
    for i in range(plain_len // CHUNK + 1):
        start = MSG_HEADER + i * ENC_CHUNK
        chunk = message[start:start + ENC_CHUNK]
        try:
            out.append(aead.decrypt(c2sp_nonce(base, i), chunk, None))
        except InvalidTag:
            raise IndIntegrityError(f"chunk {i} failed authentication") from None
    return b"".join(out)


def c2sp_encrypt(key: bytes, plaintext: bytes, context: bytes, salt: bytes) -> bytes:
    aead_key, base, commitment = c2sp_derive(key, salt, context)
    aead = AESGCM(aead_key)
    pieces = [salt, commitment]
    for i in range(len(plaintext) // CHUNK + 1):
        pieces.append(aead.encrypt(c2sp_nonce(base, i), plaintext[i * CHUNK:(i + 1) * CHUNK], None))
    return b"".join(pieces)


# --------------------------------------------------------------------------------------------------
# Keys (§4), header (§5), contexts (§5.2, §6, §7).

MAGIC = b"SEALTENS"
FIXED = struct.Struct("<8sHHI16sQQII")
SLOT = 120
MAC = 32
MAX_SLOTS = 1024
MAX_INDEX_BYTES = 104857600
MAX_INDEX_MESSAGE = c2sp_message_length(MAX_INDEX_BYTES)
MAX_DATA_MESSAGE = c2sp_message_length((MAX_CHUNKS - 1) * CHUNK)


def key_id(key: bytes) -> bytes:
    return hkdf_expand_sha512(key, b"sealtensors/v1/key-id", 16)


def mac_key(dek: bytes) -> bytes:
    return hkdf_expand_sha512(dek, b"sealtensors/v1/header-mac", 32)


def slot_context(file_id: bytes) -> bytes:
    return b"sealtensors/v1/key-slot\x00" + file_id


def index_context(file_id: bytes) -> bytes:
    return b"sealtensors/v1/index\x00" + file_id


def data_context(file_id: bytes, index_plain: bytes) -> bytes:
    return b"sealtensors/v1/data\x00" + file_id + hashlib.sha512(index_plain).digest()


def parse_key_file(raw: bytes) -> bytes:
    """§4.3, the two forms."""
    if len(raw) == 32:
        return raw
    text = raw.decode("ascii").strip()
    prefix = "sealtensors-key-v1:"
    if not text.startswith(prefix) or len(text) != len(prefix) + 64:
        raise ValueError("not a key file")
    return bytes.fromhex(text[len(prefix):])


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
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
    DTYPES["F8_E8M0"] = np.dtype(ml_dtypes.float8_e8m0fnu)
ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8,
              "I64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 8, "F8_E4M3": 1,
              "F8_E5M2": 1, "F8_E8M0": 1}


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
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_index(plain: bytes, data_plain_len: int):
    """§8: returns ([(name, dtype, shape, begin, end)], metadata)."""
    if len(plain) > MAX_INDEX_BYTES:
        raise IndFormatError("index too large")
    try:
        doc = json.loads(plain.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise IndFormatError(f"bad index: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"metadata", "tensors"}:
        raise IndFormatError("top level")
    metadata = doc["metadata"]
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                _valid_string(k) and _valid_string(v) for k, v in metadata.items()):
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
        if dtype not in DTYPES:
            raise IndFormatError(f"dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or any(type(d) is not int or not 0 <= d < 2**63 for d in shape)):
            raise IndFormatError("shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or any(type(v) is not int
                                                                     for v in offsets):
            raise IndFormatError("offsets")
        count = 1
        for d in shape:
            count *= d
        begin, end = offsets
        if begin != align_up(position) or end != begin + count * ITEM_SIZES[dtype] \
                or end > data_plain_len:
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


# --------------------------------------------------------------------------------------------------
# The reader (§9) and the writer (§10).

def read_sealed(blob: bytes, keys: list[bytes]) -> dict:
    """Open, authenticate and decrypt a whole sealed file, checking in the order of §9."""
    if len(blob) < 8 or blob[:8] != MAGIC:
        raise IndFormatError("bad magic")
    if len(blob) >= 10 and struct.unpack_from("<H", blob, 8)[0] != 1:
        raise IndUnsupportedFormatError("version")
    if len(blob) >= 12 and struct.unpack_from("<H", blob, 10)[0] != 1:
        raise IndUnsupportedFormatError("suite")
    if len(blob) < FIXED.size:
        raise IndIntegrityError("truncated in the fixed header")
    _, version, suite, res0, file_id, index_len, data_len, n, res1 = FIXED.unpack_from(blob)
    if version != 1:
        raise IndUnsupportedFormatError("version")
    if suite != 1:
        raise IndUnsupportedFormatError("suite")
    if res0 or res1:
        raise IndFormatError("reserved")
    if not 1 <= n <= MAX_SLOTS:
        raise IndFormatError("slot count")
    if not 72 <= index_len <= MAX_INDEX_MESSAGE or not 72 <= data_len <= MAX_DATA_MESSAGE:
        raise IndFormatError("message length out of range")
    if c2sp_plain_length(index_len) is None or c2sp_plain_length(data_len) is None:
        raise IndFormatError("impossible message length")
    header_len = 56 + SLOT * n + MAC
    if len(blob) < header_len:
        raise IndIntegrityError("truncated in the header")
    slots = [(blob[56 + SLOT * i:72 + SLOT * i], blob[72 + SLOT * i:56 + SLOT * (i + 1)])
             for i in range(n)]
    ctx = slot_context(file_id)
    dek = None
    for key in keys:
        kid = key_id(key)
        for slot_kid, wrapped in slots:
            if hmac.compare_digest(slot_kid, kid):
                try:
                    dek = c2sp_decrypt(key, wrapped, ctx)
                except IndIntegrityError:
                    raise IndIntegrityError("key slot altered") from None
                break
        if dek is not None:
            break
    if dek is None:
        for key in keys:
            for _, wrapped in slots:
                try:
                    c2sp_open(key, wrapped, ctx)
                except IndCommitmentError:
                    continue
                raise IndIntegrityError("key id altered")
        raise IndWrongKeyError("no slot for these keys")
    expected = hmac.new(mac_key(dek), blob[:header_len - MAC], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, blob[header_len - MAC:header_len]):
        raise IndIntegrityError("header MAC")
    if len(blob) != header_len + index_len + data_len:
        raise IndIntegrityError("file length")
    index_msg = blob[header_len:header_len + index_len]
    data_msg = blob[header_len + index_len:]
    index_plain = c2sp_decrypt(dek, index_msg, index_context(file_id))
    entries, metadata = parse_index(index_plain, c2sp_plain_length(data_len))
    c2sp_open(dek, data_msg, data_context(file_id, index_plain))
    data = c2sp_decrypt(dek, data_msg, data_context(file_id, index_plain))
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        count = (end - begin) // DTYPES[dtype].itemsize
        tensors[name] = np.frombuffer(data, DTYPES[dtype], count=count, offset=begin).reshape(shape)
    return {
        "tensors": tensors, "metadata": metadata, "dek": dek, "file_id": file_id, "data": data,
        "entries": entries, "slot_key_ids": [kid for kid, _ in slots],
        "salts": {"slots": [w[:SALT] for _, w in slots], "index": index_msg[:SALT],
                  "data": data_msg[:SALT]},
    }


def dtype_name(dtype: np.dtype) -> str:
    for name, candidate in DTYPES.items():
        if np.dtype(dtype) == candidate:
            return name
    raise ValueError(f"no sealtensors dtype for {dtype}")


def write_sealed(tensors: dict, keys: list[bytes], metadata=None, *, dek=None, file_id=None,
                 salts=None) -> bytes:
    """§10. Random values may be given explicitly (to reproduce a file byte for byte)."""
    dek = dek if dek is not None else secrets.token_bytes(32)
    file_id = file_id if file_id is not None else secrets.token_bytes(16)
    salts = salts or {"slots": [secrets.token_bytes(SALT) for _ in keys],
                      "index": secrets.token_bytes(SALT), "data": secrets.token_bytes(SALT)}
    entries, position, data = [], 0, bytearray()
    for name, array in tensors.items():
        array = np.ascontiguousarray(array) if np.ndim(array) else np.asarray(array)
        begin = align_up(position)
        data += bytes(begin - len(data))                     # zero padding (§8.4)
        data += array.tobytes(order="C")
        entries.append((name, dtype_name(array.dtype), array.shape, begin, len(data)))
        position = len(data)
    index_plain = serialize_index(entries, metadata)
    index_msg = c2sp_encrypt(dek, index_plain, index_context(file_id), salts["index"])
    data_msg = c2sp_encrypt(dek, bytes(data), data_context(file_id, index_plain), salts["data"])
    slots = b"".join(key_id(k) + c2sp_encrypt(k, dek, slot_context(file_id), s)
                     for k, s in zip(keys, salts["slots"]))
    fixed = FIXED.pack(MAGIC, 1, 1, 0, file_id, len(index_msg), len(data_msg), len(keys), 0)
    body = fixed + slots
    return body + hmac.new(mac_key(dek), body, hashlib.sha256).digest() + index_msg + data_msg


# --------------------------------------------------------------------------------------------------
# Test cases.

def _rng():
    return np.random.default_rng(20240611)


def _cases():
    rng = _rng()
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    cases = {
        "dtypes": ({
            "f32": f32,
            "f64": rng.standard_normal(7),
            "f16": rng.standard_normal((2, 3)).astype(np.float16),
            "bf16": rng.standard_normal(9).astype(ml_dtypes.bfloat16),
            "e4m3": rng.standard_normal(5).astype(ml_dtypes.float8_e4m3fn),
            "e5m2": rng.standard_normal(5).astype(ml_dtypes.float8_e5m2),
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
        }, [k1], None),
        "zero-size-and-scalars": ({
            "a": np.arange(3, dtype=np.uint8),
            "empty": np.zeros((0,), dtype=np.float32),
            "empty2d": np.zeros((4, 0, 2), dtype=np.int64),
            "scalar": np.array(2.5, dtype=np.float64),
            "scalar_u8": np.array(7, dtype=np.uint8),
            "trailing_empty": np.zeros((0, 3), dtype=np.float16),
        }, [k1], None),
        "unicode-and-metadata": ({
            "ünïcødé.weight": np.arange(6, dtype=np.int32).reshape(2, 3),
            "模型/层.0": np.ones(5, dtype=np.float32),
            "emoji 🦀\"quote\\": np.array([1, 2], dtype=np.int16),
        }, [k1], {"format": "pt", "note": "naïve \u2028 \n\t \"x\"", "": "empty key",
                  "ключ": ""}),
        "empty-metadata-dict": ({"x": np.ones(2, dtype=np.float32)}, [k1], {}),
        "three-recipients": ({"w": f32}, [k1, k2, k3], {"who": "three"}),
        "empty-dict": ({}, [k1], None),
        "empty-dict-metadata": ({}, [k2, k1], {"only": "metadata"}),
        "data-16383": ({"x": rng.integers(0, 256, CHUNK - 1, dtype=np.uint8)}, [k1], None),
        "data-16384": ({"x": rng.integers(0, 256, CHUNK, dtype=np.uint8)}, [k1], None),
        "data-16385": ({"x": rng.integers(0, 256, CHUNK + 1, dtype=np.uint8)}, [k1], None),
        "data-2-chunks-exact": ({"a": rng.integers(0, 256, 100, dtype=np.uint8),
                                 "b": rng.integers(0, 256, 2 * CHUNK - 128, dtype=np.uint8)},
                                [k1], None),
        "data-several-chunks": ({"a": rng.standard_normal((37, 311)).astype(np.float32),
                                 "b": rng.standard_normal(1000).astype(ml_dtypes.bfloat16)},
                                [k1], None),
        "index-straddles-chunk": ({"x": np.arange(4, dtype=np.float32)}, [k1],
                                  {"blob": "z" * (CHUNK + 10)}),
    }
    if "F8_E8M0" in DTYPES:
        cases["dtypes"][0]["e8m0"] = np.array([0.25, 1.0, 8.0], dtype=DTYPES["F8_E8M0"])
    return cases


CASES = _cases()


def _seal(name, tmp_path):
    tensors, keys, metadata = CASES[name]
    if name.startswith("data-") or name == "dtypes":
        path = tmp_path / "sealed.st"
        st_numpy.save_file(tensors, path, keys, metadata=metadata)
        return path.read_bytes()
    return st_numpy.save(tensors, keys, metadata=metadata)


def _assert_same_arrays(got: dict, want: dict):
    assert list(got) == list(want)
    for name in want:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), name


@pytest.mark.parametrize("name", list(CASES))
def test_independent_reader_reproduces_sealtensors(name, tmp_path):
    tensors, keys, metadata = CASES[name]
    blob = _seal(name, tmp_path)
    reference = st_numpy.load(blob, keys[0])
    for key in keys:                      # every recipient can open it
        result = read_sealed(blob, [key])
        _assert_same_arrays(result["tensors"], reference)
        _assert_same_arrays(result["tensors"], {k: np.asarray(v) for k, v in tensors.items()})
        assert result["metadata"] == metadata
        assert result["slot_key_ids"] == [key_id(k) for k in keys]
    # Structure: 64-byte aligned, zero padding, data length = end of last tensor (§8.4).
    entries, data = result["entries"], result["data"]
    assert all(begin % ALIGN == 0 for _, _, _, begin, _ in entries)
    covered = bytearray(len(data))
    for _, _, _, begin, end in entries:
        covered[begin:end] = b"\x01" * (end - begin)
    assert all(data[i] == 0 for i in range(len(data)) if not covered[i])
    assert len(data) == (entries[-1][4] if entries else 0)


@pytest.mark.parametrize("name", list(CASES))
def test_independent_writer_reproduces_file_byte_for_byte(name, tmp_path):
    """With the random values of a sealtensors file (DEK, file id, salts), the writer built from
    FORMAT.md produces the identical file: every derivation, context and the canonical JSON
    agree."""
    tensors, keys, metadata = CASES[name]
    blob = _seal(name, tmp_path)
    seen = read_sealed(blob, [keys[0]])
    rebuilt = write_sealed(tensors, keys, metadata, dek=seen["dek"], file_id=seen["file_id"],
                           salts=seen["salts"])
    assert rebuilt == blob


@pytest.mark.parametrize("name", ["dtypes", "zero-size-and-scalars", "unicode-and-metadata",
                                  "three-recipients", "empty-dict", "data-16384",
                                  "index-straddles-chunk"])
def test_sealtensors_reads_independent_writer(name):
    tensors, keys, metadata = CASES[name]
    blob = write_sealed(tensors, keys, metadata)
    for key in keys:
        want = {k: np.asarray(v) for k, v in tensors.items()}
        _assert_same_arrays(st_numpy.load(blob, key), want)
    from sealtensors.reader import SealedReader  # the reference's metadata accessor

    with SealedReader.from_bytes(blob, keys[-1]) as reader:
        assert reader.metadata() == metadata


def test_key_file_written_from_spec_is_accepted(tmp_path):
    key = bytes(range(32))
    text_file = tmp_path / "text.key"
    text_file.write_text("sealtensors-key-v1:" + key.hex() + "\n", encoding="ascii")
    raw_file = tmp_path / "raw.key"
    raw_file.write_bytes(key)
    blob = write_sealed({"x": np.arange(3, dtype=np.int64)}, [key])
    for path in (text_file, raw_file):
        assert parse_key_file(path.read_bytes()) == key
        np.testing.assert_array_equal(st_numpy.load(blob, str(path))["x"], np.arange(3))


# --------------------------------------------------------------------------------------------------
# Rejections: the independent reader raises what §9 says, and the same class as sealtensors.

def _reference_error(blob, keys) -> str | None:
    try:
        st_numpy.load(blob, keys)
    except Exception as exc:  # any class, so that a stray ValueError shows up as a mismatch
        return type(exc).__name__
    return None


def _independent_error(blob, keys) -> str | None:
    try:
        read_sealed(blob, keys)
    except (IndFormatError, IndWrongKeyError, IndIntegrityError) as exc:
        return type(exc).reference
    return None


@pytest.fixture(scope="module")
def small_file():
    key, other = generate_key(), generate_key()
    blob = st_numpy.save({"w": np.arange(40, dtype=np.float32).reshape(5, 8),
                          "b": np.arange(3, dtype=np.int8)}, [key, other], metadata={"m": "1"})
    return blob, key


def test_every_flipped_header_byte_is_rejected_like_sealtensors(small_file):
    blob, key = small_file
    header_len = 56 + 2 * SLOT + MAC
    expected_by_field = {}
    for pos in range(header_len):
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        got = _independent_error(bytes(tampered), [key])
        assert got is not None, pos
        assert got == _reference_error(bytes(tampered), key), pos
        expected_by_field.setdefault(got, []).append(pos)
    # Spot checks against §9: magic -> FormatError, version/suite -> Unsupported, reserved ->
    # FormatError, file id, slots and MAC -> IntegrityError.
    assert 0 in expected_by_field["FormatError"]
    assert {8, 10} <= set(expected_by_field["UnsupportedFormatError"])
    assert {12, 52} <= set(expected_by_field["FormatError"])
    authenticated = set(range(16, 32)) | set(range(56, header_len))
    assert authenticated <= set(expected_by_field["IntegrityError"])


def test_wrong_key_is_rejected(small_file):
    blob, _ = small_file
    stranger = generate_key()
    assert _independent_error(blob, [stranger]) == "WrongKeyError"
    assert _reference_error(blob, stranger) == "WrongKeyError"


@pytest.mark.parametrize("where,expected", [
    ("truncate-1", "IntegrityError"),
    ("extend-1", "IntegrityError"),
    ("truncate-to-40", "IntegrityError"),
    ("truncate-to-10", "IntegrityError"),
    ("index-salt", "CommitmentError"),
    ("index-chunk", "IntegrityError"),
    ("data-salt", "CommitmentError"),
    ("data-chunk", "IntegrityError"),
    ("data-tag", "IntegrityError"),
])
def test_tampered_messages_are_rejected_like_sealtensors(small_file, where, expected):
    blob, key = small_file
    header_len = 56 + 2 * SLOT + MAC
    index_len = FIXED.unpack_from(blob)[5]
    data_start = header_len + index_len
    tampered = bytearray(blob)
    if where == "truncate-1":
        tampered = tampered[:-1]
    elif where == "extend-1":
        tampered += b"\x00"
    elif where == "truncate-to-40":
        tampered = tampered[:40]
    elif where == "truncate-to-10":
        tampered = tampered[:10]
    else:
        pos = {"index-salt": header_len + 3, "index-chunk": header_len + MSG_HEADER + 5,
               "data-salt": data_start + 7, "data-chunk": data_start + MSG_HEADER + 1,
               "data-tag": len(blob) - 1}[where]
        tampered[pos] ^= 0x80
    assert _independent_error(bytes(tampered), [key]) == expected
    assert _reference_error(bytes(tampered), key) == expected


# --------------------------------------------------------------------------------------------------
# The worked example of FORMAT.md §14 is a real file: both readers open it.

EXAMPLE_KEY = bytes(range(32))


def _example_from_format_md() -> bytes:
    text = FORMAT_MD.read_text(encoding="utf-8")
    block = text.split("<!-- example-hexdump -->", 2)[1]
    hexdigits = []
    for line in block.splitlines():
        m = re.match(r"^([0-9a-f]{8}):((?: [0-9a-f]{2})+)", line)
        if m:
            assert int(m.group(1), 16) == len(hexdigits)
            hexdigits += m.group(2).split()
    return bytes.fromhex("".join(hexdigits))


def test_format_md_example_decrypts():
    blob = _example_from_format_md()
    result = read_sealed(blob, [EXAMPLE_KEY])
    want = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 2,
            "bias": np.array([-1, 0, 1], dtype=np.int8)}
    _assert_same_arrays(result["tensors"], want)
    assert result["metadata"] == {"model": "example"}
    _assert_same_arrays(st_numpy.load(blob, EXAMPLE_KEY), want)
