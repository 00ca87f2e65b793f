"""File-level operations: seal/unseal safetensors files, rewrap key slots, inspect, verify."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
from typing import Callable, Iterable

from .engine import backends as _backends
from .crypto import chunked
from .format import container
from .io.atomic import atomic_output, refuse_same_file
from .format.safetensors_io import READ_PIECE, header_for, read_header, tensor_pieces, write_unpadded
from .errors import InvalidKeyError
from .format.index import TensorInfo, align_up, layout
from .keys.keyfile import KEY_ID_SIZE, as_key, as_keys, key_id
from .numpy import tensor_view
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
            largest = max((t.end - t.begin for t in tensors), default=0)
            piece_buffer = bytearray(max(1, min(READ_PIECE, largest)))
            pieces = (tensor_pieces(fd, data_start, t, piece_buffer) for t in tensors)
            write_sealed(out, index, pieces, recipients, threads=threads, progress=progress)
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

            write_unpadded(out, reader.index,
                           reader.iter_checked_spans(threads=threads, progress=progress))


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
        # In place: replace the file a symbolic link points to (not the link), keeping its mode.
        dst, overwrite = os.path.realpath(src), True
        mode = stat.S_IMODE(os.stat(dst).st_mode)
    else:
        refuse_same_file(dst, src)
        mode = 0o644
    with open(os.fspath(src), "rb") as source:
        fd = source.fileno()
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
            raise ValueError("refusing to remove every recipient: the file could never be opened")
        if remove_ids & added_ids:
            raise ValueError("a key cannot be both added and removed")
        new_header = container.rebuild_with_slots(header, data_key, add_keys, keep)
        with atomic_output(dst, overwrite=overwrite, mode=mode) as out:
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


def verify(path: str | os.PathLike, key, *, threads: int = 0,
           progress: ProgressCallback | None = None) -> dict:
    """Authenticate every byte of a sealed file (header, slots, index, every data chunk); writes
    nothing. ``progress`` is called with the plaintext bytes authenticated so far. Returns a small
    summary, raises on the first failure."""
    with SealedReader.open(path, key) as reader:
        reader.verify(threads=threads, progress=progress)
        return {"tensors": len(reader.index.tensors), "data_size": reader.data_length}


def _placements(reader: SealedReader, names) -> tuple[list[tuple[TensorInfo, int]], int]:
    """Where each requested tensor goes in a caller's buffer, and the bytes needed."""
    if names is None:
        return [(info, info.begin) for info in reader.index.tensors], reader.data_length
    if isinstance(names, str):
        raise TypeError("names must be a list of tensor names, not a string")
    placements, position, seen = [], 0, set()
    for name in names:
        if name in seen:
            raise ValueError(f"tensor {name!r} requested twice")
        seen.add(name)
        info = reader.info(name)
        position = align_up(position)
        placements.append((info, position))
        position += info.nbytes
    return placements, position


def buffer_size(filename: str | os.PathLike, key, names=None) -> int:
    """Bytes a buffer must hold for :func:`load_into` with the same ``names``."""
    with SealedReader.open(filename, key) as reader:
        return _placements(reader, names)[1]


def load_into(filename: str | os.PathLike, key, buffer, *, names=None,
              threads: int = 0) -> dict[str, np.ndarray]:
    """Decrypt tensors of a sealed file into memory the caller owns (serving stacks that manage
    their own, for instance pinned, buffers).

    ``buffer``: any writable, C-contiguous buffer-protocol object (numpy array, bytearray, mmap,
    ``torch_tensor.numpy()`` of a pinned uint8 tensor) of at least :func:`buffer_size` bytes.
    ``names=None`` places the whole data section at its file layout with one call to the engine;
    a list of names packs just those tensors, in that order, each at a 64-byte aligned offset,
    decrypting only the chunks that hold them. Returns ``{name: numpy view into buffer}``; the
    buffer stays the caller's (sealtensors keeps no reference to it). On any failure the part of
    the buffer this call wrote is wiped before the error is raised. Thread safe.
    """
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError("buffer must be writable")
    if not view.c_contiguous:
        raise ValueError("buffer must be C-contiguous")
    target = np.frombuffer(view.cast("B"), dtype=np.uint8)
    with SealedReader.open(filename, key) as reader:
        placements, needed = _placements(reader, names)
        if len(target) < needed:
            raise ValueError(f"buffer holds {len(target)} bytes, {needed} are needed "
                             "(see sealtensors.buffer_size)")
        try:
            if names is None:
                reader.read_all_into(target[:needed], threads=threads)
            else:
                for info, position in placements:
                    reader.read_range_into(info.begin, info.end,
                                           target[position:position + info.nbytes], threads=threads)
        except BaseException:
            target[:needed] = 0
            raise
        return {info.name: tensor_view(target, info, info.begin - position)
                for info, position in placements}


def engine_info() -> dict:
    """The engine in use: backend (c/python), AES provider, its CPU path, default thread count."""
    return dict(_backends.engine().info())
