"""Destination memory for decrypted tensors.

One anonymous mapping per load: page-aligned, transparent huge pages requested, excluded from core
dumps, and not touched here, so the decrypting threads fault it in themselves. The mapping is owned
by a small holder object that every returned array (and torch tensor) keeps alive through its base;
when the last view is gone the holder zeroes the plaintext and unmaps it. With ``pin=True`` the pages
are also locked (mlock), so they can go to a GPU without staging; if the memlock limit refuses, a
PinningWarning is issued and the memory stays unlocked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import warnings
import weakref

import numpy as np


class PinningWarning(UserWarning):
    """Page-locking the plaintext buffer was refused (usually RLIMIT_MEMLOCK); it is unpinned."""


_PROT_READ_WRITE = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_MAP_FAILED = ctypes.c_void_p(-1).value
_ADVICE = [getattr(mmap, name) for name in ("MADV_HUGEPAGE", "MADV_DONTDUMP") if hasattr(mmap, name)]


def _load_libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


_libc = _load_libc()


def _release(address: int, nbytes: int, locked: bool) -> None:
    ctypes.memset(address, 0, nbytes)
    if locked:
        _libc.munlock(address, nbytes)
    _libc.munmap(address, nbytes)


class PlaintextMapping:
    """Owns one anonymous mapping; exposes it to numpy through ``__array_interface__``."""

    def __init__(self, nbytes: int, *, pin: bool = False) -> None:
        address = _libc.mmap(None, nbytes, _PROT_READ_WRITE, _MAP_FLAGS, -1, 0)
        if address is None or address == _MAP_FAILED:
            raise MemoryError(f"could not map {nbytes} bytes for plaintext "
                              f"(errno {ctypes.get_errno()})")
        for advice in _ADVICE:
            _libc.madvise(address, nbytes, advice)  # advisory: failure is harmless
        self.locked = False
        if pin:
            if _libc.mlock(address, nbytes) == 0:
                self.locked = True
            else:
                warnings.warn(
                    f"could not pin {nbytes} bytes of plaintext (mlock errno {ctypes.get_errno()}); "
                    "raise the memlock limit (ulimit -l) to pin", PinningWarning, stacklevel=4)
        self.address = address
        self.nbytes = nbytes
        self.__array_interface__ = {"data": (address, False), "shape": (nbytes,),
                                    "typestr": "|u1", "version": 3}
        self._finalizer = weakref.finalize(self, _release, address, nbytes, self.locked)


def allocate(nbytes: int, *, pin: bool = False) -> np.ndarray:
    """A fresh uint8 array of ``nbytes`` bytes over its own mapping, wiped and unmapped when the
    last view of it is garbage-collected."""
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    return np.asarray(PlaintextMapping(nbytes, pin=pin))


def lock_pages(array: np.ndarray) -> bool:
    """mlock an existing array's pages; False (with a PinningWarning) when the system refuses."""
    if array.nbytes == 0:
        return True
    if _libc.mlock(array.ctypes.data, array.nbytes) != 0:
        warnings.warn(f"could not pin {array.nbytes} bytes (mlock errno {ctypes.get_errno()})",
                      PinningWarning, stacklevel=2)
        return False
    return True
