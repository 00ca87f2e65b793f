"""Writing sealed files: one pass, memory bounded by one span of plaintext whatever the model size."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import secrets
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import BinaryIO, Callable, Iterable, NamedTuple

from .engine import backends as _backends
from .crypto import chunked
from .errors import FormatError
from .format import container
from .engine.spec import DIGEST_SIZE, span_chunk_count_for_plaintext, span_ciphertext_length
from .format.index import TensorIndex, serialize
from .format import trailer
from .keys import audit
from .keys.keyfile import as_recipients
from .keys.signing import SigningKey

# Plaintext encrypted per engine call: a whole number of chunks, large enough for the C engine's
# threads to share, small enough to keep sealing memory flat.
SPAN_BYTES = 1024 * chunked.CHUNK_SIZE

# A caller's piece with at least this many whole chunks left is encrypted straight from the
# caller's memory; shorter runs are copied into the span buffer, where they join their neighbours
# instead of costing an engine call each.
DIRECT_BYTES = 64 * chunked.CHUNK_SIZE

ProgressCallback = Callable[[int], None]


class FileRange(NamedTuple):
    """A piece of tensor data given as ``length`` bytes of the open file ``fd`` at ``offset``: the
    writer reads it with pread straight into its encryption buffer (one copy, none in Python)."""

    fd: int
    offset: int
    length: int


def _sync_file_range():
    """libc's sync_file_range, or None where there is none (not Linux, or no libc to load)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class _SpanWriter:
    """Writes encrypted spans to ``out`` in order, on a second thread when there is more than one.

    The write system call (a copy into the page cache) then overlaps the encryption of the next
    span. For a file on a disk, each span's pages are also handed to the disk at once
    (sync_file_range, asynchronous): the kernel would otherwise keep up to dirty_background_ratio
    of memory dirty and leave the whole disk write to the closing fsync, after all the encryption.
    That is a hint only: crash safety still rests on the fsync and rename of io/atomic.py."""

    def __init__(self, out: BinaryIO, threaded: bool) -> None:
        self._out = out
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="sealtensors-writer")
                      if threaded else None)
        self._fd = None
        if _SYNC_FILE_RANGE is not None:
            try:
                fd = out.fileno()
                self._position = out.tell()
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    self._fd = fd
            except (AttributeError, OSError, ValueError):
                pass  # BytesIO and other outputs without a file descriptor
        self._last: Future | None = None
        self._error: BaseException | None = None

    def submit(self, cipher: memoryview) -> Future | None:
        """Write ``cipher`` after the spans before it; returns a future that is done when its
        buffer may be reused (None when the write was done at once). Raises the error of an
        earlier write that failed."""
        if self._error is not None:
            raise self._error
        if self._pool is None:
            self._write(cipher)
            return None
        future = self._pool.submit(self._write, cipher)
        self._last = future
        return future

    def _write(self, cipher: memoryview) -> None:
        if self._error is not None:
            return  # nothing is written after a failed span: the file would have a hole
        try:
            self._out.write(cipher)
        except BaseException as exc:
            self._error = exc
            raise
        if self._fd is not None:
            # Errors are ignored: the hint is useless on some file systems, never required.
            _SYNC_FILE_RANGE(self._fd, self._position, len(cipher), _SYNC_FILE_RANGE_WRITE)
            self._position += len(cipher)

    def close(self) -> None:
        """Wait for every queued write; raises the error of a write that failed."""
        if self._pool is not None:
            try:
                if self._last is not None:
                    self._last.exception()  # spans are written in order: the last one is last
            finally:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self._error is not None:
            raise self._error


class _DataEncryptor:
    """Takes the data section's plaintext in order and writes it out as encrypted spans."""

    def __init__(self, out: BinaryIO, keys: chunked.MessageKeys, threads: int,
                 progress: ProgressCallback | None, data_length: int, *,
                 collect_digests: bool = False) -> None:
        self._keys = keys
        self._threads = threads
        self._progress = progress
        # A small model needs no 16 MiB buffers: one span just large enough holds it all.
        self._span = min(SPAN_BYTES, (data_length // chunked.CHUNK_SIZE + 1) * chunked.CHUNK_SIZE)
        self._plain = bytearray(self._span)
        self._fill = 0
        self._next_chunk = 0
        self.written = 0
        # Two ciphertext buffers: one being written out while the next span is encrypted into the
        # other. A model of one span needs only one.
        several = data_length >= self._span
        cipher_length = span_ciphertext_length(self._span, final=True)
        self._ciphers = [bytearray(cipher_length) for _ in range(2 if several else 1)]
        self._pending: list[Future | None] = [None] * len(self._ciphers)
        self._turn = 0
        self._writer = _SpanWriter(out, threaded=several)
        self.digests = bytearray() if collect_digests else None
        self._span_digests = (bytearray(DIGEST_SIZE * span_chunk_count_for_plaintext(
            self._span, final=True)) if collect_digests else None)

    def write(self, data) -> None:
        """Take the next plaintext bytes: a bytes-like object or a :class:`FileRange`."""
        if isinstance(data, FileRange):
            self._read_file(data)
            return
        view = memoryview(data).cast("B")
        chunk = chunked.CHUNK_SIZE
        while len(view):
            to_boundary = -self._fill % chunk
            if not to_boundary and len(view) >= DIRECT_BYTES:
                # The buffer ends on a chunk boundary: seal what it holds, then encrypt whole
                # chunks straight from the caller's memory.
                if self._fill:
                    self._flush(final=False)
                take = min(len(view) - len(view) % chunk, self._span)
                self._seal(view[:take], final=False)
                view = view[take:]
                continue
            if to_boundary and len(view) >= to_boundary + DIRECT_BYTES:
                take = to_boundary  # only up to the boundary, so the rest can go direct
            else:
                take = min(len(view), self._span - self._fill)
            self._plain[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self._span:
                self._flush(final=False)

    def _read_file(self, source: FileRange) -> None:
        offset, remaining = source.offset, source.length
        plain = memoryview(self._plain)
        while remaining:
            take = min(remaining, self._span - self._fill)
            got = os.preadv(source.fd, [plain[self._fill:self._fill + take]], offset)
            if not got:
                raise FormatError("safetensors file changed size while being read")
            offset += got
            remaining -= got
            self._fill += got
            if self._fill == self._span:
                self._flush(final=False)

    @property
    def position(self) -> int:
        """Plaintext bytes taken so far."""
        return self.written + self._fill

    def pad_to(self, position: int) -> None:
        gap = position - self.position
        if gap < 0:
            raise AssertionError("tensor data overran its offsets")
        if gap:
            self.write(bytes(gap))

    def _flush(self, final: bool) -> None:
        self._seal(memoryview(self._plain)[:self._fill], final)
        self._fill = 0

    def _seal(self, plain: memoryview, final: bool) -> None:
        """Encrypt ``plain`` (whole chunks unless ``final``) as the next span; queue its write."""
        length = span_ciphertext_length(len(plain), final)
        turn = self._turn
        if self._pending[turn] is not None:
            self._pending[turn].result()  # that buffer's previous span is written (or failed)
            self._pending[turn] = None
        cipher = memoryview(self._ciphers[turn])[:length]
        digests = None
        if self._span_digests is not None:
            count = span_chunk_count_for_plaintext(len(plain), final)
            digests = memoryview(self._span_digests)[:count * DIGEST_SIZE]
        _backends.engine().encrypt_span(self._keys.aead_key, self._keys.base_nonce,
                                        self._next_chunk, plain, cipher, final=final,
                                        threads=self._threads, digests_out=digests)
        if digests is not None:
            self.digests += digests
        self._pending[turn] = self._writer.submit(cipher)
        self._turn = (turn + 1) % len(self._ciphers)
        self._next_chunk += len(plain) // chunked.CHUNK_SIZE
        self.written += len(plain)
        if self._progress is not None and len(plain):
            self._progress(self.written)

    def finish(self) -> None:
        """Seal the final span and wait until every span is written; raises a write's error."""
        self._flush(final=True)
        try:
            self._writer.close()
        finally:
            self._wipe()

    def abort(self) -> None:
        """After a failure: wait for the writer thread (its error, if any, is not the one to
        report) and wipe the plaintext buffer."""
        try:
            self._writer.close()
        except BaseException:
            pass
        finally:
            self._wipe()

    def _wipe(self) -> None:
        # Plaintext of the last span must not linger in a buffer we drop.
        self._plain[:] = bytes(len(self._plain))


def write_sealed(out: BinaryIO, index: TensorIndex, tensor_data: Iterable[Iterable],
                 recipients, *, threads: int = 0, progress: ProgressCallback | None = None,
                 signer=None, generation: int | None = None) -> bytes:
    """Write a complete sealed file to ``out`` (seekable when ``signer`` is given); returns the
    file id.

    ``tensor_data`` yields, for each tensor of ``index`` in order, an iterable of pieces whose
    lengths add up to that tensor's byte length: bytes-like objects (large ones are encrypted in
    place, never copied), or :class:`FileRange` pieces of an open file. ``recipients``: who can open
    it (keys, recipient strings, Recipient objects; keys/keyfile.as_recipients). ``signer``: a
    SigningKey (or the path of a signing key file) to sign the file as its publisher, with
    ``generation`` (default: the current Unix time, so later seals of a model have higher
    generations). A piece may be reused by its producer once the next one is requested.
    """
    recipient_list = as_recipients(recipients)
    signing_key = None
    if signer is not None:
        signing_key = signer if isinstance(signer, SigningKey) else SigningKey.load(signer)
        generation = int(time.time()) if generation is None else int(generation)
    elif generation is not None:
        raise ValueError("generation is part of a signature: give signer= too")
    data_key = secrets.token_bytes(chunked.KEY_SIZE)
    file_id = secrets.token_bytes(container.FILE_ID_SIZE)
    index_plaintext = serialize(index)
    index_message = chunked.encrypt(data_key, index_plaintext, container.index_context(file_id))
    data_message_length = chunked.ciphertext_length(index.data_length)
    records = container.wrap_for(recipient_list, data_key, file_id)
    trailer_length = trailer.trailer_length(data_message_length) if signing_key else 0
    header = container.new_header(file_id, len(index_message), data_message_length, trailer_length,
                                  container.EMPTY_TRAILER_DIGEST, records)
    start = out.tell() if signing_key else 0
    out.write(container.header_region(header, data_key))
    out.write(index_message)
    data_header, data_keys = chunked.new_message(
        data_key, container.data_context(file_id, index_plaintext))
    out.write(data_header)
    encryptor = _DataEncryptor(out, data_keys, threads, progress, index.data_length,
                               collect_digests=signing_key is not None)
    try:
        sources = iter(tensor_data)
        for info in index.tensors:
            encryptor.pad_to(info.begin)
            try:
                pieces = next(sources)
            except StopIteration:
                raise ValueError("fewer tensor sources than tensors in the index") from None
            start_position = encryptor.position
            for piece in pieces:
                encryptor.write(piece)
            if encryptor.position - start_position != info.nbytes:
                raise ValueError(f"tensor {info.name!r}: source gave the wrong number of bytes")
        encryptor.finish()
    except BaseException:
        encryptor.abort()
        raise
    if signing_key is not None:
        signed = trailer.build(signing_key, file_id=file_id, generation=generation,
                               index_message=index_message, data_header=data_header,
                               data_length=data_message_length, digests=bytes(encryptor.digests))
        out.write(signed)
        end = out.tell()
        header = replace(header, trailer_digest=hashlib.sha256(signed).digest())
        out.seek(start)
        out.write(container.header_region(header, data_key))
        out.seek(end)
    audit.file_event("seal", file_id, "ok", recipients=len(records),
                     slot_types=",".join(r.type_name for r in records),
                     signed=signing_key is not None)
    return file_id
