"""In-place header rewrites: lock the file, write the spare header copy, flip the active-copy byte.

The order makes a crash at any point leave a valid file: the spare copy is not read by anyone until
the one-byte flip (a single-byte pwrite inside the first page, which a SIGKILL cannot tear), and
both writes are fsynced before the next step. An exclusive flock serialises concurrent rewrites of
the same file across processes; a writer that finds the path replaced by another file (an atomic
full rewrite by someone else) while it waited starts again on the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from ..format import container

ATTEMPTS = 20


@contextlib.contextmanager
def locked_for_update(path: str | os.PathLike):
    """Open ``path`` read-write with an exclusive lock; yields the descriptor. The lock is held on
    the file the path names *when the lock is granted* (re-checked, since a concurrent full
    rewrite replaces the inode)."""
    real = os.path.realpath(path)
    for _ in range(ATTEMPTS):
        fd = os.open(real, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(real)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                try:
                    yield fd
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
        finally:
            os.close(fd)
    raise OSError(f"{os.fspath(path)!r} kept being replaced while waiting for its lock")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def write_header(fd: int, new: container.Header, data_key: bytes) -> None:
    """Make ``new`` (whose ``active`` names the currently spare copy) the file's header."""
    preamble, copy = container.build(new, data_key)
    spare = container.copy_offset(new.active, new.capacity)
    try:
        _pwrite_all(fd, copy, spare)
        os.fsync(fd)
    except BaseException:
        # Not committed: the old header is still the active one. Put the spare copy back to
        # zeros (best effort) so that a failed rewrap leaves the file as it was.
        try:
            _pwrite_all(fd, bytes(new.capacity), spare)
        except OSError:
            pass
        raise
    # The flip: one byte, inside the first page.
    _pwrite_all(fd, preamble[container.ACTIVE_OFFSET:container.ACTIVE_OFFSET + 1],
                container.ACTIVE_OFFSET)
    os.fsync(fd)
    # The old copy is no longer read; clear it so removed recipients' slots do not linger.
    _pwrite_all(fd, bytes(new.capacity), container.copy_offset(1 - new.active, new.capacity))
    os.fsync(fd)
