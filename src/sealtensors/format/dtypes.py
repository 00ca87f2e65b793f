"""The dtypes a sealed file can hold: safetensors' names, their sizes, and their numpy types.

bfloat16 and the float8 formats come from ``ml_dtypes`` (the package JAX and TensorFlow use). ``F4``
(float4 E2M1, safetensors' name for ``torch.float4_e2m1fn_x2``) packs two values per byte along the
last dimension; numpy has no such type, so it is held as its packed bytes (``uint8``, last dimension
halved) and only the torch API hands it out as a typed tensor.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import FormatError

# safetensors name -> the numpy dtype of one stored element (F4: one byte = two values)
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F4": np.dtype(np.uint8),
}
# dtypes whose values are packed several to a byte: name -> values per byte
_PACKED = {"F4": 2}

DTYPE_NAMES: tuple[str, ...] = tuple(_NUMPY_DTYPES)
_LITTLE_ENDIAN = {name: dtype.newbyteorder("<") for name, dtype in _NUMPY_DTYPES.items()}
_NAME_OF_NUMPY = {dtype: name for name, dtype in _NUMPY_DTYPES.items() if name not in _PACKED}


def _known(name: str) -> None:
    if name not in _NUMPY_DTYPES:
        raise FormatError(f"unknown dtype {name!r}")


def item_size(name: str) -> int:
    """Bytes per stored element (F4: one byte holds two values)."""
    _known(name)
    return _NUMPY_DTYPES[name].itemsize


def is_packed(name: str) -> bool:
    """True for dtypes that hold several values per byte (F4)."""
    return name in _PACKED


def storage_shape(name: str, shape) -> tuple[int, ...]:
    """The shape in stored elements: the logical shape, except that a packed dtype's last dimension
    counts bytes (F4 [3, 4] is stored as 3 x 2 bytes). FormatError for a packed tensor whose last
    dimension does not fill whole bytes (or that has none)."""
    _known(name)
    shape = tuple(shape)
    per_byte = _PACKED.get(name)
    if per_byte is None:
        return shape
    if not shape or shape[-1] % per_byte:
        raise FormatError(f"{name} packs {per_byte} values per byte along the last dimension: "
                          f"shape {list(shape)} needs a last dimension that is a multiple of "
                          f"{per_byte}")
    return shape[:-1] + (shape[-1] // per_byte,)


def logical_shape(name: str, stored_shape) -> tuple[int, ...]:
    """Inverse of :func:`storage_shape`: a packed dtype's last dimension counted in values."""
    shape = tuple(stored_shape)
    per_byte = _PACKED.get(name)
    if per_byte is None:
        return shape
    if not shape:
        raise ValueError(f"{name} tensors need at least one dimension (values are packed along it)")
    return shape[:-1] + (shape[-1] * per_byte,)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that reads stored bytes: always little-endian, as the format stores them
    (identical to the native dtype on little-endian hosts). F4 reads as its packed bytes (uint8)."""
    try:
        return _LITTLE_ENDIAN[name]
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}") from None


def check_numpy_loadable(name: str, tensor: str) -> None:
    """ValueError for dtypes numpy cannot represent (F4), naming the tensor and the way out."""
    if name in _PACKED:
        raise ValueError(f"tensor {tensor!r} is {name} (two float4 values per byte), which has no "
                         "numpy dtype: load it with sealtensors.torch or framework='pt' "
                         "(torch.float4_e2m1fn_x2)")


def name_of_numpy(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        raise ValueError("big-endian arrays are not supported; convert them with .astype('<...')")
    try:
        return _NAME_OF_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in a sealed file") from None
