"""Unmodified ``AutoModelForCausalLM.from_pretrained`` on sealed checkpoint directories (tiny random
Llama models, no hub access): identical logits, sharded and single-file, tied and untied
embeddings; dropped and swapped shards detected; plain files unchanged through the hook; no key ->
a clear sealtensors error; and save_pretrained straight into a sealed directory."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

import transformers  # noqa: E402 - the [test] extra installs it

import sealtensors  # noqa: E402
from sealtensors.checkpoint import MANIFEST_NAME, is_sealed_file, seal_checkpoint  # noqa: E402
from sealtensors.errors import IntegrityError, WrongKeyError  # noqa: E402
from sealtensors.integrations import transformers as hook  # noqa: E402

pytestmark = pytest.mark.engine_independent  # the engines are covered by test_checkpoint_dirs


def _tiny_llama(tied: bool, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=tied)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 2, 7, 3]])).logits


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(autouse=True)
def _no_environment_keys(monkeypatch):
    monkeypatch.delenv(hook.ENV_IDENTITY, raising=False)
    monkeypatch.delenv(hook.ENV_SIGNER, raising=False)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "team.key"
    sealtensors.write_key_file(path)
    return path


def _sealed_copy(tmp_path, key_file, tied: bool, shard_size):
    model = _tiny_llama(tied)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(tmp_path / "plain", **kwargs)
    seal_checkpoint(tmp_path / "plain", tmp_path / "sealed", key_file)
    return model


@pytest.mark.parametrize("tied,shard_size", [(False, "20KB"), (True, None), (True, "20KB")],
                         ids=["untied-sharded", "tied-single", "tied-sharded"])
def test_from_pretrained_gives_identical_logits(tmp_path, key_file, tied, shard_size):
    model = _sealed_copy(tmp_path, key_file, tied, shard_size)
    shards = [n for n in os.listdir(tmp_path / "sealed") if n.endswith(".safetensors")]
    assert (len(shards) > 1) == bool(shard_size)
    with hook.keys(key_file):
        loaded = _load(tmp_path / "sealed")
    assert torch.equal(_logits(loaded), _logits(model))
    assert torch.equal(_logits(_load(tmp_path / "plain")), _logits(model))


def test_environment_variable_is_the_one_line_of_setup(tmp_path, key_file, monkeypatch):
    model = _sealed_copy(tmp_path, key_file, False, "20KB")
    monkeypatch.setenv(hook.ENV_IDENTITY, str(key_file))
    assert torch.equal(_logits(_load(tmp_path / "sealed")), _logits(model))


def test_no_key_is_a_clear_sealtensors_error(tmp_path, key_file):
    _sealed_copy(tmp_path, key_file, True, None)
    hook.install()
    with pytest.raises(WrongKeyError, match="no key is configured.*SEALTENSORS_IDENTITY"):
        _load(tmp_path / "sealed")
    _sealed_copy(tmp_path / "b", key_file, False, "20KB")
    with pytest.raises(WrongKeyError, match="no key is configured"):
        _load(tmp_path / "b" / "sealed")


def test_wrong_key_is_refused(tmp_path, key_file):
    _sealed_copy(tmp_path, key_file, False, "20KB")
    with hook.keys(sealtensors.generate_key()), pytest.raises(WrongKeyError):
        _load(tmp_path / "sealed")


def test_dropped_and_swapped_shards_are_detected(tmp_path, key_file):
    _sealed_copy(tmp_path, key_file, False, "20KB")
    other = _tiny_llama(False, seed=1)
    other.save_pretrained(tmp_path / "plain2", max_shard_size="20KB")
    seal_checkpoint(tmp_path / "plain2", tmp_path / "sealed2", key_file)
    sealed = tmp_path / "sealed"
    shards = sorted(n for n in os.listdir(sealed) if n.endswith(".safetensors"))
    backup = tmp_path / "backup"
    shutil.copyfile(sealed / shards[-1], backup)
    shutil.copyfile(tmp_path / "sealed2" / shards[-1], sealed / shards[-1])
    with hook.keys(key_file), pytest.raises(IntegrityError, match="another version"):
        _load(sealed)
    os.unlink(sealed / shards[-1])
    with hook.keys(key_file), pytest.raises(IntegrityError, match="missing"):
        _load(sealed)
    shutil.copyfile(backup, sealed / shards[-1])
    os.unlink(sealed / MANIFEST_NAME)
    with hook.keys(key_file), pytest.raises(IntegrityError):
        _load(sealed)


def test_plain_checkpoints_load_exactly_as_before_through_the_hook(tmp_path, key_file):
    model = _tiny_llama(True)
    model.save_pretrained(tmp_path / "plain", max_shard_size="20KB")
    hook.install()
    assert hook.installed()
    with hook.keys(key_file):
        assert torch.equal(_logits(_load(tmp_path / "plain")), _logits(model))
    assert torch.equal(_logits(_load(tmp_path / "plain")), _logits(model))


def test_plain_shard_planted_in_a_sealed_directory_is_refused(tmp_path, key_file):
    _sealed_copy(tmp_path, key_file, True, None)
    shutil.copyfile(tmp_path / "plain" / "model.safetensors",
                    tmp_path / "sealed" / "model.safetensors")
    with hook.keys(key_file), pytest.raises(IntegrityError, match="plain safetensors file"):
        _load(tmp_path / "sealed")


def test_save_pretrained_writes_a_sealed_directory(tmp_path, key_file):
    model = _tiny_llama(False)
    report = hook.save_pretrained(model, tmp_path / "out", key_file, max_shard_size="20KB")
    out = tmp_path / "out"
    assert len(report["shards"]) > 1 and report["indexes"] == ["model.safetensors.index.json"]
    for name in report["shards"]:
        assert is_sealed_file(out / name)
    index_text = (out / "model.safetensors.index.json").read_text()
    assert "lm_head" not in index_text and "embed_tokens" not in index_text
    with hook.keys(key_file):
        assert torch.equal(_logits(_load(out)), _logits(model))
    assert sealtensors.checkpoint.verify_checkpoint(out, key_file)["tensors"] > 0
