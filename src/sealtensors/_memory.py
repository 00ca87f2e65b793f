"""Destination memory for decrypted tensors.

One anonymous mapping per load: page-aligned, transparent huge pages requested, excluded from core
dumps, and not touched here, so the decrypting threads fault it in themselves. With ``pin=True`` the
pages are also locked (mlock) so they can be uploaded to a GPU without staging; if the memlock limit
refuses, a warning is issued and the memory stays unlocked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import warnings

import numpy as np


class PinningWarning(UserWarning):
    """Page-locking the plaintext buffer was refused (usually RLIMIT_MEMLOCK); it is unpinned."""


_libc = None


def _c_library():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _advise(mapping: mmap.mmap, *names: str) -> None:
    for name in names:
        flag = getattr(mmap, name, None)
        if flag is not None:
            try:
                mapping.madvise(flag)
            except OSError:
                pass


def lock_pages(array: np.ndarray) -> bool:
    """mlock the array's pages; False (with a PinningWarning) when the system refuses."""
    if array.nbytes == 0:
        return True
    libc = _c_library()
    result = libc.mlock(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes))
    if result != 0:
        errno = ctypes.get_errno()
        warnings.warn(f"could not pin {array.nbytes} bytes of plaintext (mlock errno {errno}); "
                      "raise the memlock limit (ulimit -l) to pin", PinningWarning, stacklevel=3)
        return False
    return True


def allocate(nbytes: int, *, pin: bool = False) -> np.ndarray:
    """A fresh uint8 array of ``nbytes`` bytes backed by its own anonymous mapping."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _advise(mapping, "MADV_HUGEPAGE", "MADV_DONTDUMP")
    array = np.frombuffer(mapping, dtype=np.uint8)
    if pin:
        lock_pages(array)
    return array
