"""Sealed checkpoint directories read from object storage: moto's S3 server (by URL and by fs=) and
the loopback HTTP server, which cannot list directories. Remote results equal local ones byte for
byte; a shard dropped, swapped or replaced on the server, a changed or missing plain file and a
missing manifest are refused with the same exception types as locally."""

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
    is_sealed_checkpoint,
    iter_checkpoint_weights,
    load_checkpoint,
    read_manifest,
    rewrap_checkpoint,
    seal_checkpoint,
    unseal_checkpoint,
    verify_checkpoint,
)
from sealtensors.engine.spec import ENCRYPTED_CHUNK_SIZE
from sealtensors.errors import IntegrityError, WrongKeyError
from sealtensors.io.remote import RemotePath

from remote_servers import FaultyObjectServer, MotoS3Server

pytest.importorskip("torch")  # load_checkpoint returns torch tensors

# What is tested here is where the bytes come from; decryption is the same code on every engine
# (test_checkpoint_dirs.py and test_remote.py run it on each).
pytestmark = pytest.mark.engine_independent

KEY = bytes(range(32))
BUCKET = "ckpts"
SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def make_plain(directory, seed: int) -> None:
    """A two-shard Hugging Face-style checkpoint: index, config, and a tokenizer in a subfolder
    larger than a few chunks (fetched in several ranges when parts are small)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory / "tokenizer", exist_ok=True)
    first = {"embed.weight": rng.standard_normal((300, 64)).astype(np.float32),
             "layers.0.norm": rng.standard_normal(64).astype(np.float16)}
    second = {"layers.0.proj": rng.standard_normal((64, 64)).astype(np.float32),
              "lm_head.bias": np.arange(300, dtype=np.int64)}
    plain_save(first, directory / SHARD_1, metadata={"format": "pt"})
    plain_save(second, directory / SHARD_2, metadata={"format": "pt"})
    weight_map = {**{n: SHARD_1 for n in first}, **{n: SHARD_2 for n in second}}
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map":
                                               weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "tiny", "seed": seed}))
    vocab = {f"token{i}": i for i in range(5000)}
    (directory / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": vocab}))


def _files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Two sealed versions of the checkpoint (same names, other weights and file ids)."""
    root = tmp_path_factory.mktemp("ckpt")
    for version, seed in (("v1", 0), ("v2", 1)):
        make_plain(root / f"plain-{version}", seed)
        seal_checkpoint(root / f"plain-{version}", root / version, KEY)
    return root


@pytest.fixture(scope="module")
def http(local):
    server = FaultyObjectServer()
    for version in ("v1", "v2"):
        for name, data in _files(local / version).items():
            server.put(f"{version}/{name}", data)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_s3(local):
    server = MotoS3Server()
    try:
        server.make_bucket(BUCKET)
        fs = server.filesystem()
        for version in ("v1", "v2"):
            for name, data in _files(local / version).items():
                fs.pipe(f"{BUCKET}/{version}/{name}", data)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_faults(request):
    if "http" in request.fixturenames:
        request.getfixturevalue("http").clear()
    yield


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """s3:// URLs resolved by fsspec itself (endpoint and credentials from the environment)."""
    import s3fs

    for name, value in (("AWS_ENDPOINT_URL", moto_s3.url), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    # Each filesystem class keeps its own instance cache: an s3:// instance made by an earlier
    # test would still point at that test's (stopped) server.
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _where(kind: str, request, version: str = "v1") -> dict:
    """Keyword arguments naming checkpoint ``version`` on the store ``kind``."""
    if kind == "s3-url":
        request.getfixturevalue("s3_env")
        return {"directory": f"s3://{BUCKET}/{version}/"}
    if kind == "s3-fs":
        return {"directory": f"{BUCKET}/{version}",
                "fs": request.getfixturevalue("moto_s3").filesystem()}
    if kind == "http-small-parts":
        url = f"{request.getfixturevalue('http').url}/{version}"
        return {"directory": RemotePath(url, part_bytes=ENCRYPTED_CHUNK_SIZE, concurrency=2)}
    return {"directory": f"{request.getfixturevalue('http').url}/{version}/"}


def _tensors_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].numpy().tobytes() == b[name].numpy().tobytes(), name


def _without_paths(report):
    """A report with the location-dependent fields (paths, listing notes) removed."""
    if isinstance(report, dict):
        return {k: _without_paths(v) for k, v in report.items()
                if k not in ("path", "listing", "not_checked")}
    if isinstance(report, list):
        return [_without_paths(item) for item in report]
    return report


STORES = ["s3-url", "s3-fs", "http", "http-small-parts"]


@pytest.mark.parametrize("kind", STORES)
def test_remote_checkpoint_equals_local(kind, local, request, tmp_path):
    where = _where(kind, request)
    directory, fs = where["directory"], where.get("fs")
    assert is_sealed_checkpoint(directory, fs=fs)
    assert read_manifest(directory, KEY, fs=fs) == read_manifest(local / "v1", KEY)
    _tensors_equal(load_checkpoint(directory, KEY, fs=fs), load_checkpoint(local / "v1", KEY))
    assert [n for n, _ in iter_checkpoint_weights(directory, KEY, names=[SHARD_2], fs=fs)] == \
        [n for n, _ in iter_checkpoint_weights(local / "v1", KEY, names=[SHARD_2])]

    remote_summary = verify_checkpoint(directory, KEY, fs=fs)
    local_summary = verify_checkpoint(local / "v1", KEY)
    assert _without_paths(remote_summary) == _without_paths(local_summary)
    assert local_summary["not_checked"] == []
    # HTTP cannot list: what that leaves unchecked is said, not silently skipped.
    assert bool(remote_summary["not_checked"]) == kind.startswith("http")

    assert _without_paths(inspect_checkpoint(directory, KEY, fs=fs)) == \
        _without_paths(inspect_checkpoint(local / "v1", KEY))

    unseal_checkpoint(directory, tmp_path / "remote", KEY, fs=fs)
    unseal_checkpoint(local / "v1", tmp_path / "local", KEY)
    assert _files(tmp_path / "remote") == _files(tmp_path / "local")
    # ... which is the plain checkpoint it was sealed from.
    assert _files(tmp_path / "local") == _files(local / "plain-v1")


@pytest.mark.parametrize("kind", ["s3-fs", "http"])
def test_inspect_without_a_key(kind, local, request):
    where = _where(kind, request)
    report = inspect_checkpoint(where["directory"], fs=where.get("fs"))
    expected = inspect_checkpoint(local / "v1")
    assert report["checkpoint"] and not report["authenticated"]
    if kind == "s3-fs":  # a listing: the same files as locally
        assert _without_paths(report) == _without_paths(expected)
    else:  # no listing, and the manifest's list is encrypted: the manifest only, said so
        assert [f["name"] for f in report["sealed_files"]] == [MANIFEST_NAME]
        assert report["plain_files"] == [] and "cannot list" in report["listing"]


def test_not_a_checkpoint_and_wrong_key(request, http, moto_s3):
    fs = moto_s3.filesystem()
    assert not is_sealed_checkpoint(f"{http.url}/nothing/")
    assert not is_sealed_checkpoint(f"{BUCKET}/nothing", fs=fs)
    for directory, options in ((f"{http.url}/nothing/", {}), (f"{BUCKET}/nothing", {"fs": fs})):
        with pytest.raises(IntegrityError, match="not a sealed checkpoint directory"):
            verify_checkpoint(directory, KEY, **options)
    with pytest.raises(WrongKeyError):
        load_checkpoint(f"{http.url}/v1/", bytes(32))
    with pytest.raises(ValueError, match="needs a local directory"):
        rewrap_checkpoint(f"{http.url}/v1/", KEY, add=[sealtensors.generate_key()])


# -- tampering: the same exception types as locally ---------------------------------------------

def _tamper(case: str, put, delete, v1: dict, v2: dict) -> None:
    """Apply ``case`` to a copy of v1 through ``put(name, bytes)`` / ``delete(name)``."""
    if case == "shard missing":
        delete(SHARD_2)
    elif case == "shard of another version":
        put(SHARD_2, v2[SHARD_2])
    elif case == "shards swapped":
        put(SHARD_1, v1[SHARD_2])
        put(SHARD_2, v1[SHARD_1])
    elif case == "config changed":
        put("config.json", v1["config.json"].replace(b"tiny", b"huge"))
    elif case == "config same size, other bytes":
        put("config.json", v1["config.json"].replace(b"tiny", b"tinz"))
    elif case == "tokenizer missing":
        delete("tokenizer/tokenizer.json")
    elif case == "manifest missing":
        delete(MANIFEST_NAME)
    elif case == "manifest of another version":
        put(MANIFEST_NAME, v2[MANIFEST_NAME])
    elif case == "extra weight file":
        put("model-00003-of-00002.safetensors", v1[SHARD_1])
    else:
        raise AssertionError(case)


CASES = ["shard missing", "shard of another version", "shards swapped", "config changed",
         "config same size, other bytes", "tokenizer missing", "manifest missing",
         "manifest of another version", "extra weight file"]


def _error(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - compared by type below
        return exc
    return None


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["s3", "http"])
def test_tampered_remote_checkpoint_is_refused_like_a_local_one(case, kind, local, moto_s3, http,
                                                                tmp_path):
    v1, v2 = _files(local / "v1"), _files(local / "v2")
    copy = tmp_path / "local"
    shutil.copytree(local / "v1", copy)
    _tamper(case, lambda name, data: (copy / name).write_bytes(data),
            lambda name: (copy / name).unlink(), v1, v2)
    prefix = f"t-{kind}-{CASES.index(case)}"
    if kind == "s3":
        fs = moto_s3.filesystem()
        for name, data in v1.items():
            fs.pipe(f"{BUCKET}/{prefix}/{name}", data)
        _tamper(case, lambda name, data: fs.pipe(f"{BUCKET}/{prefix}/{name}", data),
                lambda name: fs.rm(f"{BUCKET}/{prefix}/{name}"), v1, v2)
        remote, options = f"{BUCKET}/{prefix}", {"fs": fs}
    else:
        for name, data in v1.items():
            http.put(f"{prefix}/{name}", data)
        _tamper(case, lambda name, data: http.put(f"{prefix}/{name}", data),
                lambda name: http.objects.pop(f"{prefix}/{name}"), v1, v2)
        remote, options = f"{http.url}/{prefix}/", {}

    calls = {
        "verify": lambda d, **o: verify_checkpoint(d, KEY, **o),
        "load": lambda d, **o: load_checkpoint(d, KEY, **o),
        "unseal": lambda d, **o: unseal_checkpoint(d, tmp_path / f"out-{len(o)}-{id(d)}", KEY,
                                                   **o),
    }
    for what, call in calls.items():
        local_error = _error(lambda: call(copy))
        remote_error = _error(lambda: call(remote, **options))
        if case == "extra weight file" and kind == "http":
            # HTTP cannot list: the extra file is invisible (and never loaded); verify says so.
            assert isinstance(local_error, IntegrityError)
            assert remote_error is None, remote_error
            if what == "verify":
                assert "cannot list" in verify_checkpoint(remote, KEY)["not_checked"][0]
            continue
        assert isinstance(local_error, IntegrityError), (what, local_error)
        assert type(remote_error) is type(local_error), (what, remote_error, local_error)
    assert not (tmp_path / "out-0").exists()


def test_hostile_listing_names_are_refused_not_opened(moto_s3, local):
    """Keys a listing returns are only compared with the manifest's names, never opened: names
    with '..', empty parts or a trailing slash next to a checkpoint are unlisted weight files."""
    fs = moto_s3.filesystem()
    for name, data in _files(local / "v1").items():
        fs.pipe(f"{BUCKET}/hostile/{name}", data)
    fs.pipe(f"{BUCKET}/hostile/../escape.safetensors", b"not sealed")
    fs.pipe(f"{BUCKET}/hostile//doubled.safetensors", b"not sealed")
    with pytest.raises(IntegrityError, match="not in the checkpoint's manifest") as caught:
        verify_checkpoint(f"{BUCKET}/hostile", KEY, fs=fs)
    assert "doubled.safetensors" in str(caught.value)


def test_transient_faults_and_a_foreign_body_on_http(http, local):
    expected = load_checkpoint(local / "v1", KEY)
    http.inject(f"v1/{SHARD_1}", "ok", "503", "reset")  # the head GET, then two failures
    http.inject("v1/config.json", "short", "503")
    http.inject(f"v1/{MANIFEST_NAME}", "reset")
    _tensors_equal(load_checkpoint(f"{http.url}/v1/", KEY), expected)
    assert not any(http.faults.values())
    # A cache serving the same range of another shard: right length, wrong bytes.
    http.inject(f"v1/{SHARD_1}", "ok", "other:v2/" + SHARD_1)
    with pytest.raises(IntegrityError):
        load_checkpoint(f"{http.url}/v1/", KEY)
    # A plain file that stays short after every retry is never taken as the file.
    http.inject("v1/config.json", *["short-declared"] * 5)
    with pytest.raises(IntegrityError, match="truncated response"):
        verify_checkpoint(f"{http.url}/v1/", KEY)


def test_cli_on_checkpoint_urls(http, local, tmp_path, capsys):
    key_file = tmp_path / "k.key"
    sealtensors.write_key_file(key_file, KEY)
    url = f"{http.url}/v1"  # no trailing slash: recognised by its manifest
    assert cli.main(["verify", url, "-k", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "not checked" in out
    assert cli.main(["inspect", url, "-k", str(key_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["authenticated"] and set(report["tensors"]) == {SHARD_1, SHARD_2}
    assert cli.main(["unseal", url + "/", str(tmp_path / "out"), "-k", str(key_file)]) == 0
    assert _files(tmp_path / "out") == _files(local / "plain-v1")
    # A single sealed file by URL is still a file.
    assert cli.main(["verify", f"{http.url}/v1/{SHARD_1}", "-k", str(key_file)]) == 0


@pytest.mark.parametrize("name, change", [
    ("config.json", +10), ("config.json", -10), ("tokenizer/tokenizer.json", -1),
    (SHARD_2, -100), (SHARD_2, +100), (MANIFEST_NAME, -1),
])
def test_sizes_a_store_lies_about_are_refused(http, local, name, change):
    """A HEAD claiming another size than the object has (a broken or hostile store or cache):
    never taken at its word, the bytes that arrive are what is checked."""
    size = len(_files(local / "v1")[name])
    http.head_sizes[f"v1/{name}"] = size + change
    with pytest.raises(IntegrityError):
        verify_checkpoint(RemotePath(f"{http.url}/v1", attempts=2), KEY)
