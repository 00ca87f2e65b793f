"""Reading sealed files: parse and authenticate the header, unlock the data key, decrypt the index,
then decrypt any byte range of the data on demand (only the chunks that cover it).

A :class:`SealedReader` is safe to use from several threads at once: every read decrypts into its
own buffer and the source (bytes in memory, or a file read with pread) has no shared position.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable

import numpy as np

from . import chunked, container
from .errors import IntegrityError
from .index import TensorIndex, TensorInfo, parse as parse_index
from .keys import as_keys


class _Source:
    """Random access to the sealed bytes: an in-memory buffer, or a file read with pread.

    Files are deliberately not memory-mapped: storage an attacker controls can shrink a mapped file
    under us, and touching the vanished pages kills the process (SIGBUS). pread turns that into a
    short read, which the engines report as truncation.
    """

    def __init__(self, view: memoryview | None, fd: int | None, length: int) -> None:
        self.view = view
        self.fd = fd
        self.length = length

    @classmethod
    def from_bytes(cls, data) -> "_Source":
        view = memoryview(data).cast("B")
        return cls(view, None, len(view))

    @classmethod
    def from_path(cls, path) -> "_Source":
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            return cls(None, fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the source)."""
        if self.view is not None:
            return bytes(self.view[offset:offset + length])
        pieces = []
        while length > 0:
            piece = os.pread(self.fd, length, offset)
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        if self.view is not None:
            # A slice of it may outlive us (in a traceback's frames); releasing must not fail then.
            with contextlib.suppress(BufferError):
                self.view.release()
            self.view = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class SealedReader:
    """An opened, authenticated sealed file. ``keys``: one key or several (any that has a slot).

    Raises WrongKeyError when no key has a slot, IntegrityError on any tampering found in the header,
    key slots, index or file length, FormatError / UnsupportedFormatError on malformed input.
    """

    def __init__(self, source: _Source, keys) -> None:
        self._source = source
        try:
            self._open(as_keys(keys))
        except BaseException:
            source.close()
            raise

    @classmethod
    def open(cls, path, keys) -> "SealedReader":
        return cls(_Source.from_path(path), keys)

    @classmethod
    def from_bytes(cls, data, keys) -> "SealedReader":
        return cls(_Source.from_bytes(data), keys)

    def _open(self, keys: list[bytes]) -> None:
        source = self._source
        slot_count = container.parse_fixed(source.read(0, container.FIXED_HEADER_SIZE))[5]
        header_bytes = source.read(0, container.header_size(slot_count))
        header = container.parse(header_bytes)
        self.header = header
        data_key = container.unlock(header, header_bytes, keys)
        if source.length != header.file_length:
            raise IntegrityError(f"file is {source.length} bytes, its header says "
                                 f"{header.file_length} (truncated or extended)")
        index_message = source.read(header.index_offset, header.index_length)
        index_plaintext = chunked.decrypt(data_key, index_message,
                                          container.index_context(header.file_id))
        self.data_length = chunked.plaintext_length(header.data_length)
        self.index: TensorIndex = parse_index(index_plaintext, self.data_length)
        self._tensors = self.index.by_name()
        self._data_keys = chunked.open_message(
            data_key, source.read(header.data_offset, chunked.HEADER_SIZE),
            container.data_context(header.file_id, index_plaintext))
        self._chunk_total = chunked.chunk_count(self.data_length)

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

    # -- data --------------------------------------------------------------------------------
    def _decrypt_chunks(self, first: int, stop: int, dst, threads: int) -> None:
        source = self._source
        if source.fd is not None:
            chunked.decrypt_chunk_range_fd_into(self._data_keys, source.fd, self.header.data_offset,
                                                self.header.data_length, first, stop, dst,
                                                threads=threads)
            return
        with source.view[self.header.data_offset:self.header.file_length] as message:
            chunked.decrypt_chunk_range_into(self._data_keys, message, first, stop, dst,
                                             threads=threads)

    def read_chunks_into(self, first: int, stop: int, dst, *, threads: int = 0) -> None:
        """Decrypt data chunks [first, stop) into ``dst`` (exactly their plaintext length); on
        failure ``dst`` is wiped. The building block of staged (GPU) uploads."""
        self._decrypt_chunks(first, stop, dst, threads)

    def _plaintext_of_chunks(self, first: int, stop: int) -> int:
        if stop == self._chunk_total:
            return self.data_length - first * chunked.CHUNK_SIZE
        return (stop - first) * chunked.CHUNK_SIZE

    def read_all_into(self, dst, *, threads: int = 0) -> None:
        """Decrypt the whole data section into ``dst`` (writable, exactly ``data_length`` bytes).

        Every chunk is authenticated, the final one included; on failure ``dst`` is wiped."""
        self._decrypt_chunks(0, self._chunk_total, dst, threads)

    def read_range(self, begin: int, end: int, *, threads: int = 0) -> np.ndarray:
        """Plaintext bytes [begin, end) of the data section, decrypting only the chunks covering them.

        Returns a uint8 array that views a private buffer; the view starts 64-byte aligned whenever
        ``begin`` is a multiple of 64."""
        if not 0 <= begin <= end <= self.data_length:
            raise ValueError(f"byte range [{begin}, {end}) outside the data section")
        first, stop = chunked.chunk_range_for_bytes(begin, end)
        stop = min(stop, self._chunk_total)
        plain_len = self._plaintext_of_chunks(first, stop)
        buffer = np.empty(plain_len, dtype=np.uint8)
        self._decrypt_chunks(first, stop, buffer, threads)
        skip = begin - first * chunked.CHUNK_SIZE
        return buffer[skip:skip + (end - begin)]

    def verify(self, *, threads: int = 0) -> None:
        """Authenticate every chunk of the data, a bounded span at a time; returns or raises."""
        for _ in self.iter_spans(4096, threads=threads):
            pass

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
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> "SealedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

