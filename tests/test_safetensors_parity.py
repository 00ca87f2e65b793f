"""safetensors parity: each safetensors behaviour, run side by side with safetensors itself, and
whether sealtensors matches it or (test names say ``differs``) deliberately does not, and why.

safetensors' own exception class (``SafetensorError``) is not a sealtensors type: where safetensors
raises it, sealtensors raises the builtin that fits (IndexError, ValueError) — one difference that
applies throughout and is not repeated below.
"""

from __future__ import annotations

import io

import ml_dtypes
import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as snp
from sealtensors.errors import FormatError

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
import safetensors.numpy as ref_np  # noqa: E402
import safetensors.torch as ref_pt  # noqa: E402
import sealtensors.torch as spt  # noqa: E402

KEY = bytes(range(32))
MATRIX = np.arange(60, dtype=np.float32).reshape(10, 6)


@pytest.fixture
def pair(tmp_path):
    """The same tensors as a plain safetensors file and as a sealed file."""
    tensors = {"a": MATRIX, "s": np.array(3.0, dtype=np.float32),
               "z": np.zeros((0, 4), dtype=np.float32)}
    plain, sealed = tmp_path / "m.safetensors", tmp_path / "m.sealed"
    ref_np.save_file(tensors, str(plain), metadata={"m": "v"})
    snp.save_file(tensors, sealed, KEY, metadata={"m": "v"})
    return plain, sealed


def _outcome(call):
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return "error", type(exc)
    if isinstance(result, torch.Tensor):
        return "ok", (tuple(result.shape), result.reshape(-1).tolist())
    return "ok", (np.shape(result), np.asarray(result).reshape(-1).tolist())


def _apply(tensor_slice, index: str):
    """``tensor_slice`` indexed by the subscript written in ``index`` (e.g. "[:, [1, 2]]")."""
    return eval("piece" + index, {"np": np, "torch": torch, "piece": tensor_slice})


# --- dtypes ------------------------------------------------------------------------------------

TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.uint16, torch.int16, torch.uint32,
                torch.int32, torch.uint64, torch.int64, torch.float16, torch.bfloat16,
                torch.float32, torch.float64, torch.complex64, torch.float8_e4m3fn,
                torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz,
                torch.float8_e8m0fnu, torch.float4_e2m1fn_x2]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_matches_every_torch_dtype_safetensors_accepts(dtype, tmp_path):
    """Same header dtype name and shape, same bytes back, same torch dtype on load."""
    raw = torch.arange(12, dtype=torch.uint8).reshape(3, 4) % 2
    tensor = raw.to(torch.bool) if dtype == torch.bool else \
        raw.view(dtype) if torch.empty(0, dtype=dtype).element_size() == 1 else raw.to(dtype)
    ref_pt.save_file({"t": tensor}, str(tmp_path / "p.safetensors"))
    with safetensors.safe_open(str(tmp_path / "p.safetensors"), "pt") as plain:
        ref_dtype, ref_shape = plain.get_slice("t").get_dtype(), plain.get_slice("t").get_shape()
    sealed = tmp_path / "t.sealed"
    spt.save_file({"t": tensor}, sealed, KEY)
    info = sealtensors.inspect(sealed, key=KEY)["tensors"][0]
    assert (info["dtype"], info["shape"]) == (ref_dtype, ref_shape)
    loaded = spt.load_file(sealed, KEY)["t"]
    assert loaded.dtype == ref_pt.load_file(str(tmp_path / "p.safetensors"))["t"].dtype == dtype
    assert loaded.shape == tensor.shape
    assert bytes(loaded.reshape(-1).view(torch.uint8).numpy()) == \
        bytes(tensor.reshape(-1).view(torch.uint8).numpy())


def test_matches_plain_files_of_new_dtypes_seal_and_load(tmp_path):
    """A plain safetensors file holding F8_*FNUZ and F4 tensors seals and loads bit-identically."""
    tensors = {"fnuz4": torch.arange(6, dtype=torch.uint8).view(torch.float8_e4m3fnuz),
               "fnuz5": torch.arange(6, dtype=torch.uint8).view(torch.float8_e5m2fnuz),
               "f4": torch.arange(8, dtype=torch.uint8).reshape(2, 4).view(torch.float4_e2m1fn_x2)}
    plain, sealed = tmp_path / "p.safetensors", tmp_path / "p.sealed"
    ref_pt.save_file(tensors, str(plain))
    sealtensors.seal_file(plain, sealed, KEY)
    loaded = spt.load_file(sealed, KEY)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name].view(torch.uint8), tensor.view(torch.uint8))


NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64,
                np.int64, np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.complex64,
                ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
                ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e8m0fnu]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_matches_numpy_dtypes_safetensors_saves(dtype, tmp_path):
    """Every numpy dtype safetensors.numpy saves, sealtensors saves and loads back (safetensors'
    own numpy loader fails on the float8 types: AttributeError, a bug; we return them)."""
    array = np.arange(6).reshape(2, 3).astype(dtype)
    ref_np.save_file({"a": array}, str(tmp_path / "p.safetensors"))
    loaded = snp.load(snp.save({"a": array}, KEY), KEY)["a"]
    assert loaded.dtype == array.dtype and loaded.tobytes() == array.tobytes()


@pytest.mark.parametrize("dtype", [np.complex128, ml_dtypes.float4_e2m1fn, np.dtype("U3")],
                         ids=str)
def test_matches_numpy_dtypes_safetensors_refuses(dtype, tmp_path):
    array = np.zeros(2, dtype=dtype)
    with pytest.raises(Exception):
        ref_np.save_file({"a": array}, str(tmp_path / "p.safetensors"))
    with pytest.raises(ValueError):
        snp.save({"a": array}, KEY)


def test_differs_f4_in_numpy_is_a_clear_value_error(tmp_path):
    """safetensors' numpy loader crashes on F4 (AttributeError); numpy has no packed float4 type,
    so sealtensors refuses with a ValueError naming the tensor and the torch API, before
    decrypting anything. An F4 shape whose last dimension is odd cannot be stored (FormatError)."""
    f4 = torch.zeros((2, 2), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    ref_pt.save_file({"f4": f4}, str(tmp_path / "p.safetensors"))
    with pytest.raises(AttributeError):
        ref_np.load_file(str(tmp_path / "p.safetensors"))
    sealed = tmp_path / "f4.sealed"
    spt.save_file({"f4": f4}, sealed, KEY)
    with pytest.raises(ValueError, match="f4.*torch"):
        snp.load_file(sealed, KEY)
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        with pytest.raises(ValueError, match="torch"):
            handle.get_tensor("f4")
    with sealtensors.safe_open(sealed, "pt", key=KEY) as handle:
        assert handle.get_slice("f4").get_shape() == [2, 4]  # values, as safetensors reports
        assert torch.equal(handle.get_slice("f4")[1:].view(torch.uint8), f4[1:].view(torch.uint8))
        with pytest.raises(IndexError):
            handle.get_slice("f4")[:, 1]
    with pytest.raises(FormatError):
        from sealtensors.format.index import layout
        layout([("odd", "F4", (2, 3))])


# --- safe_open arguments and methods ---------------------------------------------------------

def test_matches_get_tensors_and_offset_order(pair):
    plain, sealed = pair
    with safetensors.safe_open(str(plain), "np") as ref, \
            sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        expected, got = ref.get_tensors(), handle.get_tensors()
        assert list(got) == handle.offset_keys()
        assert sorted(got) == sorted(expected) == handle.keys() == ref.keys()
        assert all(np.array_equal(got[n], expected[n]) for n in expected)
        assert handle.metadata() == ref.metadata()
    with sealtensors.safe_open(sealed, "pt", key=KEY) as handle:
        assert torch.equal(handle.get_tensors()["a"], torch.from_numpy(MATRIX))


def test_matches_positional_device_framework_names_and_backend(pair):
    """safe_open(filename, framework, device, backend=...) as in safetensors; the key is keyword
    only, so a device given positionally is never mistaken for a key."""
    plain, sealed = pair
    for framework in ("pt", "torch", "pytorch", "np", "numpy"):
        with safetensors.safe_open(str(plain), framework, "cpu", backend="pread") as ref, \
                sealtensors.safe_open(sealed, framework, "cpu", key=KEY, backend="pread") as ours:
            assert ours.keys() == ref.keys()
    for backend in ("mmap", "pread"):
        assert np.array_equal(snp.load_file(sealed, KEY, backend=backend)["a"], MATRIX)
        assert torch.equal(spt.load_file(sealed, KEY, "cpu", backend=backend)["a"],
                           ref_pt.load_file(str(plain), "cpu", backend=backend)["a"])
    for call in (lambda: safetensors.safe_open(str(plain), "np", backend="bogus"),
                 lambda: safetensors.safe_open(str(plain), "bogus"),
                 lambda: safetensors.safe_open(str(plain), "np", device="cuda:0")):
        with pytest.raises(Exception):
            call()
    with pytest.raises(ValueError, match="backend"):
        sealtensors.safe_open(sealed, "np", key=KEY, backend="bogus")
    with pytest.raises(ValueError, match="framework"):
        sealtensors.safe_open(sealed, "bogus", key=KEY)
    with pytest.raises(ValueError, match="numpy"):
        sealtensors.safe_open(sealed, "np", "cuda:0", key=KEY)


@pytest.mark.parametrize("framework", ["tf", "flax", "jax", "mlx"])
def test_differs_other_frameworks_are_refused(pair, framework):
    """safetensors hands tensors to TensorFlow, Flax/JAX and MLX; sealtensors only to numpy and
    torch (convert from numpy): a ValueError that says so, rather than a half-working handle."""
    plain, sealed = pair
    with safetensors.safe_open(str(plain), framework) as ref:
        assert ref.keys() == ["a", "s", "z"]
    with pytest.raises(ValueError, match="not supported by sealtensors"):
        sealtensors.safe_open(sealed, framework, key=KEY)


def test_differs_devices_other_than_cpu_and_cuda(pair):
    """safetensors accepts any torch device ("mps", ...); sealtensors decrypts into host memory and
    uploads to CUDA only, so other devices are a ValueError at open."""
    _, sealed = pair
    with pytest.raises(ValueError, match="mps"):
        sealtensors.safe_open(sealed, "pt", "mps", key=KEY)


def test_matches_closed_handle_refuses_every_call(pair):
    plain, sealed = pair
    ref = safetensors.safe_open(str(plain), "np")
    ours = sealtensors.safe_open(sealed, "np", key=KEY)
    ref.__exit__(None, None, None)
    ours.close()
    for name in ("keys", "metadata", "offset_keys", "get_tensors"):
        with pytest.raises(Exception, match="closed"):
            getattr(ref, name)()
        with pytest.raises(ValueError, match="closed"):
            getattr(ours, name)()
    for name in ("get_tensor", "get_slice"):
        with pytest.raises(Exception, match="closed"):
            getattr(ref, name)("a")
        with pytest.raises(ValueError, match="closed"):
            getattr(ours, name)("a")


def test_differs_slice_taken_before_close_fails_after_it(pair):
    """safetensors' slice keeps its memory map and still answers after close; a sealed file's
    keys are forgotten (wiped) on close, so a slice taken before is a ValueError after."""
    plain, sealed = pair
    with safetensors.safe_open(str(plain), "np") as ref:
        ref_slice = ref.get_slice("a")
    assert np.array_equal(ref_slice[0:1], MATRIX[0:1])
    with sealtensors.safe_open(sealed, "np", key=KEY) as ours:
        our_slice = ours.get_slice("a")
    with pytest.raises(ValueError, match="closed"):
        our_slice[0:1]


def test_differs_file_objects_are_accepted(pair):
    """safetensors' safe_open takes paths only (TypeError for a file object). sealtensors also
    takes an open binary file object: with a descriptor it is read lazily with pread, otherwise
    (io.BytesIO, fsspec remote files) it is read whole into memory; the bytes are ciphertext."""
    plain, sealed = pair
    with open(plain, "rb") as handle, pytest.raises(TypeError):
        safetensors.safe_open(handle, "np")
    with open(sealed, "rb") as handle:
        with sealtensors.safe_open(handle, "np", key=KEY) as ours:
            assert np.array_equal(ours.get_slice("a")[2:4], MATRIX[2:4])
        assert np.array_equal(snp.load_file(handle, KEY)["a"], MATRIX)
    memory = io.BytesIO(sealed.read_bytes())
    memory.seek(5)  # the position is not used: a sealed file starts at byte 0
    assert torch.equal(spt.load_file(memory, KEY)["a"], torch.from_numpy(MATRIX))
    fsspec = pytest.importorskip("fsspec")
    with fsspec.filesystem("memory").open("/parity.sealed", "wb") as out:
        out.write(sealed.read_bytes())
    with fsspec.filesystem("memory").open("/parity.sealed", "rb") as remote:
        assert np.array_equal(snp.load_file(remote, KEY)["s"], np.array(3.0, np.float32))
    with pytest.raises(TypeError):
        snp.load_file(12, KEY)


# --- get_slice ---------------------------------------------------------------------------------

NP_INDICES = ["[:20]", "[5:20]", "[20:]", "[10:]", "[4:4]", "[10]", "[-11]", "[9]", "[[1,3]]",
              "[np.array([1,3])]", "[:, [1,2]]", "[..., 1]", "[1, ..., 2]", "[None]", "[::2]",
              "[::-1]", "[:, :20]", "[1,2,3]", "[np.int64(2)]", "[:, 7]", "[...]", "[()]",
              "[0:10:0]", "[2:4, 1:3]", "[-3:]", "[:-7]"]
# safetensors' numpy slicing has bugs sealtensors does not copy: [-20:] is an OverflowError, [3:1]
# a SystemError, [True] is row 1, and any slice of a zero-row tensor fails. Ours: negative bounds
# count from the end and must lie in the dimension ([-20:] is an IndexError), [3:1] is empty, a
# bool is refused (IndexError), empty tensors slice to empty, and [10:] on 10 rows is empty (ours)
# where safetensors raises; negative slice bounds, an OverflowError in safetensors, count from the
# end as in numpy.
NP_DIFFERENCES = {"[10:]", "[-3:]", "[:-7]"}


@pytest.mark.parametrize("index", NP_INDICES)
def test_matches_numpy_get_slice_outcomes(pair, index):
    """framework="np": the same values, or an error where safetensors raises (out-of-range
    bounds such as [:20] on 10 rows, lists and arrays, None, negative or zero steps)."""
    plain, sealed = pair
    with safetensors.safe_open(str(plain), "np") as ref, \
            sealtensors.safe_open(sealed, "np", key=KEY) as ours:
        expected = _outcome(lambda: _apply(ref.get_slice("a"), index))
        got = _outcome(lambda: _apply(ours.get_slice("a"), index))
    if index in NP_DIFFERENCES:
        numpy_result = eval("MATRIX" + index)
        assert expected[0] == "error"
        assert got == ("ok", (numpy_result.shape, numpy_result.reshape(-1).tolist()))
        return
    assert got[0] == expected[0], (index, expected, got)
    if got[0] == "ok":
        assert got == expected
    else:
        assert issubclass(got[1], (IndexError, ValueError))


def test_differs_numpy_slicing_bugs_are_not_copied(pair):
    plain, sealed = pair
    with safetensors.safe_open(str(plain), "np") as ref:
        with pytest.raises(OverflowError):
            ref.get_slice("a")[-20:]
        with pytest.raises(SystemError):
            ref.get_slice("a")[3:1]
        assert np.array_equal(ref.get_slice("a")[True], MATRIX[1])
        with pytest.raises(Exception):
            ref.get_slice("z")[:]
    with sealtensors.safe_open(sealed, "np", key=KEY) as ours:
        with pytest.raises(IndexError):
            ours.get_slice("a")[-20:]
        assert ours.get_slice("a")[3:1].shape == (0, 6)
        with pytest.raises(IndexError):
            ours.get_slice("a")[True]
        assert ours.get_slice("z")[:].shape == (0, 4)


PT_INDICES = NP_INDICES + ["[-20:]", "[3:1]", "[True]", "[torch.tensor([8, 2])]",
                           "[slice(None), None]", "[[9, 0, 9]]", "[torch.tensor([True] * 10)]",
                           "[[1, 2], [0, 3]]", "[..., [0, 5]]", "[[-1]]", "[[10]]"]


@pytest.mark.parametrize("index", PT_INDICES)
def test_matches_torch_get_slice_outcomes(pair, index):
    """framework="pt": torch's indexing, as safetensors 0.8 gives: [:20] on 10 rows clamps to the
    10 rows, lists/tensors/None/bool work, negative steps are a ValueError."""
    plain, sealed = pair
    with safetensors.safe_open(str(plain), "pt") as ref, \
            sealtensors.safe_open(sealed, "pt", key=KEY) as ours:
        expected = _outcome(lambda: _apply(ref.get_slice("a"), index))
        got = _outcome(lambda: _apply(ours.get_slice("a"), index))
    assert got == expected, (index, expected, got)


def test_matches_scalar_and_empty_slices(pair):
    plain, sealed = pair
    for framework in ("np", "pt"):
        with safetensors.safe_open(str(plain), framework) as ref, \
                sealtensors.safe_open(sealed, framework, key=KEY) as ours:
            for name, index in (("s", "[...]"), ("s", "[()]"), ("s", "[:]"), ("s", "[0]"),
                                ("z", "[0]")):
                expected = _outcome(lambda: _apply(ref.get_slice(name), index))
                got = _outcome(lambda: _apply(ours.get_slice(name), index))
                assert got[0] == expected[0], (framework, name, index)


# --- saving: inputs, shared memory, modules, replacing files ----------------------------------

@pytest.mark.parametrize("case", ["string", "list", "ndarray", "int", "sparse", "noncontiguous",
                                  "shared", "shared_view"])
def test_matches_torch_save_refusals(case, tmp_path):
    """The same exception type as safetensors.torch.save_file: ValueError for a non-dict,
    non-tensors, sparse and non-contiguous tensors; RuntimeError for tensors sharing memory."""
    shared = torch.zeros(4)
    tensors = {"string": "abc", "list": [torch.zeros(2)], "ndarray": {"a": np.zeros(2)},
               "int": {"a": 3}, "sparse": {"a": torch.eye(3).to_sparse()},
               "noncontiguous": {"a": torch.zeros(4, 4).t()},
               "shared": {"a": shared, "b": shared},
               "shared_view": {"a": shared, "b": shared[:2]}}[case]
    with pytest.raises(Exception) as ref:
        ref_pt.save_file(tensors, str(tmp_path / "p.safetensors"))
    with pytest.raises(ref.type) as ours:
        spt.save_file(tensors, tmp_path / "p.sealed", KEY)
    if case.startswith("shared"):
        assert "share memory" in str(ours.value) and "save_model" in str(ours.value)
    assert not (tmp_path / "p.sealed").exists()


def test_matches_disjoint_views_of_one_storage_are_saved(tmp_path):
    whole = torch.arange(10, dtype=torch.float32)
    ref_pt.save_file({"a": whole[:5], "b": whole[5:]}, str(tmp_path / "p.safetensors"))
    loaded = spt.load(spt.save({"a": whole[:5], "b": whole[5:]}, KEY), KEY)
    assert torch.equal(loaded["b"], whole[5:])


def test_differs_meta_tensors_are_a_value_error(tmp_path):
    """safetensors fails on a meta tensor with torch's NotImplementedError while copying;
    sealtensors refuses it up front with a ValueError (nothing written)."""
    meta = {"a": torch.zeros(4, device="meta")}
    with pytest.raises(NotImplementedError):
        ref_pt.save_file(meta, str(tmp_path / "p.safetensors"))
    with pytest.raises(ValueError, match="meta"):
        spt.save_file(meta, tmp_path / "p.sealed", KEY)


def test_differs_numpy_save_input_checks(tmp_path):
    """safetensors.numpy crashes with AttributeError on a string, a list or non-array values;
    sealtensors raises TypeError. Non-contiguous arrays: safetensors writes the raw memory (a
    transposed array comes back untransposed); sealtensors stores the values the array shows."""
    for bad in ("abc", [np.zeros(2)], {"a": [1.0, 2.0]}, {"a": 3}):
        with pytest.raises(AttributeError):
            ref_np.save_file(bad, str(tmp_path / "p.safetensors"))
        with pytest.raises(TypeError):
            snp.save_file(bad, tmp_path / "p.sealed", KEY)
    transposed = np.arange(16.0).reshape(4, 4).T
    ref_np.save_file({"a": transposed}, str(tmp_path / "p.safetensors"))
    assert not np.array_equal(ref_np.load_file(str(tmp_path / "p.safetensors"))["a"], transposed)
    assert np.array_equal(snp.load(snp.save({"a": transposed}, KEY), KEY)["a"], transposed)


def test_matches_big_endian_arrays_are_byte_swapped(tmp_path):
    big = np.arange(4, dtype=">f4")
    ref_np.save_file({"a": big}, str(tmp_path / "p.safetensors"))
    expected = ref_np.load_file(str(tmp_path / "p.safetensors"))["a"]
    got = snp.load(snp.save({"a": big}, KEY), KEY)["a"]
    assert got.dtype == expected.dtype == np.dtype("<f4")
    assert np.array_equal(got, expected) and np.array_equal(got, big)


def test_matches_save_file_replaces_an_existing_file(tmp_path):
    """save_file replaces a file, as safetensors does (still atomically: temporary file and
    rename); overwrite=False keeps the old refusal. The CLI passes --force explicitly."""
    plain, sealed = tmp_path / "p.safetensors", tmp_path / "p.sealed"
    plain.write_bytes(b"old")
    sealed.write_bytes(b"old")
    ref_np.save_file({"a": MATRIX}, str(plain))
    snp.save_file({"a": MATRIX}, sealed, KEY)
    spt.save_file({"a": torch.ones(2)}, sealed, KEY)
    assert torch.equal(spt.load_file(sealed, KEY)["a"], torch.ones(2))
    with pytest.raises(FileExistsError):
        snp.save_file({"a": MATRIX}, sealed, KEY, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors", "p.sealed"]


class Tied(torch.nn.Module):
    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.norm = torch.nn.LayerNorm(4)
        if tie:
            self.head.weight = self.embed.weight


def test_matches_save_model_and_load_model_with_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    ref_pt.save_model(model, str(tmp_path / "p.safetensors"))
    spt.save_model(model, tmp_path / "p.sealed", KEY)
    with safetensors.safe_open(str(tmp_path / "p.safetensors"), "pt") as ref, \
            sealtensors.safe_open(tmp_path / "p.sealed", "pt", key=KEY) as ours:
        assert ours.keys() == ref.keys() and ours.metadata() == ref.metadata()
        assert ours.metadata() == {"head.weight": "embed.weight"}
    fresh_ref, fresh = Tied(), Tied()
    ref_missing, ref_unexpected = ref_pt.load_model(fresh_ref, str(tmp_path / "p.safetensors"))
    missing, unexpected = spt.load_model(fresh, tmp_path / "p.sealed", KEY)
    assert (sorted(missing), unexpected) == (sorted(ref_missing), ref_unexpected) == ([], [])
    assert fresh.head.weight is fresh.embed.weight
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    # An untied model: the file lacks head.weight, so strict loading fails in both.
    with pytest.raises(RuntimeError, match="Missing key"):
        ref_pt.load_model(Tied(tie=False), str(tmp_path / "p.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        spt.load_model(Tied(tie=False), tmp_path / "p.sealed", KEY)
    missing, unexpected = spt.load_model(Tied(tie=False), tmp_path / "p.sealed", KEY, strict=False)
    assert missing == ["head.weight"] and unexpected == []
    assert ref_pt.load_model(Tied(tie=False), str(tmp_path / "p.safetensors"),
                             strict=False)[0] == {"head.weight"}
