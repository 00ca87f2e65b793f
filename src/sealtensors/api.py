"""File-level operations: seal/unseal safetensors files, rewrap key slots, inspect, verify."""

from __future__ import annotations

import os
import shutil
from typing import Callable, Iterable

from . import _backends, chunked, container
from ._atomic import atomic_output, refuse_same_file
from ._safetensors_io import header_for, read_header, tensor_pieces, write_unpadded
from .errors import FormatError, InvalidKeyError
from .index import layout
from .keys import KEY_ID_SIZE, as_key, as_keys, key_id
from .reader import SealedReader
from .writer import write_sealed

ProgressCallback = Callable[[int], None]


def seal_file(src: str | os.PathLike, dst: str | os.PathLike, key, *, overwrite: bool = False,
              threads: int = 0, progress: ProgressCallback | None = None) -> None:
    """Seal the ``.safetensors`` file ``src`` into ``dst`` for the recipient(s) ``key``.

    Streams: memory stays bounded whatever the model size. Tensors keep their names, dtypes, shapes
    and the file's ``__metadata__``. ``progress`` is called with the plaintext bytes done so far.
    """
    refuse_same_file(dst, src)
    recipients = as_keys(key)
    fd = os.open(os.fspath(src), os.O_RDONLY)
    try:
        tensors, metadata, data_start = read_header(fd)
        index = layout(((t.name, t.dtype, t.shape) for t in tensors), metadata)
        with atomic_output(dst, overwrite=overwrite) as out:
            write_sealed(out, index, (tensor_pieces(fd, data_start, t) for t in tensors), recipients,
                         threads=threads, progress=progress)
    finally:
        os.close(fd)


def unseal_file(src: str | os.PathLike, dst: str | os.PathLike, key, *, overwrite: bool = False,
                threads: int = 0, progress: ProgressCallback | None = None) -> None:
    """Decrypt the sealed file ``src`` back into a ``.safetensors`` file ``dst`` (mode 0600).

    The whole data section is authenticated as it streams; on any failure ``dst`` is not created
    (or left untouched) and no partial output remains."""
    refuse_same_file(dst, src)
    with SealedReader.open(src, key) as reader:
        with atomic_output(dst, overwrite=overwrite, mode=0o600) as out:
            out.write(header_for(reader.index))

            def spans():
                done = 0
                for span in reader.iter_spans(threads=threads):
                    yield span
                    done += len(span)
                    if progress is not None and len(span):
                        progress(done)

            write_unpadded(out, reader.index, spans())


def _ids_to_remove(remove: Iterable) -> set[bytes]:
    ids = set()
    for item in remove:
        if isinstance(item, str) and not os.path.exists(item):
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise InvalidKeyError(f"{item!r} is neither a key file nor a hex key id") from None
            if len(raw) != KEY_ID_SIZE:
                raise InvalidKeyError(f"a key id is {KEY_ID_SIZE} bytes ({2 * KEY_ID_SIZE} hex digits)")
            ids.add(raw)
        elif isinstance(item, (bytes, bytearray)) and len(item) == KEY_ID_SIZE:
            ids.add(bytes(item))
        else:
            ids.add(key_id(as_key(item)))
    return ids


def rewrap(src: str | os.PathLike, key, *, add=(), remove=(), dst: str | os.PathLike | None = None,
           overwrite: bool = False) -> list[str]:
    """Add and/or remove recipients. Only the header is rewritten; the index and data are copied
    byte for byte. ``key`` must open the file. ``add``: keys to add. ``remove``: keys, key files or
    key ids (16 bytes or 32 hex digits). With ``dst=None`` the file is replaced in place, atomically:
    a reader sees either the old or the new header, never a mix. Returns the new key ids (hex)."""
    add_keys = as_keys(add) if add else []
    remove_ids = _ids_to_remove(remove)
    if dst is None:
        dst, overwrite = src, True
    else:
        refuse_same_file(dst, src)
    fd = os.open(os.fspath(src), os.O_RDONLY)
    with os.fdopen(fd, "rb") as source:
        prefix = source.read(container.FIXED_HEADER_SIZE)
        slot_count = container.parse_fixed(prefix)[5]
        header_bytes = prefix + source.read(container.header_size(slot_count) - len(prefix))
        header = container.parse(header_bytes)
        data_key = container.unlock(header, header_bytes, as_keys(key))
        if os.fstat(fd).st_size != header.file_length:
            raise container.IntegrityError("file is truncated or extended; refusing to rewrap it")
        keep = [slot for slot in header.slots if slot.key_id not in remove_ids]
        added_ids = {key_id(k) for k in add_keys}
        if not keep and not add_keys:
            raise FormatError("refusing to remove every recipient: the file could never be opened")
        if remove_ids & added_ids:
            raise ValueError("a key cannot be both added and removed")
        new_header = container.rebuild_with_slots(header, data_key, add_keys, keep)
        with atomic_output(dst, overwrite=overwrite) as out:
            out.write(new_header)
            source.seek(header.size)
            shutil.copyfileobj(source, out, 16 * 1024 * 1024)
    new = container.parse(new_header)
    return [slot.key_id.hex() for slot in new.slots]


def inspect(path: str | os.PathLike, key=None) -> dict:
    """What a file reveals: without a key, sizes and recipients' key ids; with one, also the tensor
    table and metadata (after authenticating the header and index)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(container.FIXED_HEADER_SIZE)
        version, suite, _file_id, index_len, data_len, slot_count = container.parse_fixed(prefix)
        header = container.parse(prefix + handle.read(container.header_size(slot_count) - len(prefix)))
    report = {
        "path": os.fspath(path),
        "file_size": size,
        "format_version": version,
        "suite": suite,
        "header_size": header.size,
        "index_message_size": index_len,
        "data_message_size": data_len,
        "data_size": chunked.plaintext_length(data_len),
        "recipients": [slot.key_id.hex() for slot in header.slots],
    }
    if key is not None:
        with SealedReader.open(path, key) as reader:
            report["metadata"] = reader.metadata()
            report["tensors"] = [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offsets": [t.begin, t.end]}
                for t in reader.index.tensors
            ]
    return report


def verify(path: str | os.PathLike, key, *, threads: int = 0) -> dict:
    """Authenticate every byte of a sealed file (header, slots, index, every data chunk); writes
    nothing. Returns a small summary, raises on the first failure."""
    with SealedReader.open(path, key) as reader:
        reader.verify(threads=threads)
        return {"tensors": len(reader.index.tensors), "data_size": reader.data_length}


def engine_info() -> dict:
    """The engine in use: backend (c/python), AES provider, its CPU path, default thread count."""
    return dict(_backends.engine().info())
