"""The audit trail: one JSON line per key operation (wrap, unwrap, refusal, open), hash-chained.

Who calls it: every :class:`~sealtensors.keys.provider.KeyProvider` wrap/unwrap records itself
(see ``provider._guard_wrap``); other parts of sealtensors (seal, open, verify, rewrap) call
:func:`record` with their own event.

Where events go, per call:

- ``sink`` a callable: it gets the finished record (a dict) and nothing is written to a file;
- ``sink`` a path (str or os.PathLike): the record is appended to that file;
- ``sink`` None: appended to the file named by ``SEALTENSORS_AUDIT_LOG`` when that is set;
- always: logger ``sealtensors.audit`` at INFO, the JSON line as message (a no-op unless the
  application configured logging).

A record is a JSON object on one line: ``time`` (UTC, ISO 8601), ``host``, ``pid``, ``user``, the
caller's fields (``operation``, ``provider``, ``key``, ``file_id``, ``outcome``, ...), and in a file
``prev``: the SHA-256 (hex) of the previous line's bytes (``null`` on the first line). Values must be
text, numbers, booleans or null: bytes are refused with TypeError, so key material cannot be logged
by accident as a bytes value. Writers hold an exclusive ``flock`` on the log while they read the
last line and append theirs with one ``write`` on an ``O_APPEND`` descriptor, so concurrent
processes neither interleave lines nor fork the chain. :func:`verify` finds the first line that
was edited, deleted, inserted or moved (truncating the tail is not detectable by a chain alone:
ship the log elsewhere as well).
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_VAR = "SEALTENSORS_AUDIT_LOG"
logger = logging.getLogger("sealtensors.audit")

_ALLOWED = (str, int, float, bool, type(None))
_TAIL_READ = 64 * 1024  # longest line we look back for; records are far shorter


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, no LOGNAME: still record the uid
        return str(os.getuid())


def _checked(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in event.items():
        if not isinstance(field, str):
            raise TypeError(f"audit field names must be str, not {type(field).__name__}")
        if not isinstance(value, _ALLOWED):
            raise TypeError(f"audit field {field!r} must be str, int, float, bool or None, "
                            f"not {type(value).__name__} (never record key material)")
        out[field] = value
    return out


def enabled() -> bool:
    """Whether file operations should record events: a log is configured, or the
    ``sealtensors.audit`` logger listens."""
    return bool(os.environ.get(ENV_VAR)) or logger.isEnabledFor(logging.INFO)


def file_event(operation: str, file_id: bytes | None, outcome: str, **fields: Any) -> None:
    """Record a file-level event (open, seal, rewrap, reseal) when auditing is enabled. Never
    raises for a write failure of the log: auditing must not turn a load into a crash, but the
    failure is logged."""
    if not enabled():
        return
    event = {"operation": operation, "file_id": None if file_id is None else file_id.hex(),
             "outcome": outcome, **fields}
    try:
        record(event)
    except OSError as exc:
        logger.error("sealtensors audit log could not be written: %s", exc)


def record(event: Mapping[str, Any], *, sink: Callable[[dict], Any] | str | os.PathLike | None
           = None) -> dict[str, Any]:
    """Record one audit event and return the finished record (without ``prev``).

    ``event`` holds the caller's fields; ``time``, ``host``, ``pid`` and ``user`` are added unless
    given. Raises TypeError for a non-JSON-scalar value and OSError when the log cannot be written.
    """
    fields = _checked(event)
    entry: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "user": _user(),
    }
    entry.update(fields)
    if callable(sink):
        sink(dict(entry))
    else:
        path = sink if sink is not None else os.environ.get(ENV_VAR) or None
        if path is not None:
            _append(os.fspath(path), entry)
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", json.dumps(entry, sort_keys=True))
    return entry


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_READ)
    tail = os.pread(fd, size - start, start)
    lines = tail.rstrip(b"\n").split(b"\n")
    if len(lines) == 1 and start > 0:
        raise OSError(f"audit log's last line is longer than {_TAIL_READ} bytes")
    return lines[-1]


def _append(path: str, entry: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                previous = _last_line(read_fd)
                chained = dict(entry)
                chained["prev"] = None if previous is None else _line_hash(previous)
                line = json.dumps(chained, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to audit log {path!r}")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(read_fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok``, the number of records, and for a broken chain the
    1-based ``line`` where it first breaks and the ``reason``."""

    ok: bool
    records: int
    line: int | None = None
    reason: str | None = None


def verify(path: str | os.PathLike) -> VerifyResult:
    """Check the hash chain of an audit log; report the first line that breaks it."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data and not data.endswith(b"\n"):
        return VerifyResult(False, 0, data.count(b"\n") + 1, "last line is not terminated")
    previous: bytes | None = None
    lines = data.split(b"\n")[:-1] if data else []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return VerifyResult(False, number - 1, number, "not a JSON line")
        if not isinstance(entry, dict) or "prev" not in entry:
            return VerifyResult(False, number - 1, number, "not an audit record")
        expected = None if previous is None else _line_hash(previous)
        if entry["prev"] != expected:
            return VerifyResult(False, number - 1, number,
                                "chain broken: line edited, deleted, inserted or moved here "
                                "or just before")
        previous = line
    return VerifyResult(True, len(lines))
