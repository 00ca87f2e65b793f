"""Remote sources against real loopback servers: moto's S3 server and an HTTP object server that
injects faults. Remote loads must equal local loads byte for byte, fetch only the ranges needed,
retry transient failures, and never return bytes that did not authenticate."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stnp
from sealtensors import cli
from sealtensors.engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE
from sealtensors.errors import IntegrityError, SignatureError
from sealtensors.io.remote import ObjectChangedError, RemotePath, RemoteSourceError, is_url
from sealtensors.keys.signing import SigningKey

from remote_servers import FaultyObjectServer, MotoS3Server

try:
    import s3fs  # noqa: F401 - the S3 tests need it
except ImportError as exc:  # CI installs the extras: a missing one is a failure, not a skip
    raise ImportError(f"the remote tests need s3fs and aiohttp ({exc}); install the 'remote' and "
                      "'test' extras") from exc

KEY = bytes(range(32))
SIGNER = SigningKey(bytes(range(64)))
BUCKET = "weights"


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.standard_normal((96, 1100), dtype=np.float32),  # ~26 chunks
        "small": rng.integers(0, 100, (7,), dtype=np.int64),
        "mask": rng.integers(0, 2, (300,), dtype=np.int8).astype(np.bool_),
        "proj": rng.standard_normal((50, 333)).astype(np.float16),
        "head": rng.standard_normal((64, 257), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Local sealed files: the model, a signed copy, and another model of the same size."""
    root = tmp_path_factory.mktemp("remote")
    paths = {}
    for name, seed, signer in (("model", 1, None), ("signed", 1, SIGNER), ("other", 2, None)):
        path = root / f"{name}.sealed"
        stnp.save_file(_tensors(seed), path, KEY, signer=signer)
        paths[name] = path
    assert paths["model"].stat().st_size == paths["other"].stat().st_size
    return paths


@pytest.fixture(scope="module")
def http(files):
    server = FaultyObjectServer()
    for name, path in files.items():
        server.put(name, path.read_bytes())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_s3(files):
    server = MotoS3Server()
    try:
        server.make_bucket(BUCKET)
        server.make_bucket("versioned", versioned=True)
        fs = server.filesystem()
        for name, path in files.items():
            fs.pipe(f"{BUCKET}/{name}.sealed", path.read_bytes())
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_s3):
    return moto_s3.filesystem()


@pytest.fixture(autouse=True)
def _fresh_faults(request):
    if "http" in request.fixturenames:
        request.getfixturevalue("http").clear()
    yield


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes(), name


def _remote_object(handle):
    return handle._reader._source.remote


# -- equality with local loads ----------------------------------------------------------------

def test_http_url_loads_equal_local_loads(http, files):
    url = f"{http.url}/model"
    assert is_url(url)
    _same(stnp.load_file(url, KEY), stnp.load_file(files["model"], KEY))
    # Small parts: many concurrent ranges, decrypted part by part, same bytes.
    _same(stnp.load_file(RemotePath(url, part_bytes=3 * ENCRYPTED_CHUNK_SIZE, concurrency=3), KEY),
          stnp.load_file(files["model"], KEY))


def test_s3_every_entry_point_equals_local(s3, files, tmp_path):
    import torch

    import sealtensors.torch as stt

    key_path = f"{BUCKET}/model.sealed"
    local = stnp.load_file(files["model"], KEY)
    _same(stnp.load_file(key_path, KEY, fs=s3), local)
    _same(stnp.load_file(RemotePath(key_path, fs=s3), KEY), local)
    pt = stt.load_file(key_path, KEY, fs=s3)
    for name, array in local.items():
        assert torch.equal(pt[name], torch.from_numpy(np.asarray(array)))
    with sealtensors.safe_open(key_path, "np", key=KEY, fs=s3) as handle:
        assert handle.keys() == sorted(local)
        np.testing.assert_array_equal(handle.get_tensor("head"), local["head"])
        np.testing.assert_array_equal(handle.get_slice("embed")[10:37], local["embed"][10:37])
    size = sealtensors.buffer_size(key_path, KEY, ["head", "small"], fs=s3)
    buffer = np.zeros(size, np.uint8)
    placed = sealtensors.load_into(key_path, KEY, buffer, names=["head", "small"], fs=s3)
    np.testing.assert_array_equal(placed["head"], local["head"])
    whole = np.zeros(sealtensors.buffer_size(files["model"], KEY), np.uint8)
    _same(sealtensors.load_into(key_path, KEY, whole, fs=s3), local)
    assert sealtensors.verify(key_path, KEY, fs=s3)["tensors"] == len(local)
    sealtensors.unseal_file(key_path, tmp_path / "remote.safetensors", KEY, fs=s3)
    sealtensors.unseal_file(files["model"], tmp_path / "local.safetensors", KEY)
    assert (tmp_path / "remote.safetensors").read_bytes() == \
        (tmp_path / "local.safetensors").read_bytes()
    report = sealtensors.inspect(key_path, KEY, fs=s3)
    assert report["authenticated"] and len(report["tensors"]) == len(local)
    for rank in range(3):
        shard = stt.load_shard(key_path, KEY, rank=rank, world_size=3, fs=s3)
        expected = stt.load_shard(files["model"], KEY, rank=rank, world_size=3)
        for name in expected:
            assert torch.equal(shard[name], expected[name]), name


@pytest.mark.engine_independent
def test_s3_url_with_endpoint_from_the_environment(moto_s3, files, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Pick up the environment set above; each filesystem class has its own instance cache, and
    # an instance left behind would point later tests at this module's stopped server.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        _same(stnp.load_file(f"s3://{BUCKET}/model.sealed", KEY),
              stnp.load_file(files["model"], KEY))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.engine_independent
def test_signed_remote_file_checks_signature_and_chunk_digests(http, files):
    url = f"{http.url}/signed"
    _same(stnp.load_file(url, KEY, signer=SIGNER.verifying_key), stnp.load_file(files["signed"], KEY))
    # The unsigned model is refused when a signer is required.
    with pytest.raises(SignatureError):
        stnp.load_file(f"{http.url}/model", KEY, signer=SIGNER.verifying_key)


@pytest.mark.engine_independent
def test_cli_verify_and_unseal_a_url(http, files, tmp_path, capsys):
    key_file = tmp_path / "model.key"
    sealtensors.write_key_file(key_file, KEY)
    url = f"{http.url}/model"
    assert cli.main(["verify", url, "-k", str(key_file)]) == 0
    assert cli.main(["unseal", url, str(tmp_path / "out.safetensors"), "-k", str(key_file)]) == 0
    sealtensors.unseal_file(files["model"], tmp_path / "local.safetensors", KEY)
    assert (tmp_path / "out.safetensors").read_bytes() == \
        (tmp_path / "local.safetensors").read_bytes()


# -- only the ranges needed ------------------------------------------------------------------

@pytest.mark.engine_independent
def test_lazy_reads_fetch_only_the_chunks_they_need(http, files):
    url = f"{http.url}/model"
    size = files["model"].stat().st_size
    with sealtensors.safe_open(url, "np", key=KEY) as handle:
        remote = _remote_object(handle)
        opened = dict(remote.stats)
        assert opened["requests"] == 1  # one GET for header region + index (plus one HEAD)
        info = handle._reader.info("small")
        handle.get_tensor("small")
        fetched = remote.stats["bytes"] - opened["bytes"]
        needed_chunks = (info.end - 1) // CHUNK_SIZE - info.begin // CHUNK_SIZE + 1
        assert fetched <= needed_chunks * ENCRYPTED_CHUNK_SIZE
        rows = handle.get_slice("embed")[0:2]  # 2 rows of 1100 float32: at most 2 chunks
        assert rows.shape == (2, 1100)
        assert remote.stats["bytes"] - opened["bytes"] - fetched <= 2 * ENCRYPTED_CHUNK_SIZE
    # The head GET (header region + index) is the only read beyond the chunks asked for.
    assert remote.stats["requests"] <= 1 + 2 + 2
    assert remote.stats["bytes"] - opened["bytes"] < size / 10


@pytest.mark.engine_independent
def test_many_ranges_in_flight_memory_bounded_by_the_window(http):
    url = f"{http.url}/model"
    active, peak, lock = [0], [0], threading.Lock()
    remote = RemotePath(url, part_bytes=2 * ENCRYPTED_CHUNK_SIZE, concurrency=4).open()
    original = remote._get_once

    def counting(offset, length):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            http.inject("model", "slow")
            return original(offset, length)
        finally:
            with lock:
                active[0] -= 1

    remote._get_once = counting
    from sealtensors.reader import SealedReader, _Source

    source = _Source(None, None, remote.size, remote=remote)
    with SealedReader(source, KEY) as reader:
        out = np.empty(reader.data_length, np.uint8)
        reader.read_all_into(out)
    assert 2 <= peak[0] <= 4


# -- failures --------------------------------------------------------------------------------

@pytest.mark.engine_independent
@pytest.mark.parametrize("faults", [
    ("503", "500", "503"), ("reset", "reset"), ("short", "short-declared"), ("slow", "slow"),
    ("ok", "503", "reset", "short", "503"),
])
def test_transient_faults_are_retried_and_the_result_is_exact(http, files, faults):
    http.inject("model", *faults)
    remote = RemotePath(f"{http.url}/model", part_bytes=4 * ENCRYPTED_CHUNK_SIZE, concurrency=2)
    _same(stnp.load_file(remote, KEY), stnp.load_file(files["model"], KEY))
    assert not http.faults.get("model")  # every fault was served


@pytest.mark.engine_independent
def test_a_store_that_keeps_failing_gives_a_clear_error(http):
    http.inject("model", "ok", *["503"] * 10)
    with pytest.raises(RemoteSourceError) as caught:
        stnp.load_file(RemotePath(f"{http.url}/model", attempts=3), KEY)
    message = str(caught.value)
    assert f"{http.url}/model" in message and "after 3 attempts" in message and "503" in message
    assert isinstance(caught.value, OSError)


@pytest.mark.engine_independent
def test_a_body_that_stays_short_is_an_integrity_error(http):
    http.inject("model", "ok", *["short-declared"] * 3)
    with pytest.raises(IntegrityError, match="truncated response"):
        stnp.load_file(RemotePath(f"{http.url}/model", attempts=3), KEY)


@pytest.mark.engine_independent
def test_missing_object_is_a_clear_error(http, s3):
    with pytest.raises(RemoteSourceError) as caught:
        stnp.load_file(f"{http.url}/nothing-here", KEY)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(RemoteSourceError, match="no such remote object"):
        stnp.load_file(f"{BUCKET}/nothing-here", KEY, fs=s3)


def test_a_body_from_another_file_fails_authentication_and_nothing_is_returned(http, files):
    # The same range of another sealed file of the same size: right length, wrong bytes.
    http.inject("model", "ok", "other:other")
    buffer = np.full(sealtensors.buffer_size(files["model"], KEY), 0xAB, np.uint8)
    with pytest.raises(IntegrityError):
        sealtensors.load_into(RemotePath(f"{http.url}/model"), KEY, buffer)
    assert not buffer.any()  # wiped: no unauthenticated (or authenticated) plaintext left


@pytest.mark.engine_independent
def test_whole_object_instead_of_a_range_is_not_used(http, files):
    # A server that ignores Range: the wrong length is retried, then refused.
    http.inject("model", "ok", "ignore-range", "ignore-range")
    _same(stnp.load_file(f"{http.url}/model", KEY), stnp.load_file(files["model"], KEY))
    http.inject("model", "ok", *["ignore-range"] * 3)
    with pytest.raises(IntegrityError):
        stnp.load_file(RemotePath(f"{http.url}/model", attempts=3), KEY)


@pytest.mark.engine_independent
def test_object_replaced_mid_read_over_http_is_refused(http, files):
    http.put("victim", files["model"].read_bytes())
    try:
        with sealtensors.safe_open(f"{http.url}/victim", "np", key=KEY) as handle:
            handle.get_tensor("small")
            http.inject("victim", "replace:other")
            with pytest.raises(ObjectChangedError, match="changed after it was opened"):
                handle.get_tensor("head")
    finally:
        http.put("victim", files["model"].read_bytes())


@pytest.mark.engine_independent
def test_object_replaced_mid_read_on_s3_is_refused(s3, files):
    path = f"{BUCKET}/victim.sealed"
    s3.pipe(path, files["model"].read_bytes())
    with sealtensors.safe_open(path, "np", key=KEY, fs=s3) as handle:
        handle.get_tensor("small")
        s3.pipe(path, files["other"].read_bytes())
        with pytest.raises(ObjectChangedError):
            handle.get_tensor("head")


@pytest.mark.engine_independent
def test_versioned_bucket_keeps_reading_the_version_it_opened(s3, files):
    path = "versioned/model.sealed"
    s3.pipe(path, files["model"].read_bytes())
    local = stnp.load_file(files["model"], KEY)
    with sealtensors.safe_open(path, "np", key=KEY, fs=s3) as handle:
        assert _remote_object(handle).version_id
        s3.pipe(path, files["other"].read_bytes())
        np.testing.assert_array_equal(handle.get_tensor("head"), local["head"])
    # A new open reads the new version.
    _same(stnp.load_file(path, KEY, fs=s3), stnp.load_file(files["other"], KEY))


@pytest.mark.engine_independent
def test_local_file_urls_and_plain_paths_stay_local(files):
    _same(stnp.load_file("file://" + os.fspath(files["model"]), KEY),
          stnp.load_file(files["model"], KEY))
    assert not is_url("file:///tmp/x") and not is_url("relative/path") and is_url("gs://b/k")
