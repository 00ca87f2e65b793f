"""Crash-safe output files: write a temporary file beside the destination, then rename it in place.

A failure at any point leaves the destination as it was (absent or untouched) and removes the
temporary file. Without ``overwrite`` an existing destination is never replaced, not even by a race.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
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
def atomic_output(destination: str | os.PathLike, *, overwrite: bool = False, mode: int = 0o644):
    """Yield a binary file object; on clean exit it becomes ``destination`` atomically, with
    permission bits ``mode`` (plaintext outputs should pass 0o600)."""
    text = os.fspath(destination)
    if isinstance(text, str) and text.endswith(("/", os.sep)):
        # Path() would drop the slash and write a file where the caller named a directory.
        raise IsADirectoryError(errno.EISDIR, "output path names a directory", text)
    destination = Path(destination)
    if not overwrite and destination.exists():
        raise _exists_error(destination)
    directory = destination.parent if str(destination.parent) else Path(".")
    fd = _open_unnamed(directory)
    if fd is not None:
        with os.fdopen(fd, "wb") as handle:
            yield handle
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
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        _publish_named(temp_name, destination, overwrite)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
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
