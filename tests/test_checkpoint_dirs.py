"""Sealed checkpoint directories: seal/unseal round trip, the manifest's binding (dropped, swapped,
renamed, added shards; changed plain files), the index stub, rewrap as one resumable operation,
signatures, and the CLI on directories and several files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file as plain_save

import sealtensors
from sealtensors import cli
from sealtensors.checkpoint import (
    MANIFEST_NAME,
    inspect_checkpoint,
    load_checkpoint,
    read_manifest,
    rewrap_checkpoint,
    seal_checkpoint,
    unseal_checkpoint,
    verify_checkpoint,
)
from sealtensors.errors import IntegrityError, RecipientError, SignatureError, WrongKeyError
from sealtensors.keys import SigningKey

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def _tensors(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    first = {"embed.weight": rng.standard_normal((40, 16)).astype(np.float32),
             "layers.0.norm": rng.standard_normal(16).astype(np.float16)}
    second = {"layers.0.proj": rng.standard_normal((16, 16)).astype(np.float32),
              "lm_head.bias": np.arange(40, dtype=np.int64)}
    return first, second


def make_plain(directory, seed: int = 0):
    """A two-shard Hugging Face-style checkpoint with an index and a config."""
    os.makedirs(directory, exist_ok=True)
    first, second = _tensors(seed)
    plain_save(first, os.path.join(directory, SHARD_1), metadata={"format": "pt"})
    plain_save(second, os.path.join(directory, SHARD_2), metadata={"format": "pt"})
    weight_map = {**{name: SHARD_1 for name in first}, **{name: SHARD_2 for name in second}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": 1234}, "weight_map": weight_map}, handle, indent=2)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump({"model_type": "tiny", "hidden_size": 16}, handle)
    return {**first, **second}


@pytest.fixture
def key():
    return sealtensors.generate_key()


@pytest.fixture
def sealed(tmp_path, key):
    expected = make_plain(tmp_path / "plain")
    seal_checkpoint(tmp_path / "plain", tmp_path / "sealed", key)
    return tmp_path / "sealed", expected


def test_round_trip_restores_every_file_byte_for_byte(sealed, key, tmp_path):
    directory, expected = sealed
    unseal_checkpoint(directory, tmp_path / "back", key)
    for name in sorted(os.listdir(tmp_path / "plain")):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert oct(os.stat(tmp_path / "back" / SHARD_1).st_mode & 0o777) == "0o600"
    state = load_checkpoint(directory, key)
    assert set(state) == set(expected)
    for name, array in expected.items():
        assert np.array_equal(state[name].numpy(), array)


def test_sealed_directory_hides_tensor_names(sealed):
    directory, expected = sealed
    assert sorted(os.listdir(directory)) == sorted(
        ["config.json", "model.safetensors.index.json", SHARD_1, SHARD_2, MANIFEST_NAME])
    for name in os.listdir(directory):
        data = (directory / name).read_bytes()
        for tensor in expected:
            assert tensor.encode() not in data, (name, tensor)
    stub = json.loads((directory / "model.safetensors.index.json").read_text())
    assert sorted(stub["weight_map"].values()) == [SHARD_1, SHARD_2]


def test_manifest_keeps_the_original_index(sealed, key, tmp_path):
    directory, _ = sealed
    manifest = read_manifest(directory, key)
    original = json.loads((tmp_path / "plain" / "model.safetensors.index.json").read_text())
    assert manifest.weight_map("model.safetensors.index.json") == original
    assert set(manifest.shards) == {SHARD_1, SHARD_2}


@pytest.mark.engine_independent
def test_dropped_shard_is_detected(sealed, key):
    directory, _ = sealed
    os.unlink(directory / SHARD_2)
    with pytest.raises(IntegrityError, match="missing"):
        verify_checkpoint(directory, key)
    with pytest.raises(IntegrityError, match="missing"):
        load_checkpoint(directory, key)


@pytest.mark.engine_independent
def test_shard_from_another_version_is_detected(sealed, key, tmp_path):
    directory, _ = sealed
    make_plain(tmp_path / "plain2", seed=1)
    seal_checkpoint(tmp_path / "plain2", tmp_path / "sealed2", key)
    shutil.copyfile(tmp_path / "sealed2" / SHARD_2, directory / SHARD_2)
    with pytest.raises(IntegrityError, match="another version"):
        verify_checkpoint(directory, key)
    with pytest.raises(IntegrityError, match="another version"):
        load_checkpoint(directory, key)


@pytest.mark.engine_independent
def test_renamed_shards_are_detected(sealed, key):
    directory, _ = sealed
    os.rename(directory / SHARD_1, directory / "tmp")
    os.rename(directory / SHARD_2, directory / SHARD_1)
    os.rename(directory / "tmp", directory / SHARD_2)
    with pytest.raises(IntegrityError):
        verify_checkpoint(directory, key)


@pytest.mark.engine_independent
def test_added_weight_file_and_changed_config_are_detected(sealed, key, tmp_path):
    directory, _ = sealed
    shutil.copyfile(directory / SHARD_1, directory / "model-extra.safetensors")
    with pytest.raises(IntegrityError, match="not in the checkpoint"):
        verify_checkpoint(directory, key)
    os.unlink(directory / "model-extra.safetensors")
    (directory / "config.json").write_text('{"model_type": "other"}')
    with pytest.raises(IntegrityError, match="config.json changed"):
        verify_checkpoint(directory, key)


@pytest.mark.engine_independent
def test_missing_manifest_and_wrong_key(sealed, key):
    directory, _ = sealed
    with pytest.raises(WrongKeyError):
        verify_checkpoint(directory, sealtensors.generate_key())
    os.unlink(directory / MANIFEST_NAME)
    with pytest.raises(IntegrityError, match="no sealtensors-manifest"):
        verify_checkpoint(directory, key)


def test_verify_and_inspect_report(sealed, key):
    directory, expected = sealed
    report = verify_checkpoint(directory, key)
    assert report["tensors"] == len(expected) and len(report["shards"]) == 2
    public = inspect_checkpoint(directory)
    assert public["authenticated"] is False and "tensors" not in public
    assert {entry["name"] for entry in public["sealed_files"]} == {SHARD_1, SHARD_2, MANIFEST_NAME}
    private = inspect_checkpoint(directory, key)
    assert {t["name"] for t in private["tensors"][SHARD_1]} == {"embed.weight", "layers.0.norm"}


@pytest.mark.engine_independent
def test_rewrap_is_one_resumable_operation(sealed, key):
    directory, _ = sealed
    new_key = sealtensors.generate_key()
    # An interrupted run: only the first shard got the new recipient.
    sealtensors.rewrap(directory / SHARD_1, key, add=[new_key])
    with pytest.raises(WrongKeyError):
        verify_checkpoint(directory, new_key)
    report = rewrap_checkpoint(directory, key, add=[new_key])
    actions = {entry["name"]: entry["action"] for entry in report["files"]}
    assert actions == {SHARD_1: "already", SHARD_2: "rewrapped", MANIFEST_NAME: "rewrapped"}
    assert verify_checkpoint(directory, new_key)["tensors"] == 4
    with pytest.raises(RecipientError):
        rewrap_checkpoint(directory, key, add=[new_key])
    rewrap_checkpoint(directory, new_key, remove=[key])
    with pytest.raises(WrongKeyError):
        verify_checkpoint(directory, key)


@pytest.mark.engine_independent
def test_rewrap_refuses_a_damaged_directory_before_changing_anything(sealed, key):
    directory, _ = sealed
    data = bytearray((directory / SHARD_2).read_bytes())
    data[-20] ^= 1
    (directory / SHARD_2).write_bytes(bytes(data))
    before = (directory / SHARD_1).read_bytes()
    with pytest.raises(IntegrityError):
        rewrap_checkpoint(directory, key, add=[sealtensors.generate_key()])
    assert (directory / SHARD_1).read_bytes() == before


@pytest.mark.engine_independent
def test_signed_checkpoint(tmp_path, key):
    make_plain(tmp_path / "plain")
    publisher = SigningKey.generate()
    report = seal_checkpoint(tmp_path / "plain", tmp_path / "sealed", key, signer=publisher,
                             generation=7)
    assert report["signed"] and report["generation"] == 7
    summary = verify_checkpoint(tmp_path / "sealed", key, signer=publisher.verifying_key.text())
    assert summary["signed"]
    with pytest.raises(SignatureError):
        verify_checkpoint(tmp_path / "sealed", key, signer=SigningKey.generate().verifying_key)


@pytest.mark.engine_independent
def test_seal_refuses_existing_destination_and_sealed_source(sealed, key, tmp_path):
    directory, _ = sealed
    with pytest.raises(sealtensors.DestinationExistsError):
        seal_checkpoint(tmp_path / "plain", directory, key)
    with pytest.raises(sealtensors.FormatError):
        seal_checkpoint(directory, tmp_path / "again", key)
    seal_checkpoint(tmp_path / "plain", directory, key, overwrite=True)
    assert verify_checkpoint(directory, key)["tensors"] == 4


@pytest.mark.engine_independent
def test_progress_reports_one_total(tmp_path, key):
    make_plain(tmp_path / "plain")
    seen = []
    seal_checkpoint(tmp_path / "plain", tmp_path / "sealed", key, workers=2,
                    progress=lambda done, total: seen.append((done, total)))
    totals = {total for _, total in seen}
    # two workers report concurrently: the last call is not always the largest
    assert len(totals) == 1 and max(done for done, _ in seen) == totals.pop()


# --- CLI --------------------------------------------------------------------------------------


def _run(capsys, *argv):
    code = cli.main([*map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.engine_independent
def test_cli_directory_commands(tmp_path, capsys):
    make_plain(tmp_path / "plain")
    key_file = tmp_path / "team.key"
    sealtensors.write_key_file(key_file)
    code, report = _run(capsys, "seal", tmp_path / "plain", tmp_path / "sealed", "-k", key_file)
    assert code == 0 and len(report["shards"]) == 2
    code, report = _run(capsys, "verify", tmp_path / "sealed", "-k", key_file)
    assert code == 0 and report["files"][0]["tensors"] == 4
    code, report = _run(capsys, "inspect", tmp_path / "sealed")
    assert code == 0 and report["checkpoint"] is True
    other = tmp_path / "other.key"
    sealtensors.write_key_file(other)
    code, report = _run(capsys, "rewrap", tmp_path / "sealed", "-k", key_file, "--add", other)
    assert code == 0 and {f["action"] for f in report["files"]} == {"rewrapped"}
    code, report = _run(capsys, "unseal", tmp_path / "sealed", tmp_path / "back", "-k", other)
    assert code == 0
    assert (tmp_path / "back" / SHARD_2).read_bytes() == (tmp_path / "plain" / SHARD_2).read_bytes()
    os.unlink(tmp_path / "sealed" / SHARD_1)
    code, report = _run(capsys, "verify", tmp_path / "sealed", "-k", key_file)
    assert code == cli.EXIT_INTEGRITY and report["files"][0]["ok"] is False


@pytest.mark.engine_independent
def test_cli_several_files_at_once(tmp_path, capsys):
    make_plain(tmp_path / "plain")
    key_file = tmp_path / "team.key"
    sealtensors.write_key_file(key_file)
    (tmp_path / "out").mkdir()
    code, report = _run(capsys, "seal", tmp_path / "plain" / SHARD_1, tmp_path / "plain" / SHARD_2,
                        tmp_path / "out", "-k", key_file)
    assert code == 0 and len(report["files"]) == 2
    code, report = _run(capsys, "verify", tmp_path / "out" / SHARD_1, tmp_path / "out" / SHARD_2,
                        "-k", key_file)
    assert code == 0 and all(f["ok"] for f in report["files"])
    (tmp_path / "back").mkdir()
    code, report = _run(capsys, "unseal", tmp_path / "out" / SHARD_1, tmp_path / "out" / SHARD_2,
                        tmp_path / "back", "-k", key_file)
    assert code == 0
    assert (tmp_path / "back" / SHARD_1).read_bytes() == (tmp_path / "plain" / SHARD_1).read_bytes()
    code, report = _run(capsys, "seal", tmp_path / "plain" / SHARD_1, tmp_path / "plain" / SHARD_2,
                        tmp_path / "missing-dir", "-k", key_file)
    assert code == cli.EXIT_USAGE


def test_manifest_version_must_be_the_integer_one_and_shards_not_links(tmp_path):
    """A manifest version of 1.0 or true is not version 1; a listed shard that is a symbolic
    link (possibly to a file outside the directory) is refused."""
    import json as _json

    from sealtensors import IntegrityError, UnsupportedFormatError
    from sealtensors.checkpoint import Manifest

    good = {"sealtensors_checkpoint": 1, "shards": {"model.safetensors": {
        "file_id": "0" * 32, "index_sha512": "0" * 128, "data_header_sha512": "0" * 128}},
        "indexes": {}, "files": {}}
    Manifest.from_json(_json.dumps(good), "0" * 32)
    for version in (1.0, True, "1"):
        with pytest.raises(UnsupportedFormatError):
            Manifest.from_json(_json.dumps({**good, "sealtensors_checkpoint": version}), "0" * 32)
    manifest = Manifest.from_json(_json.dumps(good), "0" * 32)
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"x")
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(IntegrityError, match="symbolic link"):
        manifest.check_directory(directory)
