"""Crash-safe output files: write a temporary file beside the destination, then rename it in place.

A failure at any point leaves the destination as it was (absent or untouched) and removes the
temporary file. Without ``overwrite`` an existing destination is never replaced, not even by a race.
Errors name the destination the caller gave, never the temporary file's internal name, and a new
file's permission bits follow the umask as ``open(2)`` would (0o666 & ~umask) unless the caller asks
for a mode (plaintext and key files: 0o600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
import threading
from pathlib import Path

from ..errors import SealError


class DestinationExistsError(SealError, FileExistsError):
    """The destination exists and overwriting was not asked for."""


def refuse_same_file(destination: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Refuse an output that is one of the inputs (same path, or a hard/symbolic link to it)."""
    for source in inputs:
        try:
            if os.path.samefile(source, destination):
                raise ValueError(f"output {os.fspath(destination)!r} is the same file as input "
                                 f"{os.fspath(source)!r}")
        except FileNotFoundError:
            continue


def _exists_error(destination: Path) -> DestinationExistsError:
    return DestinationExistsError(f"{str(destination)!r} exists (pass overwrite=True to replace it)")


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask. Read from /proc where possible: ``os.umask`` can only be read by setting
    it, and another thread creating a file in between would get the temporary value."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        # The temporary value is the strict one, so a racing thread errs on the private side.
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits ``open(path, O_CREAT, 0o666)`` would give a new file now."""
    return 0o666 & ~current_umask()


# Errors only a write can cause: an OSError with one of these and no file name, raised while the
# caller writes the output, is about the destination (a read of the source never reports them).
_WRITE_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG"))
    if code is not None)


def _renamed(exc: OSError, destination: str | os.PathLike) -> OSError:
    """``exc`` again, but naming ``destination`` (the caller's path) instead of a temporary file."""
    renamed = OSError(exc.errno, exc.strerror or str(exc), os.fspath(destination))
    renamed.__cause__ = exc
    return renamed


@contextlib.contextmanager
def _naming(destination: str | os.PathLike):
    """Re-raise OSErrors of the enclosed file operations as errors about ``destination``."""
    try:
        yield
    except DestinationExistsError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        raise _renamed(exc, destination) from exc


def check_destination(destination: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Fail early, naming ``destination``, where writing it is bound to fail: it exists (without
    ``overwrite``), it is a directory, or its directory is missing, not a directory or not writable.

    Cheap, so callers can run it before hours of work; :func:`atomic_output` runs it too, and still
    refuses at the end a destination that appeared meanwhile."""
    text = os.fspath(destination)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.endswith(("/", os.sep)) or os.path.isdir(text):
        # Path() would drop a trailing slash and write a file where the caller named a directory.
        raise IsADirectoryError(errno.EISDIR, "the output path names a directory", text)
    if os.path.lexists(text) and not overwrite:
        raise _exists_error(Path(text))
    directory = os.path.dirname(text) or "."
    if not os.path.exists(directory):
        raise FileNotFoundError(errno.ENOENT, f"its directory {directory!r} does not exist", text)
    if not os.path.isdir(directory):
        raise NotADirectoryError(errno.ENOTDIR, f"{directory!r} is not a directory", text)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"its directory {directory!r} is not writable", text)


def _open_unnamed(directory: Path) -> int | None:
    """An unnamed file in ``directory`` (Linux O_TMPFILE): if the process dies before it is linked
    in, the kernel drops it, so not even a SIGKILL leaves a stray temporary file. None where the
    platform or file system has no O_TMPFILE."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(directory, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None


def _link_unnamed(fd: int, directory: Path, name: str) -> None:
    # Passing a directory fd makes os.link use linkat(..., AT_SYMLINK_FOLLOW), which is what gives
    # the /proc/self/fd entry of an O_TMPFILE file a name (plain link() refuses with EXDEV).
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _publish_unnamed(fd: int, directory: Path, destination: Path, overwrite: bool) -> None:
    if not overwrite:
        try:
            _link_unnamed(fd, directory, destination.name)  # fails if the name exists
        except FileExistsError:
            raise _exists_error(destination) from None
        return
    # Replacing needs a name to rename from; it exists only between these two calls.
    while True:
        temp = f".{destination.name}.{secrets.token_hex(8)}.tmp"
        try:
            _link_unnamed(fd, directory, temp)
            break
        except FileExistsError:
            continue
    try:
        os.replace(directory / temp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / temp)
        raise


@contextlib.contextmanager
def atomic_output(destination: str | os.PathLike, *, overwrite: bool = False,
                  mode: int | None = None):
    """Yield a binary file object; on clean exit it becomes ``destination`` atomically, with
    permission bits ``mode`` (None: 0o666 & ~umask, as for any new file; plaintext outputs and key
    files should pass 0o600). OSErrors name ``destination``."""
    check_destination(destination, overwrite=overwrite)
    if mode is None:
        mode = new_file_mode()
    user_path = destination
    destination = Path(destination)
    directory = destination.parent if str(destination.parent) else Path(".")
    fd = _open_unnamed(directory)
    if fd is not None:
        with os.fdopen(fd, "wb") as handle:
            with _naming_write_errors(user_path):
                yield handle
            with _naming(user_path):
                handle.flush()
                os.fsync(handle.fileno())
                os.fchmod(handle.fileno(), mode)
                try:
                    _publish_unnamed(handle.fileno(), directory, destination, overwrite)
                except OSError as exc:
                    if isinstance(exc, DestinationExistsError) or not _proc_unavailable(exc):
                        raise
                    # /proc is not mounted: fall back to copying into a named temporary file.
                    handle.flush()
                    _publish_by_copy(handle.fileno(), directory, destination, overwrite, mode)
        _fsync_directory(directory)
        return
    with _naming(user_path):
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with _naming_write_errors(user_path):
                yield handle
            with _naming(user_path):
                handle.flush()
                os.fsync(handle.fileno())
        with _naming(user_path):
            os.chmod(temp_name, mode)
            _publish_named(temp_name, destination, overwrite)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


@contextlib.contextmanager
def _naming_write_errors(destination: str | os.PathLike):
    """While the caller writes: a nameless disk-full (or quota, or file-size) error is about the
    destination. Other errors pass unchanged: they may come from reading the caller's source."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in _WRITE_ERRNOS:
            raise _renamed(exc, destination) from exc
        raise


def _proc_unavailable(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.EPERM, errno.EACCES)


def _publish_named(temp_name: str, destination: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp_name, destination)
        return
    # link() fails if the name appeared meanwhile, so nothing is clobbered by a race.
    try:
        os.link(temp_name, destination)
    except FileExistsError:
        raise _exists_error(destination) from None
    except OSError:
        if destination.exists():
            raise _exists_error(destination) from None
        os.replace(temp_name, destination)
    else:
        os.unlink(temp_name)


def _publish_by_copy(fd: int, directory: Path, destination: Path, overwrite: bool,
                     mode: int) -> None:
    out_fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(out_fd, "wb") as out:
            offset = 0
            while True:
                piece = os.pread(fd, 16 * 1024 * 1024, offset)
                if not piece:
                    break
                out.write(piece)
                offset += len(piece)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_name, mode)
        _publish_named(temp_name, destination, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
