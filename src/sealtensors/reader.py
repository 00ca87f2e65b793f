"""Reading sealed files: parse and authenticate the header, unlock the data key, decrypt the index,
then decrypt any byte range of the data on demand (only the chunks that cover it).

A :class:`SealedReader` is safe to use from several threads at once: every read decrypts into its
own buffer and the source (bytes in memory, or a file read with pread) has no shared position.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import hmac
import os
import threading
import weakref
from typing import Iterable

import numpy as np

from .engine import memory as _memory
from .crypto import chunked
from .format import container
from .errors import (FormatError, IntegrityError, KeyProviderError, PolicyError, SignatureError,
                     WrongKeyError)
from .format.index import TensorIndex, TensorInfo, parse as parse_index
from .format import trailer
from .keys import audit, policy
from .keys.keyfile import as_identities
from .keys.signing import as_verifying_keys


class _Source:
    """Random access to the sealed bytes: an in-memory buffer, a file read with pread, or a remote
    object (S3, GCS, HTTP(S), any fsspec URL) read with range GETs (:mod:`sealtensors.io.remote`).

    Files are deliberately not memory-mapped: storage an attacker controls can shrink a mapped file
    under us, and touching the vanished pages kills the process (SIGBUS). pread turns that into a
    short read, which the engines report as truncation.
    """

    name: str | None = None  # the path or URL, for audit records and policies

    def __init__(self, view: memoryview | None, fd: int | None, length: int, *,
                 remote=None) -> None:
        self.view = view
        self.fd = fd
        self.length = length
        self.remote = remote  # an io.remote.RemoteObject, or None
        # A handle dropped without close() (``f = safe_open(...)`` outside a ``with``) must not
        # leak its descriptor.
        self._close_fd = None if fd is None else weakref.finalize(self, os.close, fd)
        # close() from one thread while another reads must not hand the reader a descriptor number
        # that is already reused for another file: the last user releases the source.
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False
        self._on_release: list = []
        self._released = False

    @classmethod
    def from_bytes(cls, data) -> "_Source":
        view = memoryview(data).cast("B")
        return cls(view, None, len(view))

    @classmethod
    def from_path(cls, path, fs=None) -> "_Source":
        """A local path, a URL (``s3://``, ``gs://``, ``https://``, any fsspec URL), a
        :class:`~sealtensors.io.remote.RemotePath`, or a path inside the fsspec filesystem ``fs``."""
        from .io import remote as _remote

        location = _remote.resolve(_remote.bind(path, fs))
        if location is not None:
            remote = location.open()
            source = cls(None, None, remote.size, remote=remote)
            source.name = remote.label
            return source
        path = _remote.local_path(path)
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            source = cls(None, fd, os.fstat(fd).st_size)
            source.name = os.fsdecode(os.fspath(path))
            return source
        except BaseException:
            os.close(fd)
            raise

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the source)."""
        if self.view is not None:
            return bytes(self.view[offset:offset + length])
        if self.remote is not None:
            return self.remote.read(offset, length)
        pieces = []
        while length > 0:
            piece = os.pread(self.fd, length, offset)
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(pieces)

    @contextlib.contextmanager
    def in_use(self):
        """Hold the source open for the duration of a read; ValueError once it is closed."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on a closed sealed file")
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                last = self._closed and self._users == 0
            if last:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._users == 0
        if idle:
            self._release()

    def after_release(self, callback) -> None:
        """Call ``callback()`` once the source is released (closed and its last read done); at
        once if it already is."""
        with self._lock:
            if not self._released:
                self._on_release.append(callback)
                return
        callback()

    def _release(self) -> None:
        if self.view is not None:
            # A slice of it may outlive us (in a traceback's frames); releasing must not fail then.
            with contextlib.suppress(BufferError):
                self.view.release()
            self.view = None
        if self.fd is not None:
            self.fd = None
            self._close_fd()
        if self.remote is not None:
            self.remote.close()
        with self._lock:
            self._released = True
            callbacks, self._on_release = self._on_release, []
        for callback in callbacks:
            callback()


def check_tensor_bytes(info: TensorInfo, raw: np.ndarray) -> None:
    """Reject byte patterns the dtype cannot hold: a BOOL byte must be 0 or 1."""
    if info.dtype == "BOOL" and raw.size and raw.max() > 1:
        raise FormatError(f"tensor {info.name!r}: BOOL bytes must be 0 or 1")


class PlaintextRules:
    """The plaintext rules of FORMAT.md (§8.4, §9 step 16) for one index, in one place: alignment
    padding between tensors is zero and BOOL bytes are 0 or 1.

    Every read path applies them through :meth:`check` to exactly the bytes it hands out, so the
    outcome does not depend on the entry point: a read that returns a BOOL byte 7 fails wherever it
    comes from; padding is checked by the reads that return it (whole-data loads, verify, unseal,
    the GPU staging ring), while a read of whole tensors (``get_tensor``, ``load_into(names=...)``)
    returns no padding and checks none.
    """

    def __init__(self, index: TensorIndex) -> None:
        # Byte ranges the rules constrain, in data order: (begin, end, tensor), tensor None for padding.
        ranges: list[tuple[int, int, TensorInfo | None]] = []
        position = 0
        for info in index.tensors:
            if info.begin > position:
                ranges.append((position, info.begin, None))
            if info.dtype == "BOOL" and info.nbytes:
                ranges.append((info.begin, info.end, info))
            position = info.end
        self._ranges = ranges
        self._ends = [end for _, end, _ in ranges]

    def check(self, begin: int, data) -> None:
        """Apply the rules to ``data``, plaintext bytes [begin, begin + len(data)) of the data
        section; FormatError on the first violation (the caller wipes what it decrypted)."""
        data = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        end = begin + len(data)
        ranges = self._ranges
        # The ranges are sorted and disjoint: start at the first one ending after ``begin``.
        at = bisect.bisect_right(self._ends, begin)
        while at < len(ranges) and ranges[at][0] < end:
            low, high, info = ranges[at]
            piece = data[max(low, begin) - begin:min(high, end) - begin]
            if info is None:
                if piece.any():
                    offset = max(low, begin) + int(np.flatnonzero(piece)[0])
                    raise FormatError(f"non-zero padding at data offset {offset}")
            else:
                check_tensor_bytes(info, piece)
            at += 1


def read_active_header(source: _Source, then=None):
    """Parse the active header copy of ``source`` and, with ``then(header)``, use it (unlock);
    returns ``header`` or ``(header, then(header))``.

    An in-place rewrap in another process writes the spare copy, flips the active-copy byte and
    then zeroes the old copy, so a reader can see a torn copy. After any failure, and after a
    success, the preamble and the copy are read again: if either changed, the attempt was torn and
    is repeated (a file that keeps changing is refused after a few tries); if neither changed, the
    result stands. Comparing the copy, not only the preamble, also catches a rewrap that flipped
    the byte away and back (every rewrite increments the copy's sequence number)."""

    def unchanged(preamble: bytes, offset: int, copy: bytes) -> bool:
        return (source.read(0, container.PREAMBLE_SIZE) == preamble
                and source.read(offset, len(copy)) == copy)

    for _ in range(5):
        preamble = source.read(0, container.PREAMBLE_SIZE)
        _version, _suite, active, capacity = container.parse_preamble(preamble)
        offset = container.copy_offset(active, capacity)
        copy = source.read(offset, capacity)
        try:
            header = container.parse(preamble, copy)
            result = header if then is None else (header, then(header))
        except (FormatError, IntegrityError, WrongKeyError):
            if source.fd is None or unchanged(preamble, offset, copy):
                raise
            continue
        if source.fd is None or unchanged(preamble, offset, copy):
            return result
    raise IntegrityError("the file's header kept changing while it was read")


class SealedReader:
    """An opened, authenticated sealed file.

    ``keys``: what opens it — 32-byte keys, key or identity files, Identity objects (x25519, xwing,
    Passphrase, providers), or a list of them (the first that owns a slot wins).
    ``signer``: accepted publisher(s) (``st-sign:`` strings, VerifyingKey objects, a trust file);
    when given, the file must carry a signature by one of them over exactly this content, and every
    data chunk read is checked against the signed digests (SignatureError otherwise).
    ``min_generation`` / ``expect_file_id``: freshness pins, checked against the signed statement
    (they require ``signer``). ``pin``: a pin file giving all three (keys/pins.py).

    Raises WrongKeyError when no key has a slot, IntegrityError on any tampering found in the header,
    key slots, index or file length, FormatError / UnsupportedFormatError on malformed input.
    """

    def __init__(self, source: _Source, keys, *, signer=None, min_generation: int | None = None,
                 expect_file_id: bytes | str | None = None, pin=None,
                 keep_data_key: bool = False) -> None:
        self._source = source
        self._keep_data_key = keep_data_key
        self.signature = None
        self._digests = None
        try:
            if pin is not None:
                from .keys.pins import verification_options

                merged = verification_options(signer=signer, pin=pin, min_generation=min_generation,
                                              expect_file_id=expect_file_id)
                signer = merged.get("signer")
                min_generation = merged.get("min_generation")
                expect_file_id = merged.get("expect_file_id")
            accepted = as_verifying_keys(signer)
            if (min_generation is not None or expect_file_id is not None) and not accepted:
                raise ValueError("min_generation and expect_file_id pin a signed statement: "
                                 "give signer= too")
            if isinstance(expect_file_id, str):
                try:
                    expect_file_id = bytes.fromhex(expect_file_id)
                except ValueError:
                    raise ValueError("expect_file_id must be 32 hex digits") from None
            if expect_file_id is not None and len(expect_file_id) != container.FILE_ID_SIZE:
                raise ValueError("expect_file_id must be 16 bytes (32 hex digits)")
            self._open(as_identities(keys))
            if accepted:
                self._check_signature(accepted, min_generation, expect_file_id)
        except BaseException:
            source.close()
            raise

    @classmethod
    def open(cls, path, keys, *, fs=None, **options) -> "SealedReader":
        """Open a local path, a URL or a RemotePath (``fs``: an fsspec filesystem ``path`` is in)."""
        return cls(_Source.from_path(path, fs), keys, **options)

    @classmethod
    def from_bytes(cls, data, keys, **options) -> "SealedReader":
        return cls(_Source.from_bytes(data), keys, **options)

    def _read_header(self, identities) -> tuple[container.Header, container.Unlocked]:
        def unlock(header):
            policy.check(policy.OpenRequest(header.file_id.hex(),
                                            tuple(r.type_name for r in header.slots),
                                            bool(header.trailer_length), self._source.name))
            return container.unlock(header, identities)

        return read_active_header(self._source, unlock)

    def _open(self, identities) -> None:
        source = self._source
        try:
            header, unlocked = self._read_header(identities)
        except (WrongKeyError, IntegrityError, KeyProviderError, PolicyError) as exc:
            audit.file_event("open", None, type(exc).__name__, path=source.name)
            raise
        record = header.slots[unlocked.slot_index]
        audit.file_event("open", header.file_id, "ok", slot_type=record.type_name,
                         slot_id=record.slot_id.hex(), path=source.name)
        self.header = header
        self.unlocked_slot = unlocked.slot_index
        self.opened_by = unlocked.identity
        data_key = unlocked.data_key
        # Only a rewrap needs the data key after opening; other readers do not keep it.
        self._data_key = data_key if self._keep_data_key else None
        if source.length != header.file_length:
            raise IntegrityError(f"file is {source.length} bytes, its header says "
                                 f"{header.file_length} (truncated or extended)")
        index_message = source.read(header.index_offset, header.index_length)
        index_plaintext = chunked.decrypt(data_key, index_message,
                                          container.index_context(header.file_id))
        self.data_length = chunked.plaintext_length(header.data_length)
        self.index: TensorIndex = parse_index(index_plaintext, self.data_length)
        self._tensors = self.index.by_name()
        self._data_header = source.read(header.data_offset, chunked.HEADER_SIZE)
        self._data_keys = chunked.open_message(
            data_key, self._data_header, container.data_context(header.file_id, index_plaintext))
        self._index_message = index_message
        self._chunk_total = chunked.chunk_count(self.data_length)

    def _read_trailer(self) -> bytes:
        """The signature trailer, authenticated against the header's trailer digest."""
        header = self.header
        if header.trailer_length == 0:
            raise SignatureError("the file is not signed")
        with self._source.in_use() as source:
            raw = source.read(header.trailer_offset, header.trailer_length)
        if len(raw) != header.trailer_length or not hmac.compare_digest(
                hashlib.sha256(raw).digest(), header.trailer_digest):
            raise IntegrityError("the signature trailer was altered (its digest does not match the "
                                 "authenticated header)")
        return raw

    def data_key_for_rewrap(self) -> bytes:
        """The file's data key (only when opened with keep_data_key=True)."""
        if self._data_key is None:
            raise ValueError("the reader was not opened with keep_data_key=True")
        return self._data_key

    def check_trailer(self) -> None:
        """Authenticate the signature trailer's bytes (if any) against the header."""
        if self.header.trailer_length:
            self._read_trailer()

    def _check_signature(self, accepted, min_generation, expect_file_id) -> None:
        signature = trailer.parse(self._read_trailer())
        trailer.verify(signature, accepted, file_id=self.header.file_id,
                       index_message=self._index_message, data_header=self._data_header,
                       data_length=self.header.data_length, index_length=self.header.index_length,
                       min_generation=min_generation, expect_file_id=expect_file_id)
        if len(signature.digests) != trailer.DIGEST_SIZE * self._chunk_total:
            raise SignatureError("the signed chunk digest table does not cover the data")
        self.signature = signature
        self._digests = signature.digests

    # -- index -------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return [info.name for info in self.index.tensors]

    def metadata(self) -> dict[str, str] | None:
        return None if self.index.metadata is None else dict(self.index.metadata)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in this file") from None

    def tensors_in_chunk(self, chunk: int) -> list[str]:
        """Names of the tensors with bytes in data chunk ``chunk``."""
        begin = chunk * chunked.CHUNK_SIZE
        end = begin + chunked.CHUNK_SIZE
        return [info.name for info in self.index.tensors
                if info.begin < end and info.end > begin]

    # -- data --------------------------------------------------------------------------------
    def _decrypt_chunks(self, first: int, stop: int, dst, threads: int) -> None:
        source = self._source
        if source is None:
            raise ValueError("I/O operation on a closed sealed file")
        digests = None
        if self._digests is not None:
            digests = memoryview(self._digests)[trailer.DIGEST_SIZE * first:
                                                trailer.DIGEST_SIZE * stop]
        extra = {} if digests is None else {"digests": digests}
        try:
            with source.in_use():
                if source.fd is not None:
                    chunked.decrypt_chunk_range_fd_into(self._data_keys, source.fd,
                                                        self.header.data_offset,
                                                        self.header.data_length, first, stop, dst,
                                                        threads=threads, **extra)
                    return
                if source.remote is not None:
                    source.remote.decrypt_chunks_into(self._data_keys, self.header.data_offset,
                                                      self.header.data_length, first, stop, dst,
                                                      threads=threads, **extra)
                    return
                with source.view[self.header.data_offset:self.header.trailer_offset] as message:
                    chunked.decrypt_chunk_range_into(self._data_keys, message, first, stop, dst,
                                                     threads=threads, **extra)
        except IntegrityError as exc:
            if exc.chunk_index is None or getattr(exc, "names_tensors", False):
                raise
            names = self.tensors_in_chunk(exc.chunk_index)
            shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
            error = type(exc)(f"{exc} (data chunk {exc.chunk_index}"
                              + (f", holding tensor(s) {shown})" if names else ", padding only)"),
                              chunk_index=exc.chunk_index)
            error.names_tensors = True
            error.tensor_names = names
            raise error from None

    @property
    def rules(self) -> PlaintextRules:
        """The plaintext rules for this file's index (built on first use)."""
        rules = self.__dict__.get("_rules")
        if rules is None:
            rules = self._rules = PlaintextRules(self.index)
        return rules

    def _checked(self, begin: int, dst) -> None:
        """Apply the plaintext rules to ``dst`` (plaintext from data offset ``begin``); wipe it and
        raise FormatError when they fail."""
        data = np.frombuffer(memoryview(dst).cast("B"), dtype=np.uint8)
        try:
            self.rules.check(begin, data)
        except FormatError:
            data.fill(0)
            raise

    def read_chunks_into(self, first: int, stop: int, dst, *, threads: int = 0) -> None:
        """Decrypt data chunks [first, stop) into ``dst`` (exactly their plaintext length) and
        apply the plaintext rules to them (padding included); on any failure ``dst`` is wiped. The
        building block of staged (GPU) uploads."""
        self._decrypt_chunks(first, stop, dst, threads)
        self._checked(first * chunked.CHUNK_SIZE, dst)

    def _plaintext_of_chunks(self, first: int, stop: int) -> int:
        if stop == self._chunk_total:
            return self.data_length - first * chunked.CHUNK_SIZE
        return (stop - first) * chunked.CHUNK_SIZE

    def read_all_into(self, dst, *, threads: int = 0) -> None:
        """Decrypt the whole data section into ``dst`` (writable, exactly ``data_length`` bytes).

        Every chunk is authenticated, the final one included. The alignment padding between
        tensors must be zero and BOOL bytes 0 or 1 (FormatError otherwise). On any failure ``dst``
        is wiped."""
        self._decrypt_chunks(0, self._chunk_total, dst, threads)
        self._checked(0, dst)

    def read_range_into(self, begin: int, end: int, dst, *, threads: int = 0) -> None:
        """Decrypt plaintext bytes [begin, end) of the data section into ``dst`` (writable, exactly
        ``end - begin`` bytes), decrypting only the chunks that hold them.

        The plaintext rules apply to the bytes returned: BOOL bytes in the range must be 0 or 1,
        padding in the range zero (FormatError). Whole chunks go straight into ``dst``; at most two
        partial edge chunks pass through a 16 KiB scratch buffer. On failure ``dst`` is wiped and
        the error raised."""
        if not 0 <= begin <= end <= self.data_length:
            raise ValueError(f"byte range [{begin}, {end}) outside the data section")
        view = memoryview(dst)
        if view.readonly:
            raise ValueError("destination buffer must be writable")
        out = np.frombuffer(view.cast("B"), dtype=np.uint8)
        if len(out) != end - begin:
            raise ValueError(f"destination holds {len(out)} bytes, the range is {end - begin}")
        size = chunked.CHUNK_SIZE
        try:
            position = begin
            if position % size and position < end:
                position = self._copy_from_chunk(position // size, position, end, begin, out, threads)
            if position < end:
                first = position // size
                stop = -(-end // size) if end == self.data_length else end // size
                if stop > first:
                    length = self._plaintext_of_chunks(first, stop)
                    self._decrypt_chunks(first, stop,
                                         out[position - begin:position - begin + length], threads)
                    position += length
            if position < end:
                self._copy_from_chunk(position // size, position, end, begin, out, threads)
            self.rules.check(begin, out)
        except BaseException:
            out.fill(0)
            raise

    def _copy_from_chunk(self, chunk: int, position: int, end: int, begin: int, out: np.ndarray,
                         threads: int) -> int:
        scratch = np.empty(self._plaintext_of_chunks(chunk, chunk + 1), dtype=np.uint8)
        try:
            self._decrypt_chunks(chunk, chunk + 1, scratch, threads)
            start = chunk * chunked.CHUNK_SIZE
            stop = min(end, start + len(scratch))
            out[position - begin:stop - begin] = scratch[position - start:stop - start]
        finally:
            scratch.fill(0)
        return stop

    def read_range(self, begin: int, end: int, *, threads: int = 0) -> np.ndarray:
        """Plaintext bytes [begin, end) of the data section in a new uint8 array, decrypting only
        the chunks covering them. The array owns its own mapping (no core dumps, wiped when the
        last view of it is gone)."""
        out = _memory.allocate(end - begin if end >= begin else 0)
        self.read_range_into(begin, end, out, threads=threads)
        return out

    def verify(self, *, threads: int = 0, progress=None, span_chunks: int = 4096) -> None:
        """Authenticate every chunk of the data, a bounded span at a time, and apply the plaintext
        rules (zero padding, BOOL bytes 0/1); returns or raises. ``progress(bytes_done)`` is called
        after each span."""
        for _ in self.iter_checked_spans(span_chunks, threads=threads, progress=progress):
            pass

    def iter_checked_spans(self, span_chunks: int = 1024, *, threads: int = 0, progress=None):
        """:meth:`iter_spans`, with the plaintext rules (zero padding between tensors, BOOL bytes
        0 or 1) applied to each span before it is yielded (FormatError otherwise). After the
        consumer is done with a non-empty span, ``progress(bytes_done)`` is called."""
        rules = self.rules
        spans = self.iter_spans(span_chunks, threads=threads)
        try:
            start = 0
            for span in spans:
                end = start + len(span)
                rules.check(start, span)
                start = end
                yield span
                if progress is not None and len(span):
                    progress(end)
        finally:
            spans.close()  # wipes the span buffer now, not whenever the generator is collected

    def iter_spans(self, span_chunks: int = 1024, *, threads: int = 0) -> Iterable[memoryview]:
        """Yield the data section's plaintext in order, one bounded span at a time.

        Each yielded view is only valid until the next one is requested (the buffer is reused)."""
        buffer = np.empty(span_chunks * chunked.CHUNK_SIZE, dtype=np.uint8)
        try:
            for first in range(0, self._chunk_total, span_chunks):
                stop = min(first + span_chunks, self._chunk_total)
                length = self._plaintext_of_chunks(first, stop)
                self._decrypt_chunks(first, stop, buffer[:length], threads)
                yield memoryview(buffer[:length])
        finally:
            buffer.fill(0)

    def close(self) -> None:
        """Close the file and forget its data keys. Reads already running in other threads finish
        first (the keys go when the last one is done); later ones raise ValueError."""
        source = self._source
        if source is not None:
            source.after_release(self._forget_keys)
            source.close()

    def _forget_keys(self) -> None:
        """Drop the data message's keys, wiping them where they are wipeable (SECURITY.md, "What
        is wiped"): a closed reader that someone keeps alive must not keep key material."""
        keys = self.__dict__.pop("_data_keys", None)
        self._data_key = None
        wipe = getattr(keys, "wipe", None)
        if callable(wipe):
            wipe()

    def __enter__(self) -> "SealedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

