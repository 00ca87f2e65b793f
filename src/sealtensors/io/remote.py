"""Remote sources: sealed files in object storage (S3, GCS, HTTP(S), any fsspec URL), read with
concurrent, retried, version-pinned range GETs and decrypted as the ranges arrive.

Why fsspec (+ s3fs for S3): one interface for every store people keep weights in, credentials and
options the way users already configure them, and async clients (aiobotocore / aiohttp) that keep
many range requests in flight on one event loop. The AES work dwarfs the protocol overhead once
enough ranges are in flight, so a faster client (obstore) would buy little here; the measured
numbers are in docs/PERFORMANCE.md.

What a read does:
- at open: one metadata request (size and version: ETag, S3 VersionId, Last-Modified), then one
  GET of the head of the object (header region and, for most models, the index);
- a data read splits its chunk range into parts of ``part_bytes``, keeps ``concurrency`` GETs in
  flight on a thread pool, and decrypts part ``i`` (C engine: GIL released) while parts ``i+1..``
  are still downloading. Memory held is at most ``concurrency`` parts, whatever the model size;
- every GET is pinned to the version seen at open (S3: ``VersionId`` when versioned and
  ``If-Match``; GCS: the object's ``generation``; HTTP: ``If-Match`` with a strong ETag) and the
  ETag of each S3 response is compared too: an object replaced mid-read raises
  :class:`ObjectChangedError`, never a mix of versions;
- transient failures (5xx, 429, connection resets, truncated bodies, timeouts) are retried with
  exponential backoff and jitter; after the last attempt :class:`RemoteSourceError` names the range
  and the cause. A body of the wrong length is never handed on (IntegrityError after the retries);
  a body of the right length with the wrong bytes (a cache serving another file, a stale copy) fails
  authentication in the engine (IntegrityError naming the chunk), so nothing unauthenticated is
  ever returned.

fsspec and s3fs are imported only when a remote path is used (``pip install sealtensors[remote]``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..engine import backends as _backends
from ..engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE
from ..errors import IntegrityError, SealError

__all__ = ["RemotePath", "RemoteObject", "RemoteSourceError", "ObjectChangedError", "is_url",
           "bind", "resolve", "store_kind", "with_retries", "DEFAULT_CONCURRENCY",
           "DEFAULT_PART_BYTES"]

DEFAULT_CONCURRENCY = 8
DEFAULT_PART_BYTES = 1024 * ENCRYPTED_CHUNK_SIZE  # 1024 whole chunks, about 16 MiB
DEFAULT_HEAD_BYTES = 256 * 1024
DEFAULT_ATTEMPTS = 5
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 2.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


class RemoteSourceError(SealError, OSError):
    """A remote sealed file could not be read: the store kept failing after every retry, the object
    is missing or forbidden, or the store answered with something that is no range of it."""


class ObjectChangedError(RemoteSourceError):
    """The remote object was replaced after it was opened (its ETag / version changed): the read is
    refused rather than mixing bytes of two versions. Open it again to read the new version."""


def is_url(path) -> bool:
    """True for ``scheme://...`` strings other than ``file://`` (those are read as local files)."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


@dataclass(frozen=True)
class RemotePath(os.PathLike):
    """A sealed file in a filesystem you opened yourself (credentials, endpoint, options), usable
    wherever a path is: ``load_file(RemotePath("bucket/model.sealed", fs=s3), key)``.

    ``concurrency`` range GETs in flight per read, each of at most ``part_bytes``;
    ``attempts`` tries per request before giving up."""

    path: str
    fs: object = field(default=None, compare=False)
    concurrency: int = DEFAULT_CONCURRENCY
    part_bytes: int = DEFAULT_PART_BYTES
    attempts: int = DEFAULT_ATTEMPTS

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.attempts < 1:
            raise ValueError("concurrency and attempts must be at least 1")
        if self.part_bytes < ENCRYPTED_CHUNK_SIZE:
            raise ValueError(f"part_bytes must be at least one chunk ({ENCRYPTED_CHUNK_SIZE})")

    def url(self) -> str:
        if self.fs is None:
            return self.path
        try:
            return self.fs.unstrip_protocol(self.path)
        except Exception:  # noqa: BLE001 - only a label for messages
            return self.path

    def __fspath__(self) -> str:
        # Only a label (error messages, inspect reports, samefile checks that find no local file);
        # every reader entry point recognises a RemotePath before touching the local filesystem.
        return self.url()

    def __str__(self) -> str:
        return self.url()

    def resolved(self) -> tuple[object, str]:
        """(filesystem, path in it): ``fs`` and ``path`` as given, or the ones the URL names."""
        if self.fs is None:
            return _url_to_fs(self.path)
        return self.fs, self.path

    def open(self) -> "RemoteObject":
        fs, path = self.resolved()
        return RemoteObject(fs, path, concurrency=self.concurrency, part_bytes=self.part_bytes,
                            attempts=self.attempts)


def bind(path, fs=None):
    """``path`` with ``fs`` attached: a RemotePath when ``fs`` is given (``path`` is then a path in
    that filesystem, or a URL of it), else ``path`` unchanged."""
    if fs is None:
        return path
    if isinstance(path, RemotePath):
        return RemotePath(path.path, fs, path.concurrency, path.part_bytes, path.attempts)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path or URL, not {type(path).__name__}")
    return RemotePath(os.fspath(path), fs)


def resolve(path) -> RemotePath | None:
    """The RemotePath ``path`` stands for, or None for a local path."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if is_url(path):
        return RemotePath(path)
    return None


def local_path(path):
    """A ``file://`` URL as the local path it names; anything else unchanged."""
    if isinstance(path, str) and path.startswith("file://"):
        return path[len("file://"):]
    return path


def _url_to_fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise ImportError(f"reading {url!r} needs fsspec: pip install 'sealtensors[remote]'") \
            from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise ImportError(f"reading {url!r} needs an fsspec implementation for it ({exc}); "
                          "pip install 'sealtensors[remote]' (s3fs, aiohttp) or gcsfs") from None
    except ValueError as exc:
        raise RemoteSourceError(f"cannot read {url!r}: {exc}") from None


# -- classifying failures ------------------------------------------------------------------------

class _ShortBody(Exception):
    """A response body that is not the requested range (truncated, or a whole object)."""

    def __init__(self, got: int, wanted: int) -> None:
        super().__init__(f"{got} bytes for a range of {wanted}")
        self.got, self.wanted = got, wanted


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp, botocore), if any."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412"):
            return 412
        if code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "Throttling", "ThrottlingException"):
            return 503
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            return 404
        if isinstance(status, int):
            return status
    return None


_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE,
                     errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN,
                     getattr(errno, "EREMOTEIO", 121)}
_TRANSIENT_NAMES = ("ClientPayloadError", "ServerDisconnectedError", "ClientOSError",
                    "ClientConnectionError", "ServerTimeoutError", "ReadTimeoutError",
                    "ConnectTimeoutError", "EndpointConnectionError", "IncompleteReadError",
                    "ResponseStreamingError", "ConnectionClosedError", "HTTPClientError",
                    "ProtocolError", "FSTimeoutError", "ContentLengthError", "TransferEncodingError")


def _classify(exc: BaseException) -> str:
    """'changed', 'missing', 'denied', 'transient' or 'fatal'."""
    for item in _chain(exc):
        if isinstance(item, ObjectChangedError):
            return "changed"
        status = _http_status(item)
        if status == 412:
            return "changed"
        if status is not None:
            if status >= 500 or status in (408, 429):
                return "transient"
            if status == 404:
                return "missing"
            if status in (401, 403):
                return "denied"
            return "fatal"
    for item in _chain(exc):
        if isinstance(item, _ShortBody):
            return "transient"
        if isinstance(item, FileNotFoundError):
            return "missing"
        if isinstance(item, PermissionError):
            return "denied"
        if isinstance(item, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return "transient"
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(item).__mro__):
            return "transient"
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNOS:
            return "transient"
    return "fatal"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def with_retries(call, *, label: str, what: str, attempts: int = DEFAULT_ATTEMPTS,
                 etag: str | None = None, on_retry=None):
    """``call()``, retried with exponential backoff and jitter on transient failures; any failure
    re-raised as one of ours: ObjectChangedError, RemoteSourceError (ENOENT, EACCES, or the last
    cause after ``attempts`` tries), IntegrityError for a body that stayed short."""
    delay = _BACKOFF_FIRST
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # noqa: BLE001 - classified below, re-raised as ours
            kind = _classify(exc)
            if kind == "changed":
                raise ObjectChangedError(
                    f"{label} changed after it was opened (ETag {etag!r}): refusing "
                    "to mix two versions; open it again") from None
            if kind == "missing":
                raise RemoteSourceError(errno.ENOENT, f"no such remote object: {label}") from None
            if kind == "denied":
                raise RemoteSourceError(errno.EACCES,
                                        f"access denied to {label}: {_describe(exc)}") from None
            if kind == "transient" and attempt < attempts:
                if on_retry is not None:
                    on_retry()
                time.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, _BACKOFF_CAP)
                continue
            if isinstance(exc, _ShortBody):
                raise IntegrityError(
                    f"{label}: the store returned {exc.got} bytes for the {exc.wanted}-byte "
                    f"range at {what} ({attempts} attempts; truncated response)") from None
            tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
            raise RemoteSourceError(f"reading {label} ({what}) failed {tries}: "
                                    f"{_describe(exc)}") from exc
    raise AssertionError("unreachable")


def store_kind(fs) -> str:
    """'s3', 'gcs', 'http' or 'other': how requests to ``fs`` are pinned to a version (and, for
    'http', that the store cannot list a directory)."""
    if callable(getattr(fs, "_call_s3", None)):
        return "s3"
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if "gs" in protocols or "gcs" in protocols:
        return "gcs"
    try:
        from fsspec.implementations.http import HTTPFileSystem
    except ImportError:
        return "other"
    return "http" if isinstance(fs, HTTPFileSystem) else "other"


# -- the object --------------------------------------------------------------------------------

def _version_of(info: dict) -> tuple[str | None, str | None, str | None]:
    """(etag, S3 version id, last-modified) from an fsspec info dict (keys differ per store)."""
    lowered = {str(k).lower(): v for k, v in info.items()}
    etag = lowered.get("etag")
    version = lowered.get("versionid") or lowered.get("generation")
    modified = lowered.get("last-modified") or lowered.get("lastmodified") or lowered.get("mtime")
    return (None if etag is None else str(etag), None if version in (None, "null") else str(version),
            None if modified is None else str(modified))


class RemoteObject:
    """Random access to one remote object, pinned to the version seen when it was opened.

    Thread safe. ``stats`` counts requests, bytes received and retries (for tests and benchmarks).
    """

    def __init__(self, fs, path: str, *, concurrency: int = DEFAULT_CONCURRENCY,
                 part_bytes: int = DEFAULT_PART_BYTES, attempts: int = DEFAULT_ATTEMPTS,
                 head_bytes: int = DEFAULT_HEAD_BYTES) -> None:
        self.fs = fs
        self.path = path
        self.concurrency = concurrency
        self.part_chunks = max(1, part_bytes // ENCRYPTED_CHUNK_SIZE)
        self.attempts = attempts
        self.stats = {"requests": 0, "bytes": 0, "retries": 0}
        self._stats_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._kind = store_kind(fs)
        info = self._retrying("open", lambda: fs.info(path))
        if info.get("type", "file") != "file":
            raise RemoteSourceError(f"{self.label} is not a file")
        size = info.get("size")
        if not isinstance(size, int) or size < 0:
            raise RemoteSourceError(f"{self.label}: the store does not report the object's size")
        self.size = size
        self.etag, self.version_id, self.modified = _version_of(info)
        self._head = b""
        if head_bytes and size:
            # The header region and, for most models, the index: one request instead of four.
            self._head = self._fetch(0, min(size, head_bytes))

    @property
    def label(self) -> str:
        try:
            return self.fs.unstrip_protocol(self.path)
        except Exception:  # noqa: BLE001 - only a label
            return str(self.path)

    # -- requests ------------------------------------------------------------------------------
    def _retrying(self, what: str, call):
        return with_retries(call, label=self.label, what=what, attempts=self.attempts,
                            etag=getattr(self, "etag", None), on_retry=self._count_retry)

    def _count_retry(self) -> None:
        with self._stats_lock:
            self.stats["retries"] += 1

    def _get_once(self, offset: int, length: int) -> bytes:
        end = offset + length
        if self._kind == "s3":
            data = self._s3_get(offset, end)
        elif self._kind == "http":
            headers = {}
            if self.etag and not self.etag.startswith("W/"):
                headers["If-Match"] = self.etag
            data = self.fs.cat_file(self.path, start=offset, end=end, headers=headers)
        elif self._kind == "gcs" and self.version_id:
            data = self._gcs_get(offset, end)
        else:
            data = self.fs.cat_file(self.path, start=offset, end=end)
        with self._stats_lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += len(data)
        if len(data) != length:
            raise _ShortBody(len(data), length)
        return data

    def _s3_get(self, offset: int, end: int) -> bytes:
        from fsspec.asyn import sync

        fs = self.fs
        bucket, key, version = fs.split_path(self.path)
        options = {"Bucket": bucket, "Key": key, "Range": f"bytes={offset}-{end - 1}"}
        if self.version_id or version:
            options["VersionId"] = self.version_id or version
        if self.etag:
            options["IfMatch"] = self.etag

        async def get() -> bytes:
            response = await fs._call_s3("get_object", **options)
            try:
                tag = response.get("ETag")
                if self.etag and tag and tag != self.etag:
                    raise ObjectChangedError(f"ETag {tag!r} != {self.etag!r}")
                return await response["Body"].read()
            finally:
                response["Body"].close()

        return sync(fs.loop, get)

    def _gcs_get(self, offset: int, end: int) -> bytes:
        # gcsfs passes ``generation`` on to the download URL (``...?alt=media&generation=G``):
        # GCS then serves that generation or, once it is no longer live (the object was replaced
        # in a bucket without versioning, or deleted), answers 404. A 404 for the generation
        # seen at open means the object changed, not that it never existed.
        try:
            return self.fs.cat_file(self.path, start=offset, end=end, generation=self.version_id)
        except FileNotFoundError:
            raise ObjectChangedError(f"generation {self.version_id} is gone") from None

    def _fetch(self, offset: int, length: int) -> bytes:
        return self._retrying(f"bytes {offset}-{offset + length - 1}",
                              lambda: self._get_once(offset, length))

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the object)."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if offset + length <= len(self._head):
            return self._head[offset:offset + length]
        return self._fetch(offset, length)

    # -- pipelined decryption ------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency,
                                                thread_name_prefix="sealtensors-remote")
            return self._pool

    def decrypt_chunks_into(self, keys, message_offset: int, message_length: int, first: int,
                            stop: int, dst, *, threads: int = 0, digests=None) -> None:
        """Decrypt data chunks [first, stop) of the chunked message stored at ``message_offset``
        (``message_length`` bytes, authenticated by the caller's header) into ``dst`` (exactly
        their plaintext), fetching the ciphertext in parts, ``concurrency`` at a time, and
        decrypting each part while the next ones download. On any failure ``dst`` is wiped."""
        from ..crypto.chunked import _range_geometry

        offset, ct_len, plain_len, final = _range_geometry(message_length, first, stop)
        target = np.frombuffer(memoryview(dst).cast("B"), dtype=np.uint8)
        if len(target) != plain_len:
            raise ValueError(f"destination must hold exactly {plain_len} bytes")
        base = message_offset + offset
        parts = []
        for part_first in range(first, stop, self.part_chunks):
            part_stop = min(stop, part_first + self.part_chunks)
            begin = (part_first - first) * ENCRYPTED_CHUNK_SIZE
            end = ct_len if part_stop == stop else (part_stop - first) * ENCRYPTED_CHUNK_SIZE
            parts.append((part_first, part_stop, begin, end))
        engine = _backends.engine()
        pool = self._executor() if len(parts) > 1 else None
        pending: dict[int, object] = {}
        submitted = 0
        try:
            for number, (part_first, part_stop, begin, end) in enumerate(parts):
                if pool is None:
                    ciphertext = self._fetch(base + begin, end - begin)
                else:
                    # Keep the window full: at most ``concurrency`` parts fetched ahead.
                    while submitted < len(parts) and submitted < number + self.concurrency:
                        _, _, b, e = parts[submitted]
                        pending[submitted] = pool.submit(self._fetch, base + b, e - b)
                        submitted += 1
                    ciphertext = pending.pop(number).result()
                plain_begin = (part_first - first) * CHUNK_SIZE
                plain_end = plain_len if part_stop == stop else (part_stop - first) * CHUNK_SIZE
                extra = {}
                if digests is not None:
                    extra["digests"] = memoryview(digests)[32 * (part_first - first):
                                                           32 * (part_stop - first)]
                engine.decrypt_span(keys.aead_key, keys.base_nonce, part_first, ciphertext,
                                    target[plain_begin:plain_end],
                                    final=final and part_stop == stop, threads=threads, **extra)
        except BaseException:
            for future in pending.values():
                future.cancel()
            target.fill(0)
            raise

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
