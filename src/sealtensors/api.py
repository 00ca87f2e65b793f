"""File-level operations: seal/unseal safetensors files, rewrap recipients, reseal, inspect, verify."""

from __future__ import annotations

import hmac
import os
import re
import shutil
import stat

import numpy as np
from typing import Callable, Iterable

from .engine import backends as _backends
from .crypto import chunked
from .format import container, trailer
from .io.atomic import atomic_output, check_destination, refuse_same_file
from .io.header_update import locked_for_update, write_header
from .format.safetensors_io import header_for, read_header, write_unpadded
from .errors import IntegrityError, InvalidKeyError, RecipientError
from .format.index import TensorInfo, align_up, layout
from .keys import textcodec
from .keys.keyfile import as_identities, as_recipients, load_identity, parse_recipient
from .keys.pins import verification_options
from .keys.slots import SLOT_ID_SIZE, Identity, Recipient
from .numpy import tensor_view
from .reader import SealedReader, _Source, read_active_header
from .writer import FileRange, write_sealed

ProgressCallback = Callable[[int], None]
_SLOT_ID_HEX = re.compile(r"[0-9a-f]{32}")


def seal_file(src: str | os.PathLike, dst: str | os.PathLike, key=None, *, recipients=None,
              overwrite: bool = False, threads: int = 0, progress: ProgressCallback | None = None,
              signer=None, generation: int | None = None) -> str:
    """Seal the ``.safetensors`` file ``src`` into ``dst``; returns the new file id (hex).

    Recipients: ``recipients`` and/or ``key`` (the v0.1 name) — 32-byte keys, key files, public
    recipient strings (``st-x25519:...``, ``st-xwing:...``), Recipient objects (Passphrase,
    providers), or lists of them. ``signer`` (a SigningKey or signing key file) signs the file as
    its publisher, with ``generation`` (default: the current Unix time). Streams: memory stays
    bounded whatever the model size. Tensors keep their names, dtypes, shapes and the file's
    ``__metadata__``. ``progress`` is called with the plaintext bytes done so far.
    """
    refuse_same_file(dst, src)
    wanted = [item for item in (key, recipients) if item is not None]
    recipient_list = as_recipients(wanted if len(wanted) != 1 else wanted[0])
    check_destination(dst, overwrite=overwrite)
    fd = os.open(os.fspath(src), os.O_RDONLY)
    try:
        tensors, metadata, data_start = read_header(fd)
        index = layout(((t.name, t.dtype, t.shape) for t in tensors), metadata)
        with atomic_output(dst, overwrite=overwrite) as out:
            # Ranges, not bytes: the writer preads them straight into its encryption buffer.
            pieces = ((FileRange(fd, data_start + t.begin, t.end - t.begin),) for t in tensors)
            file_id = write_sealed(out, index, pieces, recipient_list, threads=threads,
                                   progress=progress, signer=signer, generation=generation)
    finally:
        os.close(fd)
    return file_id.hex()


def unseal_file(src: str | os.PathLike, dst: str | os.PathLike, key, *, overwrite: bool = False,
                threads: int = 0, progress: ProgressCallback | None = None, fs=None,
                **verification) -> None:
    """Decrypt the sealed file ``src`` back into a ``.safetensors`` file ``dst`` (mode 0600).

    The whole data section is authenticated as it streams; on any failure ``dst`` is not created
    (or left untouched) and no partial output remains. ``signer=``/pins as for :func:`verify`."""
    refuse_same_file(dst, src)
    check_destination(dst, overwrite=overwrite)
    with SealedReader.open(src, key, fs=fs, **verification_options(**verification)) as reader:
        reader.check_trailer()
        with atomic_output(dst, overwrite=overwrite, mode=0o600) as out:
            out.write(header_for(reader.index))
            write_unpadded(out, reader.index,
                           reader.iter_checked_spans(threads=threads, progress=progress))


def _slot_ids_to_remove(remove: Iterable, header: container.Header) -> list[tuple[bytes, str]]:
    """(slot id, how the caller named it) for each removal; RecipientError when one is not there."""
    wanted: list[tuple[bytes, str]] = []
    for item in remove:
        if isinstance(item, (bytes, bytearray)) and len(item) == SLOT_ID_SIZE:
            wanted.append((bytes(item), bytes(item).hex()))
            continue
        if isinstance(item, str):
            text = item.strip()
            # Strict: exactly 32 lower-case hex digits is a slot id, never a path.
            if _SLOT_ID_HEX.fullmatch(text):
                wanted.append((bytes.fromhex(text), text))
                continue
            if textcodec.tag_of(text) in ("st-x25519", "st-xwing"):
                recipient = parse_recipient(text)
                from .keys.hpke import slot_id_for

                wanted.append((slot_id_for(recipient.slot_type, recipient.public_key, header.file_id),
                               text[:24] + "..."))
                continue
            if re.fullmatch(r"[0-9a-fA-F]+", text):
                raise InvalidKeyError("a slot id is exactly 32 lower-case hexadecimal digits")
        identities = as_identities(item)
        for identity in identities:
            ids = identity.candidate_slot_ids(header.file_id)
            name = identity.describe()
            if ids is None:
                # Passphrase and provider slots have random ids: find the slot it opens.
                for record in header.slots:
                    if record.slot_type in identity.slot_types and \
                            identity.unwrap(record, header.file_id) is not None:
                        ids = frozenset((record.slot_id,))
                        break
            present = [i for i in (ids or ()) if any(r.slot_id == i for r in header.slots)]
            if not present:
                raise RecipientError(f"cannot remove {name}: it has no slot in this file")
            wanted.extend((i, name) for i in present)
    for slot_id, name in wanted:
        if not any(hmac.compare_digest(record.slot_id, slot_id) for record in header.slots):
            raise RecipientError(f"cannot remove {name}: no slot with that id in this file")
    return wanted


def _new_records(reader: SealedReader, data_key: bytes, add, remove) -> list:
    header = reader.header
    # The same recipient named on both sides (also for types without a computable slot id:
    # passphrases, providers) is a contradiction, not a replacement.
    added_recipients = as_recipients(add) if add else []
    for item in remove:
        if isinstance(item, (Recipient, Identity)) and any(item == r for r in added_recipients):
            raise RecipientError("a recipient cannot be both added and removed")
    removals = {slot_id for slot_id, _ in _slot_ids_to_remove(remove, header)}
    kept = [record for record in header.slots if record.slot_id not in removals]
    added = container.wrap_for(added_recipients, data_key, header.file_id) if add else []
    for record in added:
        if any(hmac.compare_digest(record.slot_id, old.slot_id) for old in header.slots):
            if record.slot_id in removals:
                raise RecipientError("a recipient cannot be both added and removed")
            raise RecipientError(f"cannot add a {record.type_name} recipient: it already has a "
                                 f"slot in this file ({record.slot_id.hex()})")
    records = kept + added
    if not records:
        raise ValueError("refusing to remove every recipient: the file could never be opened")
    return records


def _open_for_rewrap(path, key, verify_data: bool, threads: int) -> tuple[SealedReader, bytes]:
    reader = SealedReader.open(path, key, keep_data_key=True)
    try:
        if verify_data:
            reader.verify(threads=threads)
            reader.check_trailer()
        return reader, reader.data_key_for_rewrap()
    except BaseException:
        reader.close()
        raise


def rewrap(src: str | os.PathLike, key, *, add=(), remove=(), dst: str | os.PathLike | None = None,
           overwrite: bool = False, verify_data: bool = True, threads: int = 0) -> dict:
    """Add and/or remove recipients without touching the index or the data.

    ``key`` must open the file. ``add``: recipients (public strings are enough). ``remove``: slot
    ids (exactly 32 hex digits), public recipient strings, or keys/identities. Removing a
    recipient the file does not have, or adding one it has, is a RecipientError. With
    ``verify_data`` (the default) every data chunk is authenticated first, so a damaged file is
    refused rather than rewrapped.

    In place (``dst=None``): under an exclusive lock, the new header goes into the file's spare
    header copy and one byte flips to make it active (crash-safe; nothing else is written). When
    the new slots do not fit the copy's capacity, the whole file is rewritten atomically with a
    larger capacity. With ``dst``, a new file is written (index and data copied byte for byte).

    Removing a recipient does NOT revoke anyone who kept the data key or an old copy of the file:
    use :func:`reseal` for that. Returns {"slots": [...], "in_place": bool, "rewrote_data": bool}.
    """
    if dst is not None:
        refuse_same_file(dst, src)
        check_destination(dst, overwrite=overwrite)
        reader, data_key = _open_for_rewrap(src, key, verify_data, threads)
        with reader:
            new = container.with_slots(reader.header, _new_records(reader, data_key, add, remove))
            _copy_with_header(reader, new, data_key, dst, overwrite, None)
        return _rewrap_report(new, in_place=False, rewrote_data=True)
    with locked_for_update(src) as fd:
        reader, data_key = _open_for_rewrap(src, key, verify_data, threads)
        with reader:
            new = container.with_slots(reader.header, _new_records(reader, data_key, add, remove))
            if os.fstat(fd).st_size != reader.header.file_length:
                raise IntegrityError("the file changed while it was being rewrapped")
            if container.fits(new):
                write_header(fd, new, data_key)
                return _rewrap_report(new, in_place=True, rewrote_data=False)
            real = os.path.realpath(src)
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            _copy_with_header(reader, new, data_key, real, True, mode)
            return _rewrap_report(new, in_place=True, rewrote_data=True)


def _rewrap_report(header: container.Header, *, in_place: bool, rewrote_data: bool) -> dict:
    from .keys import audit

    audit.file_event("rewrap", header.file_id, "ok", slots=len(header.slots),
                     slot_ids=",".join(r.slot_id.hex() for r in header.slots), in_place=in_place)
    return {"slots": [{"type": r.type_name, "slot_id": r.slot_id.hex()} for r in header.slots],
            "in_place": in_place, "rewrote_data": rewrote_data}


def _copy_with_header(reader: SealedReader, header: container.Header, data_key: bytes, dst,
                      overwrite: bool, mode: int | None) -> None:
    """Write ``header`` (grown if needed) followed by the reader's index, data and trailer."""
    from dataclasses import replace

    if not container.fits(header):
        header = replace(header, capacity=container.capacity_for(
            container.slot_table_length(header.slots)))
    header = replace(header, active=0)
    source = reader._source
    options = {} if mode is None else {"mode": mode}
    with source.in_use(), atomic_output(dst, overwrite=overwrite, **options) as out:
        out.write(container.header_region(header, data_key))
        offset = reader.header.index_offset
        remaining = reader.header.file_length - offset
        while remaining:
            piece = source.read(offset, min(remaining, 16 << 20))
            if not piece:
                raise IntegrityError("the file shrank while it was being copied")
            out.write(piece)
            offset += len(piece)
            remaining -= len(piece)


def reseal(src: str | os.PathLike, key, *, dst: str | os.PathLike | None = None, recipients=None,
           signer=None, generation: int | None = None, allow_unsigned: bool = False,
           overwrite: bool = False, threads: int = 0, progress: ProgressCallback | None = None,
           **verification) -> str:
    """Re-encrypt a sealed file under a NEW data key and file id: what revokes a removed
    recipient for real (their old data key opens nothing in the new file).

    Streams with bounded memory; every chunk of the source is authenticated on the way. The new
    file is sealed for ``recipients`` (default: the identity that opened it). A signed source must
    be re-signed (``signer=``; the new generation defaults to the current Unix time) unless
    ``allow_unsigned``. ``dst=None`` replaces ``src`` atomically. Returns the new file id (hex).
    """
    options = verification_options(**verification)
    in_place = dst is None
    target = os.path.realpath(src) if in_place else dst
    if not in_place:
        refuse_same_file(dst, src)
        check_destination(dst, overwrite=overwrite)
    with SealedReader.open(src, key, **options) as reader:
        reader.check_trailer()
        if reader.header.trailer_length and signer is None and not allow_unsigned:
            raise ValueError("the file is signed: give signer= to re-sign the new file, or "
                             "allow_unsigned=True to drop the signature")
        if recipients is None:
            opener = reader.opened_by
            if not isinstance(opener, Recipient):
                raise ValueError("give recipients= for the new file (the identity that opened this "
                                 "one cannot seal by itself)")
            recipients = [opener]
        elif isinstance(recipients, (list, tuple)) and not recipients:
            raise ValueError("recipients must not be empty")
        index = reader.index
        mode = stat.S_IMODE(os.stat(target).st_mode) if in_place else None
        spans = reader.iter_checked_spans(threads=threads, progress=progress)
        with atomic_output(target, overwrite=in_place or overwrite,
                           **({"mode": mode} if mode is not None else {})) as out:
            file_id = write_sealed(out, index, _pieces_from_spans(index, spans), recipients,
                                   threads=threads, signer=signer, generation=generation)
    return file_id.hex()


def _pieces_from_spans(index, spans):
    """Per-tensor piece iterators over the data section's plaintext spans, in order."""
    state = {"span": memoryview(b""), "start": 0}
    spans = iter(spans)

    def pieces(info: TensorInfo):
        position = info.begin
        while position < info.end:
            span, start = state["span"], state["start"]
            if position >= start + len(span):
                state["start"] = start + len(span)
                state["span"] = next(spans)
                continue
            take = min(info.end, start + len(span)) - position
            yield span[position - start:position - start + take]
            position += take

    for info in index.tensors:
        yield pieces(info)


def inspect(path: str | os.PathLike, key=None, *, fs=None, **verification) -> dict:
    """What a file shows. Without a key: the public layout (sizes, slot types and ids, whether it
    is signed), labelled unauthenticated, after checking the file length against the header. With
    a key (read once, authenticated): also the tensor table, the metadata and which slot is the
    key's; with ``signer=``, the signature is verified too."""
    if key is not None:
        # Read once, authenticated: everything reported comes from the opened reader.
        with SealedReader.open(path, key, fs=fs, **verification_options(**verification)) as reader:
            header = reader.header
            signature = reader.signature
            if header.trailer_length:
                raw = reader._read_trailer()  # authenticated by the header's trailer digest
                if signature is None:
                    signature = _parse_signature(raw)
            report = _public_report(path, header, signature)
            report["authenticated"] = True
            report["signature_verified"] = reader.signature is not None
            report["your_slot"] = header.slots[reader.unlocked_slot].slot_id.hex()
            report["metadata"] = reader.metadata()
            report["tensors"] = [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                 "offsets": [t.begin, t.end]}
                for t in reader.index.tensors
            ]
        return report
    source = _Source.from_path(path, fs)
    try:
        # An in-place rewrap in another process may be running: read it the readers' way.
        header = read_active_header(source)
        if source.fd is not None:  # a remote source's length is the size pinned at open
            source.length = os.fstat(source.fd).st_size
        if source.length != header.file_length:
            raise IntegrityError(f"file is {source.length} bytes, its header says "
                                 f"{header.file_length} (truncated or extended)")
        signature = None
        if header.trailer_length:
            signature = _parse_signature(source.read(header.trailer_offset,
                                                     header.trailer_length))
    finally:
        source.close()
    return _public_report(path, header, signature)


def _parse_signature(raw: bytes):
    """The trailer's signature for display, or None when it does not parse (inspect shows what
    the file claims; verification is for readers given ``signer=``)."""
    try:
        return trailer.parse(raw)
    except (ValueError, IntegrityError):
        return None


def _public_report(path, header: container.Header, signature) -> dict:
    report = {
        "path": os.fspath(path),
        "authenticated": False,
        "file_size": header.file_length,
        "format_version": header.version,
        "suite": header.suite,
        "file_id": header.file_id.hex(),
        "header_size": header.region_size,
        "header_capacity": header.capacity,
        "header_sequence": header.sequence,
        "index_message_size": header.index_length,
        "data_message_size": header.data_length,
        "data_size": chunked.plaintext_length(header.data_length),
        "recipients": [r.slot_id.hex() for r in header.slots],
        "slots": [{"type": r.type_name, "slot_id": r.slot_id.hex()} for r in header.slots],
        "signed": bool(header.trailer_length),
    }
    if signature is not None:
        report["signature"] = {"signer": signature.signer.text(),
                               "generation": signature.statement.generation,
                               "signed_at": signature.statement.signed_at}
    return report


def verify(path: str | os.PathLike, key, *, threads: int = 0,
           progress: ProgressCallback | None = None, fs=None, **verification) -> dict:
    """Authenticate every byte of a sealed file (header, slots, index, every data chunk, the
    signature trailer's bytes); writes nothing. ``signer=`` (accepted publishers), ``pin=`` (a pin
    file), ``min_generation=``, ``expect_file_id=``: also require a valid publisher signature over
    exactly this content (SignatureError). Returns a summary; raises on the first failure."""
    with SealedReader.open(path, key, fs=fs, **verification_options(**verification)) as reader:
        reader.check_trailer()
        reader.verify(threads=threads, progress=progress)
        from .keys import audit

        audit.file_event("verify", reader.header.file_id, "ok", bytes=reader.data_length,
                         signed_by_accepted=reader.signature is not None)
        summary = {"tensors": len(reader.index.tensors), "data_size": reader.data_length,
                   "file_id": reader.header.file_id.hex(), "signed": bool(reader.header.trailer_length)}
        if reader.signature is not None:
            summary["signer"] = reader.signature.signer.text()
            summary["generation"] = reader.signature.statement.generation
        return summary


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


def buffer_size(filename: str | os.PathLike, key, names=None, *, fs=None) -> int:
    """Bytes a buffer must hold for :func:`load_into` with the same ``names``."""
    with SealedReader.open(filename, key, fs=fs) as reader:
        return _placements(reader, names)[1]


def load_into(filename: str | os.PathLike, key, buffer, *, names=None,
              threads: int = 0, fs=None) -> dict[str, np.ndarray]:
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
    with SealedReader.open(filename, key, fs=fs) as reader:
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
