"""``safe_open``: lazy, random access to a sealed file, shaped like ``safetensors.safe_open``.

``get_tensor`` decrypts only the chunks holding that tensor; ``get_slice(name)[...]`` decrypts only
the chunks covering the rows (dimension 0) the index selects. The handle may be shared by threads.
Where safetensors and sealtensors differ, tests/test_safetensors_parity.py says so and why.
"""

from __future__ import annotations

import os

import numpy as np

from ._slicing import plan_numpy, plan_torch
from .format.dtypes import check_numpy_loadable, is_packed, numpy_dtype, storage_shape
from .format.index import TensorInfo
from .reader import SealedReader, _Source

_FRAMEWORKS = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt", "pytorch": "pt"}
# Frameworks safetensors knows and sealtensors does not (yet) hand tensors to.
_OTHER_FRAMEWORKS = ("tf", "tensorflow", "flax", "jax", "mlx", "paddle", "paddlepaddle")
BACKENDS = ("mmap", "pread")


def check_backend(backend: str) -> None:
    """safetensors' ``backend=`` choice ("mmap" or "pread"). Decrypted bytes cannot be mapped from
    the file, so a sealed file is always read with pread into a private buffer; both values are
    accepted so that code written for safetensors runs unchanged, anything else is a ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is invalid (expected one of: "
                         f"{', '.join(map(repr, BACKENDS))})")


def _is_file_object(source) -> bool:
    return hasattr(source, "read") and not isinstance(source, (str, bytes, os.PathLike))


def _file_object_source(fileobj) -> _Source:
    """A source for an open binary file object. One backed by a descriptor (``open(path, "rb")``,
    fsspec local files) is read with pread on a duplicate of it, lazily, like a path; any other
    (io.BytesIO, fsspec remote files) is read once, whole, into memory (that is ciphertext; the
    plaintext still appears only as requested). The file's own position is not used: the sealed
    file starts at byte 0."""
    try:
        fd = fileobj.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        duplicate = os.dup(fd)
        try:
            return _Source(None, duplicate, os.fstat(duplicate).st_size)
        except BaseException:
            os.close(duplicate)
            raise
    if getattr(fileobj, "seekable", lambda: False)():
        fileobj.seek(0)
    data = fileobj.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("file objects must be opened in binary mode ('rb')")
    return _Source.from_bytes(data)


def open_reader(filename, key, **verification) -> SealedReader:
    """A SealedReader for a path (str, bytes or os.PathLike) or an open binary file object."""
    if _is_file_object(filename):
        return SealedReader(_file_object_source(filename), key, **verification)
    if not isinstance(filename, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a path (str, bytes or os.PathLike) or a binary file object, "
                        f"not {type(filename).__name__}")
    return SealedReader.open(filename, key, **verification)


def _framework(framework) -> str:
    try:
        return _FRAMEWORKS[framework]
    except (KeyError, TypeError):
        pass
    if isinstance(framework, str) and framework.lower() in _OTHER_FRAMEWORKS:
        raise ValueError(f"framework {framework!r} is not supported by sealtensors: use 'np' "
                         "(numpy) or 'pt' (torch), and convert")
    raise ValueError(f"framework must be one of {sorted(_FRAMEWORKS)}, not {framework!r}")


class TensorSlice:
    """Returned by :meth:`SafeOpen.get_slice`; index it to decrypt just the rows needed.

    Indexing follows safetensors for the handle's framework (see ``sealtensors._slicing``)."""

    def __init__(self, handle: "SafeOpen", info: TensorInfo) -> None:
        self._handle = handle
        self._info = info

    def get_shape(self) -> list[int]:
        """The shape in values (F4: the last dimension counts float4 values, as in safetensors)."""
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, index):
        info = self._info
        handle = self._handle
        stored = storage_shape(info.dtype, info.shape)
        if handle._framework == "np":
            check_numpy_loadable(info.dtype, info.name)
            first, stop, relative = plan_numpy(index, stored)
        else:
            first, stop, relative = plan_torch(index, stored, basic_only=is_packed(info.dtype))
        block = handle._rows(info, stored, first, stop)
        if handle._framework == "np":
            return np.asarray(block[relative] if relative else block)
        from .torch import check_device, numpy_to_torch

        if is_packed(info.dtype):
            # Index the packed bytes (whole last dimension), then type them.
            result = numpy_to_torch(np.asarray(block[relative] if relative else block),
                                    info.dtype)
        else:
            result = numpy_to_torch(block, info.dtype)
            if not (isinstance(relative, tuple) and not relative):
                result = result[relative]
        device = check_device(handle._device)
        return result if device.type == "cpu" else result.to(device)


class SafeOpen:
    def __init__(self, filename, framework: str = "np", device="cpu", *, key=None,
                 backend: str = "pread", signer=None, min_generation: int | None = None,
                 expect_file_id=None, pin=None, fs=None) -> None:
        self._reader = None
        if key is None:
            raise TypeError("safe_open needs key=... (32 bytes, a key file path, or a list of keys)")
        self._framework = _framework(framework)
        check_backend(backend)
        if self._framework == "np":
            if device != "cpu":
                raise ValueError(f"device {device!r} is not supported for framework numpy: numpy "
                                 "arrays live on the CPU ('cpu')")
        else:
            from .torch import check_device

            check_device(device)
        self._device = device
        from .io.remote import bind

        filename = bind(filename, fs)  # a path inside the fsspec filesystem ``fs``
        self._reader = open_reader(filename, key, signer=signer, min_generation=min_generation,
                                   expect_file_id=expect_file_id, pin=pin)
        self._closed = False

    def _open_reader(self) -> SealedReader:
        if self._closed:
            raise ValueError("I/O operation on a closed sealed file (safe_open handle is closed)")
        return self._reader

    def _rows(self, info: TensorInfo, stored: tuple[int, ...], first: int, stop: int) -> np.ndarray:
        """Rows first..stop of a tensor as a numpy array of its stored dtype (F4: packed bytes)."""
        reader = self._open_reader()
        dtype = numpy_dtype(info.dtype)
        if not stored:
            raw = reader.read_range(info.begin, info.end)  # plaintext rules applied
            return raw.view(dtype).reshape(())
        row_bytes = info.nbytes // stored[0] if stored[0] else 0
        raw = reader.read_range(info.begin + first * row_bytes, info.begin + stop * row_bytes)
        return raw.view(dtype).reshape((stop - first,) + stored[1:])

    def keys(self) -> list[str]:
        """Tensor names, sorted (as ``safetensors.safe_open.keys`` returns them)."""
        return sorted(self._open_reader().keys())

    def offset_keys(self) -> list[str]:
        """Tensor names in the order their data is stored."""
        return self._open_reader().keys()

    def metadata(self) -> dict[str, str] | None:
        return self._open_reader().metadata()

    def get_tensor(self, name: str):
        info = self._open_reader().info(name)
        stored = storage_shape(info.dtype, info.shape)
        if self._framework == "np":
            check_numpy_loadable(info.dtype, info.name)
            return self._rows(info, stored, 0, stored[0] if stored else 1)
        from .torch import numpy_to_torch

        array = self._rows(info, stored, 0, stored[0] if stored else 1)
        return numpy_to_torch(array, info.dtype, self._device)

    def get_tensors(self) -> dict:
        """Every tensor, in storage order (as ``offset_keys``), decrypted in one pass into one
        buffer that all the returned tensors view (``load_file`` does the same)."""
        reader = self._open_reader()
        if self._framework == "np":
            from .numpy import _load_all

            return _load_all(reader, pin_memory=False)
        from .torch import _load_all

        return _load_all(reader, self._device, pin_memory=False)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self, self._open_reader().info(name))

    def close(self) -> None:
        """Close the file; the data keys are forgotten (wiped where wipeable) once reads in
        flight are done. Every later call, also on slices taken before, raises ValueError."""
        self._closed = True
        if self._reader is not None:
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


def safe_open(filename, framework: str = "np", device="cpu", *, key=None,
              backend: str = "pread", signer=None, min_generation: int | None = None,
              expect_file_id=None, pin=None, fs=None) -> SafeOpen:
    """Open a sealed file for lazy reading; use it as a context manager. The arguments are
    safetensors' (``filename, framework, device``, ``backend=``) plus ``key=``.

    ``filename``: a path, or (an extension to safetensors, which takes paths only) an open binary
    file object: one with a file descriptor is read lazily with pread on a duplicate of it, any
    other (io.BytesIO, fsspec remote files) is read whole into memory first.
    ``framework``: "np"/"numpy" or "pt"/"torch"/"pytorch"; "tf", "flax", "jax", "mlx", "paddle" are a
    ValueError. ``device``: "cpu" for numpy; "cpu", "cuda", "cuda:N" or N for torch.
    ``backend``: "mmap" or "pread", accepted for compatibility (sealed files are always read with
    pread). ``key``: keys, key/identity files or Identity objects. ``signer``: accepted
    publisher(s); when given, the signature is checked at open and every chunk a read decrypts is
    checked against the signed digests (SignatureError). ``pin``: a pin file (signer and freshness
    pins). Remote files: ``filename`` may be an ``s3://``, ``gs://``, ``http(s)://`` or other fsspec
    URL, or a path inside the fsspec filesystem ``fs`` (credentials, endpoint); only the chunks a
    read needs are fetched (docs/REMOTE.md)."""
    return SafeOpen(filename, framework, device, key=key, backend=backend, signer=signer,
                    min_generation=min_generation, expect_file_id=expect_file_id, pin=pin, fs=fs)
