"""seal_file / unseal_file: real safetensors files in and out, malformed sources, progress, memory."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sealtensors
from sealtensors import FormatError
from sealtensors.numpy import load_file as sealed_load_file

safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open as plain_safe_open  # noqa: E402

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
MiB = 1 << 20


def plain_metadata(path) -> dict | None:
    with plain_safe_open(str(path), "np") as handle:
        return handle.metadata()


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def numpy_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((300, 64)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(17).astype(np.float16),
        "layer.0.scale": np.array(3.25, dtype=np.float64),
        "ids": rng.integers(-2**40, 2**40, size=(5, 3), dtype=np.int64),
        "u8": rng.integers(0, 256, size=1001, dtype=np.uint8),
        "u16": rng.integers(0, 2**16, size=33, dtype=np.uint16),
        "u32": rng.integers(0, 2**32, size=(2, 2, 2), dtype=np.uint32),
        "u64": rng.integers(0, 2**63, size=4, dtype=np.uint64),
        "i8": rng.integers(-128, 128, size=9, dtype=np.int8),
        "i16": rng.integers(-2**15, 2**15, size=9, dtype=np.int16),
        "i32": rng.integers(-2**31, 2**31, size=9, dtype=np.int32),
        "mask": rng.integers(0, 2, size=(4, 4)).astype(np.bool_),
        "complex": (rng.standard_normal(6) + 1j * rng.standard_normal(6)).astype(np.complex64),
        "empty": np.zeros((0, 8), dtype=np.float32),
        "big": rng.standard_normal(200_000).astype(np.float32),  # ~800 KiB: many chunks
    }


# --- round trips through the safetensors package ---------------------------------------------------


def test_numpy_safetensors_file_round_trips(tmp_path):
    tensors = numpy_tensors()
    metadata = {"format": "np", "license": "apache-2.0", "ünïcode": "✓"}
    source = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(tensors, str(source), metadata=metadata)
    sealed = tmp_path / "model.sealed"
    restored = tmp_path / "restored.safetensors"

    sealtensors.seal_file(source, sealed, KEY)
    assert sealed.read_bytes().find(b"embed.weight") == -1  # names are encrypted too
    loaded = sealed_load_file(sealed, KEY)
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        assert handle.metadata() == metadata
    sealtensors.unseal_file(sealed, restored, KEY)

    assert stat.S_IMODE(os.stat(restored).st_mode) == 0o600  # plaintext output is private
    back = safetensors_numpy.load_file(str(restored))
    assert plain_metadata(restored) == metadata
    assert set(back) == set(tensors) == set(loaded)
    for name, array in tensors.items():
        for result in (back[name], loaded[name]):
            assert result.dtype == array.dtype and result.shape == array.shape, name
            assert result.tobytes() == array.tobytes(), name


def test_torch_safetensors_file_round_trips(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    generator = torch.Generator().manual_seed(1)
    tensors = {
        "bf16": torch.randn(33, 7, generator=generator).to(torch.bfloat16),
        "f8_e4m3": torch.randn(64, generator=generator).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(3, 5, generator=generator).to(torch.float8_e5m2),
        "f16": torch.randn(10, generator=generator).half(),
        "bool": torch.rand(6, generator=generator) > 0.5,
        "i64": torch.arange(-5, 5),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    metadata = {"format": "pt"}

    def as_bytes(tensor):
        return tensor.reshape(-1).view(torch.uint8)

    source = tmp_path / "model.safetensors"
    safetensors_torch.save_file(tensors, str(source), metadata=metadata)
    sealed, restored = tmp_path / "model.sealed", tmp_path / "restored.safetensors"
    sealtensors.seal_file(source, sealed, KEY)
    sealtensors.unseal_file(sealed, restored, KEY)

    back = safetensors_torch.load_file(str(restored))
    assert plain_metadata(restored) == metadata
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(as_bytes(back[name]), as_bytes(tensor)), name
    # The sealed file also loads directly through sealtensors.torch.
    import sealtensors.torch as sealed_torch

    direct = sealed_torch.load_file(sealed, KEY)
    for name, tensor in tensors.items():
        assert direct[name].dtype == tensor.dtype and direct[name].shape == tensor.shape
        assert torch.equal(as_bytes(direct[name]), as_bytes(tensor)), name


def test_file_without_metadata_or_tensors(tmp_path):
    source = tmp_path / "empty.safetensors"
    safetensors_numpy.save_file({}, str(source))
    sealed, restored = tmp_path / "empty.sealed", tmp_path / "back.safetensors"
    sealtensors.seal_file(source, sealed, KEY)
    summary = sealtensors.verify(sealed, KEY)
    assert (summary["tensors"], summary["data_size"], summary["signed"]) == (0, 0, False)
    sealtensors.unseal_file(sealed, restored, KEY)
    assert safetensors_numpy.load_file(str(restored)) == {}
    assert plain_metadata(restored) is None


def test_several_recipients_and_key_files(tmp_path):
    source = tmp_path / "m.safetensors"
    safetensors_numpy.save_file({"w": np.arange(10, dtype=np.int32)}, str(source))
    key_file = tmp_path / "k.key"
    sealtensors.write_key_file(key_file, OTHER_KEY)
    sealed = tmp_path / "m.sealed"
    sealtensors.seal_file(source, sealed, [KEY, str(key_file)], threads=2)
    report = sealtensors.inspect(sealed)
    file_id = bytes.fromhex(report["file_id"])
    from sealtensors.keys import SymmetricKey

    assert report["recipients"] == [SymmetricKey(k).slot_id(file_id).hex() for k in (KEY, OTHER_KEY)]
    for index, key in enumerate((KEY, OTHER_KEY, key_file)):
        out = tmp_path / f"out{index}.safetensors"
        sealtensors.unseal_file(sealed, out, key, threads=index + 1)
        assert np.array_equal(safetensors_numpy.load_file(str(out))["w"], np.arange(10))
    with pytest.raises(sealtensors.WrongKeyError):
        sealtensors.unseal_file(sealed, tmp_path / "never.safetensors", bytes(32))
    assert not (tmp_path / "never.safetensors").exists()


def test_sealing_twice_gives_different_files_with_the_same_content(tmp_path):
    source = tmp_path / "m.safetensors"
    safetensors_numpy.save_file({"w": np.arange(5000, dtype=np.float32)}, str(source))
    first, second = tmp_path / "a.sealed", tmp_path / "b.sealed"
    sealtensors.seal_file(source, first, KEY)
    sealtensors.seal_file(source, second, KEY)
    assert first.read_bytes() != second.read_bytes()  # fresh data key, salt and file id
    assert np.array_equal(sealed_load_file(first, KEY)["w"], sealed_load_file(second, KEY)["w"])


# --- malformed sources -----------------------------------------------------------------------------


def safetensors_bytes(header, data: bytes = b"", *, declared_length: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(encoded) if declared_length is None else declared_length
    return struct.pack("<Q", length) + encoded + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}
DATA = bytes(range(12))

MALFORMED = {
    "shorter_than_8_bytes": b"\x05\x00\x00",
    "header_longer_than_file": safetensors_bytes(GOOD, DATA, declared_length=10_000),
    "header_length_absurd": safetensors_bytes(GOOD, DATA, declared_length=1 << 62),
    "header_not_json": safetensors_bytes(b"{not json", DATA),
    "header_not_utf8": safetensors_bytes(b'{"\xff": 1}', DATA),
    "header_is_a_list": safetensors_bytes([1, 2], DATA),
    "overlapping_offsets": safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, DATA),
    "gap_between_tensors": safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]}}, DATA),
    "unknown_dtype": safetensors_bytes(
        {"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}, DATA),
    "lowercase_dtype": safetensors_bytes(
        {"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}, DATA),
    "trailing_bytes": safetensors_bytes(GOOD, DATA + b"\x00"),
    "data_short": safetensors_bytes(GOOD, DATA[:11]),
    "offsets_disagree_with_shape": safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}, DATA),
    "negative_dimension": safetensors_bytes(
        {"a": {"dtype": "U8", "shape": [-12], "data_offsets": [0, 12]}}, DATA),
    "boolean_dimension": safetensors_bytes(
        {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\x00"),
    "missing_offsets": safetensors_bytes({"a": {"dtype": "U8", "shape": [12]}}, DATA),
    "duplicate_names": safetensors_bytes(
        b'{"a": {"dtype": "U8", "shape": [12], "data_offsets": [0, 12]},'
        b' "a": {"dtype": "U8", "shape": [12], "data_offsets": [0, 12]}}', DATA),
    "metadata_not_strings": safetensors_bytes(
        {"__metadata__": {"epoch": 3}, **GOOD}, DATA),
    "entry_not_an_object": safetensors_bytes({"a": [0, 12]}, DATA),
}


def test_well_formed_reference_is_accepted(tmp_path):
    # The malformed cases are single edits of this file, which must itself seal fine.
    source = tmp_path / "good.safetensors"
    source.write_bytes(safetensors_bytes(GOOD, DATA))
    sealtensors.seal_file(source, tmp_path / "good.sealed", KEY)
    arrays = sealed_load_file(tmp_path / "good.sealed", KEY)
    assert arrays["b"].tobytes() == DATA[8:]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_source_is_a_format_error_and_writes_nothing(case, tmp_path):
    source = tmp_path / "bad.safetensors"
    source.write_bytes(MALFORMED[case])
    destination = tmp_path / "out.sealed"
    with pytest.raises(FormatError):
        sealtensors.seal_file(source, destination, KEY)
    assert not destination.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


def test_unseal_rejects_a_plain_safetensors_file(tmp_path):
    source = tmp_path / "plain.safetensors"
    source.write_bytes(safetensors_bytes(GOOD, DATA))
    with pytest.raises(FormatError):
        sealtensors.unseal_file(source, tmp_path / "out.safetensors", KEY)
    assert sorted(os.listdir(tmp_path)) == ["plain.safetensors"]


# --- progress --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 12345], ids=["span_multiple", "ragged"])
def test_progress_reports_increasing_counts_ending_at_the_data_size(tmp_path, extra):
    # 32 MiB (+ extra) of plaintext: two or three 16 MiB spans.
    big = np.zeros(8 * MiB, dtype=np.float32)
    big[::4096] = 1.0
    tensors = {"big": big}
    if extra:
        tensors["small"] = np.ones(extra, dtype=np.uint8)
    source = tmp_path / "m.safetensors"
    safetensors_numpy.save_file(tensors, str(source))
    sealed = tmp_path / "m.sealed"
    seen: list[int] = []
    sealtensors.seal_file(source, sealed, KEY, progress=seen.append)
    data_size = sealtensors.inspect(sealed)["data_size"]
    assert data_size >= 32 * MiB + extra
    assert len(seen) >= 2
    assert all(a <= b for a, b in zip(seen, seen[1:])), seen
    assert seen[0] > 0 and seen[-1] == data_size

    unsealed: list[int] = []
    sealtensors.unseal_file(sealed, tmp_path / "back.safetensors", KEY, progress=unsealed.append)
    assert len(unsealed) >= 2
    assert all(a <= b for a, b in zip(unsealed, unsealed[1:])), unsealed
    assert unsealed[-1] == data_size
    back = safetensors_numpy.load_file(str(tmp_path / "back.safetensors"))
    assert np.array_equal(back["big"], big)


def test_progress_counts_strictly_increase_when_data_fills_whole_spans(tmp_path):
    source = tmp_path / "m.safetensors"
    safetensors_numpy.save_file({"w": np.zeros(16 * MiB, dtype=np.uint8)}, str(source))
    sealed = tmp_path / "m.sealed"
    sealing: list[int] = []
    sealtensors.seal_file(source, sealed, KEY, progress=sealing.append)
    unsealing: list[int] = []
    sealtensors.unseal_file(sealed, tmp_path / "b.safetensors", KEY, progress=unsealing.append)
    assert sealing[-1] == unsealing[-1] == 16 * MiB
    assert all(a < b for a, b in zip(sealing, sealing[1:])), sealing
    assert all(a < b for a, b in zip(unsealing, unsealing[1:])), unsealing


# --- bounded memory (each measurement in a fresh process) ------------------------------------------


def backend_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    return env


MEMORY_SCRIPT = textwrap.dedent(r"""
    import json, resource, sys, threading, time
    import sealtensors

    operation, source, destination, key_hex = sys.argv[1:5]

    def status_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def anonymous_kib():
        return status_kib("RssAnon")

    peak_anon = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], anonymous_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    time.sleep(0.05)
    # ru_maxrss is a high-water mark that importing may already have raised. Linux lets a process
    # reset its own high-water mark (VmHWM) through clear_refs; without that, fall back to
    # ru_maxrss measured against the resident set just before the operation.
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        resettable = status_kib("VmHWM") <= status_kib("VmRSS") + 1024
    except OSError:
        resettable = False
    base_rss = status_kib("VmRSS")
    base_anon = anonymous_kib()
    action = sealtensors.seal_file if operation == "seal" else sealtensors.unseal_file
    action(source, destination, bytes.fromhex(key_hex), overwrite=True)
    done.set()
    sampler.join()
    peak = status_kib("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "rss_growth_mib": (peak - base_rss) / 1024,
        "hwm_reset": resettable,
        "anon_growth_mib": (peak_anon[0] - base_anon) / 1024,
    }))
""")


def measure(backend: str, operation: str, source, destination) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, operation, str(source), str(destination), KEY.hex()],
        env=backend_env(backend), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_plain_file(path, nbytes: int) -> None:
    """A safetensors file with one U8 tensor of ``nbytes`` random-looking bytes, written piecewise."""
    header = json.dumps({"__metadata__": {"size": str(nbytes)},
                         "w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}})
    encoded = header.encode() + b" " * (-len(header) % 8)
    block = np.random.default_rng(nbytes).integers(0, 256, MiB, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for offset in range(0, nbytes, MiB):
            handle.write(block[:min(MiB, nbytes - offset)])


def data_bytes(path) -> int:
    """Size of a safetensors file's data section."""
    with open(path, "rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
    return os.path.getsize(path) - 8 - header_length


SMALL, LARGE = 16 * MiB, 64 * MiB


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("memory")
    paths = {}
    for size in (SMALL, LARGE):
        paths[size] = directory / f"plain-{size >> 20}MiB.safetensors"
        write_plain_file(paths[size], size)
    return paths


_unseal_cache: dict[str, dict[int, dict]] = {}


def unseal_measurements(backend: str, plain_pair, tmp_path) -> dict[int, dict]:
    if backend not in _unseal_cache:
        results = {}
        for size, source in plain_pair.items():
            sealed = tmp_path / f"{size}.sealed"
            sealtensors.seal_file(source, sealed, KEY)
            results[size] = measure(backend, "unseal", sealed, tmp_path / f"{size}.safetensors")
            back = tmp_path / f"{size}.safetensors"
            assert data_bytes(back) == size
            sealed.unlink()
            back.unlink()
        _unseal_cache[backend] = results
    return _unseal_cache[backend]


def test_seal_memory_does_not_grow_with_the_file(backend, plain_pair, tmp_path):
    small = measure(backend, "seal", plain_pair[SMALL], tmp_path / "small.sealed")
    large = measure(backend, "seal", plain_pair[LARGE], tmp_path / "large.sealed")
    # A file 48 MiB larger may cost a little more (one more read piece in flight), never its size.
    assert large["rss_growth_mib"] - small["rss_growth_mib"] < 32, (small, large)
    assert large["rss_growth_mib"] < 128, large
    assert sealtensors.verify(tmp_path / "large.sealed", KEY)["data_size"] == LARGE


def test_unseal_anonymous_memory_does_not_grow_with_the_file(backend, plain_pair, tmp_path):
    results = unseal_measurements(backend, plain_pair, tmp_path)
    small, large = results[SMALL], results[LARGE]
    assert large["anon_growth_mib"] - small["anon_growth_mib"] < 32, (small, large)
    assert large["anon_growth_mib"] < 64, large


def test_unseal_peak_rss_does_not_grow_with_the_file(backend, plain_pair, tmp_path):
    results = unseal_measurements(backend, plain_pair, tmp_path)
    small, large = results[SMALL], results[LARGE]
    assert large["rss_growth_mib"] - small["rss_growth_mib"] < 32, (small, large)


@pytest.fixture(scope="module")
def plain_600(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory600") / "plain-600MiB.safetensors"
    write_plain_file(path, 600 * MiB)
    return path


@pytest.mark.slow
def test_seal_600_mib_peak_rss_stays_well_under_the_file_size(backend, plain_600, tmp_path):
    result = measure(backend, "seal", plain_600, tmp_path / "big.sealed")
    assert result["rss_growth_mib"] < 200, result


@pytest.mark.slow
def test_unseal_600_mib_anonymous_memory_stays_bounded(backend, plain_600, tmp_path):
    sealed = tmp_path / "big.sealed"
    sealtensors.seal_file(plain_600, sealed, KEY)
    result = measure(backend, "unseal", sealed, tmp_path / "back.safetensors")
    assert result["anon_growth_mib"] < 200, result
    assert data_bytes(tmp_path / "back.safetensors") == 600 * MiB


@pytest.mark.slow
def test_unseal_600_mib_peak_rss_stays_well_under_the_file_size(backend, plain_600, tmp_path):
    sealed = tmp_path / "big.sealed"
    sealtensors.seal_file(plain_600, sealed, KEY)
    result = measure(backend, "unseal", sealed, tmp_path / "back.safetensors")
    assert result["rss_growth_mib"] < 200, result
