"""Reading and writing plain ``.safetensors`` files, streaming, for seal_file / unseal_file.

The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON, then the tensor
bytes, which the header's ``data_offsets`` (relative to the end of the header) must cover exactly.
The source is treated as hostile input: lengths are capped and every entry is checked.
"""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO, Iterator

from . import strict_json
from .dtypes import item_size
from ..errors import FormatError
from .index import MAX_INDEX_BYTES, TensorIndex, tensor_nbytes

# The first bytes of a sealed file (format/container.py's MAGIC), spelled out here so that telling a
# sealed file from a plain one does not depend on the sealed format's parser.
SEALED_MAGIC = b"SEALTENS"


class PlainTensor:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


def check_prefix(prefix: bytes, size: int, name: str = "the source") -> None:
    """Raise a FormatError saying what the file ``name`` is, when its first bytes (``prefix``, at
    least 9 where the file has them) and ``size`` show it is no safetensors file: empty, too short,
    already sealed, JSON text, or any other bytes whose header length cannot be right."""
    if size == 0:
        raise FormatError(f"{name} is empty, not a safetensors file")
    if prefix.startswith(SEALED_MAGIC):
        raise FormatError(f"{name} is already a sealed file, not a safetensors file "
                          "(unseal it first; rewrap changes a sealed file's recipients)")
    if len(prefix) < 8 or size < 8:
        raise FormatError(f"{name} is not a safetensors file (only {size} bytes)")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_INDEX_BYTES or 8 + header_len > size:
        if prefix.lstrip()[:1] in (b"{", b"["):
            raise FormatError(f"{name} is not a safetensors file (it looks like JSON text)")
        raise FormatError(f"{name} is not a safetensors file (its first 8 bytes give a header "
                          f"length of {header_len} bytes, impossible for a {size}-byte file)")
    if len(prefix) > 8 and header_len and prefix[8:9] != b"{":
        raise FormatError(f"{name} is not a safetensors file (its header is not a JSON object)")


def read_header(fd: int, name: str = "the source"
                ) -> tuple[list[PlainTensor], dict[str, str] | None, int]:
    """Parse a safetensors header; returns (tensors sorted by offset, metadata, data start).
    ``name`` is how error messages call the file (pass the caller's path)."""
    size = os.fstat(fd).st_size
    prefix = os.pread(fd, 9, 0)
    check_prefix(prefix, size, name)
    (header_len,) = struct.unpack("<Q", prefix[:8])
    raw = os.pread(fd, header_len, 8)
    document = strict_json.loads(raw, "the safetensors header")
    if not isinstance(document, dict):
        raise FormatError("safetensors header must be a JSON object")
    metadata = document.pop("__metadata__", None)
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise FormatError("safetensors __metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors = []
    for name, entry in document.items():
        if not isinstance(entry, dict):
            raise FormatError(f"safetensors entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise FormatError(f"tensor {name!r}: dtype must be a string")
        item_size(dtype)  # raises FormatError for dtypes sealtensors cannot hold
        if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
            raise FormatError(f"tensor {name!r}: bad shape")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or any(type(v) is not int for v in offsets)):
            raise FormatError(f"tensor {name!r}: bad data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != tensor_nbytes(dtype, shape):
            raise FormatError(f"tensor {name!r}: data_offsets do not match its dtype and shape "
                              "or run past the file")
        tensors.append(PlainTensor(name, dtype, tuple(shape), begin, end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    position = 0
    for tensor in tensors:
        if tensor.begin != position:
            raise FormatError("safetensors data has gaps or overlapping tensors")
        position = tensor.end
    if position != data_size:
        raise FormatError("safetensors file has bytes after its last tensor")
    return tensors, metadata, data_start


def header_for(index: TensorIndex) -> bytes:
    """A safetensors header (length prefix included) for ``index``'s tensors, packed contiguously
    in index order; padded with spaces to a multiple of 8 bytes as safetensors writes it."""
    document: dict = {}
    if index.metadata is not None:
        document["__metadata__"] = index.metadata
    position = 0
    for info in index.tensors:
        document[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                               "data_offsets": [position, position + info.nbytes]}
        position += info.nbytes
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def write_unpadded(out: BinaryIO, index: TensorIndex, spans: Iterator[memoryview]) -> None:
    """Copy the tensor bytes out of the sealed data's plaintext spans, dropping alignment padding."""
    tensors = list(index.tensors)
    current = 0
    span_start = 0
    for span in spans:
        span_end = span_start + len(span)
        while current < len(tensors):
            info = tensors[current]
            lo, hi = max(info.begin, span_start), min(info.end, span_end)
            if hi > lo:
                out.write(span[lo - span_start:hi - span_start])
            if info.end <= span_end:
                current += 1
            else:
                break
        span_start = span_end
