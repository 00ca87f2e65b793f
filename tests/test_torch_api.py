"""sealtensors.torch: save / load / save_file / load_file, dtypes, views, pinning, numpy interop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ml_dtypes  # noqa: E402

import sealtensors  # noqa: E402
import sealtensors.numpy as snp  # noqa: E402
import sealtensors.torch as st  # noqa: E402
from sealtensors import WrongKeyError  # noqa: E402

# safetensors dtype name -> (torch dtype, numpy dtype); every dtype sealtensors.torch maps.
DTYPES = {
    "BOOL": (torch.bool, np.dtype(np.bool_)),
    "U8": (torch.uint8, np.dtype(np.uint8)),
    "I8": (torch.int8, np.dtype(np.int8)),
    "U16": (torch.uint16, np.dtype(np.uint16)),
    "I16": (torch.int16, np.dtype(np.int16)),
    "U32": (torch.uint32, np.dtype(np.uint32)),
    "I32": (torch.int32, np.dtype(np.int32)),
    "U64": (torch.uint64, np.dtype(np.uint64)),
    "I64": (torch.int64, np.dtype(np.int64)),
    "F16": (torch.float16, np.dtype(np.float16)),
    "BF16": (torch.bfloat16, np.dtype(ml_dtypes.bfloat16)),
    "F32": (torch.float32, np.dtype(np.float32)),
    "F64": (torch.float64, np.dtype(np.float64)),
    "C64": (torch.complex64, np.dtype(np.complex64)),
    "F8_E4M3": (torch.float8_e4m3fn, np.dtype(ml_dtypes.float8_e4m3fn)),
    "F8_E5M2": (torch.float8_e5m2, np.dtype(ml_dtypes.float8_e5m2)),
}
if hasattr(torch, "float8_e8m0fnu") and hasattr(ml_dtypes, "float8_e8m0fnu"):
    DTYPES["F8_E8M0"] = (torch.float8_e8m0fnu, np.dtype(ml_dtypes.float8_e8m0fnu))

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def random_tensor(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns (NaNs included) of ``dtype``; bools are 0/1 only."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, size=shape).astype(np.bool_))
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = rng.integers(0, 256, size=count * itemsize, dtype=np.uint8)
    flat = torch.from_numpy(raw)
    return (flat.view(dtype) if count else torch.empty(0, dtype=dtype)).reshape(shape)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.contiguous().reshape(-1)
    if tensor.numel() == 0:
        return b""
    return tensor.view(torch.uint8).numpy().tobytes()


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == expected.dtype
    assert tuple(actual.shape) == tuple(expected.shape)
    assert actual.device.type == "cpu"
    assert tensor_bytes(actual) == tensor_bytes(expected)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_through_bytes_and_files(name, tmp_path):
    dtype = DTYPES[name][0]
    tensors = {
        "matrix": random_tensor(dtype, (33, 17), seed=1),
        "vector": random_tensor(dtype, (5000,), seed=2),
        "scalar": random_tensor(dtype, (), seed=3),
        "empty": random_tensor(dtype, (0, 4), seed=4),
    }
    loaded = st.load(st.save(tensors, KEY), KEY)
    assert list(loaded) == list(tensors)
    for key, tensor in tensors.items():
        assert_same(loaded[key], tensor)

    path = tmp_path / "weights.sealed"
    st.save_file(tensors, path, KEY)
    from_file = st.load_file(path, KEY)
    for key, tensor in tensors.items():
        assert_same(from_file[key], tensor)
    report = sealtensors.inspect(path, KEY)
    assert {t["name"]: t["dtype"] for t in report["tensors"]} == dict.fromkeys(tensors, name)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (0, 0), (1,), (1, 1, 1, 1), (70000,)])
def test_scalar_empty_and_multi_chunk_shapes(shape):
    tensor = random_tensor(torch.float32, shape, seed=7)
    loaded = st.load(st.save({"t": tensor}, KEY), KEY)["t"]
    assert_same(loaded, tensor)


def test_non_contiguous_inputs_are_refused_and_their_contiguous_copies_round_trip():
    base = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8)
    inputs = {
        "transposed": base.T,
        "strided_rows": base[::2],
        "column_block": base[:, 3:6],
        "expanded": torch.arange(4, dtype=torch.int16).expand(5, 4),
        "permuted": torch.arange(24, dtype=torch.int64).reshape(2, 3, 4).permute(2, 0, 1),
        "bf16_strided": base.to(torch.bfloat16)[1::3, ::2],
    }
    # safetensors refuses non-contiguous tensors (ValueError) rather than packing them silently;
    # so does sealtensors. .contiguous() copies round-trip as their logical values.
    for name, tensor in inputs.items():
        assert not tensor.is_contiguous()
        with pytest.raises(ValueError, match="contiguous"):
            st.save({name: tensor}, KEY)
    packed = {name: tensor.contiguous() for name, tensor in inputs.items()}
    loaded = st.load(st.save(packed, KEY), KEY)
    for name, tensor in inputs.items():
        assert_same(loaded[name], tensor.contiguous())
        assert torch.equal(loaded[name].float(), tensor.float())


def test_requires_grad_input_is_detached():
    weight = torch.linspace(-1, 1, 12, requires_grad=True)
    loaded = st.load(st.save({"w": weight}, KEY), KEY)["w"]
    assert not loaded.requires_grad
    assert torch.equal(loaded, weight.detach())


@pytest.mark.parametrize("make", [lambda t: t.conj(), lambda t: t._neg_view()], ids=["conj", "neg"])
def test_conjugate_and_negative_views_can_be_saved(make):
    source = torch.randn(4, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    view = make(source)
    loaded = st.load(st.save({"v": view}, KEY), KEY)["v"]
    assert torch.equal(loaded, view.resolve_conj().resolve_neg())


def test_unicode_names_and_metadata_survive(tmp_path):
    tensors = {
        "模型.权重": torch.ones(2, 2),
        "emoji-🔒/layer.0": torch.zeros(3, dtype=torch.int8),
        "ümlaut\u00a0space": torch.tensor(1.5, dtype=torch.float64),
    }
    metadata = {"format": "pt", "描述": "加密的权重 ✓", "empty": ""}
    path = tmp_path / "ü.sealed"
    st.save_file(tensors, path, KEY, metadata=metadata)
    loaded = st.load_file(path, KEY)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert_same(loaded[name], tensor)
    with sealtensors.safe_open(path, "pt", key=KEY) as handle:
        assert handle.metadata() == metadata
        assert set(handle.keys()) == set(tensors)
    # The plaintext names and metadata must not appear in the sealed bytes.
    raw = path.read_bytes()
    assert "模型".encode() not in raw and "加密".encode() not in raw


def test_metadata_absent_reads_back_as_none(tmp_path):
    path = tmp_path / "m.sealed"
    st.save_file({"a": torch.ones(1)}, path, KEY)
    with sealtensors.safe_open(path, "pt", key=KEY) as handle:
        assert handle.metadata() is None


def test_save_rejects_bad_inputs():
    # ValueError for both, as safetensors.torch raises.
    with pytest.raises(ValueError):
        st.save([torch.ones(1)], KEY)
    with pytest.raises(ValueError):
        st.save({"a": np.ones(1)}, KEY)
    with pytest.raises(ValueError):
        st.save({"sparse": torch.eye(3).to_sparse()}, KEY)
    with pytest.raises(ValueError):
        st.save({"q": torch.ones(2, dtype=torch.complex128)}, KEY)


def test_load_with_wrong_key_raises_wrong_key_error():
    data = st.save({"a": torch.ones(3)}, KEY)
    with pytest.raises(WrongKeyError):
        st.load(data, OTHER_KEY)


def test_several_recipients_each_can_load():
    data = st.save({"a": torch.arange(5)}, [KEY, OTHER_KEY])
    for key in (KEY, OTHER_KEY, [bytes(32), OTHER_KEY]):
        assert torch.equal(st.load(data, key)["a"], torch.arange(5))


# --- one buffer ----------------------------------------------------------------------------------


def test_loaded_tensors_are_views_of_one_buffer_at_the_index_offsets(tmp_path):
    tensors = {
        "a": random_tensor(torch.float32, (100, 7), seed=1),
        "b": random_tensor(torch.uint8, (13,), seed=2),
        "c": random_tensor(torch.bfloat16, (3, 3, 3), seed=3),
        "empty": torch.zeros(0),
        "d": random_tensor(torch.int64, (40000,), seed=4),
    }
    path = tmp_path / "views.sealed"
    st.save_file(tensors, path, KEY)
    report = sealtensors.inspect(path, KEY)
    offsets = {t["name"]: t["offsets"] for t in report["tensors"]}
    for loaded in (st.load_file(path, KEY), st.load(path.read_bytes(), KEY)):
        non_empty = [n for n in tensors if loaded[n].numel()]
        first = min(non_empty, key=lambda n: offsets[n][0])
        base = loaded[first].data_ptr() - offsets[first][0]
        spans = []
        for name in non_empty:
            tensor = loaded[name]
            begin, end = offsets[name]
            assert tensor.data_ptr() - base == begin, name
            assert tensor.numel() * tensor.element_size() == end - begin
            assert tensor.is_contiguous()
            spans.append((tensor.data_ptr(), tensor.data_ptr() + end - begin))
        # Everything lies inside [base, base + data_size) and nothing overlaps.
        spans.sort()
        assert spans[0][0] >= base and spans[-1][1] <= base + report["data_size"]
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
        # Writable, and writes to one tensor leave the others alone.
        loaded["b"].fill_(7)
        assert tensor_bytes(loaded["a"]) == tensor_bytes(tensors["a"])
        assert tensor_bytes(loaded["c"]) == tensor_bytes(tensors["c"])


# --- devices ---------------------------------------------------------------------------------------


NOT_CPU = ["meta", torch.device("meta"), "mps", "no-such-device"]
if not torch.cuda.is_available():
    NOT_CPU += ["cuda", "cuda:0"]


@pytest.mark.parametrize("device", NOT_CPU, ids=str)
def test_device_other_than_cpu_is_a_value_error(device, tmp_path):
    path = tmp_path / "d.sealed"
    st.save_file({"a": torch.ones(2)}, path, KEY)
    with pytest.raises(ValueError):
        st.load_file(path, KEY, device=device)
    with pytest.raises(ValueError):
        st.load(path.read_bytes(), KEY, device=device)
    with pytest.raises(ValueError):
        sealtensors.safe_open(path, "pt", key=KEY, device=device)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"], ids=str)
def test_cpu_device_spellings_are_accepted(device, tmp_path):
    path = tmp_path / "d.sealed"
    st.save_file({"a": torch.ones(2)}, path, KEY)
    assert torch.equal(st.load_file(path, KEY, device=device)["a"], torch.ones(2))


# --- pinned memory (subprocesses: rlimits and capabilities are per process) -----------------------


def backend_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    if backend == "python":
        env["SEALTENSORS_BACKEND"] = "python"
    else:
        env["SEALTENSORS_BACKEND"] = "c"
        env["SEALTENSORS_AES"] = backend.split("-", 1)[1]
    return env


PIN_SCRIPT = textwrap.dedent(r"""
    import ctypes, json, resource, sys, warnings

    path, key_hex = sys.argv[1], sys.argv[2]
    CAP_IPC_LOCK = 14
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    def capabilities():
        header, data = Header(0x20080522, 0), (Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
        return header, data

    def has_ipc_lock():
        return bool(capabilities()[1][0].effective & (1 << CAP_IPC_LOCK))

    def drop_ipc_lock():
        # With CAP_IPC_LOCK (root) RLIMIT_MEMLOCK is ignored: drop the capability first.
        header, data = capabilities()
        data[0].effective &= ~(1 << CAP_IPC_LOCK)
        data[0].permitted &= ~(1 << CAP_IPC_LOCK)
        return libc.capset(ctypes.byref(header), data) == 0 and not has_ipc_lock()

    def locked_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmLck:"):
                return int(line.split()[1])
        return 0

    import torch
    import sealtensors.torch as st
    from sealtensors.engine.memory import PinningWarning

    expected = torch.arange(256 * 1024, dtype=torch.int32)
    report = {"cuda": torch.cuda.is_available()}

    def load(label):
        before = locked_kib()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tensors = st.load_file(path, bytes.fromhex(key_hex), pin_memory=True)
        report[label] = {
            "pinning_warnings": sum(issubclass(w.category, PinningWarning) for w in caught),
            "locked_kib": locked_kib() - before,
            "correct": bool(torch.equal(tensors["x"], expected)),
        }
        return tensors

    # 1. Pinning allowed: the 1 MiB buffer is mlocked, no warning.
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if has_ipc_lock() or soft == resource.RLIM_INFINITY or soft >= 4 << 20:
        kept = load("allowed")
    # 2. Pinning refused (no capability, RLIMIT_MEMLOCK 0): a PinningWarning, data still right.
    if drop_ipc_lock() or not has_ipc_lock():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
        load("refused")
    print(json.dumps(report))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="capabilities and VmLck are Linux")
def test_pin_memory_without_cuda_mlocks_or_warns(backend, tmp_path):
    path = tmp_path / "pin.sealed"
    st.save_file({"x": torch.arange(256 * 1024, dtype=torch.int32)}, path, KEY)  # 1 MiB
    result = subprocess.run([sys.executable, "-c", PIN_SCRIPT, str(path), KEY.hex()],
                            env=backend_env(backend), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["cuda"]:
        pytest.skip("CUDA present: torch's pinned allocator is used instead of mlock")
    assert "refused" in report, report
    assert report["refused"] == {"pinning_warnings": 1, "locked_kib": 0, "correct": True}
    if "allowed" not in report:
        pytest.skip("RLIMIT_MEMLOCK below 4 MiB and no CAP_IPC_LOCK: only the refusal was tested")
    allowed = report["allowed"]
    assert allowed["correct"] and allowed["pinning_warnings"] == 0, report
    assert allowed["locked_kib"] >= 1024, report


# --- interoperability with sealtensors.numpy -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_torch_file_loads_with_numpy_to_identical_bytes(name, tmp_path):
    torch_dtype, numpy_dtype = DTYPES[name]
    tensors = {"t": random_tensor(torch_dtype, (9, 11), seed=5), "s": random_tensor(torch_dtype, ())}
    path = tmp_path / "t.sealed"
    st.save_file(tensors, path, KEY, metadata={"from": "torch"})
    arrays = snp.load_file(path, KEY)
    for key, tensor in tensors.items():
        assert arrays[key].dtype == numpy_dtype
        assert arrays[key].shape == tuple(tensor.shape)
        assert arrays[key].tobytes() == tensor_bytes(tensor)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_numpy_file_loads_with_torch_to_identical_bytes(name, tmp_path):
    torch_dtype, numpy_dtype = DTYPES[name]
    rng = np.random.default_rng(6)
    if numpy_dtype == np.bool_:
        array = rng.integers(0, 2, size=(7, 6)).astype(np.bool_)
    else:
        array = rng.integers(0, 256, size=7 * 6 * numpy_dtype.itemsize, dtype=np.uint8)
        array = array.view(numpy_dtype).reshape(7, 6)
    path = tmp_path / "n.sealed"
    snp.save_file({"a": array, "row": array[2]}, path, KEY)
    tensors = st.load_file(path, KEY)
    assert tensors["a"].dtype == torch_dtype
    assert tuple(tensors["a"].shape) == (7, 6)
    assert tensor_bytes(tensors["a"]) == array.tobytes()
    assert tensor_bytes(tensors["row"]) == array[2].tobytes()


def test_bfloat16_values_agree_between_torch_and_ml_dtypes():
    values = torch.tensor([0.0, -1.5, 3.140625, 65280.0, float("inf"), -float("inf")],
                          dtype=torch.bfloat16)
    array = snp.load(st.save({"v": values}, KEY), KEY)["v"]
    assert array.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(array.astype(np.float32), values.float().numpy())
    back = st.load(snp.save({"v": array}, KEY), KEY)["v"]
    assert torch.equal(back, values)
