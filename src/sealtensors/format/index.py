"""The tensor index: names, dtypes, shapes and data offsets, plus user metadata.

In a sealed file the index is JSON (UTF-8), encrypted. It is parsed as hostile input even though it is
authenticated: sizes are capped, every shape product is checked, and the offsets must tile the data
section exactly in the order listed, each tensor starting at the next multiple of ``ALIGNMENT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import strict_json
from .dtypes import item_size, storage_shape
from ..errors import FormatError

ALIGNMENT = 64
MAX_INDEX_BYTES = 100 * 1024 * 1024
MAX_NAME_BYTES = 4096
MAX_RANK = 64
MAX_DIM = (1 << 63) - 1
_TOP_LEVEL_KEYS = {"metadata", "tensors"}
_TENSOR_KEYS = {"name", "dtype", "shape", "offsets"}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in the plaintext data section; ``end - begin`` is its byte length."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class TensorIndex:
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    data_length: int

    def by_name(self) -> dict[str, TensorInfo]:
        return {info.name: info for info in self.tensors}


def align_up(value: int, alignment: int = ALIGNMENT) -> int:
    return -(-value // alignment) * alignment


def tensor_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Byte length of a tensor. Even a zero-element tensor must have a shape an array library can
    represent: the product of its non-zero dimensions times the item size must fit in 2**63-1."""
    count = 1
    extent = 1
    for dim in storage_shape(dtype, shape):  # F4 packs two values per byte: its last dim halves
        count *= dim
        extent *= max(dim, 1)
    size = item_size(dtype)
    if extent * size > MAX_DIM:
        raise FormatError(f"shape {list(shape)} of {dtype} is too large to represent")
    return count * size


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise FormatError("tensor names must be strings")
    if not name:
        raise FormatError("tensor names must not be empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError("tensor names must be valid Unicode (no lone surrogates)") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise FormatError(f"tensor name longer than {MAX_NAME_BYTES} bytes")
    if name == "__metadata__":
        raise FormatError("'__metadata__' is reserved and cannot name a tensor")
    return name


def _check_shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)):
        raise FormatError("a shape must be a list of integers")
    if len(shape) > MAX_RANK:
        raise FormatError(f"rank above {MAX_RANK}")
    for dim in shape:
        # bool is an int subclass in Python; a JSON true is not a dimension.
        if type(dim) is not int or not 0 <= dim <= MAX_DIM:
            raise FormatError(f"shape entries must be integers in 0..2**63-1, got {dim!r}")
    return tuple(shape)


def _check_metadata(metadata) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise FormatError("metadata must be a mapping of strings to strings")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise FormatError("metadata must map strings to strings")
        try:
            key.encode("utf-8")
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("metadata must be valid Unicode (no lone surrogates)") from None
    return dict(metadata)


def layout(entries: Iterable[tuple[str, str, Iterable[int]]],
           metadata: Mapping[str, str] | None = None) -> TensorIndex:
    """Place tensors ``(name, dtype, shape)`` in the given order, each at the next aligned offset."""
    tensors = []
    seen = set()
    position = 0
    for name, dtype, shape in entries:
        name = _check_name(name)
        if name in seen:
            raise FormatError(f"duplicate tensor name {name!r}")
        seen.add(name)
        shape = _check_shape(list(shape))
        begin = align_up(position)
        end = begin + tensor_nbytes(dtype, shape)
        tensors.append(TensorInfo(name, dtype, shape, begin, end))
        position = end
    return TensorIndex(tuple(tensors), _check_metadata(metadata), position)


def serialize(index: TensorIndex) -> bytes:
    document = {
        "metadata": index.metadata,
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offsets": [t.begin, t.end]}
            for t in index.tensors
        ],
    }
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(encoded) > MAX_INDEX_BYTES:
        raise FormatError(f"index larger than {MAX_INDEX_BYTES} bytes")
    return encoded


def parse(encoded: bytes, data_length: int) -> TensorIndex:
    """Parse and validate an index; ``data_length`` is the data section's plaintext length."""
    if len(encoded) > MAX_INDEX_BYTES:
        raise FormatError(f"index larger than {MAX_INDEX_BYTES} bytes")
    document = strict_json.loads(encoded, "the index")
    if not isinstance(document, dict) or set(document) != _TOP_LEVEL_KEYS:
        raise FormatError("index must be an object with exactly 'metadata' and 'tensors'")
    metadata = _check_metadata(document["metadata"])
    entries = document["tensors"]
    if not isinstance(entries, list):
        raise FormatError("'tensors' must be a list")
    tensors = []
    seen = set()
    position = 0
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
            raise FormatError("each tensor entry must have exactly name, dtype, shape, offsets")
        name = _check_name(entry["name"])
        if name in seen:
            raise FormatError(f"duplicate tensor name {name!r}")
        seen.add(name)
        dtype = entry["dtype"]
        if not isinstance(dtype, str):
            raise FormatError("dtype must be a string")
        shape = _check_shape(entry["shape"])
        offsets = entry["offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2
                or any(type(v) is not int for v in offsets)):
            raise FormatError(f"tensor {name!r}: offsets must be two integers")
        begin, end = offsets
        expected_begin = align_up(position)
        if begin != expected_begin:
            raise FormatError(f"tensor {name!r}: offsets leave a gap or overlap "
                              f"(begins at {begin}, expected {expected_begin})")
        nbytes = tensor_nbytes(dtype, shape)
        if end - begin != nbytes:
            raise FormatError(f"tensor {name!r}: {dtype} {list(shape)} needs {nbytes} bytes, "
                              f"offsets give {end - begin}")
        if end > data_length:
            raise FormatError(f"tensor {name!r} runs past the end of the data")
        tensors.append(TensorInfo(name, dtype, shape, begin, end))
        position = end
    if position != data_length:
        raise FormatError(f"data section holds {data_length} bytes, the tensors end at {position}")
    return TensorIndex(tuple(tensors), metadata, data_length)
