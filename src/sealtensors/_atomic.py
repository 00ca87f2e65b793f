"""Crash-safe output files: write a temporary file beside the destination, then rename it in place.

A failure at any point leaves the destination as it was (absent or untouched) and removes the
temporary file. Without ``overwrite`` an existing destination is never replaced, not even by a race.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import SealError


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


@contextlib.contextmanager
def atomic_output(destination: str | os.PathLike, *, overwrite: bool = False, mode: int = 0o644):
    """Yield a binary file object; on clean exit it becomes ``destination`` atomically, with
    permission bits ``mode`` (plaintext outputs should pass 0o600)."""
    destination = Path(destination)
    if not overwrite and destination.exists():
        raise DestinationExistsError(f"{str(destination)!r} exists (pass overwrite=True to replace it)")
    directory = destination.parent if str(destination.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        if overwrite:
            os.replace(temp_name, destination)
        else:
            # link() fails if the name appeared meanwhile, so nothing is clobbered by a race.
            try:
                os.link(temp_name, destination)
            except FileExistsError:
                raise DestinationExistsError(
                    f"{str(destination)!r} exists (pass overwrite=True to replace it)") from None
            except OSError:
                if destination.exists():
                    raise DestinationExistsError(f"{str(destination)!r} exists") from None
                os.replace(temp_name, destination)
            else:
                os.unlink(temp_name)
        _fsync_directory(directory)
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
