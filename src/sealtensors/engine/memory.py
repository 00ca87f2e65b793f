"""Destination memory for decrypted tensors: page-aligned mappings, faulted in up front, wiped when freed.

One anonymous mapping per load, excluded from core dumps. It is owned by a small holder object that
every returned array (and torch tensor) keeps alive through its base; when the last view is gone the
holder zeroes the plaintext and unmaps it (or, with a pool configured, keeps the zeroed mapping for
the next load of the same size). With ``pin=True`` the pages are also locked (mlock), so they can go
to a GPU without staging; if the memlock limit refuses, a PinningWarning is issued and the memory
stays unlocked.

Faulting in. A fresh mapping is populated before it is returned (``MADV_POPULATE_WRITE``, from
several threads for large buffers), so the decrypting threads never fault. In the kernel's populate
path a 4 KiB page costs about two thirds of what a write fault does (measured: 0.35 vs 0.52 s of
system time per GiB on a 2-vCPU KVM guest, docs/PERFORMANCE.md "Fresh VM").

Huge pages (``SEALTENSORS_HUGEPAGES``, read at every allocation):

- ``never`` (default): ``MADV_NOHUGEPAGE``; 4 KiB pages, about 0.35 s of system time per GiB,
  every time. The default because it is the predictable one: in two quiet runs of the fresh-process
  benchmark (docs/PERFORMANCE.md "Fresh VM") its median load was the best or equal best (0.342 and
  0.338 s per GiB) while ``auto`` went from 0.341 to 0.481 s as the host's backing of huge pages
  changed between the runs, with tails up to 1.9x its median.
- ``always``: ``MADV_HUGEPAGE`` for the whole mapping (the behaviour before this setting existed).
  Cheapest when the guest's free huge pages are already backed by the host (0.17 s/GiB), but on a
  freshly started cloud VM, whose memory the host backs lazily, measured at 0.9-2.1 s/GiB.
- ``auto``: huge pages are tried and the cost is watched. The mapping is populated in
  16 MiB steps under ``MADV_HUGEPAGE``; each step's CPU time (this thread's user+sys, so other
  processes' load does not skew it) is compared with what 4 KiB pages would cost, and at the first
  step that is more expensive the rest of the mapping is switched to ``MADV_NOHUGEPAGE``. The worst
  case is one expensive step per populating thread more than ``never``; the best case is the warm
  huge-page cost. Where THP is off system-wide there is nothing to try and ``auto`` is ``never``.

Pool (``SEALTENSORS_POOL_BYTES``, default 0 = off): freed mappings of up to that many bytes in all
are kept, zeroed, for later allocations of exactly the same (page-rounded) size, so repeated loads
of one model skip the page faults. A mapping enters the pool only from its holder's finalizer,
i.e. after the last array or tensor viewing it is gone, so a pooled buffer is never handed out
while anything can still read or write it; it is wiped before it enters the pool, and marked
``MADV_FREE`` so the kernel may take the (zero) pages back under memory pressure. Pinned mappings
are never pooled. :func:`clear_pool` unmaps everything pooled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
import time
import warnings
import weakref

import numpy as np

from ..errors import BackendError


class PinningWarning(UserWarning):
    """Page-locking the plaintext buffer was refused (usually RLIMIT_MEMLOCK); it is unpinned."""


_PROT_READ_WRITE = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_MAP_FAILED = ctypes.c_void_p(-1).value
_PAGE = mmap.PAGESIZE
# Linux values; Python 3.11's mmap module lacks the newer ones.
_MADV_FREE = 8
_MADV_HUGEPAGE = 14
_MADV_NOHUGEPAGE = 15
_MADV_DONTDUMP = 16
_MADV_POPULATE_WRITE = 23  # Linux 5.14

HUGEPAGE_CHOICES = ("auto", "always", "never")
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"

_HUGE = 2 << 20  # x86-64 and arm64 (4 KiB base pages) transparent huge page size
_STEP = 16 << 20  # auto: huge-page populate step whose cost is measured
_THREAD_MIN = 64 << 20  # below this much per thread, populating in parallel does not pay
_MAX_POPULATE_THREADS = 8
# auto: a step under huge pages is kept if it cost at most this many CPU seconds per byte; the 4 KiB
# populate path measured 0.33-0.40 s/GiB, warm huge pages 0.16-0.18 s/GiB, cold ones 0.86-2.14 s/GiB.
_HUGE_BUDGET_PER_BYTE = 0.30 / (1 << 30)


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
_populate_supported = True  # cleared the first time the kernel refuses MADV_POPULATE_WRITE


def hugepage_mode() -> str:
    """The huge-page setting in force (``SEALTENSORS_HUGEPAGES``); BackendError for unknown values."""
    choice = os.environ.get("SEALTENSORS_HUGEPAGES", "never").strip().lower() or "never"
    if choice not in HUGEPAGE_CHOICES:
        raise BackendError(f"SEALTENSORS_HUGEPAGES={choice!r} is not one of "
                           f"{', '.join(HUGEPAGE_CHOICES)}")
    return choice


def pool_limit() -> int:
    """Bytes the pool may hold (``SEALTENSORS_POOL_BYTES``, 0 = off); BackendError when malformed."""
    text = os.environ.get("SEALTENSORS_POOL_BYTES", "").strip()
    if not text:
        return 0
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise BackendError(f"SEALTENSORS_POOL_BYTES={text!r} is not a byte count")
    return limit


def _thp_available() -> bool:
    try:
        with open(_THP_ENABLED) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _round_to_pages(nbytes: int) -> int:
    return _align_up(nbytes, _PAGE)


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


# -- faulting in ---------------------------------------------------------------------------------

def _populate_range(address: int, length: int) -> bool:
    """Fault [address, address+length) in for writing; False if the kernel lacks the call."""
    global _populate_supported
    if _populate_supported:
        if _libc.madvise(address, length, _MADV_POPULATE_WRITE) == 0:
            return True
        if ctypes.get_errno() in (22, 38):  # EINVAL / ENOSYS: a kernel before 5.14
            _populate_supported = False
        else:
            return False  # ENOMEM and friends: leave the rest to the decrypting threads' faults
    # Fallback: write a zero to one byte of every page (the mapping is fresh, so it is zero already).
    pages = np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(address))
    pages[::_PAGE] = 0
    return True


def _populate_adaptive(address: int, length: int) -> bool:
    """``auto`` for one thread's range: huge pages while a step costs no more than 4 KiB pages
    would, then NOHUGEPAGE for the rest. Returns whether huge pages were kept to the end."""
    position = address
    end = address + length
    while position < end:
        # Steps end on 2 MiB boundaries, so no huge page is split between two pieces of advice.
        step = min(_align_up(position + 1, _STEP) - position, end - position)
        started = time.thread_time()
        if not _populate_range(position, step):
            return False
        spent = time.thread_time() - started
        position += step
        if spent > step * _HUGE_BUDGET_PER_BYTE and position < end:
            _libc.madvise(position, end - position, _MADV_NOHUGEPAGE)
            _populate_range(position, end - position)
            return False
    return True


def _populate(address: int, length: int, mode: str) -> None:
    """Fault the whole mapping in (see the module docstring), in parallel for large mappings."""
    if mode == "auto" and not _thp_available():
        mode = "never"
    advice = _MADV_HUGEPAGE if mode in ("always", "auto") else _MADV_NOHUGEPAGE
    _libc.madvise(address, length, advice)  # advisory: failure is harmless
    work = _populate_adaptive if mode == "auto" else _populate_range
    threads = max(1, min(os.cpu_count() or 1, _MAX_POPULATE_THREADS, length // _THREAD_MIN))
    if threads == 1:
        work(address, length)
        return
    # Cut at 2 MiB-aligned addresses, so each huge page is populated by one thread.
    end = address + length
    cuts = [address] + [min(end, _align_up(address + k * length // threads, _HUGE))
                        for k in range(1, threads)] + [end]
    ranges = [(a, b - a) for a, b in zip(cuts, cuts[1:]) if b > a]
    workers = [threading.Thread(target=work, args=r, daemon=True) for r in ranges[1:]]
    for worker in workers:
        worker.start()
    work(*ranges[0])  # ctypes releases the GIL, so the threads really run in parallel
    for worker in workers:
        worker.join()


# -- the pool ------------------------------------------------------------------------------------

_pool_lock = threading.RLock()  # reentrant: a finalizer may run from a GC inside a locked section
_pool: dict[int, list[int]] = {}  # page-rounded length -> addresses of wiped, unlocked mappings
_pool_bytes = 0


def _take_pooled(length: int) -> int | None:
    global _pool_bytes
    with _pool_lock:
        addresses = _pool.get(length)
        if not addresses:
            return None
        address = addresses.pop()
        _pool_bytes -= length
        return address


def _offer_to_pool(address: int, length: int) -> bool:
    """Keep a wiped mapping if the pool has room; False means the caller unmaps it."""
    global _pool_bytes
    try:
        limit = pool_limit()
    except BackendError:
        limit = 0  # a finalizer must not raise; the next allocate() reports the bad value
    with _pool_lock:
        if _pool_bytes + length > limit:
            return False
        _libc.madvise(address, length, _MADV_FREE)  # zeros: the kernel may take them back
        _pool.setdefault(length, []).append(address)
        _pool_bytes += length
        return True


def pooled_bytes() -> int:
    """Bytes currently held by the pool (all of them zero)."""
    with _pool_lock:
        return _pool_bytes


def clear_pool() -> None:
    """Unmap every pooled mapping."""
    global _pool_bytes
    with _pool_lock:
        entries = [(length, a) for length, addresses in _pool.items() for a in addresses]
        _pool.clear()
        _pool_bytes = 0
    for length, address in entries:
        _libc.munmap(address, length)


def _release(address: int, length: int, locked: bool) -> None:
    ctypes.memset(address, 0, length)  # the wipe: nothing below may skip it
    if locked:
        _libc.munlock(address, length)
    elif _offer_to_pool(address, length):
        return
    _libc.munmap(address, length)


# -- the holder ----------------------------------------------------------------------------------

class PlaintextMapping:
    """Owns one anonymous mapping; exposes it to numpy through ``__array_interface__``."""

    def __init__(self, nbytes: int, *, pin: bool = False) -> None:
        mode = hugepage_mode()  # before mapping anything: a bad setting raises cleanly
        length = _round_to_pages(nbytes)
        address = None if pin else _take_pooled(length)
        self.pooled = address is not None
        if address is None:
            address = _libc.mmap(None, length, _PROT_READ_WRITE, _MAP_FLAGS, -1, 0)
            if address is None or address == _MAP_FAILED:
                raise MemoryError(f"could not map {nbytes} bytes for plaintext "
                                  f"(errno {ctypes.get_errno()})")
            _libc.madvise(address, length, _MADV_DONTDUMP)
            try:
                _populate(address, length, mode)
            except BaseException:
                _libc.munmap(address, length)
                raise
        self.locked = False
        if pin:
            if _libc.mlock(address, length) == 0:
                self.locked = True
            else:
                warnings.warn(
                    f"could not pin {nbytes} bytes of plaintext (mlock errno {ctypes.get_errno()}); "
                    "raise the memlock limit (ulimit -l) to pin", PinningWarning, stacklevel=4)
        self.address = address
        self.nbytes = nbytes
        self.__array_interface__ = {"data": (address, False), "shape": (nbytes,),
                                    "typestr": "|u1", "version": 3}
        self._finalizer = weakref.finalize(self, _release, address, length, self.locked)


def allocate(nbytes: int, *, pin: bool = False) -> np.ndarray:
    """A uint8 array of ``nbytes`` zero bytes over its own mapping, already faulted in; wiped and
    unmapped (or pooled, see the module docstring) when the last view of it is garbage-collected.
    Thread-safe."""
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
