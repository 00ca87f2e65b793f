"""transformers glue: unmodified ``from_pretrained`` on sealed checkpoint directories, and
``save_pretrained`` straight into one, through the safetensors calls transformers already makes.

One line of setup, any of::

    import sealtensors.integrations.transformers        # + SEALTENSORS_IDENTITY=alice.id
    with sealtensors.integrations.transformers.keys("alice.id"):
        model = AutoModelForCausalLM.from_pretrained("sealed-dir")

Installing the hook replaces, in ``transformers.modeling_utils`` only, the names it imported from
safetensors (``safe_open``, ``safetensors.torch.load``) and ``get_checkpoint_shard_files``. A file
is taken for sealed by its magic bytes (b"SEALTENS"); every other file goes to safetensors exactly
as before, except a plain ``*.safetensors`` file inside a sealed checkpoint directory, which is
refused (it would bypass the manifest). A sealed shard is opened with the configured keys, checked
against its directory's manifest (a dropped, swapped or renamed shard is an IntegrityError) and
decrypted in memory: no plaintext is written anywhere. A sealed file with no key configured is a
WrongKeyError naming the ways to configure one.

Environment (read at each load): ``SEALTENSORS_IDENTITY`` — key or identity files, separated by
``os.pathsep``; ``SEALTENSORS_SIGNER`` — accepted publishers (``st-sign:...`` strings or trust
files), separated by commas; when set, every shard and the manifest must carry their signature.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from pathlib import Path

from ..checkpoint import (
    INDEX_SUFFIX,
    MANIFEST_NAME,
    WEIGHTS_SUFFIX,
    Manifest,
    ShardBinding,
    _staged_directory,
    _write_manifest,
    is_sealed_file,
    is_stub_index,
    read_manifest,
    stub_index,
)
from ..errors import FormatError, IntegrityError, WrongKeyError

ENV_IDENTITY = "SEALTENSORS_IDENTITY"
ENV_SIGNER = "SEALTENSORS_SIGNER"
_MANIFEST_SEARCH_DEPTH = 3  # a shard may sit in a subfolder= of the checkpoint

_lock = threading.RLock()
_key_stack: list[tuple[list, dict]] = []
_originals: dict[str, object] = {}
_manifest_cache: dict[tuple, Manifest] = {}


# --- keys -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def keys(*key_sources, signer=None):
    """Within the block, sealed files load with ``key_sources`` (keys, key/identity files,
    Identity objects), and, with ``signer``, only when signed by an accepted publisher. Installs
    the hook if needed. Nests; the innermost block wins. Process-wide (transformers loads shards
    from worker threads)."""
    from ..keys.keyfile import as_identities
    from ..keys.signing import as_verifying_keys

    identities = as_identities(list(key_sources))
    options = {"signer": as_verifying_keys(signer)} if signer is not None else {}
    install()
    with _lock:
        _key_stack.append((identities, options))
        _manifest_cache.clear()
    try:
        yield
    finally:
        with _lock:
            _key_stack.remove((identities, options))
            _manifest_cache.clear()


def _configured() -> tuple[list | None, dict, tuple]:
    """(identities or None, reader options, a cache tag naming this configuration)."""
    with _lock:
        if _key_stack:
            identities, options = _key_stack[-1]
            return identities, options, ("stack", id(_key_stack[-1]))
    from ..keys.keyfile import load_identity
    from ..keys.signing import as_verifying_keys

    paths = [p for p in os.environ.get(ENV_IDENTITY, "").split(os.pathsep) if p]
    signers = [s.strip() for s in os.environ.get(ENV_SIGNER, "").split(",") if s.strip()]
    options = {"signer": as_verifying_keys(signers)} if signers else {}
    tag = ("env", tuple(paths), tuple(signers))
    return ([load_identity(p) for p in paths] or None), options, tag


def _require_keys(path, what: str = "is a sealed file") -> tuple[list, dict, tuple]:
    identities, options, tag = _configured()
    if not identities:
        raise WrongKeyError(
            f"{path} {what} (sealtensors) and no key is configured: set "
            f"{ENV_IDENTITY}=/path/to/identity (or key file), or load inside `with "
            "sealtensors.integrations.transformers.keys(...)`")
    return identities, options, tag


# --- checkpoint lookups ---------------------------------------------------------------------------


def checkpoint_root(path) -> Path | None:
    """The sealed checkpoint directory holding ``path`` (the nearest one with a manifest)."""
    folder = Path(os.path.abspath(path)).parent
    for _ in range(_MANIFEST_SEARCH_DEPTH + 1):
        if (folder / MANIFEST_NAME).is_file():
            return folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _manifest(root: Path, identities, options, tag) -> Manifest:
    """The root's manifest, authenticated, with the directory checked (cached per file state and
    key configuration)."""
    stat = (root / MANIFEST_NAME).stat()
    cache_key = (str(root), stat.st_ino, stat.st_mtime_ns, stat.st_size, tag)
    with _lock:
        cached = _manifest_cache.get(cache_key)
    if cached is not None:
        return cached
    manifest = read_manifest(root, identities, **options)
    manifest.check_directory(root)
    with _lock:
        _manifest_cache[cache_key] = manifest
    return manifest


def open_sealed(filename, framework: str = "pt", device="cpu", **_ignored):
    """A ``safe_open``-shaped handle on one sealed shard, checked against its manifest."""
    from ..safe_open import safe_open

    identities, options, tag = _require_keys(filename)
    root = checkpoint_root(filename)
    if root is None:
        raise IntegrityError(f"{filename}: a sealed file outside a sealed checkpoint directory (no "
                             f"{MANIFEST_NAME} beside it): seal the whole directory with "
                             "`sealtensors seal SRC_DIR DST_DIR`")
    manifest = _manifest(root, identities, options, tag)
    name = Path(os.path.abspath(filename)).relative_to(root).as_posix()
    handle = safe_open(filename, framework, device=str(device), key=identities, **options)
    try:
        manifest.check_shard(name, handle._reader)
    except BaseException:
        handle.close()
        raise
    return handle


# --- the hooks ------------------------------------------------------------------------------------


def _hooked_safe_open(filename, framework="pt", device="cpu", **kwargs):
    if is_sealed_file(filename):
        return open_sealed(filename, framework, device)
    if os.fspath(filename).endswith(WEIGHTS_SUFFIX) and checkpoint_root(filename) is not None:
        raise IntegrityError(f"{filename}: a plain safetensors file inside a sealed checkpoint "
                             "directory (not covered by its manifest): refusing to load it")
    return _originals["safe_open"](filename, framework=framework, device=device, **kwargs)


def _hooked_load_bytes(data, *args, **kwargs):
    if bytes(data[:8]) == b"SEALTENS":
        raise FormatError("a sealed checkpoint cannot be loaded from bytes (disable_mmap=True or "
                          "an hf-mount file system): its shard names are needed to check them "
                          "against the manifest; load it from a local directory")
    return _originals["load_bytes"](data, *args, **kwargs)


def _hooked_shard_files(pretrained_model_name_or_path, index_filename, *args, **kwargs):
    try:
        with open(index_filename, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        document = None
    if not is_stub_index(document):
        return _originals["shard_files"](pretrained_model_name_or_path, index_filename, *args,
                                         **kwargs)
    root = checkpoint_root(index_filename)
    if root is None:
        raise IntegrityError(f"{index_filename} belongs to a sealed checkpoint but its "
                             f"{MANIFEST_NAME} is not there (download the whole directory)")
    identities, options, tag = _require_keys(index_filename, "belongs to a sealed checkpoint")
    manifest = _manifest(root, identities, options, tag)
    name = Path(os.path.abspath(index_filename)).relative_to(root).as_posix()
    original = manifest.weight_map(name)
    folder = Path(os.path.abspath(index_filename)).parent
    weight_map = dict(original["weight_map"])
    files = [str(folder / shard) for shard in sorted(set(weight_map.values()))]
    metadata = dict(original.get("metadata") or {})
    metadata["all_checkpoint_keys"] = list(weight_map)
    metadata["weight_map"] = weight_map
    return files, metadata


def install() -> None:
    """Patch ``transformers.modeling_utils`` (idempotent)."""
    import transformers.modeling_utils as modeling_utils

    with _lock:
        if _originals:
            return
        _originals["safe_open"] = modeling_utils.safe_open
        _originals["load_bytes"] = modeling_utils._safe_load_bytes
        _originals["shard_files"] = modeling_utils.get_checkpoint_shard_files
        modeling_utils.safe_open = _hooked_safe_open
        modeling_utils._safe_load_bytes = _hooked_load_bytes
        modeling_utils.get_checkpoint_shard_files = _hooked_shard_files


def uninstall() -> None:
    """Put transformers' own functions back."""
    import transformers.modeling_utils as modeling_utils

    with _lock:
        if not _originals:
            return
        modeling_utils.safe_open = _originals.pop("safe_open")
        modeling_utils._safe_load_bytes = _originals.pop("load_bytes")
        modeling_utils.get_checkpoint_shard_files = _originals.pop("shard_files")
        _manifest_cache.clear()


def installed() -> bool:
    return bool(_originals)


# --- saving ---------------------------------------------------------------------------------------


class _CapturedIndex(io.StringIO):
    """Receives the index JSON transformers writes, so that it never reaches the disk."""

    def __init__(self, sink: dict, name: str) -> None:
        super().__init__()
        self._sink, self._name = sink, name

    def close(self) -> None:
        if not self.closed:
            self._sink[self._name] = self.getvalue()
        super().close()


_save_lock = threading.Lock()


def save_pretrained(model, directory, recipients, *, signer=None, generation: int | None = None,
                    overwrite: bool = False, **save_kwargs) -> dict:
    """``model.save_pretrained`` into a sealed checkpoint directory: each shard sealed as
    transformers writes it (no plaintext weights on disk), the index JSON captured in memory and
    kept only in the manifest (a stub in its place), config and other files written as usual.
    ``recipients``/``signer``/``generation`` as for :func:`sealtensors.checkpoint.seal_checkpoint`;
    ``save_kwargs`` go to ``save_pretrained`` (``max_shard_size``, ...). The directory appears
    complete or not at all."""
    import time

    import transformers.modeling_utils as modeling_utils

    from ..keys.keyfile import as_recipients
    from ..keys.signing import SigningKey
    from ..torch import save_file

    recipient_list = as_recipients(recipients)
    if signer is not None and not isinstance(signer, SigningKey):
        signer = SigningKey.load(signer)
    if signer is not None and generation is None:
        generation = int(time.time())
    captured: dict[str, str] = {}
    directory = Path(directory)
    with _save_lock, _staged_directory(directory, overwrite) as out:
        def sealed_save_file(tensors, filename, metadata=None):
            save_file(tensors, filename, recipient_list, metadata, overwrite=True, signer=signer,
                      generation=generation)

        real_open = open

        def capturing_open(file, mode="r", *args, **kwargs):
            if "w" in mode and os.fspath(file).endswith(INDEX_SUFFIX):
                name = Path(os.path.abspath(file)).relative_to(out.resolve()).as_posix()
                return _CapturedIndex(captured, name)
            return real_open(file, mode, *args, **kwargs)

        previous = modeling_utils.safe_save_file
        if "open" in vars(modeling_utils):
            raise RuntimeError("transformers.modeling_utils defines its own open(): this "
                               "transformers version is not supported by save_pretrained")
        modeling_utils.safe_save_file = sealed_save_file
        modeling_utils.open = capturing_open
        try:
            model.save_pretrained(out, **save_kwargs)
        finally:
            modeling_utils.safe_save_file = previous
            del modeling_utils.open
        bindings, files = {}, {}
        from ..checkpoint import _relative_files, _sha512_file

        for name in _relative_files(out):
            path = out / name
            if name.endswith(WEIGHTS_SUFFIX):
                if not is_sealed_file(path):
                    raise FormatError(f"transformers wrote {name} without the sealing hook "
                                      "(unsupported transformers version): nothing was saved")
                bindings[name] = ShardBinding.of_file(path)
            elif name.endswith(INDEX_SUFFIX):
                # Written past our capture (another code path): seal it all the same.
                captured[name] = path.read_text(encoding="utf-8")
            else:
                files[name] = (path.stat().st_size, _sha512_file(path))
        for name, text in captured.items():
            (out / name).write_text(stub_index(text, name), encoding="utf-8")
        manifest_id = _write_manifest(out / MANIFEST_NAME, Manifest(bindings, captured, files, ""),
                                      recipient_list, signer, generation)
    return {"dst": os.fspath(directory), "manifest_file_id": manifest_id,
            "shards": sorted(bindings), "indexes": sorted(captured), "copied": sorted(files)}


# Importing this module is the one line of setup.
install()
