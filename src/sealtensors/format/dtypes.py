"""The dtypes a sealed file can hold: safetensors' names, their sizes, and their numpy types.

bfloat16 and the float8 formats come from ``ml_dtypes`` (the package JAX and TensorFlow use).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import FormatError

# safetensors name -> (numpy dtype, item size in bytes)
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
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}

DTYPE_NAMES: tuple[str, ...] = tuple(_NUMPY_DTYPES)
_LITTLE_ENDIAN = {name: dtype.newbyteorder("<") for name, dtype in _NUMPY_DTYPES.items()}
_NAME_OF_NUMPY = {dtype: name for name, dtype in _NUMPY_DTYPES.items()}


def item_size(name: str) -> int:
    try:
        return _NUMPY_DTYPES[name].itemsize
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}") from None


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that reads stored bytes: always little-endian, as the format stores them
    (identical to the native dtype on little-endian hosts)."""
    try:
        return _LITTLE_ENDIAN[name]
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}") from None


def name_of_numpy(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        raise ValueError("big-endian arrays are not supported; convert them with .astype('<...')")
    try:
        return _NAME_OF_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in a sealed file") from None
