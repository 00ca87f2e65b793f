"""``safe_open``: lazy, random access to a sealed file, shaped like ``safetensors.safe_open``.

``get_tensor`` decrypts only the chunks holding that tensor; ``get_slice(name)[...]`` decrypts only
the chunks covering the rows (dimension 0) the index selects. The handle may be shared by threads.
"""

from __future__ import annotations

import os

import numpy as np

from ._slicing import plan_rows
from .format.dtypes import numpy_dtype
from .format.index import TensorInfo
from .reader import SealedReader

_FRAMEWORKS = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt", "pytorch": "pt"}


def _convert(array: np.ndarray, dtype_name: str, framework: str, device: str):
    if framework == "np":
        return array
    from .torch import numpy_to_torch

    return numpy_to_torch(array, dtype_name, device)


class TensorSlice:
    """Returned by :meth:`SafeOpen.get_slice`; index it to decrypt just the rows needed."""

    def __init__(self, handle: "SafeOpen", info: TensorInfo) -> None:
        self._handle = handle
        self._info = info

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, index):
        info = self._info
        first, stop, relative = plan_rows(index, info.shape)
        dtype = numpy_dtype(info.dtype)
        if info.shape:
            row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
            # read_range applies the plaintext rules (BOOL bytes) to the rows it returns.
            raw = self._handle._reader.read_range(info.begin + first * row_bytes,
                                                  info.begin + stop * row_bytes)
            block = raw.view(dtype).reshape((stop - first,) + info.shape[1:])
        else:
            raw = self._handle._reader.read_range(info.begin, info.end)
            block = raw.view(dtype).reshape(())
        result = block[relative] if relative else block
        return _convert(np.asarray(result), info.dtype, self._handle._framework,
                        self._handle._device)


class SafeOpen:
    def __init__(self, filename: str | os.PathLike, framework: str = "np", key=None, *,
                 device: str = "cpu", signer=None, min_generation: int | None = None,
                 expect_file_id=None) -> None:
        if key is None:
            raise TypeError("safe_open needs key=... (32 bytes, a key file path, or a list of keys)")
        try:
            self._framework = _FRAMEWORKS[framework]
        except KeyError:
            raise ValueError(f"framework must be one of {sorted(_FRAMEWORKS)}, not {framework!r}") \
                from None
        if self._framework == "np" and device != "cpu":
            raise ValueError("numpy tensors live on the CPU: device must be 'cpu'")
        if self._framework == "pt":
            from .torch import check_device

            check_device(device)
        self._device = device
        self._reader = SealedReader.open(filename, key, signer=signer,
                                           min_generation=min_generation,
                                           expect_file_id=expect_file_id)

    def keys(self) -> list[str]:
        """Tensor names, sorted (as ``safetensors.safe_open.keys`` returns them)."""
        return sorted(self._reader.keys())

    def offset_keys(self) -> list[str]:
        """Tensor names in the order their data is stored."""
        return self._reader.keys()

    def metadata(self) -> dict[str, str] | None:
        return self._reader.metadata()

    def get_tensor(self, name: str):
        info = self._reader.info(name)
        raw = self._reader.read_range(info.begin, info.end)  # plaintext rules applied
        array = raw.view(numpy_dtype(info.dtype)).reshape(info.shape)
        return _convert(array, info.dtype, self._framework, self._device)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._reader.info(name))

    def close(self) -> None:
        """Close the file; the data keys are forgotten (wiped where wipeable) once reads in
        flight are done."""
        self._reader.close()

    def __del__(self) -> None:
        # A handle dropped without close() still forgets its keys when it is collected.
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def safe_open(filename: str | os.PathLike, framework: str = "np", key=None, *,
              device: str = "cpu", signer=None, min_generation: int | None = None,
              expect_file_id=None) -> SafeOpen:
    """Open a sealed file for lazy reading. Use as a context manager. ``framework``: "np" or "pt".

    ``key``: keys, key/identity files or Identity objects. ``signer``: accepted publisher(s); when
    given, the signature is checked at open and every chunk a read decrypts is checked against the
    signed digests (SignatureError)."""
    return SafeOpen(filename, framework, key, device=device, signer=signer,
                    min_generation=min_generation, expect_file_id=expect_file_id)
