"""vLLM glue: a general plugin (entry point ``vllm.general_plugins``, run by vLLM in every process
it starts) so that ``vllm serve SEALED_DIR`` loads a sealed checkpoint, with the key source taken
from the environment (``SEALTENSORS_IDENTITY``, ``SEALTENSORS_SIGNER``: see
:mod:`sealtensors.integrations.transformers`).

:func:`register` does two things, both idempotent:

* in ``vllm.model_executor.model_loader.weight_utils`` it replaces ``safe_open`` (the name vLLM's
  ``safetensors_weights_iterator`` opens every weight file with) by the sealtensors hook: sealed
  files, recognised by their magic bytes, are checked against their directory's manifest and
  decrypted in memory; plain files go to safetensors unchanged. The default ``load_format``
  (``auto``/``safetensors``) then works on sealed directories;
* where vLLM has ``register_model_loader``, it registers ``load_format="sealtensors"``, a loader
  that only accepts sealed checkpoints and feeds ``model.load_weights`` from
  :func:`sealed_weights_iterator` (a loader that cannot fall back to plain files).

It also installs the transformers hook (vLLM reads configs, and some models, through
transformers). Nothing here imports vLLM at module import time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Iterator

from ..checkpoint import MANIFEST_NAME, WEIGHTS_SUFFIX, is_sealed_file
from ..errors import IntegrityError

LOAD_FORMAT = "sealtensors"
_lock = threading.Lock()
_state: dict[str, object] = {}


def _hook():
    from . import transformers as hook

    return hook


def hooked_safe_open(filename, framework="pt", device="cpu", **kwargs):
    """``safetensors.safe_open`` for vLLM: sealed files through sealtensors (manifest-checked),
    plain ones through safetensors, a plain weight file inside a sealed directory refused."""
    hook = _hook()
    if is_sealed_file(filename):
        return hook.open_sealed(filename, framework, device)
    if os.fspath(filename).endswith(WEIGHTS_SUFFIX) and hook.checkpoint_root(filename) is not None:
        raise IntegrityError(f"{filename}: a plain safetensors file inside a sealed checkpoint "
                             "directory (not covered by its manifest): refusing to load it")
    return _state["safe_open"](filename, framework=framework, device=device, **kwargs)


def sealed_weights_iterator(hf_weights_files: Iterable[str], use_tqdm_on_load: bool = False,
                            *_args, **_kwargs) -> Iterator[tuple[str, object]]:
    """Yield ``(name, torch tensor)`` for every tensor of every file, in file order and each
    file's data order — the shape of vLLM's ``safetensors_weights_iterator(hf_weights_files,
    use_tqdm_on_load, ...)``. Every file must be a sealed shard of a sealed checkpoint (checked
    against its manifest); keys from the environment."""
    hook = _hook()
    for path in hf_weights_files:
        if not is_sealed_file(path):
            raise IntegrityError(f"{path}: not a sealed file (load_format={LOAD_FORMAT!r} loads "
                                 "only sealed checkpoints)")
        handle = hook.open_sealed(path, "pt", "cpu")
        try:
            for name in handle.offset_keys():
                yield name, handle.get_tensor(name)
        finally:
            handle.close()


def sealed_weight_files(model_dir: str | os.PathLike) -> list[str]:
    """The shard files of a sealed checkpoint directory, from its authenticated manifest."""
    hook = _hook()
    root = Path(model_dir)
    identities, options, tag = hook._require_keys(root / MANIFEST_NAME, "is a sealed checkpoint")
    manifest = hook._manifest(root.resolve(), identities, options, tag)
    return [str(root / name) for name in sorted(manifest.shards)]


def _make_loader_class(base):
    """The ``load_format="sealtensors"`` loader, built on vLLM's BaseModelLoader interface
    (``download_model(model_config)``, ``load_weights(model, model_config)``)."""

    class SealedModelLoader(base):
        """Loads a local sealed checkpoint directory; refuses anything else."""

        def download_model(self, model_config) -> None:
            if not os.path.isdir(model_config.model):
                raise IntegrityError(f"{model_config.model}: load_format={LOAD_FORMAT!r} needs a "
                                     "local sealed checkpoint directory")

        def load_weights(self, model, model_config) -> None:
            files = sealed_weight_files(model_config.model)
            loaded = model.load_weights(sealed_weights_iterator(files))
            expected = {name for name, _ in model.named_parameters()}
            if loaded is not None and expected - set(loaded):
                missing = sorted(expected - set(loaded))[:5]
                raise ValueError(f"weights not found in the sealed checkpoint: {missing}")

    return SealedModelLoader


def register() -> None:
    """The ``vllm.general_plugins`` entry point. Safe to call more than once, and in every
    process."""
    with _lock:
        if _state.get("registered"):
            return
        from vllm.model_executor.model_loader import weight_utils

        _state["safe_open"] = weight_utils.safe_open
        weight_utils.safe_open = hooked_safe_open
        try:
            from vllm.model_executor.model_loader import BaseModelLoader, register_model_loader
        except ImportError:
            # Older vLLM: no custom load formats; the patched default loader still works.
            _state["loader"] = None
        else:
            loader = _make_loader_class(BaseModelLoader)
            register_model_loader(LOAD_FORMAT)(loader)
            _state["loader"] = loader
        try:
            _hook().install()
        except ImportError:
            pass
        _state["registered"] = True
