"""The PyTorch API, shaped like ``safetensors.torch``: save, save_file, load, load_file.

torch is optional: importing this module without torch installed raises ImportError. Tensors are
loaded as views into one plaintext buffer (no second copy): host memory for ``device="cpu"``,
device memory for ``device="cuda:N"`` (uploaded through a pinned staging ring). ``save_model`` /
``load_model`` handle tied (shared) weights as safetensors does. Where safetensors and sealtensors
differ, tests/test_safetensors_parity.py says so and why.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from typing import Mapping

import numpy as np
import torch

from .engine import memory as _memory
from .io.atomic import atomic_output
from .format.dtypes import logical_shape, storage_shape
from .format.index import TensorIndex, layout
from .reader import SealedReader
from .safe_open import check_backend, open_reader
from .writer import write_sealed

__all__ = ["save", "save_file", "load", "load_file", "load_shard", "save_model", "load_model"]

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
# Newer torch dtypes, where this torch has them (as safetensors does).
for _name, _attribute in (("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
                          ("F8_E8M0", "float8_e8m0fnu"), ("F4", "float4_e2m1fn_x2")):
    if hasattr(torch, _attribute):
        _TORCH_DTYPES[_name] = getattr(torch, _attribute)
_NAME_OF_TORCH = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


def check_device(device) -> torch.device:
    """Accept "cpu", "cuda[:N]" and a CUDA index N (when CUDA is available); ValueError otherwise."""
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


def numpy_to_torch(array: np.ndarray, dtype_name: str, device="cpu") -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory where possible (a copy for non-contiguous input);
    moved to ``device`` when it is not the CPU. ``array`` holds stored elements (F4: packed bytes,
    which become torch.float4_e2m1fn_x2 of the same shape)."""
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
    if tensor.element_size() == 1 and tensor.dtype not in (torch.uint8, torch.int8, torch.bool):
        tensor = tensor.view(torch.uint8)  # float8/float4 kernels lack the copies below
    # Lazy conjugate / negative views must be materialised before their bytes are read.
    tensor = tensor.resolve_conj().resolve_neg().contiguous()
    if tensor.numel() == 0:
        return np.empty(0, dtype=np.uint8)
    return tensor.reshape(-1).view(torch.uint8).numpy()


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """[first byte, last byte + 1) of the memory a (non-negatively strided) tensor touches."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return start, start + (last + 1) * tensor.element_size()


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """(address, byte length) of the storage behind ``tensor``; (0, 0) when it has none (meta)."""
    if tensor.device.type == "meta":
        return 0, 0
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return 0, 0


def shared_groups(tensors: Mapping[str, torch.Tensor]) -> list[set[str]]:
    """Groups of two or more names whose tensors overlap in memory (tied weights, views of one
    another). Views of one storage that do not overlap are not shared, as in safetensors."""
    by_storage = defaultdict(list)
    for name, tensor in tensors.items():
        address, nbytes = _storage(tensor)
        if address and nbytes:
            by_storage[(tensor.device, address)].append((*_byte_span(tensor), name))
    groups = []
    for spans in by_storage.values():
        spans.sort()
        current, end = None, None
        for begin, stop, name in spans:
            if current is not None and begin < end:
                current.add(name)
                end = max(end, stop)
            else:
                current, end = {name}, stop
                groups.append(current)
    return sorted((group for group in groups if len(group) > 1), key=sorted)


def _check_tensors(tensors) -> None:
    """The checks safetensors' save makes, with its exception types: ValueError for a non-dict,
    non-tensors and sparse or non-contiguous tensors, RuntimeError for tensors sharing memory."""
    if not isinstance(tensors, Mapping):
        raise ValueError(f"expected a dict of [str, torch.Tensor], not {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name!r} is invalid: expected torch.Tensor, not "
                             f"{type(tensor).__name__}")
        if tensor.layout != torch.strided or tensor.is_nested:
            raise ValueError(f"{name!r}: only dense (strided) tensors can be saved; make it dense "
                             "with .to_dense() first")
        if tensor.device.type == "meta":
            raise ValueError(f"{name!r}: a meta tensor has no data to save")
    shared = shared_groups(tensors)
    if shared:
        raise RuntimeError(f"some tensors share memory, which would store them twice and load "
                           f"them as separate tensors: {[sorted(group) for group in shared]}. "
                           "Save a module with sealtensors.torch.save_model (it keeps one copy of "
                           "tied weights), or pass .clone()s")
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise ValueError(f"{name!r} is not contiguous: call .contiguous() on it before saving "
                             "(or save a module with save_model, which does)")


def _plan(tensors: Mapping[str, torch.Tensor], metadata) -> tuple[TensorIndex, list[np.ndarray]]:
    _check_tensors(tensors)
    entries, sources = [], {}
    for name, tensor in tensors.items():
        try:
            dtype_name = _NAME_OF_TORCH[tensor.dtype]
        except KeyError:
            raise ValueError(f"{name!r}: dtype {tensor.dtype} cannot be stored") from None
        try:
            shape = logical_shape(dtype_name, tuple(tensor.shape))
        except ValueError as exc:
            raise ValueError(f"{name!r}: {exc}") from None
        entries.append((name, dtype_name, shape))
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
              metadata: Mapping[str, str] | None = None, *, overwrite: bool = True,
              signer=None, generation: int | None = None) -> None:
    """Seal ``tensors`` to ``filename`` atomically (a temporary file renamed in place: a crash
    leaves the old file or the new one). An existing file is replaced, as safetensors does;
    ``overwrite=False`` refuses instead (DestinationExistsError).

    Tensors must be dense and contiguous and must not share memory (ValueError / RuntimeError, as
    in safetensors); use :func:`save_model` for a module with tied weights."""
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
        result[info.name] = raw.view(torch_dtype(info.dtype)).reshape(
            storage_shape(info.dtype, info.shape))
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


def load_file(filename, key, device="cpu", *, backend: str = "pread",
              pin_memory: bool = False, staging_slots: int = 4,
              staging_bytes: int = 16 << 20, **verification) -> dict[str, torch.Tensor]:
    """Decrypt and authenticate a sealed file; returns {name: tensor}, all views of one buffer.

    ``filename``: a path or an open binary file object (see :func:`sealtensors.safe_open`).
    ``backend`` ("mmap" or "pread") is accepted for safetensors compatibility; sealed files are
    always read with pread.

    ``device="cpu"``: ``pin_memory=True`` gives page-locked memory (torch's pinned allocator when
    CUDA is available, otherwise mlock, with a PinningWarning when the memlock limit refuses).
    ``device="cuda:N"``: tensors land on the GPU through a ring of ``staging_slots`` pinned buffers
    of ``staging_bytes`` each; decryption of one span overlaps the upload of the previous ones, and
    host memory in use is the ring, not the model. Nothing is returned unless every chunk
    authenticated."""
    check_backend(backend)
    with open_reader(filename, key, **verification) as reader:
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


def _names_to_drop(state: Mapping[str, torch.Tensor], preferred=()) -> dict[str, list[str]]:
    """For each group of tensors sharing memory: the name to keep -> the names to drop.

    The kept name is one whose tensor covers its whole storage (so nothing is lost), preferring
    names in ``preferred`` (what a file holds), then the alphabetically first. RuntimeError when
    no name of a group covers the whole storage (saving would store more than the tensors)."""
    preferred = set(preferred)
    drops = {}
    for group in shared_groups(state):
        complete = sorted(name for name in group
                          if state[name].data_ptr() == _storage(state[name])[0]
                          and state[name].numel() * state[name].element_size()
                          == _storage(state[name])[1])
        if not complete:
            raise RuntimeError(f"tensors {sorted(group)} share memory but none of them covers all "
                               "of it: refusing to save a partial view of a larger storage")
        keep = next((name for name in complete if name in preferred), complete[0])
        drops[keep] = sorted(group - {keep})
    return drops


def save_model(model: "torch.nn.Module", filename: str | os.PathLike, key,
               metadata: Mapping[str, str] | None = None, force_contiguous: bool = True, *,
               overwrite: bool = True, signer=None, generation: int | None = None) -> None:
    """Seal a module's ``state_dict()`` to ``filename``, keeping one copy of tied weights.

    As ``safetensors.torch.save_model``: of each group of tensors sharing memory, one name is
    stored and each dropped name is recorded in the metadata as ``{dropped: kept}`` (unless the
    caller's metadata already uses that key); ``force_contiguous`` makes every tensor contiguous
    first. ``load_model`` restores the ties."""
    state = model.state_dict()
    extra = dict(metadata) if metadata is not None else None
    for kept, dropped in _names_to_drop(state).items():
        for name in dropped:
            extra = {} if extra is None else extra
            extra.setdefault(name, kept)
            del state[name]
    if force_contiguous:
        state = {name: tensor.contiguous() for name, tensor in state.items()}
    try:
        save_file(state, filename, key, extra, overwrite=overwrite, signer=signer,
                  generation=generation)
    except ValueError as exc:
        if "contiguous" not in str(exc):
            raise
        raise ValueError(f"{exc} Or use save_model(..., force_contiguous=True).") from None


def load_model(model: "torch.nn.Module", filename, key, strict: bool = True, device="cpu",
               **options) -> tuple[list[str], list[str]]:
    """Load a sealed file into ``model`` (in place); returns ``(missing, unexpected)`` names.

    As ``safetensors.torch.load_model``: names the model ties to a stored tensor are neither missing
    nor unexpected; with ``strict`` (the default) any missing or unexpected name is a RuntimeError
    and nothing more is reported. ``options`` go to :func:`load_file` (backend, pin_memory,
    signer, ...)."""
    state = load_file(filename, key, device, **options)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing, unexpected = set(missing), list(unexpected)
    for dropped in _names_to_drop(model.state_dict(), preferred=state.keys()).values():
        for name in dropped:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    missing = sorted(missing)
    if strict and (missing or unexpected):
        message = f"Error(s) in loading state_dict for {type(model).__name__}:"
        if missing:
            message += "\n    Missing key(s) in state_dict: " + ", ".join(f'"{n}"' for n in missing)
        if unexpected:
            message += ("\n    Unexpected key(s) in state_dict: "
                        + ", ".join(f'"{n}"' for n in sorted(unexpected)))
        raise RuntimeError(message)
    return missing, unexpected
