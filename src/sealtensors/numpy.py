"""The numpy API, shaped like ``safetensors.numpy``: save, save_file, load, load_file.

Arrays come back as views into one freshly allocated, page-aligned plaintext buffer per load (no
second copy); each tensor starts at a 64-byte aligned offset. Keys are 32 raw bytes or a key file path;
``key`` may also be a list of keys (several recipients when saving, any usable key when loading).
Where safetensors and sealtensors differ, tests/test_safetensors_parity.py says so and why.
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np

from .engine import memory as _memory
from .io.atomic import atomic_output
from .format.dtypes import check_numpy_loadable, name_of_numpy, numpy_dtype, storage_shape
from .format.index import TensorIndex, TensorInfo, layout
from .reader import SealedReader
from .safe_open import check_backend, open_reader
from .writer import write_sealed

__all__ = ["save", "save_file", "load", "load_file"]


def _as_contiguous(name, array) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        # safetensors fails on non-arrays (AttributeError deep inside); scalars such as np.float32(3)
        # are 0-d arrays in all but name, so they are accepted, anything else is a TypeError.
        if isinstance(array, np.generic):
            array = np.asarray(array)
        else:
            raise TypeError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        # The format is little-endian; safetensors byte-swaps big-endian arrays on save, and so do we.
        array = array.astype(array.dtype.newbyteorder("<"))
    # ascontiguousarray would turn a 0-d array into shape (1,); copy keeps the shape.
    return array if array.flags.c_contiguous else array.copy(order="C")


def _plan(tensors: Mapping[str, np.ndarray], metadata) -> tuple[TensorIndex, list[np.ndarray]]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of names to arrays, not {type(tensors).__name__}")
    arrays = {name: _as_contiguous(name, array) for name, array in tensors.items()}
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
              metadata: Mapping[str, str] | None = None, *, overwrite: bool = True,
              signer=None, generation: int | None = None) -> None:
    """Seal ``tensors`` to ``filename`` (written to a temporary file, then renamed, so a crash
    leaves the old file or the new one, never a mix). An existing file is replaced, as safetensors
    does; ``overwrite=False`` refuses instead (DestinationExistsError)."""
    index, arrays = _plan(tensors, metadata)
    with atomic_output(filename, overwrite=overwrite) as out:
        write_sealed(out, index, _pieces(arrays), key, signer=signer, generation=generation)


def tensor_view(buffer: np.ndarray, info: TensorInfo, offset: int = 0) -> np.ndarray:
    """The tensor ``info`` as a view into ``buffer`` (which holds data bytes from ``offset`` on)."""
    start = info.begin - offset
    raw = buffer[start:start + info.nbytes]
    return raw.view(numpy_dtype(info.dtype)).reshape(storage_shape(info.dtype, info.shape))


def _load_all(reader: SealedReader, pin_memory: bool) -> dict[str, np.ndarray]:
    for info in reader.index.tensors:  # before anything is decrypted
        check_numpy_loadable(info.dtype, info.name)
    buffer = _memory.allocate(reader.data_length, pin=pin_memory)
    reader.read_all_into(buffer)
    return {info.name: tensor_view(buffer, info) for info in reader.index.tensors}


def load(data: bytes, key, **verification) -> dict[str, np.ndarray]:
    """Open sealed ``data`` (bytes-like) with ``key``; returns {name: array}."""
    with SealedReader.from_bytes(data, key, **verification) as reader:
        return _load_all(reader, pin_memory=False)


def load_file(filename, key, *, pin_memory: bool = False, backend: str = "pread",
              **verification) -> dict[str, np.ndarray]:
    """Decrypt and authenticate a whole sealed file; returns {name: array}.

    ``filename``: a path, or an open binary file object (see :func:`sealtensors.safe_open`). All
    arrays view one buffer; with ``pin_memory=True`` that buffer is page-locked (a PinningWarning,
    not an error, when the memlock limit refuses). ``backend`` is accepted for safetensors
    compatibility ("mmap" or "pread"); sealed files are always read with pread. F4 tensors have no
    numpy dtype: ValueError (load them with sealtensors.torch)."""
    check_backend(backend)
    with open_reader(filename, key, **verification) as reader:
        return _load_all(reader, pin_memory)
