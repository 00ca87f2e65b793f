"""The PyTorch API, shaped like ``safetensors.torch``: save, save_file, load, load_file.

torch is optional: importing this module without torch installed raises ImportError. Tensors are
loaded as views into one plaintext buffer (no second copy): host memory for ``device="cpu"``,
device memory for ``device="cuda:N"`` (uploaded through a pinned staging ring).
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np
import torch

from .engine import memory as _memory
from .io.atomic import atomic_output
from .format.index import TensorIndex, layout
from .reader import SealedReader
from .writer import write_sealed

__all__ = ["save", "save_file", "load", "load_file", "load_shard"]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "U16": torch.uint16,
    "I16": torch.int16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
if hasattr(torch, "float8_e8m0fnu"):
    _TORCH_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
_NAME_OF_TORCH = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


def check_device(device) -> torch.device:
    """Accept "cpu" and "cuda[:N]" (when CUDA is available); ValueError otherwise."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"bad device {device!r}: {exc}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available to torch")
        return resolved
    raise ValueError(f"device {device!r} is not supported: use 'cpu' or 'cuda[:N]'")


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name} has no torch equivalent") from None


def numpy_to_torch(array: np.ndarray, dtype_name: str, device: str = "cpu") -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory where possible (a copy for non-contiguous input);
    moved to ``device`` when it is not the CPU."""
    target = check_device(device)
    array = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    shape = array.shape
    flat = array.reshape(-1).view(np.uint8)
    tensor = torch.from_numpy(flat) if flat.size else torch.empty(0, dtype=torch.uint8)
    tensor = tensor.view(torch_dtype(dtype_name)).reshape(shape)
    return tensor if target.type == "cpu" else tensor.to(target)


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    # Lazy conjugate / negative views must be materialised before their bytes are read.
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    if tensor.numel() == 0:
        return np.empty(0, dtype=np.uint8)
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _plan(tensors: Mapping[str, torch.Tensor], metadata) -> tuple[TensorIndex, list[np.ndarray]]:
    if not isinstance(tensors, Mapping):
        raise TypeError("tensors must be a mapping of names to torch tensors")
    entries, sources = [], {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is not a torch.Tensor")
        if tensor.layout != torch.strided or tensor.is_nested:
            raise ValueError(f"{name!r}: only dense (strided) tensors can be saved")
        if tensor.device.type == "meta":
            raise ValueError(f"{name!r}: a meta tensor has no data to save")
        try:
            dtype_name = _NAME_OF_TORCH[tensor.dtype]
        except KeyError:
            raise ValueError(f"{name!r}: dtype {tensor.dtype} cannot be stored") from None
        entries.append((name, dtype_name, tuple(tensor.shape)))
        sources[name] = tensor
    index = layout(entries, metadata)
    return index, [_tensor_bytes(sources[info.name]) for info in index.tensors]


def save(tensors: Mapping[str, torch.Tensor], key, metadata: Mapping[str, str] | None = None, *,
         signer=None, generation: int | None = None) -> bytes:
    """Seal ``tensors`` into bytes for the recipient(s) ``key`` (keys, recipient strings,
    Recipient objects). ``signer`` signs it as its publisher, with ``generation``."""
    index, raw = _plan(tensors, metadata)
    out = io.BytesIO()
    write_sealed(out, index, ((piece,) for piece in raw), key, signer=signer, generation=generation)
    return out.getvalue()


def save_file(tensors: Mapping[str, torch.Tensor], filename: str | os.PathLike, key,
              metadata: Mapping[str, str] | None = None, *, overwrite: bool = False,
              signer=None, generation: int | None = None) -> None:
    """Seal ``tensors`` to ``filename`` atomically; refuses to replace a file unless ``overwrite``."""
    index, raw = _plan(tensors, metadata)
    with atomic_output(filename, overwrite=overwrite) as out:
        write_sealed(out, index, ((piece,) for piece in raw), key, signer=signer, generation=generation)


def _pinned_buffer(nbytes: int) -> np.ndarray:
    if torch.cuda.is_available():
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()
    return _memory.allocate(nbytes, pin=True)


def _views(buffer, reader: SealedReader) -> dict[str, torch.Tensor]:
    result = {}
    for info in reader.index.tensors:
        raw = buffer[info.begin:info.end]
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw) if info.nbytes else torch.empty(0, dtype=torch.uint8)
        result[info.name] = raw.view(torch_dtype(info.dtype)).reshape(info.shape)
    return result


def _load_to_cuda(reader: SealedReader, device: torch.device, staging_slots: int,
                  staging_bytes: int) -> dict[str, torch.Tensor]:
    from .engine.staging import upload
    from .engine.torch_cuda import TorchCudaDevice

    destination = upload(reader.read_chunks_into, reader.data_length, TorchCudaDevice(device),
                         slots=staging_slots, slot_bytes=staging_bytes)
    return _views(destination, reader)


def _load_all(reader: SealedReader, device: str, pin_memory: bool,
              staging_slots: int = 4, staging_bytes: int = 16 << 20) -> dict[str, torch.Tensor]:
    target = check_device(device)
    if target.type == "cuda":
        return _load_to_cuda(reader, target, staging_slots, staging_bytes)
    if pin_memory:
        buffer = _pinned_buffer(reader.data_length)
    else:
        buffer = _memory.allocate(reader.data_length)
    reader.read_all_into(buffer)
    return _views(buffer, reader)


def load(data: bytes, key, device: str = "cpu", **verification) -> dict[str, torch.Tensor]:
    """Open sealed ``data`` with ``key``; returns {name: tensor}."""
    with SealedReader.from_bytes(data, key, **verification) as reader:
        return _load_all(reader, device, pin_memory=False)


def load_file(filename: str | os.PathLike, key, device: str = "cpu", *,
              pin_memory: bool = False, staging_slots: int = 4,
              staging_bytes: int = 16 << 20, **verification) -> dict[str, torch.Tensor]:
    """Decrypt and authenticate a sealed file; returns {name: tensor}, all views of one buffer.

    ``device="cpu"``: ``pin_memory=True`` gives page-locked memory (torch's pinned allocator when
    CUDA is available, otherwise mlock, with a PinningWarning when the memlock limit refuses).
    ``device="cuda:N"``: tensors land on the GPU through a ring of ``staging_slots`` pinned buffers
    of ``staging_bytes`` each; decryption of one span overlaps the upload of the previous ones, and
    host memory in use is the ring, not the model. Nothing is returned unless every chunk
    authenticated."""
    with SealedReader.open(filename, key, **verification) as reader:
        return _load_all(reader, device, pin_memory, staging_slots, staging_bytes)


def _shard_bounds(length: int, rank: int, world_size: int) -> tuple[int, int]:
    base, extra = divmod(length, world_size)
    begin = rank * base + min(rank, extra)
    return begin, begin + base + (1 if rank < extra else 0)


def load_shard(filename: str | os.PathLike, key, *, rank: int, world_size: int,
               dims: int | Mapping[str, int | None] | None = 0, device: str = "cpu",
               names=None, **verification) -> dict[str, torch.Tensor]:
    """Load one tensor-parallel rank's part of each tensor straight to ``device``.

    ``dims`` says which dimension each tensor is split along: one int for all (negative counts from
    the last dimension), a mapping from name to dim (None or a missing name = replicated), or None
    to replicate everything. Tensors with too few dimensions are replicated. Splits follow ``numpy.array_split`` (the first ranks get one more
    element when the size does not divide). Splitting along dimension 0 decrypts only the chunks
    holding the rank's rows; other dimensions need every row of the tensor.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    from .safe_open import safe_open

    check_device(device)
    result = {}
    with safe_open(filename, "pt", key=key, **verification) as handle:
        selected = handle.keys() if names is None else list(names)
        for name in selected:
            dim = dims.get(name) if isinstance(dims, Mapping) else dims
            piece = handle.get_slice(name)
            shape = piece.get_shape()
            if dim is not None and dim < 0:
                dim += len(shape)  # counted from the last dimension, as in torch
            if dim is None or not 0 <= dim < len(shape):
                tensor = piece[...]
            else:
                begin, end = _shard_bounds(shape[dim], rank, world_size)
                tensor = piece[(slice(None),) * dim + (slice(begin, end),)]
            result[name] = tensor if torch.device(device).type == "cpu" else tensor.to(device)
    return result
