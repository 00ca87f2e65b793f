"""The numpy API, shaped like ``safetensors.numpy``: save, save_file, load, load_file.

Arrays come back as views into one freshly allocated, page-aligned plaintext buffer per load (no
second copy); each tensor starts at a 64-byte aligned offset. Keys are 32 raw bytes or a key file path;
``key`` may also be a list of keys (several recipients when saving, any usable key when loading).
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from .engine import memory as _memory
from .io.atomic import atomic_output
from .format.dtypes import name_of_numpy, numpy_dtype
from .format.index import TensorIndex, TensorInfo, layout
from .reader import SealedReader
from .writer import write_sealed

__all__ = ["save", "save_file", "load", "load_file"]


def _as_contiguous(array) -> np.ndarray:
    array = np.asarray(array)
    # ascontiguousarray would turn a 0-d array into shape (1,); copy keeps the shape.
    return array if array.flags.c_contiguous else array.copy(order="C")


def _plan(tensors: Mapping[str, np.ndarray], metadata) -> tuple[TensorIndex, list[np.ndarray]]:
    if not isinstance(tensors, Mapping):
        raise TypeError("tensors must be a mapping of names to arrays")
    arrays = {name: _as_contiguous(array) for name, array in tensors.items()}
    index = layout(((name, name_of_numpy(a.dtype), a.shape) for name, a in arrays.items()), metadata)
    return index, [arrays[info.name] for info in index.tensors]


def _pieces(arrays: list[np.ndarray]):
    for array in arrays:
        yield (array.reshape(-1).view(np.uint8),)


def save(tensors: Mapping[str, np.ndarray], key, metadata: Mapping[str, str] | None = None, *,
         signer=None, generation: int | None = None) -> bytes:
    """Seal ``tensors`` into bytes for the recipient(s) ``key`` (keys, recipient strings,
    Recipient objects). ``signer`` signs it as its publisher, with ``generation``."""
    index, arrays = _plan(tensors, metadata)
    out = io.BytesIO()
    write_sealed(out, index, _pieces(arrays), key, signer=signer, generation=generation)
    return out.getvalue()


def save_file(tensors: Mapping[str, np.ndarray], filename: str | os.PathLike, key,
              metadata: Mapping[str, str] | None = None, *, overwrite: bool = False,
              signer=None, generation: int | None = None) -> None:
    """Seal ``tensors`` to ``filename`` (written to a temporary file, then renamed); an existing
    file is replaced only with ``overwrite=True``."""
    index, arrays = _plan(tensors, metadata)
    with atomic_output(filename, overwrite=overwrite) as out:
        write_sealed(out, index, _pieces(arrays), key, signer=signer, generation=generation)


def tensor_view(buffer: np.ndarray, info: TensorInfo, offset: int = 0) -> np.ndarray:
    """The tensor ``info`` as a view into ``buffer`` (which holds data bytes from ``offset`` on)."""
    start = info.begin - offset
    raw = buffer[start:start + info.nbytes]
    return raw.view(numpy_dtype(info.dtype)).reshape(info.shape)


def _load_all(reader: SealedReader, pin_memory: bool) -> dict[str, np.ndarray]:
    buffer = _memory.allocate(reader.data_length, pin=pin_memory)
    reader.read_all_into(buffer)
    return {info.name: tensor_view(buffer, info) for info in reader.index.tensors}


def load(data: bytes, key, **verification) -> dict[str, np.ndarray]:
    """Open sealed ``data`` (bytes-like) with ``key``; returns {name: array}."""
    with SealedReader.from_bytes(data, key, **verification) as reader:
        return _load_all(reader, pin_memory=False)


def load_file(filename: str | os.PathLike, key, *, pin_memory: bool = False,
              **verification) -> dict[str, np.ndarray]:
    """Decrypt and authenticate a whole sealed file; returns {name: array}.

    All arrays view one buffer; with ``pin_memory=True`` that buffer is page-locked (a
    PinningWarning, not an error, when the memlock limit refuses)."""
    with SealedReader.open(filename, key, **verification) as reader:
        return _load_all(reader, pin_memory)
