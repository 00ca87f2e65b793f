"""The synthetic model every benchmark loads, written once in each format that is compared.

The model is transformer-shaped: an embedding and five layers of attention (bf16), MLP (fp16) and a
projection (fp32) matrix, 16-64 MiB each, 1 GiB of matrices in all, plus a few hundred small vectors
(norms, biases, scales) in the three dtypes with odd lengths. The bytes are random (incompressible,
deterministic from a seed), so checksums catch any wrong, shifted or missing byte.

:func:`build` writes, into one directory:

- ``plain.safetensors``: the model unencrypted (safetensors' own writer);
- ``model.sealed`` and ``slice.sealed``: sealed by sealtensors (the slice, the first ~96 MiB of
  tensors, is for the pure-Python engine);
- ``hand.bin``: the hand-written format of :mod:`bench_hand` (AES-256-GCM over 4 MiB chunks);
- ``crypto.safetensors``: encrypted by cryptotensors (AES-256-GCM, Ed25519-signed), when installed;
- ``manifest.json``: names, dtypes, shapes, the checksums of the checked tensors, the keys.

Checksums: :func:`checksum` is CRC-32 of a tensor's bytes; :func:`check` compares every name, dtype
and shape and the bytes of :data:`CHECKED` tensors (first, last, each dtype, small vectors) against
the manifest. It runs outside the timed region.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, which safetensors' numpy loader needs
import numpy as np

SEED = 20240611
HIDDEN = 2048
WIDE = 4096
LAYERS = 5
SMALL_PER_LAYER = 60
SLICE_BYTES = 96 << 20

DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def spec() -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor, in file order."""
    tensors = [("model.embed_tokens.weight", "BF16", (8192, WIDE))]  # 64 MiB
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        for proj in ("q", "k", "v", "o"):
            tensors.append((p + f"self_attn.{proj}_proj.weight", "BF16", (HIDDEN, WIDE)))  # 16 MiB
        for proj in ("gate", "up"):
            tensors.append((p + f"mlp.{proj}_proj.weight", "F16", (WIDE, WIDE)))  # 32 MiB
        tensors.append((p + "mlp.down_proj.weight", "F32", (WIDE, WIDE)))  # 64 MiB
        for i in range(SMALL_PER_LAYER):
            dtype = ("BF16", "F16", "F32")[i % 3]
            length = (WIDE, HIDDEN, 1, 7, 129, 1000, 4095, 12)[i % 8] + i
            tensors.append((p + f"aux.{i}.weight", dtype, (length,)))
    tensors.append(("model.norm.weight", "F32", (WIDE,)))
    return tensors


def nbytes_of(dtype: str, shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize


def generate(entries=None) -> dict[str, np.ndarray]:
    """The model's arrays: random bytes viewed as each tensor's dtype."""
    rng = np.random.default_rng(SEED)
    arrays = {}
    for name, dtype, shape in entries or spec():
        n = nbytes_of(dtype, shape)
        raw = rng.integers(0, 1 << 63, size=(n + 7) // 8, dtype=np.uint64).view(np.uint8)[:n]
        arrays[name] = raw.view(DTYPES[dtype]).reshape(shape)
    return arrays


def checksum(array) -> int:
    """CRC-32 of the tensor's bytes (numpy array or CPU torch tensor)."""
    if hasattr(array, "numpy") and not isinstance(array, np.ndarray):  # torch
        array = array.contiguous().reshape(-1).view(__import__("torch").uint8).numpy()
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def checked_names(entries) -> list[str]:
    names = [name for name, _, _ in entries]
    matrices = [n for n, _, shape in entries if len(shape) == 2]
    picks = {names[0], names[-1], matrices[len(matrices) // 2], matrices[-1]}
    by_dtype = {}
    for name, dtype, shape in entries:
        if len(shape) == 2:
            by_dtype.setdefault(dtype, name)
    picks.update(by_dtype.values())
    small = [n for n, _, shape in entries if len(shape) == 1]
    picks.update(small[:: len(small) // 5 + 1])
    return sorted(picks)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cryptotensors_keys() -> tuple[dict, dict]:
    """A fresh AES-256-GCM JWK and Ed25519 JWK in the form cryptotensors 0.2 accepts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Ed25519PrivateKey.generate()
    private = signer.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    public = signer.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "bench-enc", "k": _b64(os.urandom(32))}
    sign = {"kty": "okp", "alg": "ed25519", "kid": "bench-sign", "d": _b64(private),
            "x": _b64(public)}
    return enc, sign


def build(directory: str | os.PathLike) -> dict:
    """Write every format of the model into ``directory``; returns the manifest."""
    import safetensors.numpy as st_numpy

    import sealtensors
    import sealtensors.numpy as seal_numpy

    import bench_hand

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = spec()
    arrays = generate(entries)
    key = sealtensors.generate_key()
    st_numpy.save_file(arrays, directory / "plain.safetensors")
    seal_numpy.save_file(arrays, directory / "model.sealed", key)
    hand_key = os.urandom(32)
    bench_hand.save_file(arrays, directory / "hand.bin", hand_key)

    slice_entries, total = [], 0
    for entry in entries:
        if total >= SLICE_BYTES:
            break
        slice_entries.append(entry)
        total += nbytes_of(entry[1], entry[2])
    seal_numpy.save_file({n: arrays[n] for n, _, _ in slice_entries}, directory / "slice.sealed", key)

    crypto = None
    try:
        import cryptotensors
        import cryptotensors.numpy as ct_numpy
    except ImportError:
        pass
    else:
        enc, sign = cryptotensors_keys()
        config = cryptotensors.SerializeCryptoConfig(enc_key=enc, sign_key=sign).to_dict()
        ct_numpy.save_file(arrays, directory / "crypto.safetensors", config=config)
        crypto = {"enc": enc, "sign": sign, "version": cryptotensors.__version__}

    def describe(entry_list):
        names = checked_names(entry_list)
        return {
            "tensors": [[n, d, list(s)] for n, d, s in entry_list],
            "nbytes": sum(nbytes_of(d, s) for _, d, s in entry_list),
            "checksums": {n: checksum(arrays[n]) for n in names},
        }

    manifest = {
        "model": describe(entries),
        "slice": describe(slice_entries),
        "key": key.hex(),
        "hand_key": hand_key.hex(),
        "cryptotensors": crypto,
        "files": {p.name: p.stat().st_size for p in directory.iterdir()},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_manifest(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / "manifest.json").read_text())


def check(loaded, description: dict) -> None:
    """Assert ``loaded`` ({name: numpy array or torch tensor}) holds exactly the described model."""
    expected = {n: (d, tuple(s)) for n, d, s in description["tensors"]}
    assert set(loaded) == set(expected), "tensor names differ"
    for name, (dtype, shape) in expected.items():
        value = loaded[name]
        assert tuple(value.shape) == shape, f"{name}: shape {tuple(value.shape)} != {shape}"
        got = str(value.dtype).replace("torch.", "")
        assert got in (str(np.dtype(DTYPES[dtype])), TORCH_DTYPE_NAMES[dtype]), \
            f"{name}: dtype {got} != {dtype}"
    for name, crc in description["checksums"].items():
        assert checksum(loaded[name]) == crc, f"{name}: checksum mismatch"


def check_bytes(buffer: np.ndarray, index, description: dict) -> None:
    """Assert a raw plaintext buffer (a sealed file's data section, laid out as ``index``, the
    reader's TensorIndex) holds the described model."""
    views = {info.name: buffer[info.begin:info.end].view(DTYPES[info.dtype]).reshape(info.shape)
             for info in index.tensors}
    check(views, description)
