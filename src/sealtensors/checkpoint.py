"""Sealed Hugging Face checkpoint directories: every ``*.safetensors`` shard sealed, bound together
by a sealed manifest, the tensor-name map of ``*.safetensors.index.json`` kept only inside it.

A sealed directory holds (docs/FORMAT.md, appendix B):

* each ``*.safetensors`` file of the source, sealed under the same name (its own data key and file
  id: a data key is never shared between files, so a directory rewrap is one rewrap per file);
* ``sealtensors-manifest.sealed``: a sealed file with no tensors whose encrypted metadata entry
  ``sealtensors.checkpoint`` is the manifest (JSON): for each shard its file id and the SHA-512 of
  its index message and of its data message header, the original index JSON documents, and the
  SHA-512 of every other file. Opening a shard checks it against the manifest, so a dropped
  shard, a shard from another version of the checkpoint, or a renamed shard is an IntegrityError;
* each ``*.safetensors.index.json`` replaced by a stub that lists the shard file names only (what
  loaders need to find them), with placeholder keys instead of tensor names;
* every other file (config.json, tokenizer files) copied as it is, its hash bound in the manifest.

Without a key, anyone sees file names and sizes (so roughly how the model is split), the number of
shards, and the plain files (config.json: the architecture); tensor names, shapes and which tensor
lives in which shard are encrypted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .crypto import chunked
from .errors import FormatError, IntegrityError, RecipientError
from .format import container
from .format.safetensors_io import SEALED_MAGIC

MANIFEST_NAME = "sealtensors-manifest.sealed"
MANIFEST_METADATA_KEY = "sealtensors.checkpoint"
MANIFEST_VERSION = 1
STUB_MARKER = "sealtensors.sealed-checkpoint"
WEIGHTS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


# --- what a directory holds -----------------------------------------------------------------------


def is_sealed_file(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with the sealed magic bytes (b"SEALTENS")."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


def is_sealed_checkpoint(directory, *, fs=None) -> bool:
    """True when ``directory`` (a local directory, a URL, or a path in the fsspec filesystem
    ``fs``) holds a checkpoint manifest. A store that keeps failing raises RemoteSourceError."""
    return _Directory.of(directory, fs).has_file(MANIFEST_NAME)


def _relative_files(directory: Path) -> list[str]:
    """Every entry under ``directory`` that is a file or a symbolic link, as sorted relative POSIX
    paths. Links are listed (not followed) so that the manifest check can refuse them: a link could
    point a shard name at a file outside the sealed directory."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            if full.is_symlink() or full.is_file():
                found.append(full.relative_to(directory).as_posix())
    return sorted(found)


def _check_member_name(name: str) -> str:
    """A relative path inside a checkpoint: refuse absolute paths, '..', empty parts."""
    if not isinstance(name, str) or not name:
        raise FormatError("checkpoint manifest: a file name must be a non-empty string")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")) \
            or "\\" in name or "\x00" in name:
        raise FormatError(f"checkpoint manifest: file name {name!r} leaves the directory")
    return name


def _sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Directory:
    """Where a checkpoint directory is: a local folder, or a prefix in object storage (a URL, or a
    path in an fsspec filesystem). Members are named by their relative paths. A store that cannot
    list a directory (HTTP) is read from the manifest's list of files only."""

    def __init__(self, local: Path | None, label: str, *, fs=None, root: str = "",
                 template=None) -> None:
        self.local = local
        self.label = label
        self.fs = fs
        self.root = root
        self._template = template  # the RemotePath given: its concurrency, part size, attempts

    @classmethod
    def of(cls, directory, fs=None) -> "_Directory":
        """``directory`` (a path, a URL, a RemotePath, or a path in ``fs``) as a _Directory."""
        from .io import remote

        if isinstance(directory, _Directory):
            return directory
        location = remote.resolve(remote.bind(directory, fs))
        if location is None:
            local = remote.local_path(directory)
            return cls(Path(local), os.fspath(local))
        store, path = location.resolved()
        root = store._strip_protocol(path).rstrip("/")
        label = remote.RemotePath(root, store).url()
        return cls(None, label, fs=store, root=root, template=location)

    @property
    def scheme(self) -> str:
        """What the directory is in, for messages ('local', 's3', 'http', ...)."""
        if self.local is not None:
            return "local"
        from .io.remote import store_kind

        return store_kind(self.fs)

    def member(self, name: str):
        """A path for the readers: a Path, or a RemotePath carrying the given read options."""
        if self.local is not None:
            return self.local / name
        from .io.remote import RemotePath

        options = self._template
        return RemotePath(f"{self.root}/{name}", self.fs, options.concurrency,
                          options.part_bytes, options.attempts)

    def can_list(self) -> bool:
        return self.local is not None or self.scheme != "http"

    def listing(self) -> list[str] | None:
        """Every file under the directory as sorted relative paths (local: symbolic links too),
        or None where the store cannot list (HTTP)."""
        if self.local is not None:
            return _relative_files(self.local)
        if not self.can_list():
            return None
        from .io.remote import with_retries

        def find() -> list[str]:
            # A fresh listing: fsspec caches listings per filesystem instance, and a cached one
            # would also answer later metadata requests with stale ETags.
            self.fs.invalidate_cache(self.root)
            try:
                return self.fs.find(self.root, withdirs=False)
            finally:
                self.fs.invalidate_cache(self.root)

        found = with_retries(find, label=self.label, what="listing")
        prefix = self.root + "/"
        return sorted(path[len(prefix):] for path in found
                      if path.startswith(prefix) and not path.endswith("/"))

    def size_of(self, name: str) -> int | None:
        """The size of member ``name``, or None when there is no such file."""
        if self.local is not None:
            path = self.local / name
            return path.stat().st_size if path.is_file() else None
        from .io.remote import RemoteSourceError, with_retries

        path = f"{self.root}/{name}"
        try:
            info = with_retries(lambda: self.fs.info(path), label=f"{self.label}/{name}",
                                what="metadata")
        except RemoteSourceError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        size = info.get("size")
        if info.get("type", "file") != "file" or not isinstance(size, int):
            return None
        return size

    def has_file(self, name: str) -> bool:
        return self.size_of(name) is not None

    def is_link(self, name: str) -> bool:
        return self.local is not None and (self.local / name).is_symlink()

    def sha512(self, name: str) -> str:
        """SHA-512 (hex) of member ``name``; remote members are fetched in ranges, each retried and
        pinned to the version seen first."""
        digest = hashlib.sha512()
        self._stream(name, digest.update)
        return digest.hexdigest()

    def copy_to(self, name: str, target: Path) -> None:
        if self.local is not None:
            shutil.copyfile(self.local / name, target)
            return
        with open(target, "wb") as handle:
            self._stream(name, handle.write)

    def _stream(self, name: str, sink: Callable[[bytes], object]) -> None:
        if self.local is not None:
            with open(self.local / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sink(block)
            return
        from .io.remote import RemoteObject

        options = self._template
        remote = RemoteObject(self.fs, f"{self.root}/{name}", attempts=options.attempts,
                              head_bytes=0)
        try:
            step = options.part_bytes
            for offset in range(0, remote.size, step):
                sink(remote.read(offset, step))
        finally:
            remote.close()

    def in_parallel(self, names, job: Callable[[str], object]) -> dict[str, object]:
        """``job(name)`` for each name: remote ones several at once (each is a round trip)."""
        jobs = {name: (lambda name=name: job(name)) for name in names}
        return _run_parallel(jobs, 1 if self.local is not None else _REMOTE_WORKERS)


_REMOTE_WORKERS = 8  # metadata requests and small files fetched at once from a store


# --- the manifest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardBinding:
    """What ties one sealed shard to its checkpoint version."""

    file_id: str          # 32 hex digits
    index_sha512: str     # SHA-512 of the index message as stored
    data_header_sha512: str  # SHA-512 of the data message's 56-byte header (salt, commitment)

    @classmethod
    def of_reader(cls, reader) -> "ShardBinding":
        """From an opened (authenticated) SealedReader."""
        return cls(reader.header.file_id.hex(),
                   hashlib.sha512(reader._index_message).hexdigest(),
                   hashlib.sha512(reader._data_header).hexdigest())

    @classmethod
    def of_file(cls, path) -> "ShardBinding":
        """From a sealed file's bytes, unauthenticated (used right after writing it)."""
        with open(path, "rb") as handle:
            preamble = handle.read(container.PREAMBLE_SIZE)
            _v, _s, active, capacity = container.parse_preamble(preamble)
            handle.seek(container.copy_offset(active, capacity))
            header = container.parse(preamble, handle.read(capacity))
            handle.seek(header.index_offset)
            index_message = handle.read(header.index_length)
            data_header = handle.read(chunked.HEADER_SIZE)
        return cls(header.file_id.hex(), hashlib.sha512(index_message).hexdigest(),
                   hashlib.sha512(data_header).hexdigest())

    def matches(self, other: "ShardBinding") -> bool:
        return all(hmac.compare_digest(a.encode(), b.encode()) for a, b in (
            (self.file_id, other.file_id), (self.index_sha512, other.index_sha512),
            (self.data_header_sha512, other.data_header_sha512)))


@dataclass(frozen=True)
class Manifest:
    """The authenticated content of a checkpoint's manifest."""

    shards: dict[str, ShardBinding]     # relative path -> binding
    indexes: dict[str, str]             # relative path -> original index JSON text
    files: dict[str, tuple[int, str]]   # other files: relative path -> (size, SHA-512 hex)
    file_id: str                        # the manifest's own file id

    def to_json(self) -> str:
        return json.dumps({
            "sealtensors_checkpoint": MANIFEST_VERSION,
            "shards": {name: {"file_id": b.file_id, "index_sha512": b.index_sha512,
                              "data_header_sha512": b.data_header_sha512}
                       for name, b in sorted(self.shards.items())},
            "indexes": dict(sorted(self.indexes.items())),
            "files": {name: {"size": size, "sha512": digest}
                      for name, (size, digest) in sorted(self.files.items())},
        }, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, file_id: str) -> "Manifest":
        from .format.strict_json import loads

        doc = loads(text.encode("utf-8", "surrogatepass"), "the checkpoint manifest")
        hex32, hex128 = _hex_checker(32), _hex_checker(128)
        if not isinstance(doc, dict) or set(doc) != {"sealtensors_checkpoint", "shards",
                                                      "indexes", "files"}:
            raise FormatError("checkpoint manifest: expected exactly the keys "
                              "sealtensors_checkpoint, shards, indexes, files")
        version = doc["sealtensors_checkpoint"]
        # The version is the JSON integer 1: 1.0 or true compare equal in Python but are not it.
        if type(version) is not int or version != MANIFEST_VERSION:
            from .errors import UnsupportedFormatError

            raise UnsupportedFormatError(f"checkpoint manifest version "
                                         f"{doc['sealtensors_checkpoint']!r} is not supported")
        shards, indexes, files = {}, {}, {}
        for name, entry in _object(doc["shards"], "shards").items():
            if not isinstance(entry, dict) or set(entry) != {"file_id", "index_sha512",
                                                             "data_header_sha512"}:
                raise FormatError(f"checkpoint manifest: bad shard entry for {name!r}")
            shards[_check_member_name(name)] = ShardBinding(
                hex32(entry["file_id"]), hex128(entry["index_sha512"]),
                hex128(entry["data_header_sha512"]))
        for name, entry in _object(doc["indexes"], "indexes").items():
            if not isinstance(entry, str):
                raise FormatError(f"checkpoint manifest: index {name!r} must be a string")
            indexes[_check_member_name(name)] = entry
        for name, entry in _object(doc["files"], "files").items():
            if not isinstance(entry, dict) or set(entry) != {"size", "sha512"} or \
                    type(entry["size"]) is not int or entry["size"] < 0:
                raise FormatError(f"checkpoint manifest: bad file entry for {name!r}")
            files[_check_member_name(name)] = (entry["size"], hex128(entry["sha512"]))
        if not shards:
            raise FormatError("checkpoint manifest lists no shards")
        overlap = (set(shards) & set(indexes)) | (set(shards) & set(files)) | \
            (set(indexes) & set(files))
        if overlap or MANIFEST_NAME in set(shards) | set(indexes) | set(files):
            raise FormatError("checkpoint manifest: a file is listed twice")
        return cls(shards, indexes, files, file_id)

    def check_shard(self, name: str, reader) -> None:
        """IntegrityError unless the opened ``reader`` is the shard sealed as ``name``."""
        expected = self.shards.get(name)
        if expected is None:
            raise IntegrityError(f"{name}: this sealed file is not part of the checkpoint (its "
                                 "manifest does not list it)")
        if not expected.matches(ShardBinding.of_reader(reader)):
            raise IntegrityError(f"{name}: not the shard this checkpoint was sealed with (a shard "
                                 "of another version, or another shard renamed)")

    def check_directory(self, directory, *, hash_files: bool = True, fs=None) -> list[str]:
        """IntegrityError when a listed shard is missing, a sealed or safetensors file is not
        listed, or (``hash_files``) a plain file changed. ``directory``: a local directory, a URL,
        or a path in the fsspec filesystem ``fs`` (plain files are then fetched to be hashed).

        Returns what could not be checked where the directory is: empty, except on stores that
        cannot list a directory (HTTP), where weight files that the manifest does not list cannot
        be seen (they are never loaded either: loaders take the manifest's list)."""
        where = _Directory.of(directory, fs)
        not_checked = []
        present = where.listing()
        if present is None:
            found = where.in_parallel(sorted(self.shards), where.has_file)
            present = {name for name, there in found.items() if there}
            not_checked.append(f"weight files not listed in the manifest: a {where.scheme} store "
                               "cannot list a directory (only the manifest's files were checked)")
        present = set(present)
        missing = sorted(set(self.shards) - present)
        linked = sorted(name for name in set(self.shards) | set(self.files)
                        if name in present and where.is_link(name))
        if linked:
            raise IntegrityError(f"{where.label}: listed file(s) are symbolic links, not the "
                                 f"sealed files themselves: {', '.join(linked)}")
        if missing:
            raise IntegrityError(f"{where.label}: shard(s) missing from the sealed checkpoint: "
                                 f"{', '.join(missing)}")
        extra = sorted(name for name in present - set(self.shards) - {MANIFEST_NAME}
                       if name.endswith(WEIGHTS_SUFFIX))
        if extra:
            raise IntegrityError(f"{where.label}: weight file(s) not in the checkpoint's "
                                 f"manifest: {', '.join(extra)}")

        def check_file(name: str) -> None:
            size, digest = self.files[name]
            found = where.size_of(name)
            if found is None:
                raise IntegrityError(f"{where.label}: {name} is missing (the manifest lists it)")
            if hash_files and (found != size or not hmac.compare_digest(
                    where.sha512(name).encode(), digest.encode())):
                raise IntegrityError(f"{where.label}: {name} changed since the checkpoint was "
                                     "sealed")

        where.in_parallel(sorted(self.files), check_file)
        return not_checked

    def weight_map(self, index_name: str) -> dict:
        """The original index document ``index_name`` (tensor names -> shard files)."""
        from .format.strict_json import loads

        if index_name not in self.indexes:
            raise FormatError(f"the checkpoint manifest holds no index {index_name!r}")
        document = loads(self.indexes[index_name].encode("utf-8", "surrogatepass"),
                         f"index {index_name!r} of the checkpoint manifest")
        if not isinstance(document, dict) or not isinstance(document.get("weight_map"), dict):
            raise FormatError(f"checkpoint manifest: index {index_name!r} has no weight_map")
        return document


def _hex_checker(length: int):
    def check(value) -> str:
        if not isinstance(value, str) or len(value) != length or \
                any(c not in "0123456789abcdef" for c in value):
            raise FormatError(f"checkpoint manifest: expected {length} lower-case hex digits")
        return value
    return check


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"checkpoint manifest: {what} must be an object")
    return value


def read_manifest(directory, key, *, fs=None, **verification) -> Manifest:
    """Open and authenticate ``directory``'s manifest (``signer=`` etc. as for any sealed file).
    ``directory``: a local directory, a URL, or a path in the fsspec filesystem ``fs``."""
    from .io.remote import RemoteSourceError
    from .reader import SealedReader

    where = _Directory.of(directory, fs)
    path = where.member(MANIFEST_NAME)
    absent = IntegrityError(f"{where.label}: no {MANIFEST_NAME}: not a sealed checkpoint "
                            "directory (or its manifest was removed)")
    if where.local is not None and not path.is_file():
        raise absent
    try:
        reader = SealedReader.open(path, key, **verification)
    except RemoteSourceError as exc:
        if exc.errno == errno.ENOENT:
            raise absent from None
        raise
    with reader:
        reader.check_trailer()
        metadata = reader.metadata() or {}
        if reader.index.tensors or set(metadata) != {MANIFEST_METADATA_KEY}:
            raise FormatError(f"{os.fspath(path)}: not a checkpoint manifest")
        return Manifest.from_json(metadata[MANIFEST_METADATA_KEY], reader.header.file_id.hex())


def stub_index(index_text: str, where: str) -> str:
    """The plain stub written in place of an index JSON: shard file names only."""
    from .format.strict_json import loads

    document = loads(index_text.encode("utf-8", "surrogatepass"), where)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{where}: not a safetensors index (no weight_map of file names)")
    shard_names = sorted(set(weight_map.values()))
    stub = {"metadata": {STUB_MARKER: f"tensor names are encrypted in {MANIFEST_NAME}"},
            "weight_map": {f"{STUB_MARKER}.shard.{i:05d}": name
                           for i, name in enumerate(shard_names)}}
    return json.dumps(stub, indent=2) + "\n"


def is_stub_index(document) -> bool:
    return isinstance(document, dict) and isinstance(document.get("metadata"), dict) \
        and STUB_MARKER in document["metadata"]


# --- directory outputs ----------------------------------------------------------------------------


@contextlib.contextmanager
def _staged_directory(dst: Path, overwrite: bool):
    """Yield a fresh sibling directory; on success it replaces ``dst`` (a rename: a failed run
    leaves ``dst`` as it was and removes the partial output)."""
    from .io.atomic import DestinationExistsError

    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise DestinationExistsError(f"{dst} exists (pass overwrite=True / --force to replace it)")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(parent))
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{dst.name}.partial-"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if dst.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{dst.name}.old-"))
            os.rename(dst, old / "x")
            os.rename(staging, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    from .io.atomic import current_umask

    return current_umask()


class _ProgressSum:
    """Adds per-file progress callbacks (bytes done in that file) into one ``progress(done,
    total)``; thread safe."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self._progress = progress
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()

    def for_file(self, name: str) -> Callable[[int], None] | None:
        if self._progress is None:
            return None

        def update(done: int) -> None:
            with self._lock:
                self._done[name] = done
                total_done = sum(self._done.values())
            self._progress(total_done, self.total)
        return update


def _run_parallel(jobs: dict[str, Callable[[], object]], workers: int) -> dict[str, object]:
    """Run the jobs (name -> callable) on up to ``workers`` threads; the engines release the GIL.
    The first failure (in name order) is raised after every job stopped."""
    if workers <= 1 or len(jobs) <= 1:
        return {name: job() for name, job in jobs.items()}
    results, errors = {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = {pool.submit(job): name for name, job in jobs.items()}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                results[name] = future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in a stable order
                errors[name] = exc
    if errors:
        raise errors[min(errors)]
    return results


def _default_workers(count: int) -> int:
    return max(1, min(count, 4, os.cpu_count() or 1))


# --- seal / unseal --------------------------------------------------------------------------------


def _plain_data_size(path: Path) -> int:
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
    return max(path.stat().st_size - 8 - header_len, 0)


def seal_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, recipients=None, *, key=None,
                    signer=None, generation: int | None = None, overwrite: bool = False,
                    threads: int = 0, workers: int = 0, progress: Progress | None = None) -> dict:
    """Seal the Hugging Face checkpoint directory ``src`` into the new directory ``dst``.

    Every ``*.safetensors`` file is sealed (each with its own data key), every
    ``*.safetensors.index.json`` becomes a stub without tensor names, other files are copied, and
    a manifest binds them (module docstring). ``recipients``/``key``, ``signer``, ``generation``
    as for :func:`sealtensors.seal_file` (with a signer, every shard and the manifest are signed
    with the same generation). ``workers`` files are sealed at once (0: up to 4).
    ``progress(done, total)`` gets plaintext bytes over all shards. ``dst`` appears complete or
    not at all. Returns a report (shards with their file ids, copied files, the manifest's file
    id)."""
    import time

    from .api import seal_file
    from .keys.keyfile import as_recipients
    from .keys.signing import SigningKey

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(src))
    if is_sealed_checkpoint(src):
        raise FormatError(f"{src} is already a sealed checkpoint")
    wanted = [item for item in (key, recipients) if item is not None]
    recipient_list = as_recipients(wanted if len(wanted) != 1 else wanted[0])
    if signer is not None and not isinstance(signer, SigningKey):
        signer = SigningKey.load(signer)
    if signer is not None and generation is None:
        generation = int(time.time())
    names = _relative_files(src)
    shards = [n for n in names if n.endswith(WEIGHTS_SUFFIX)]
    if not shards:
        raise FormatError(f"{src}: no *.safetensors file to seal")
    for name in shards:
        if is_sealed_file(src / name):
            raise FormatError(f"{src / name} is already sealed")
    indexes = {n: (src / n).read_text(encoding="utf-8") for n in names if n.endswith(INDEX_SUFFIX)}
    for name, text in indexes.items():
        stub = json.loads(stub_index(text, str(src / name)))
        folder = PurePosixPath(name).parent
        missing = sorted(shard for shard in set(stub["weight_map"].values())
                         if (folder / shard).as_posix() not in shards)
        if missing:
            raise FormatError(f"{src / name} names shard(s) that are not there: "
                              f"{', '.join(missing)}")
    sizes = {n: _plain_data_size(src / n) for n in shards}
    counter = _ProgressSum(sum(sizes.values()), progress)
    with _staged_directory(dst, overwrite) as out:
        def seal_one(name: str):
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            seal_file(src / name, target, recipients=recipient_list, threads=threads,
                      progress=counter.for_file(name), signer=signer, generation=generation)
            return ShardBinding.of_file(target)

        bindings = _run_parallel({n: (lambda n=n: seal_one(n)) for n in shards},
                                 workers or _default_workers(len(shards)))
        files = {}
        for name in names:
            if name in bindings:
                continue
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in indexes:
                target.write_text(stub_index(indexes[name], name), encoding="utf-8")
                continue
            shutil.copyfile(src / name, target)
            files[name] = (target.stat().st_size, _sha512_file(target))
        manifest = Manifest(bindings, indexes, files, "")
        manifest_id = _write_manifest(out / MANIFEST_NAME, manifest, recipient_list, signer,
                                      generation)
    return {"src": os.fspath(src), "dst": os.fspath(dst), "manifest_file_id": manifest_id,
            "shards": [{"name": n, "file_id": bindings[n].file_id, "data_size": sizes[n]}
                       for n in shards],
            "indexes": sorted(indexes), "copied": sorted(files),
            "signed": signer is not None, "generation": generation}


def _write_manifest(path: Path, manifest: Manifest, recipients, signer, generation) -> str:
    from .format.index import layout
    from .io.atomic import atomic_output
    from .writer import write_sealed

    index = layout([], {MANIFEST_METADATA_KEY: manifest.to_json()})
    with atomic_output(path, overwrite=True) as out:
        file_id = write_sealed(out, index, [], recipients, signer=signer, generation=generation)
    return file_id.hex()


def open_shard(directory, name: str, key, manifest: Manifest, *, fs=None, **verification):
    """A SealedReader on shard ``name`` of a sealed checkpoint (local directory, URL, or a path in
    the fsspec filesystem ``fs``), checked against ``manifest``."""
    from .reader import SealedReader

    reader = SealedReader.open(_Directory.of(directory, fs).member(name), key, **verification)
    try:
        manifest.check_shard(name, reader)
    except BaseException:
        reader.close()
        raise
    return reader


def _open_shards(where: _Directory, key, manifest: Manifest, verification: dict) -> dict:
    """Every shard opened (remote ones several at once: each open is two round trips), checked
    against the manifest, trailers included; all closed again on a failure."""
    readers: dict = {}
    lock = threading.Lock()

    def open_one(name: str) -> None:
        reader = open_shard(where, name, key, manifest, **verification)
        with lock:
            readers[name] = reader
        reader.check_trailer()

    try:
        where.in_parallel(sorted(manifest.shards), open_one)
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    return {name: readers[name] for name in sorted(readers)}


def unseal_checkpoint(src, dst: str | os.PathLike, key, *, overwrite: bool = False,
                      threads: int = 0, workers: int = 0, progress: Progress | None = None,
                      fs=None, **verification) -> dict:
    """Write the plain checkpoint directory back: shards unsealed (mode 0600), the original index
    JSON restored, other files copied (and their hashes checked). Every shard is checked against
    the manifest and authenticated in full; ``dst`` appears complete or not at all.

    ``src``: a local directory, a URL (``s3://bucket/model/``, ``https://host/model/``), or a
    path in the fsspec filesystem ``fs``; ``dst`` is local. Only the files the manifest lists are
    fetched, by name (a directory listing is not needed)."""
    from .format.safetensors_io import header_for, write_unpadded
    from .io.atomic import atomic_output

    where, dst = _Directory.of(src, fs), Path(dst)
    manifest = read_manifest(where, key, **verification)
    # The plain files are hashed as copied into the output (below), not read twice.
    manifest.check_directory(where, hash_files=False)
    readers = _open_shards(where, key, manifest, verification)
    try:
        counter = _ProgressSum(sum(r.data_length for r in readers.values()), progress)
        with _staged_directory(dst, overwrite) as out:
            # Plain files first: a changed config.json is refused before any shard is unsealed.
            for name in manifest.files:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
            where.in_parallel(sorted(manifest.files),
                              lambda name: where.copy_to(name, out / name))
            # The copies must be what the manifest bound (a file changed meanwhile is refused).
            _check_files(out, manifest)

            def unseal_one(name: str) -> None:
                reader = readers[name]
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(target, mode=0o600) as handle:
                    handle.write(header_for(reader.index))
                    write_unpadded(handle, reader.index, reader.iter_checked_spans(
                        threads=threads, progress=counter.for_file(name)))

            _run_parallel({n: (lambda n=n: unseal_one(n)) for n in readers},
                          workers or _default_workers(len(readers)))
            for name, text in manifest.indexes.items():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_text(text, encoding="utf-8")
    finally:
        for reader in readers.values():
            reader.close()
    return {"src": where.label, "dst": os.fspath(dst), "shards": sorted(manifest.shards),
            "indexes": sorted(manifest.indexes), "copied": sorted(manifest.files)}


def _check_files(directory: Path, manifest: Manifest) -> None:
    for name, (size, digest) in manifest.files.items():
        path = directory / name
        if path.stat().st_size != size or not hmac.compare_digest(
                _sha512_file(path).encode(), digest.encode()):
            raise IntegrityError(f"{name} changed since the checkpoint was sealed")


# --- verify / inspect / rewrap --------------------------------------------------------------------


def verify_checkpoint(directory, key, *, threads: int = 0, workers: int = 0,
                      progress: Progress | None = None, fs=None, **verification) -> dict:
    """Authenticate a sealed checkpoint (local directory, URL, or a path in the fsspec filesystem
    ``fs``): the manifest, that every listed shard is there and no other weight file is, the plain
    files' hashes, and every byte of every shard. Raises on the first failure; returns a summary
    whose ``not_checked`` names what the store did not allow to check (HTTP cannot list a
    directory, so unlisted weight files cannot be seen there)."""
    where = _Directory.of(directory, fs)
    manifest = read_manifest(where, key, **verification)
    not_checked = manifest.check_directory(where)
    readers = _open_shards(where, key, manifest, verification)
    try:
        counter = _ProgressSum(sum(r.data_length for r in readers.values()), progress)

        def verify_one(name: str) -> dict:
            reader = readers[name]
            reader.verify(threads=threads, progress=counter.for_file(name))
            return {"name": name, "tensors": len(reader.index.tensors),
                    "data_size": reader.data_length, "file_id": reader.header.file_id.hex(),
                    "signed": bool(reader.header.trailer_length)}

        results = _run_parallel({n: (lambda n=n: verify_one(n)) for n in readers},
                                workers or _default_workers(len(readers)))
    finally:
        for reader in readers.values():
            reader.close()
    shards = [results[name] for name in sorted(results)]
    return {"path": where.label, "checkpoint": True, "manifest_file_id": manifest.file_id,
            "shards": shards, "tensors": sum(s["tensors"] for s in shards),
            "data_size": sum(s["data_size"] for s in shards),
            "files_checked": sorted(manifest.files),
            "signed": all(s["signed"] for s in shards), "not_checked": not_checked}


def inspect_checkpoint(directory, key=None, *, fs=None, **verification) -> dict:
    """What a sealed checkpoint shows (local directory, URL, or a path in the fsspec filesystem
    ``fs``). Without a key: each sealed file's public report and the plain files (labelled
    unauthenticated). With a key: also the manifest's tensor map, checked.

    A store that cannot list a directory (HTTP) shows the files the manifest lists when a key is
    given, and only the manifest without one (``listing`` in the report says so)."""
    from .api import inspect

    where = _Directory.of(directory, fs)
    names = where.listing()
    manifest = None
    report_listing = "complete"
    if names is None:
        if key is not None:
            manifest = read_manifest(where, key, **verification)
            names = sorted({MANIFEST_NAME, *manifest.shards, *manifest.indexes, *manifest.files})
            report_listing = (f"the manifest's files only: a {where.scheme} store cannot list a "
                              "directory")
        else:
            names = [MANIFEST_NAME] if where.has_file(MANIFEST_NAME) else []
            report_listing = (f"the manifest only: a {where.scheme} store cannot list a "
                              "directory, and without a key the manifest's list is encrypted")
        if manifest is not None:
            manifest.check_directory(where)
    sealed = [n for n in names if n.endswith(WEIGHTS_SUFFIX) or n == MANIFEST_NAME]
    plain = [n for n in names if n not in sealed]
    public = where.in_parallel(sealed, lambda n: dict(inspect(where.member(n)), name=n))
    sizes = where.in_parallel(plain, where.size_of)
    report = {"path": where.label, "checkpoint": MANIFEST_NAME in names,
              "authenticated": False, "listing": report_listing,
              "sealed_files": [public[n] for n in sealed],
              "plain_files": [{"name": n, "size": sizes[n]} for n in plain]}
    if key is None:
        return report
    if manifest is None:
        manifest = read_manifest(where, key, **verification)
        manifest.check_directory(where)
    tensors = {}
    for name in sorted(manifest.shards):
        with open_shard(where, name, key, manifest, **verification) as reader:
            tensors[name] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
                             for t in reader.index.tensors]
    report.update(authenticated=True, manifest_file_id=manifest.file_id, tensors=tensors,
                  indexes={n: json.loads(t) for n, t in manifest.indexes.items()})
    return report


def _already_applied(header, add, remove) -> bool:
    """Whether an interrupted directory rewrap already rewrapped this file: every recipient to
    add has a slot and every one to remove has none."""
    from .api import _slot_ids_to_remove

    for item in add:
        try:
            _slot_ids_to_remove([item], header)
        except RecipientError:
            return False
    for item in remove:
        try:
            _slot_ids_to_remove([item], header)
        except RecipientError:
            continue
        return False
    return True


def rewrap_checkpoint(directory: str | os.PathLike, key, *, add=(), remove=(),
                      verify_data: bool = True, threads: int = 0) -> dict:
    """Add and/or remove recipients of every sealed file of a checkpoint, as one operation.

    First everything is checked (the manifest opens with ``key``, every shard is there, bound and,
    with ``verify_data``, authenticated in full), so a damaged directory is refused before any
    file changes. Then each shard's header is rewritten in place (sealtensors.rewrap: crash-safe
    per file), the manifest last. A crash midway leaves every file either rewrapped or not, each
    one valid and still bound by the manifest (rewrap changes no bound byte); running the same
    rewrap again finishes the job: files already rewrapped are recognised and skipped.
    Returns {"files": [{"name", "action": "rewrapped"|"already", "slots"}], ...}."""
    from .api import rewrap
    from .keys.keyfile import as_recipients
    from .reader import SealedReader

    where = _Directory.of(directory)
    if where.local is None:
        raise ValueError(f"{where.label}: rewrap_checkpoint rewrites files in place and needs a "
                         "local directory (unseal or copy it locally first)")
    directory = where.local
    add = as_recipients(add) if add else []
    remove = list(remove)
    if not add and not remove:
        raise ValueError("nothing to do: give add= and/or remove=")
    manifest = read_manifest(directory, key)
    manifest.check_directory(directory, hash_files=False)
    plan = []
    for name in [*sorted(manifest.shards), MANIFEST_NAME]:
        path = directory / name
        with SealedReader.open(path, key) as reader:
            if name != MANIFEST_NAME:
                manifest.check_shard(name, reader)
            if verify_data:
                reader.verify(threads=threads)
                reader.check_trailer()
            plan.append((name, _already_applied(reader.header, add, remove)))
    files = []
    for name, done in plan:
        if done:
            files.append({"name": name, "action": "already"})
            continue
        result = rewrap(directory / name, key, add=add, remove=remove, verify_data=False,
                        threads=threads)
        files.append({"name": name, "action": "rewrapped", "slots": result["slots"],
                      "rewrote_data": result["rewrote_data"]})
    if all(entry["action"] == "already" for entry in files):
        raise RecipientError("nothing to do: every file already has these recipients")
    return {"path": os.fspath(directory), "files": files}


# --- loading --------------------------------------------------------------------------------------


def iter_checkpoint_weights(directory, key, *, names=None, device: str = "cpu", fs=None,
                            **verification) -> Iterator[tuple[str, object]]:
    """Yield ``(tensor name, torch tensor)`` for every tensor of a sealed checkpoint, shard by
    shard (the manifest checked first, every shard against it). ``directory``: a local directory,
    a URL (``s3://bucket/model/``, ``https://host/model/``), or a path in the fsspec filesystem
    ``fs``. ``names``: only these shards."""
    from .safe_open import safe_open

    where = _Directory.of(directory, fs)
    manifest = read_manifest(where, key, **verification)
    manifest.check_directory(where)
    for name in sorted(manifest.shards) if names is None else names:
        handle = safe_open(where.member(name), "pt", device=device, key=key, **verification)
        try:
            manifest.check_shard(name, handle._reader)
            for tensor_name in handle.offset_keys():
                yield tensor_name, handle.get_tensor(tensor_name)
        finally:
            handle.close()


def load_checkpoint(directory, key, *, device: str = "cpu", fs=None, **verification) -> dict:
    """Every tensor of a sealed checkpoint as ``{name: torch tensor}`` (a state dict), from a local
    directory, a URL, or a path in the fsspec filesystem ``fs``."""
    return dict(iter_checkpoint_weights(directory, key, device=device, fs=fs, **verification))
