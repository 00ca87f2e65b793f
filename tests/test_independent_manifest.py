"""Sealed checkpoint directories (FORMAT.md appendix B): an independent checker and writer agree.

The independent side is built from FORMAT.md alone (appendix B for the directory, the main document
through test_independent_reader's sealed-file reader and writer); sealtensors is driven only through
the public functions of sealtensors.checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as plain_st

import test_independent_reader as ind
from sealtensors.checkpoint import seal_checkpoint, unseal_checkpoint, verify_checkpoint
from sealtensors.keys import SigningKey, SymmetricKey

# --------------------------------------------------------------------------------------------------
# Appendix B, as the independent side reads it. Names are spelled out here, not imported from
# sealtensors, so that a rename in the reference shows up as a disagreement.

MANIFEST = "sealtensors-manifest.sealed"
MANIFEST_METADATA_KEY = "sealtensors.checkpoint"
STUB_MARKER = "sealtensors.sealed-checkpoint"
STUB_KEY_PREFIX = "sealtensors.sealed-checkpoint.shard."
SHARD_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
MANIFEST_KEYS = {"sealtensors_checkpoint", "shards", "indexes", "files"}
SHARD_ENTRY_KEYS = {"file_id", "index_sha512", "data_header_sha512"}
FILE_ENTRY_KEYS = {"size", "sha512"}
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX128 = re.compile(r"[0-9a-f]{128}")


def _relative_files(directory: Path) -> list[str]:
    """Every regular file under ``directory`` as a relative, '/'-separated path, sorted."""
    found = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(directory).as_posix())
    return sorted(found)


def _check_path(path) -> None:
    if not isinstance(path, str) or not path or path.startswith("/") or path == MANIFEST \
            or any(part in ("", ".", "..") for part in path.split("/")) \
            or not ind._valid_string(path):
        raise ind.IndFormatError(f"manifest path {path!r}")


def parse_manifest_json(text) -> dict:
    """The manifest JSON's rules (appendix B, with section 8.1's strictness)."""
    if not isinstance(text, str) or not ind._valid_string(text):
        raise ind.IndFormatError("manifest is not a valid string")
    try:
        doc = json.loads(text, object_pairs_hook=ind._no_duplicates,
                         parse_constant=ind._no_constants)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ind.IndFormatError(f"manifest JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ind.IndFormatError("manifest is not an object")
    # Version first, so that a later version with another shape reads as unsupported, not broken.
    if "sealtensors_checkpoint" in doc and (type(doc["sealtensors_checkpoint"]) is not int
                                            or doc["sealtensors_checkpoint"] != 1):
        raise ind.IndUnsupportedFormatError("manifest version")
    if set(doc) != MANIFEST_KEYS:
        raise ind.IndFormatError("manifest keys")
    shards, indexes, files = doc["shards"], doc["indexes"], doc["files"]
    if not isinstance(shards, dict) or not shards or not isinstance(indexes, dict) \
            or not isinstance(files, dict):
        raise ind.IndFormatError("manifest maps")
    for path, entry in shards.items():
        _check_path(path)
        if not isinstance(entry, dict) or set(entry) != SHARD_ENTRY_KEYS \
                or not all(isinstance(v, str) for v in entry.values()) \
                or not HEX32.fullmatch(entry["file_id"]) \
                or not HEX128.fullmatch(entry["index_sha512"]) \
                or not HEX128.fullmatch(entry["data_header_sha512"]):
            raise ind.IndFormatError(f"shard entry {path!r}")
    for path, text_ in indexes.items():
        _check_path(path)
        if not isinstance(text_, str):
            raise ind.IndFormatError(f"index entry {path!r}")
    for path, entry in files.items():
        _check_path(path)
        if not isinstance(entry, dict) or set(entry) != FILE_ENTRY_KEYS \
                or type(entry["size"]) is not int or entry["size"] < 0 \
                or not isinstance(entry["sha512"], str) or not HEX128.fullmatch(entry["sha512"]):
            raise ind.IndFormatError(f"file entry {path!r}")
    if (set(shards) & set(indexes)) or (set(shards) & set(files)) or (set(indexes) & set(files)):
        raise ind.IndFormatError("a path in two maps")
    return doc


def shard_binding(blob: bytes) -> dict:
    """A sealed file's manifest entry, from its bytes (no key needed: sections 5.2, 6, 7)."""
    header = ind.parse_header(blob)
    region = 32 + 2 * header["capacity"]
    index_msg = blob[region:region + header["index_len"]]
    data_msg = blob[region + header["index_len"]:region + header["index_len"] + header["data_len"]]
    return {"file_id": header["file_id"].hex(),
            "index_sha512": hashlib.sha512(index_msg).hexdigest(),
            "data_header_sha512": hashlib.sha512(data_msg[:ind.MSG_HEADER]).hexdigest()}


def read_manifest(directory: Path, identities, *, signers=None) -> tuple[dict, ind.Opened]:
    opened = ind.read_sealed((directory / MANIFEST).read_bytes(), identities, signers=signers)
    if opened.entries or not isinstance(opened.metadata, dict) \
            or set(opened.metadata) != {MANIFEST_METADATA_KEY}:
        raise ind.IndFormatError("the manifest file holds more than the manifest")
    return parse_manifest_json(opened.metadata[MANIFEST_METADATA_KEY]), opened


def check_directory(directory, identities, *, signers=None) -> dict:
    """A whole-directory verification by appendix B. Returns the manifest and each opened shard."""
    directory = Path(directory)
    manifest, opened_manifest = read_manifest(directory, identities, signers=signers)
    present = _relative_files(directory)
    for path in manifest["shards"]:
        if path not in present:
            raise ind.IndIntegrityError(f"shard {path} is missing")
    for path in present:
        if path.endswith(SHARD_SUFFIX) and path not in manifest["shards"]:
            raise ind.IndIntegrityError(f"{path} is not a shard of this checkpoint")
    for path, entry in manifest["files"].items():
        if path not in present:
            raise ind.IndIntegrityError(f"{path} is missing")
        content = (directory / path).read_bytes()
        if len(content) != entry["size"] or hashlib.sha512(content).hexdigest() != entry["sha512"]:
            raise ind.IndIntegrityError(f"{path} was changed")
    shards = {}
    for path, entry in manifest["shards"].items():
        blob = (directory / path).read_bytes()
        opened = ind.read_sealed(blob, identities, signers=signers)
        data_header = opened.data_msg[:ind.MSG_HEADER]
        actual = {"file_id": opened.file_id.hex(),
                  "index_sha512": hashlib.sha512(opened.index_msg).hexdigest(),
                  "data_header_sha512": hashlib.sha512(data_header).hexdigest()}
        if actual != entry:
            raise ind.IndIntegrityError(f"{path} is not the shard the manifest binds")
        shards[path] = opened
    return {"manifest": manifest, "manifest_file": opened_manifest, "shards": shards}


def stub_for(index_text: str, label: str = "independent") -> str:
    """Appendix B layout step 2: the shard names of the weight map, placeholder keys."""
    names = list(dict.fromkeys(json.loads(index_text)["weight_map"].values()))
    weight_map = {f"{STUB_KEY_PREFIX}{i:05d}": name for i, name in enumerate(names)}
    return json.dumps({"metadata": {STUB_MARKER: label}, "weight_map": weight_map}, indent=2)


def write_manifest(directory: Path, recipients, shards: dict, indexes: dict, files: dict, *,
                   signer=None, generation: int = 0, document=None) -> None:
    """Appendix B layout step 4 (``document``: write this JSON text instead, for bad manifests)."""
    text = document if document is not None else json.dumps(
        {"sealtensors_checkpoint": 1, "shards": shards, "indexes": indexes, "files": files},
        separators=(",", ":"), ensure_ascii=False)
    blob = ind.write_sealed({}, recipients, {MANIFEST_METADATA_KEY: text}, signer=signer,
                            generation=generation)
    (directory / MANIFEST).write_bytes(blob)


def bind_directory(directory: Path, plain_source: Path, recipients, **manifest_options) -> dict:
    """Write a manifest for an already sealed directory (shards, stubs and copies in place); the
    original index texts come from ``plain_source``. Returns the manifest's three maps."""
    shards, indexes, files = {}, {}, {}
    for path in _relative_files(directory):
        if path == MANIFEST:
            continue
        if path.endswith(SHARD_SUFFIX):
            shards[path] = shard_binding((directory / path).read_bytes())
        elif path.endswith(INDEX_SUFFIX):
            indexes[path] = (plain_source / path).read_text(encoding="utf-8")
        else:
            content = (directory / path).read_bytes()
            files[path] = {"size": len(content), "sha512": hashlib.sha512(content).hexdigest()}
    maps = {"shards": shards, "indexes": indexes, "files": files}
    write_manifest(directory, recipients, **maps, **manifest_options)
    return maps


def _plain_metadata(path: Path):
    """The ``__metadata__`` of a plain safetensors file (its JSON header)."""
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8:8 + length]).get("__metadata__")


def seal_directory(src: Path, dst: Path, recipients, *, signer=None, generation: int = 0) -> None:
    """The whole of appendix B's layout, by the independent writer."""
    dst.mkdir(parents=True)
    for path in _relative_files(src):
        (dst / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(SHARD_SUFFIX):
            tensors = plain_st.load_file(str(src / path))
            blob = ind.write_sealed(tensors, recipients, _plain_metadata(src / path),
                                    signer=signer, generation=generation)
            (dst / path).write_bytes(blob)
        elif path.endswith(INDEX_SUFFIX):
            (dst / path).write_text(stub_for((src / path).read_text(encoding="utf-8")))
        else:
            shutil.copyfile(src / path, dst / path)
    bind_directory(dst, src, recipients, signer=signer, generation=generation)


# --------------------------------------------------------------------------------------------------
# Fixtures: a tiny two-shard checkpoint, the same key on both sides.

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


def make_plain(directory: Path, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    first = {"embed.weight": rng.standard_normal((24, 8)).astype(np.float32),
             "layers.0.norm": rng.standard_normal(8).astype(np.float16)}
    second = {"layers.0.proj": rng.standard_normal((8, 8)).astype(np.float32),
              "lm_head.bias": np.arange(24, dtype=np.int64)}
    directory.mkdir(parents=True)
    plain_st.save_file(first, str(directory / SHARD_1), metadata={"format": "pt"})
    plain_st.save_file(second, str(directory / SHARD_2), metadata={"format": "pt"})
    weight_map = {**{n: SHARD_1 for n in first}, **{n: SHARD_2 for n in second}}
    (directory / INDEX).write_text(json.dumps(
        {"metadata": {"total_size": 1234}, "weight_map": weight_map}, indent=2))
    (directory / CONFIG).write_text(json.dumps({"model_type": "tiny", "hidden_size": 8}))
    return {**first, **second}


class Side:
    """One symmetric key, as sealtensors and the independent code each hold it."""

    def __init__(self):
        self.raw = os.urandom(32)
        self.st = SymmetricKey(self.raw)
        self.identities = [ind.SymIdentity(self.raw)]
        self.recipients = [ind.SymRecipient(self.raw)]


@pytest.fixture(scope="module")
def side():
    return Side()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Two versions of the plain checkpoint (different weights, same layout)."""
    root = tmp_path_factory.mktemp("plain")
    expected = [make_plain(root / f"v{version}", seed=version) for version in (0, 1)]
    return root, expected


@pytest.fixture(scope="module")
def versions(plain, side, tmp_path_factory):
    """For each origin (sealtensors, independent), two sealed versions of the checkpoint."""
    root, _ = plain
    out = tmp_path_factory.mktemp("sealed")
    made = {}
    for version in (0, 1):
        seal_checkpoint(root / f"v{version}", out / f"st-v{version}", side.st)
        seal_directory(root / f"v{version}", out / f"ind-v{version}", side.recipients)
        made["sealtensors", version] = out / f"st-v{version}"
        made["independent", version] = out / f"ind-v{version}"
    return made


def _reference_outcome(directory, key, *, unseal_to=None, **verification):
    """verify_checkpoint's error class (or unseal_checkpoint's, into ``unseal_to``), else None."""
    try:
        if unseal_to is None:
            verify_checkpoint(directory, key, **verification)
        else:
            unseal_checkpoint(directory, unseal_to, key, **verification)
    except Exception as exc:  # any class, so that a stray ValueError shows up as a mismatch
        return type(exc).__name__
    return None


def _independent_outcome(directory, identities, **verification):
    try:
        check_directory(directory, identities, **verification)
    except ind.IndError as exc:
        return type(exc).reference
    return None


def _assert_same_arrays(opened: ind.Opened, want: dict):
    for name, array in want.items():
        got = opened.tensors[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name


# --------------------------------------------------------------------------------------------------
# (1) A directory sealed by sealtensors passes every check of appendix B, independently.

def test_sealtensors_directory_passes_the_independent_checks(side, plain, tmp_path):
    root, expected = plain
    seal_checkpoint(root / "v0", tmp_path / "sealed", side.st)
    directory = tmp_path / "sealed"
    result = check_directory(directory, side.identities)
    manifest = result["manifest"]

    assert set(manifest["shards"]) == {SHARD_1, SHARD_2}
    assert manifest["indexes"] == {INDEX: (root / "v0" / INDEX).read_text()}      # verbatim
    config = (root / "v0" / CONFIG).read_bytes()
    assert manifest["files"] == {CONFIG: {"size": len(config),
                                          "sha512": hashlib.sha512(config).hexdigest()}}
    assert _relative_files(directory) == sorted([CONFIG, INDEX, MANIFEST, SHARD_1, SHARD_2])
    assert (directory / CONFIG).read_bytes() == config

    # Every shard its own data key and file id, each decrypting to its plain source.
    opened = result["shards"]
    assert len({o.file_id for o in opened.values()} | {result["manifest_file"].file_id}) == 3
    assert len({o.dek for o in opened.values()} | {result["manifest_file"].dek}) == 3
    original_map = json.loads(manifest["indexes"][INDEX])["weight_map"]
    for path, shard in opened.items():
        names = {n for n, f in original_map.items() if f == path}
        assert set(shard.tensors) == names
        _assert_same_arrays(shard, {n: expected[0][n] for n in names})
        assert shard.metadata == {"format": "pt"}

    # The manifest file: no tensors, one metadata entry; the writer's canonical JSON.
    assert result["manifest_file"].entries == []
    text = result["manifest_file"].metadata[MANIFEST_METADATA_KEY]
    assert text == json.dumps(
        {"sealtensors_checkpoint": 1, "shards": dict(sorted(manifest["shards"].items())),
         "indexes": dict(sorted(manifest["indexes"].items())),
         "files": dict(sorted(manifest["files"].items()))},
        separators=(",", ":"), ensure_ascii=False)

    # The stub: shard names only, placeholder keys, the marker; no tensor name anywhere in it.
    stub_text = (directory / INDEX).read_text()
    stub = json.loads(stub_text)
    assert set(stub) == {"metadata", "weight_map"}
    assert set(stub["metadata"]) == {STUB_MARKER} and isinstance(stub["metadata"][STUB_MARKER], str)
    assert sorted(stub["weight_map"].values()) == [SHARD_1, SHARD_2]
    assert all(k.startswith(STUB_KEY_PREFIX) for k in stub["weight_map"])
    for name in expected[0]:
        assert name not in stub_text
        for path in _relative_files(directory):
            assert name.encode() not in (directory / path).read_bytes(), (path, name)


@pytest.mark.engine_independent
def test_signed_sealtensors_directory_passes_the_independent_checks(side, plain, tmp_path):
    root, _ = plain
    publisher = SigningKey.generate()
    public = ind.text_decode(publisher.verifying_key.text(), "st-sign")
    seal_checkpoint(root / "v0", tmp_path / "sealed", side.st, signer=publisher, generation=7)
    result = check_directory(tmp_path / "sealed", side.identities, signers=[public])
    signed = [result["manifest_file"], *result["shards"].values()]
    assert [o.signer for o in signed] == [public] * 3
    assert {o.statement["generation"] for o in signed} == {7}      # layout step 1: one generation
    # With signers asked for, the manifest's signature is required like any file's.
    other = ind.text_decode(SigningKey.generate().verifying_key.text(), "st-sign")
    assert _independent_outcome(tmp_path / "sealed", side.identities, signers=[other]) \
        == "SignatureError"


# --------------------------------------------------------------------------------------------------
# (2) Manifests and directories written independently are accepted by sealtensors.

def test_independent_manifest_over_sealtensors_shards_is_accepted(side, plain, tmp_path):
    root, _ = plain
    directory = tmp_path / "sealed"
    seal_checkpoint(root / "v0", directory, side.st)
    old_manifest = (directory / MANIFEST).read_bytes()
    bind_directory(directory, root / "v0", side.recipients)
    assert (directory / MANIFEST).read_bytes() != old_manifest
    verify_checkpoint(directory, side.st)
    check_directory(directory, side.identities)
    unseal_checkpoint(directory, tmp_path / "back", side.st)
    for path in _relative_files(root / "v0"):
        assert (tmp_path / "back" / path).read_bytes() == (root / "v0" / path).read_bytes(), path


def test_independently_sealed_directory_is_accepted(side, plain, versions, tmp_path):
    root, expected = plain
    directory = versions["independent", 0]
    summary = verify_checkpoint(directory, side.st)
    assert summary["tensors"] == len(expected[0])
    unseal_checkpoint(directory, tmp_path / "back", side.st)
    assert (tmp_path / "back" / INDEX).read_text() == (root / "v0" / INDEX).read_text()
    assert (tmp_path / "back" / CONFIG).read_bytes() == (root / "v0" / CONFIG).read_bytes()
    for shard in (SHARD_1, SHARD_2):
        got = plain_st.load_file(str(tmp_path / "back" / shard))
        want = plain_st.load_file(str(root / "v0" / shard))
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name])


@pytest.mark.engine_independent
def test_independent_manifest_keys_in_another_order_and_spaced_are_accepted(side, plain, tmp_path):
    root, _ = plain
    directory = tmp_path / "sealed"
    seal_checkpoint(root / "v0", directory, side.st)
    maps = bind_directory(directory, root / "v0", side.recipients)
    document = json.dumps({"files": maps["files"], "indexes": maps["indexes"],
                           "shards": dict(reversed(list(maps["shards"].items()))),
                           "sealtensors_checkpoint": 1}, indent=3)
    write_manifest(directory, side.recipients, **maps, document=document)
    assert _reference_outcome(directory, side.st) is None
    assert _independent_outcome(directory, side.identities) is None


@pytest.mark.engine_independent
def test_signed_independent_directory_is_accepted(side, plain, tmp_path):
    root, _ = plain
    publisher = SigningKey.generate()
    signer = ind.Signer(ind.text_decode(publisher.text(), "ST-SIGN-SECRET"))
    seal_directory(root / "v0", tmp_path / "sealed", side.recipients, signer=signer, generation=3)
    verify_checkpoint(tmp_path / "sealed", side.st, signer=publisher.verifying_key)
    assert _reference_outcome(tmp_path / "sealed", side.st,
                              signer=SigningKey.generate().verifying_key) == "SignatureError"


# --------------------------------------------------------------------------------------------------
# (3) Tampering: both refuse, with the same error class.

def _drop_shard(d, other):
    os.unlink(d / SHARD_2)


def _other_version_shard(d, other):
    shutil.copyfile(other / SHARD_1, d / SHARD_1)


def _other_version_manifest(d, other):
    shutil.copyfile(other / MANIFEST, d / MANIFEST)


def _swap_shard_names(d, other):
    os.rename(d / SHARD_1, d / "tmp")
    os.rename(d / SHARD_2, d / SHARD_1)
    os.rename(d / "tmp", d / SHARD_2)


def _rename_shard(d, other):
    os.rename(d / SHARD_2, d / "model-00003-of-00003.safetensors")


def _extra_sealed_shard(d, other):
    shutil.copyfile(other / SHARD_1, d / "extra.safetensors")


def _extra_plain_shard(d, other):
    plain_st.save_file({"x": np.zeros(3, np.float32)}, str(d / "extra.safetensors"))


def _extra_shard_in_a_subdirectory(d, other):
    (d / "sub").mkdir()
    shutil.copyfile(other / SHARD_1, d / "sub" / "extra.safetensors")


def _plain_file_for_a_listed_shard(d, other):
    # Section 9 step 1 on the shard: bad magic.
    plain_st.save_file({"x": np.zeros(3, np.float32)}, str(d / SHARD_1))


def _config_changed_same_size(d, other):
    text = (d / CONFIG).read_bytes()
    (d / CONFIG).write_bytes(text.replace(b"tiny", b"huge"))


def _config_changed_size(d, other):
    (d / CONFIG).write_bytes((d / CONFIG).read_bytes() + b" ")


def _config_removed(d, other):
    os.unlink(d / CONFIG)


TAMPERING = {
    "drop a shard": (_drop_shard, "IntegrityError"),
    "a shard of another version": (_other_version_shard, "IntegrityError"),
    "the manifest of another version": (_other_version_manifest, "IntegrityError"),
    "shard names swapped": (_swap_shard_names, "IntegrityError"),
    "a shard renamed": (_rename_shard, "IntegrityError"),
    "an extra sealed .safetensors": (_extra_sealed_shard, "IntegrityError"),
    "an extra plain .safetensors": (_extra_plain_shard, "IntegrityError"),
    "an extra .safetensors in a subdirectory": (_extra_shard_in_a_subdirectory, "IntegrityError"),
    "a plain .safetensors in a listed shard's place": (_plain_file_for_a_listed_shard,
                                                         "FormatError"),
    "config.json changed, same size": (_config_changed_same_size, "IntegrityError"),
    "config.json changed size": (_config_changed_size, "IntegrityError"),
    "config.json removed": (_config_removed, "IntegrityError"),
}


@pytest.mark.engine_independent
@pytest.mark.parametrize("origin", ["sealtensors", "independent"])
@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_refused_by_both_alike(side, versions, origin, case, tmp_path):
    tamper, expected = TAMPERING[case]
    directory = tmp_path / "d"
    shutil.copytree(versions[origin, 0], directory)
    assert _reference_outcome(directory, side.st) is None
    assert _independent_outcome(directory, side.identities) is None
    tamper(directory, versions[origin, 1])
    assert _independent_outcome(directory, side.identities) == expected
    assert _reference_outcome(directory, side.st) == expected
    # Loading goes through the same checks (appendix B, "Reading"); nothing is left behind.
    assert _reference_outcome(directory, side.st, unseal_to=tmp_path / "back") == expected
    assert not (tmp_path / "back").exists()


@pytest.mark.engine_independent
def test_stub_is_not_trusted_for_the_weight_map(side, plain, versions, tmp_path):
    """Layout step 2: the weight map comes from the manifest; the stub is not bound, so a changed
    stub must not change what is loaded (nor be reported by either side)."""
    root, _ = plain
    directory = tmp_path / "d"
    shutil.copytree(versions["sealtensors", 0], directory)
    (directory / INDEX).write_text(stub_for(json.dumps({"weight_map": {"a": SHARD_1}}), "edited"))
    assert _independent_outcome(directory, side.identities) is None
    assert _reference_outcome(directory, side.st) is None
    unseal_checkpoint(directory, tmp_path / "back", side.st)
    assert (tmp_path / "back" / INDEX).read_text() == (root / "v0" / INDEX).read_text()


# A key holder's malformed manifests over valid shards: appendix B names each error class.

def _bad_documents(maps: dict) -> dict:
    good = {"sealtensors_checkpoint": 1, **maps}
    shard = maps["shards"][SHARD_1]

    def with_(**changes):
        return json.dumps({**good, **changes})

    config_entry = maps["files"][CONFIG]
    return {
        "version 2": (with_(sealtensors_checkpoint=2), "UnsupportedFormatError"),
        "version 0": (with_(sealtensors_checkpoint=0), "UnsupportedFormatError"),
        "a key missing": (json.dumps({k: v for k, v in good.items() if k != "files"}),
                          "FormatError"),
        "an extra key": (with_(comment="x"), "FormatError"),
        "no shards": (with_(shards={}), "FormatError"),
        "an absolute path": (with_(files={"/" + CONFIG: config_entry}), "FormatError"),
        "an empty path": (with_(files={"": config_entry}), "FormatError"),
        "a '..' component": (with_(files={"sub/../" + CONFIG: config_entry}), "FormatError"),
        "a '.' component": (with_(files={"./" + CONFIG: config_entry}), "FormatError"),
        "an empty component": (with_(files={"sub//" + CONFIG: config_entry}), "FormatError"),
        "the manifest's own name": (with_(files={MANIFEST: config_entry, **maps["files"]}),
                                    "FormatError"),
        "a path in two maps": (with_(files={SHARD_1: config_entry, **maps["files"]}),
                               "FormatError"),
        "a duplicate key": (with_()[:-1] + ',"files":{}}', "FormatError"),
        "NaN": (with_(files={CONFIG: {"size": "NaN", "sha512": config_entry["sha512"]}})
                .replace('"NaN"', "NaN"), "FormatError"),
        "not JSON": ("{", "FormatError"),
        "not an object": ("[]", "FormatError"),
        "a shard's file id differs": (
            with_(shards={**maps["shards"], SHARD_1: {**shard, "file_id": "0" * 32}}),
            "IntegrityError"),
        "a shard's index digest differs": (
            with_(shards={**maps["shards"], SHARD_1: {**shard, "index_sha512": "0" * 128}}),
            "IntegrityError"),
        "a shard's data header digest differs": (
            with_(shards={**maps["shards"],
                          SHARD_1: {**shard, "data_header_sha512": "0" * 128}}),
            "IntegrityError"),
        "an unknown shard listed": (
            with_(shards={**maps["shards"], "model-00003-of-00002.safetensors": shard}),
            "IntegrityError"),
        "an unknown copied file listed": (
            with_(files={**maps["files"], "tokenizer.json": config_entry}), "IntegrityError"),
        "a copied file's size differs": (
            with_(files={CONFIG: {**config_entry, "size": config_entry["size"] + 1}}),
            "IntegrityError"),
    }


@pytest.fixture(scope="module")
def bound_directory(side, plain, tmp_path_factory):
    root, _ = plain
    directory = tmp_path_factory.mktemp("bound") / "d"
    seal_checkpoint(root / "v0", directory, side.st)
    maps = bind_directory(directory, root / "v0", side.recipients)
    return directory, maps


BAD_DOCUMENT_CASES = list(_bad_documents(       # the case names only
    {"shards": {SHARD_1: {}}, "indexes": {}, "files": {CONFIG: {"size": 0, "sha512": ""}}}))


@pytest.mark.engine_independent
@pytest.mark.parametrize("case", BAD_DOCUMENT_CASES)
def test_malformed_manifests_are_refused_by_both_alike(side, bound_directory, case):
    directory, maps = bound_directory
    document, expected = _bad_documents(maps)[case]
    saved = (directory / MANIFEST).read_bytes()
    try:
        write_manifest(directory, side.recipients, **maps, document=document)
        assert _independent_outcome(directory, side.identities) == expected
        assert _reference_outcome(directory, side.st) == expected
    finally:
        (directory / MANIFEST).write_bytes(saved)
