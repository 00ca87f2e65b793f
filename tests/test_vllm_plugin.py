"""The vLLM plugin without vLLM (it cannot be installed on the CPU machines: it pulls a CUDA torch):
the entry point is declared, register() patches the documented extension points of a stand-in
``vllm`` package shaped like vLLM's (``model_executor.model_loader.weight_utils.safe_open``,
``register_model_loader``, ``BaseModelLoader``), and the weight iterator yields the (name, tensor)
pairs vLLM's ``safetensors_weights_iterator`` yields for the plain checkpoint. Not run here: vLLM
itself (`vllm serve SEALED_DIR` on a GPU host; see the report in the commit)."""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open as plain_safe_open

import sealtensors
from sealtensors.checkpoint import seal_checkpoint
from sealtensors.errors import IntegrityError, WrongKeyError
from sealtensors.integrations import transformers as hook
from test_checkpoint_dirs import SHARD_1, SHARD_2, make_plain

pytestmark = pytest.mark.engine_independent


def plain_weights_iterator(files):
    """What vLLM's safetensors_weights_iterator does with each file (its documented behaviour)."""
    for path in files:
        with plain_safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in for the parts of vLLM the plugin touches, with vLLM's names and signatures."""
    registry = {}

    class BaseModelLoader:
        def __init__(self, load_config):
            self.load_config = load_config

    def register_model_loader(load_format):
        def wrap(cls):
            registry[load_format] = cls
            return cls
        return wrap

    weight_utils = types.ModuleType("vllm.model_executor.model_loader.weight_utils")
    weight_utils.safe_open = plain_safe_open

    def safetensors_weights_iterator(hf_weights_files, use_tqdm_on_load=False):
        for path in hf_weights_files:
            with weight_utils.safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)

    weight_utils.safetensors_weights_iterator = safetensors_weights_iterator
    model_loader = types.ModuleType("vllm.model_executor.model_loader")
    model_loader.weight_utils = weight_utils
    model_loader.BaseModelLoader = BaseModelLoader
    model_loader.register_model_loader = register_model_loader
    vllm = types.ModuleType("vllm")
    executor = types.ModuleType("vllm.model_executor")
    for name, module in {"vllm": vllm, "vllm.model_executor": executor,
                         "vllm.model_executor.model_loader": model_loader,
                         "vllm.model_executor.model_loader.weight_utils": weight_utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    from sealtensors.integrations import vllm as plugin

    monkeypatch.setattr(plugin, "_state", {})
    return types.SimpleNamespace(registry=registry, weight_utils=weight_utils, plugin=plugin)


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    make_plain(tmp_path / "plain")
    key_file = tmp_path / "team.key"
    sealtensors.write_key_file(key_file)
    seal_checkpoint(tmp_path / "plain", tmp_path / "sealed", key_file)
    monkeypatch.delenv(hook.ENV_IDENTITY, raising=False)
    return tmp_path, key_file


def test_entry_point_is_declared():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    plugins = project["project"]["entry-points"]["vllm.general_plugins"]
    module, _, function = plugins["sealtensors"].partition(":")
    assert module == "sealtensors.integrations.vllm" and function == "register"


def test_register_patches_the_extension_points_once(fake_vllm):
    fake_vllm.plugin.register()
    fake_vllm.plugin.register()  # vLLM calls it in every process, possibly more than once
    assert fake_vllm.weight_utils.safe_open is fake_vllm.plugin.hooked_safe_open
    loader = fake_vllm.registry["sealtensors"]
    assert issubclass(loader, sys.modules["vllm.model_executor.model_loader"].BaseModelLoader)
    assert hook.installed()


def test_default_iterator_reads_sealed_and_plain_alike(fake_vllm, checkpoint, monkeypatch):
    tmp_path, key_file = checkpoint
    fake_vllm.plugin.register()
    monkeypatch.setenv(hook.ENV_IDENTITY, str(key_file))
    iterate = fake_vllm.weight_utils.safetensors_weights_iterator
    sealed = dict(iterate([str(tmp_path / "sealed" / SHARD_1), str(tmp_path / "sealed" / SHARD_2)]))
    plain = dict(plain_weights_iterator([str(tmp_path / "plain" / SHARD_1),
                                         str(tmp_path / "plain" / SHARD_2)]))
    assert set(sealed) == set(plain)
    for name, tensor in plain.items():
        assert isinstance(sealed[name], torch.Tensor) and torch.equal(sealed[name], tensor)
    assert len(dict(iterate([str(tmp_path / "plain" / SHARD_1)]))) == 2


def test_sealed_weights_iterator_matches_the_plain_iterator(fake_vllm, checkpoint, monkeypatch):
    tmp_path, key_file = checkpoint
    monkeypatch.setenv(hook.ENV_IDENTITY, str(key_file))
    plugin = fake_vllm.plugin
    files = plugin.sealed_weight_files(tmp_path / "sealed")
    assert [Path(f).name for f in files] == [SHARD_1, SHARD_2]
    pairs = list(plugin.sealed_weights_iterator(files, use_tqdm_on_load=False))
    expected = list(plain_weights_iterator([str(tmp_path / "plain" / SHARD_1),
                                            str(tmp_path / "plain" / SHARD_2)]))
    assert sorted(n for n, _ in pairs) == sorted(n for n, _ in expected)
    expected = dict(expected)
    assert all(torch.equal(t, expected[n]) for n, t in pairs)
    with pytest.raises(IntegrityError, match="not a sealed file"):
        list(plugin.sealed_weights_iterator([str(tmp_path / "plain" / SHARD_1)]))


def test_loader_feeds_model_load_weights(fake_vllm, checkpoint, monkeypatch):
    tmp_path, key_file = checkpoint
    monkeypatch.setenv(hook.ENV_IDENTITY, str(key_file))
    fake_vllm.plugin.register()
    loader = fake_vllm.registry["sealtensors"](load_config=None)
    received = {}

    class Model(torch.nn.Module):
        def load_weights(self, weights):
            received.update(weights)
            return set(received)

    config = types.SimpleNamespace(model=str(tmp_path / "sealed"))
    loader.download_model(config)
    loader.load_weights(Model(), config)
    assert len(received) == 4
    with pytest.raises(IntegrityError):
        loader.download_model(types.SimpleNamespace(model="org/remote-model"))


def test_no_key_and_swapped_shard(fake_vllm, checkpoint, monkeypatch, tmp_path):
    root, key_file = checkpoint
    fake_vllm.plugin.register()
    iterate = fake_vllm.weight_utils.safetensors_weights_iterator
    with pytest.raises(WrongKeyError, match="no key is configured"):
        list(iterate([str(root / "sealed" / SHARD_1)]))
    monkeypatch.setenv(hook.ENV_IDENTITY, str(key_file))
    make_plain(root / "plain2", seed=3)
    seal_checkpoint(root / "plain2", root / "sealed2", key_file)
    (root / "sealed" / SHARD_1).write_bytes((root / "sealed2" / SHARD_1).read_bytes())
    with pytest.raises(IntegrityError, match="another version"):
        list(iterate([str(root / "sealed" / SHARD_1)]))
