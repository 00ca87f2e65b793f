"""Writing sealed files: one pass, memory bounded by one span of plaintext whatever the model size."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import replace
from typing import BinaryIO, Callable, Iterable

from .engine import backends as _backends
from .crypto import chunked
from .format import container
from .engine.spec import span_ciphertext_length
from .format.index import TensorIndex, serialize
from .format import trailer
from .keys import audit
from .keys.keyfile import as_recipients
from .keys.signing import SigningKey

# Plaintext encrypted per engine call: a whole number of chunks, large enough for the C engine's
# threads to share, small enough to keep sealing memory flat.
SPAN_BYTES = 1024 * chunked.CHUNK_SIZE

ProgressCallback = Callable[[int], None]


class _DataEncryptor:
    """Accumulates the data section's plaintext and writes it out as encrypted spans."""

    def __init__(self, out: BinaryIO, keys: chunked.MessageKeys, threads: int,
                 progress: ProgressCallback | None, data_length: int, *,
                 collect_digests: bool = False) -> None:
        self._out = out
        self._keys = keys
        self._threads = threads
        self._progress = progress
        # A small model needs no 16 MiB buffers: one span just large enough holds it all.
        self._span = min(SPAN_BYTES, (data_length // chunked.CHUNK_SIZE + 1) * chunked.CHUNK_SIZE)
        self._plain = bytearray(self._span)
        self._cipher = bytearray(span_ciphertext_length(self._span, final=True))
        self._fill = 0
        self._next_chunk = 0
        self.written = 0
        self.digests = bytearray() if collect_digests else None

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self._span - self._fill)
            self._plain[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
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
        plain = memoryview(self._plain)[:self._fill]
        length = span_ciphertext_length(self._fill, final)
        cipher = memoryview(self._cipher)[:length]
        _backends.engine().encrypt_span(self._keys.aead_key, self._keys.base_nonce,
                                        self._next_chunk, plain, cipher, final=final,
                                        threads=self._threads)
        self._out.write(cipher)
        if self.digests is not None:
            for begin in range(0, len(cipher), chunked.ENCRYPTED_CHUNK_SIZE):
                self.digests += trailer.chunk_digest(cipher[begin:begin + chunked.ENCRYPTED_CHUNK_SIZE])
        self._next_chunk += self._fill // chunked.CHUNK_SIZE
        self.written += self._fill
        advanced = self._fill > 0
        self._fill = 0
        if self._progress is not None and advanced:
            self._progress(self.written)

    def finish(self) -> None:
        self._flush(final=True)
        # Plaintext of the last span must not linger in a buffer we drop.
        self._plain[:] = bytes(len(self._plain))


def write_sealed(out: BinaryIO, index: TensorIndex, tensor_data: Iterable[Iterable],
                 recipients, *, threads: int = 0, progress: ProgressCallback | None = None,
                 signer=None, generation: int | None = None) -> bytes:
    """Write a complete sealed file to ``out`` (seekable when ``signer`` is given); returns the
    file id.

    ``tensor_data`` yields, for each tensor of ``index`` in order, an iterable of bytes-like pieces
    whose lengths add up to that tensor's byte length. ``recipients``: who can open it (keys,
    recipient strings, Recipient objects; keys/keyfile.as_recipients). ``signer``: a SigningKey
    (or the path of a signing key file) to sign the file as its publisher, with ``generation``
    (default: the current Unix time, so later seals of a model have higher generations).
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
