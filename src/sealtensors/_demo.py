"""``sealtensors demo``: the whole life of a sealed model, end to end, in a few seconds.

Builds a small transformer-shaped model with numpy (F32 embeddings and norms, BF16 attention, F16
MLP), writes it as a plain ``.safetensors`` file, generates a key, seals the file, loads it back,
checks that every tensor is bit-identical, authenticates the whole file, and shows what the file
reveals without the key and how tampering and a wrong key are told apart. Needs nothing beyond
sealtensors' own dependencies.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

LAYERS = 4
MB = 1e6
MIB = 1024 * 1024


def _d_model(size_mib: float) -> int:
    # Per layer: qkv 3d*d + out d*d in BF16 (8 d^2 bytes), MLP up 4d*d + down d*4d in F16 (16 d^2);
    # embeddings 8d*d in F32 (32 d^2). Total about (24 * LAYERS + 32) d^2 bytes.
    d = math.sqrt(size_mib * MIB / (24 * LAYERS + 32))
    return max(16, int(round(d / 16)) * 16)


def build_model(size_mib: float = 64.0,
                seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A transformer-like set of tensors of about ``size_mib`` MiB, and its metadata."""
    rng = np.random.default_rng(seed)
    d = _d_model(size_mib)
    vocab = 8 * d

    def normal(shape, dtype, scale=0.02):
        values = rng.standard_normal(int(np.prod(shape)), dtype=np.float32)
        values *= scale
        return values.reshape(shape).astype(dtype)

    tensors: dict[str, np.ndarray] = {"embed.weight": normal((vocab, d), np.float32)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        tensors[p + "attn_norm.weight"] = np.ones(d, dtype=np.float32)
        tensors[p + "attn.qkv.weight"] = normal((3 * d, d), ml_dtypes.bfloat16)
        tensors[p + "attn.qkv.bias"] = normal((3 * d,), np.float32)
        tensors[p + "attn.out.weight"] = normal((d, d), ml_dtypes.bfloat16)
        tensors[p + "mlp_norm.weight"] = np.ones(d, dtype=np.float32)
        tensors[p + "mlp.up.weight"] = normal((4 * d, d), np.float16)
        tensors[p + "mlp.down.weight"] = normal((d, 4 * d), np.float16)
    tensors["final_norm.weight"] = np.ones(d, dtype=np.float32)
    tensors["step"] = np.array(1000, dtype=np.int64)
    metadata = {"format": "np", "model": "sealtensors-demo", "d_model": str(d),
                "layers": str(LAYERS), "vocab": str(vocab)}
    return tensors, metadata


def _same(loaded, original: np.ndarray) -> bool:
    """Same dtype, shape and bytes (bytes, so that NaNs and signed zeros count too)."""
    return (loaded is not None and loaded.dtype == original.dtype
            and loaded.shape == original.shape
            and np.array_equal(loaded.reshape(-1).view(np.uint8),
                               original.reshape(-1).view(np.uint8)))


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MB / max(seconds, 1e-9):,.0f} MB/s"


def _timed(func, *args, **kwargs):
    started = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - started


def _expect_failure(func) -> tuple[type, int | None]:
    """Run ``func``, which must fail; return the type of the error that explains the failure and
    its failing chunk (if any). Only these are kept, not the exception and its traceback's
    frames."""
    try:
        func()
    except Exception as exc:  # noqa: BLE001 - classified by the caller
        # Summarized in another function: no local of this frame (which is in the traceback) may
        # refer to the exception, or the traceback would be left in a reference cycle.
        return _summary(exc)
    raise AssertionError("the operation should have failed")


def _summary(exc: BaseException) -> tuple[type, int | None]:
    from .cli import _root_cause

    cause = _root_cause(exc)
    return type(cause), getattr(cause, "chunk_index", None)


KEPT_FILES = ("sealtensors-demo.safetensors", "sealtensors-demo.sealed", "sealtensors-demo.key")


def run_demo(size_mib: float = 64.0, directory: str | os.PathLike | None = None,
             out: Callable[[str], None] = print, *, overwrite: bool = False) -> int:
    """Run the demo in ``directory`` (kept) or a temporary directory (removed); returns 0 on
    success. Files a previous run left in ``directory`` (a key among them) are replaced only with
    ``overwrite``; otherwise DestinationExistsError, before anything is written."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="sealtensors-demo-") as temp:
            return _run(Path(temp), size_mib, out, keep=False)
    path = Path(directory)
    if not overwrite:
        existing = [str(path / name) for name in KEPT_FILES if os.path.lexists(path / name)]
        if existing:
            from .io.atomic import DestinationExistsError

            names = ", ".join(repr(name) for name in existing)
            raise DestinationExistsError(f"{names} left by an earlier demo run "
                                         "(pass overwrite=True to replace them)")
    path.mkdir(parents=True, exist_ok=True)
    return _run(path, size_mib, out, keep=True)


def _run(workdir: Path, size_mib: float, out: Callable[[str], None], keep: bool) -> int:
    import sealtensors
    from sealtensors import numpy as st_numpy
    from sealtensors.format.dtypes import name_of_numpy
    from sealtensors.keys.keyfile import generate_key, key_id, write_key_file

    info = sealtensors.engine_info()
    threads = info.get("threads")
    out(f"sealtensors {sealtensors.__version__} demo")
    out(f"  engine      {info.get('backend')} / {info.get('provider')} ({info.get('cpu_path')}), "
        f"{threads} thread{'s' if threads != 1 else ''}")

    tensors, metadata = build_model(size_mib)
    nbytes = sum(a.nbytes for a in tensors.values())
    dtypes = sorted({name_of_numpy(a.dtype) for a in tensors.values()})
    out(f"  model       {LAYERS} layers, d_model {metadata['d_model']}: {len(tensors)} tensors "
        f"({', '.join(dtypes)}), {_mib(nbytes)}")

    plain, sealed, key_path = (workdir / name for name in KEPT_FILES)
    # The plain .safetensors file is written by sealtensors itself (seal with a throwaway key, then
    # unseal), so the demo needs no other package.
    scratch = workdir / "sealtensors-demo.scratch"
    throwaway = generate_key()
    st_numpy.save_file(tensors, scratch, throwaway, metadata, overwrite=True)
    sealtensors.unseal_file(scratch, plain, throwaway, overwrite=True)
    scratch.unlink()
    plain_size = plain.stat().st_size
    out(f"  plain file  {plain.name}: {_mib(plain_size)}")

    if os.path.lexists(key_path):  # a previous demo run in the same --dir
        key_path.unlink()
    key = write_key_file(key_path)
    out(f"  key         {key_path.name} (mode 0600), key id {key_id(key).hex()}")

    _, seal_s = _timed(sealtensors.seal_file, plain, sealed, str(key_path), overwrite=True)
    sealed_size = sealed.stat().st_size
    out(f"  seal        {_mib(sealed_size)} sealed (+{sealed_size - plain_size:,} bytes) in "
        f"{seal_s:.2f} s = {_rate(nbytes, seal_s)}")

    loaded, load_s = _timed(st_numpy.load_file, sealed, str(key_path))
    identical = sum(1 for name, array in tensors.items() if _same(loaded.get(name), array))
    out(f"  load        sealtensors.numpy.load_file in {load_s:.2f} s = {_rate(nbytes, load_s)}; "
        f"{identical}/{len(tensors)} tensors bit-identical")
    if identical != len(tensors) or len(loaded) != len(tensors):
        out("FAILED: the loaded tensors differ from the originals")
        return 1
    del loaded

    summary, verify_s = _timed(sealtensors.verify, sealed, str(key_path))
    out(f"  verify      every byte authenticated ({summary['tensors']} tensors) in "
        f"{verify_s:.2f} s = {_rate(summary['data_size'], verify_s)}")

    with sealtensors.safe_open(sealed, "np", key=str(key_path)) as handle:
        rows, slice_s = _timed(lambda: handle.get_slice("layers.0.mlp.up.weight")[:8])
    out(f"  safe_open   rows [:8] of layers.0.mlp.up.weight {list(rows.shape)} in "
        f"{slice_s * 1000:.1f} ms (decrypts only the chunks holding them)")

    report = sealtensors.inspect(sealed)
    count = len(report["recipients"])
    plural = "s" if count != 1 else ""
    out(f"  no key      inspect shows sizes and {count} recipient slot{plural} (per-file ids); "
        "tensor names, shapes and metadata stay encrypted")

    tampered = workdir / "sealtensors-demo.tampered"
    shutil.copyfile(sealed, tampered)
    with open(tampered, "r+b") as handle:
        position = (report["header_size"] + report["index_message_size"]
                    + report["data_message_size"] // 2)
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x01]))
    error, chunk = _expect_failure(lambda: sealtensors.verify(tampered, str(key_path)))
    out(f"  tampering   one flipped bit -> {error.__name__}"
        + (f" (chunk {chunk})" if chunk is not None else ""))
    tampered.unlink()
    if not issubclass(error, sealtensors.IntegrityError):
        out("FAILED: tampering was not reported as an IntegrityError")
        return 1

    error, _ = _expect_failure(lambda: st_numpy.load_file(sealed, generate_key()))
    out(f"  wrong key   -> {error.__name__}")
    if not issubclass(error, sealtensors.WrongKeyError):
        out("FAILED: a wrong key was not reported as a WrongKeyError")
        return 1

    if keep:
        out(f"files kept in {workdir}: {plain.name}, {sealed.name}, {key_path.name}")
    else:
        with contextlib.suppress(OSError):
            key_path.unlink()
    out("demo OK")
    return 0
