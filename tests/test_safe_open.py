"""safe_open: keys, metadata, get_tensor, get_slice (numpy indexing semantics, rows-only decryption)."""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import sealtensors
from sealtensors.engine import backends as _backends
from sealtensors.engine.spec import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE
from sealtensors.numpy import load_file, save_file

KEY = bytes(range(32))

# Shapes chosen to hit the edges: scalar, 0 rows, 0 columns, 1 row, ragged byte sizes, rank 4.
SHAPES = {
    "scalar": ((), np.float64),
    "zero_rows": ((0, 3), np.int32),
    "zero_cols": ((7, 0), np.float32),
    "vector": ((11,), np.int16),
    "one_row": ((1, 5), np.uint8),
    "matrix": ((9, 6), np.float32),
    "cube": ((4, 3, 5), np.int64),
    "rank4": ((3, 1, 4, 2), np.float16),
    "bf16": ((6, 5), ml_dtypes.bfloat16),
    "bools": ((5, 4), np.bool_),
}


def build_arrays() -> dict[str, np.ndarray]:
    arrays = {}
    for name, (shape, dtype) in SHAPES.items():
        count = int(np.prod(shape, dtype=np.int64))
        values = np.arange(count).reshape(shape)
        arrays[name] = (values % 2 == 1) if dtype is np.bool_ else values.astype(dtype)
    return arrays


ARRAYS = build_arrays()
METADATA = {"purpose": "safe_open tests", "ünï": "côdé"}


@pytest.fixture
def sealed(make_sealed):
    return make_sealed(ARRAYS, KEY, METADATA)


def assert_same_array(actual, expected) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == np.shape(expected)
    assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()


# --- keys, metadata, get_tensor --------------------------------------------------------------------


def test_keys_metadata_and_get_tensor_match_load_file(sealed):
    everything = load_file(sealed, KEY)
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        assert handle.keys() == sorted(ARRAYS)
        assert handle.offset_keys() == list(everything)
        assert handle.metadata() == METADATA
        for name, array in ARRAYS.items():
            tensor = handle.get_tensor(name)
            assert_same_array(tensor, array)
            assert_same_array(tensor, everything[name])
            piece = handle.get_slice(name)
            assert piece.get_shape() == list(array.shape)
            assert piece.get_dtype() == {
                np.dtype(np.float64): "F64", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32",
                np.dtype(np.int16): "I16", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64",
                np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
                np.dtype(np.bool_): "BOOL"}[array.dtype]


def test_framework_aliases_and_default(sealed):
    for framework in ("np", "numpy"):
        with sealtensors.safe_open(sealed, framework, key=KEY) as handle:
            assert isinstance(handle.get_tensor("matrix"), np.ndarray)
    with sealtensors.safe_open(sealed, key=KEY) as handle:
        assert isinstance(handle.get_tensor("matrix"), np.ndarray)


@pytest.mark.parametrize("framework", ["tf", "jax", "NP", "", "flax"])
def test_unknown_framework_is_a_value_error(sealed, framework):
    with pytest.raises(ValueError):
        sealtensors.safe_open(sealed, framework, key=KEY)


def test_numpy_framework_rejects_other_devices(sealed):
    with pytest.raises(ValueError):
        sealtensors.safe_open(sealed, "np", key=KEY, device="cuda")


def test_missing_key_argument_and_wrong_key(sealed):
    with pytest.raises(TypeError):
        sealtensors.safe_open(sealed, "np")
    with pytest.raises(sealtensors.WrongKeyError):
        sealtensors.safe_open(sealed, "np", key=bytes(32))


def test_missing_name_is_a_key_error(sealed):
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        with pytest.raises(KeyError):
            handle.get_tensor("absent")
        with pytest.raises(KeyError):
            handle.get_slice("absent")
        with pytest.raises(KeyError):
            handle.get_tensor("Matrix")


def test_framework_pt_returns_torch_tensors(sealed):
    torch = pytest.importorskip("torch")
    with sealtensors.safe_open(sealed, "pt", key=KEY) as handle:
        for name, array in ARRAYS.items():
            tensor = handle.get_tensor(name)
            assert isinstance(tensor, torch.Tensor)
            assert tuple(tensor.shape) == array.shape
            if array.size:
                assert tensor.reshape(-1).view(torch.uint8).numpy().tobytes() == array.tobytes()
        assert handle.get_tensor("bf16").dtype == torch.bfloat16
        assert handle.get_tensor("bools").dtype == torch.bool
        for index in [1, -1, slice(1, 4), slice(None, None, 2), (Ellipsis, 2), (slice(2, 8, 3), 0)]:
            piece = handle.get_slice("matrix")[index]
            assert isinstance(piece, torch.Tensor)
            assert np.array_equal(piece.numpy(), ARRAYS["matrix"][index])
        scalar = handle.get_slice("scalar")[()]
        assert isinstance(scalar, torch.Tensor) and scalar.shape == ()
        assert scalar.item() == ARRAYS["scalar"].item()
    for framework in ("torch", "pytorch"):
        with sealtensors.safe_open(sealed, framework, key=KEY) as handle:
            assert isinstance(handle.get_tensor("vector"), torch.Tensor)


# --- get_slice against numpy -----------------------------------------------------------------------

EXPLICIT_INDICES = [
    ("matrix", 0), ("matrix", 8), ("matrix", -1), ("matrix", -9), ("matrix", np.int64(3)),
    ("matrix", slice(None)), ("matrix", slice(2, 7)), ("matrix", slice(1, 9, 3)),
    ("matrix", slice(-2, None, 4)), ("matrix", slice(-9, 3)), ("matrix", slice(4, 4)),
    ("matrix", slice(5, 2)), ("matrix", slice(9, None)), ("matrix", Ellipsis),
    ("matrix", (Ellipsis, 0)), ("matrix", (Ellipsis, slice(None, None, 2))),
    ("matrix", (2, Ellipsis)), ("matrix", (slice(1, 5), slice(0, 0))), ("matrix", (-1, -1)),
    ("matrix", (slice(None, None, 3), 3)), ("matrix", ()),
    ("cube", (1, 2, 3)), ("cube", (slice(None), 1)), ("cube", (Ellipsis, 1, slice(None, None, 2))),
    ("cube", (slice(0, 3), slice(None), -2)), ("cube", (slice(None), 0, 4)),
    ("cube", (slice(1, 3), Ellipsis)), ("cube", (Ellipsis,)),
    ("rank4", (slice(None), 0, slice(1, 4, 2), -1)), ("rank4", (-1, Ellipsis, 0)),
    ("vector", 10), ("vector", slice(3, None, 4)), ("vector", slice(None, None, 3)),
    ("scalar", ()), ("scalar", Ellipsis),
    ("zero_rows", slice(None)), ("zero_rows", slice(0, 0)), ("zero_rows", Ellipsis),
    ("zero_rows", (slice(None), 1)),
    ("zero_cols", 3), ("zero_cols", slice(2, 5)), ("zero_cols", (slice(None), slice(None))),
    ("one_row", 0), ("one_row", -1), ("one_row", (0, slice(None, None, 2))),
    ("bf16", (slice(1, 5, 2), slice(None, None, 2))), ("bools", (slice(None), 2)),
]


def test_get_slice_explicit_indices_match_numpy(sealed):
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        for name, index in EXPLICIT_INDICES:
            expected = ARRAYS[name][index]
            actual = handle.get_slice(name)[index]
            assert isinstance(actual, np.ndarray), (name, index)
            assert actual.shape == np.shape(expected), (name, index)
            assert actual.dtype == ARRAYS[name].dtype, (name, index)
            assert np.array_equal(actual, expected), (name, index)


BAD_INDICES = [
    ("matrix", 9, IndexError), ("matrix", -10, IndexError), ("matrix", (0, 6), IndexError),
    ("matrix", (0, -7), IndexError), ("matrix", (0, 0, 0), IndexError),
    ("matrix", (Ellipsis, Ellipsis), IndexError), ("matrix", None, IndexError),
    ("matrix", (slice(None), None), IndexError), ("matrix", [0, 1], IndexError),
    ("matrix", True, IndexError), ("matrix", 1.5, IndexError), ("matrix", "0", IndexError),
    ("matrix", np.array([1]), IndexError), ("matrix", (0, 1.0), IndexError),
    ("scalar", 0, IndexError), ("scalar", slice(None), IndexError),
    ("zero_rows", 0, IndexError), ("zero_rows", -1, IndexError),
    ("vector", (1, 1), IndexError), ("cube", (0, 3), IndexError), ("cube", (0, 0, 5), IndexError),
    ("matrix", slice(None, None, 0), ValueError),
    # safetensors' numpy slicing: bounds must lie inside the dimension, steps must be positive.
    ("matrix", slice(None, 20), IndexError), ("matrix", slice(100, 200), IndexError),
    ("matrix", slice(-100, 3), IndexError), ("matrix", (slice(None), slice(0, 7)), IndexError),
    ("matrix", slice(None, None, -1), ValueError), ("matrix", slice(7, 1, -2), ValueError),
]


def test_get_slice_bad_indices_raise(sealed):
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        for name, index, error in BAD_INDICES:
            with pytest.raises(error):
                handle.get_slice(name)[index]


@pytest.mark.parametrize("index", [1.0, np.float64(2.0), (1.0, 0)], ids=repr)
def test_get_slice_rejects_integral_floats_like_numpy(sealed, index):
    with pytest.raises(IndexError):
        ARRAYS["matrix"][index]
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        with pytest.raises(IndexError):
            handle.get_slice("matrix")[index]


def safetensors_refuses(index, shape):
    """The error safetensors' numpy slicing raises for a basic index (negative or zero steps:
    ValueError here; a slice bound outside its dimension: IndexError), or None."""
    items = index if isinstance(index, tuple) else (index,)
    if any(item is Ellipsis for item in items):
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        items = items[:at] + (slice(None),) * (len(shape) - len(items) + 1) + items[at + 1:]
    for item, size in zip(items, shape):
        if isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                return ValueError
            if any(bound is not None and not -size <= bound <= size
                   for bound in (item.start, item.stop)):
                return IndexError
    return None


def test_get_slice_matches_numpy_on_generated_indices(sealed):
    handle = sealtensors.safe_open(sealed, "np", key=KEY)
    names = sorted(ARRAYS)

    @given(st.data())
    def check(data):
        name = data.draw(st.sampled_from(names))
        array = ARRAYS[name]
        index = data.draw(hnp.basic_indices(array.shape, min_dims=0, allow_newaxis=False,
                                            allow_ellipsis=True))
        refused = safetensors_refuses(index, array.shape)
        if refused is not None:
            with pytest.raises(refused):
                handle.get_slice(name)[index]
            return
        expected = array[index]
        actual = handle.get_slice(name)[index]
        assert actual.shape == np.shape(expected)
        assert actual.dtype == array.dtype
        assert np.array_equal(actual, expected)

    with handle:
        check()


def test_get_slice_out_of_range_integers_on_generated_shapes(sealed):
    handle = sealtensors.safe_open(sealed, "np", key=KEY)
    ranked = sorted(name for name, array in ARRAYS.items() if array.ndim)

    @given(st.sampled_from(ranked), st.integers(-50, 50), st.integers(0, 3))
    def check(name, row, axis):
        array = ARRAYS[name]
        axis = min(axis, array.ndim - 1)
        index = (slice(None),) * axis + (row,)
        try:
            expected = array[index]
        except IndexError:
            with pytest.raises(IndexError):
                handle.get_slice(name)[index]
        else:
            assert np.array_equal(handle.get_slice(name)[index], expected)

    with handle:
        check()


def test_handle_is_shared_safely_between_threads(sealed):
    errors = []
    with sealtensors.safe_open(sealed, "np", key=KEY) as handle:
        def worker(offset: int) -> None:
            try:
                for step in range(30):
                    row = (offset + step) % 9
                    assert np.array_equal(handle.get_slice("matrix")[row], ARRAYS["matrix"][row])
                    assert np.array_equal(handle.get_tensor("cube"), ARRAYS["cube"])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors


# --- only the covering chunks are decrypted -------------------------------------------------------

BIG_ROWS, BIG_COLS = 8192, 2048  # float32: 8 KiB rows, 64 MiB in all


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    head = np.arange(25, dtype=np.float32)  # 100 bytes, so "big" starts at 128: rows straddle chunks
    big = np.arange(BIG_ROWS * BIG_COLS, dtype=np.float32).reshape(BIG_ROWS, BIG_COLS)
    tail = np.arange(15, dtype=np.int16).reshape(3, 5)
    path = tmp_path_factory.mktemp("big") / "big.sealed"
    save_file({"head": head, "big": big, "tail": tail}, path, KEY)
    return path


@pytest.fixture
def decrypted_chunks(monkeypatch):
    """Record the number of chunks each engine decrypt_span call covers."""
    engine = _backends.engine()
    original = engine.decrypt_span
    calls: list[int] = []

    def spy(aead_key, base_nonce, first_chunk, src, dst, *, final, threads=0, digests=None):
        calls.append(-(-len(memoryview(src).cast("B")) // ENCRYPTED_CHUNK_SIZE))
        return original(aead_key, base_nonce, first_chunk, src, dst, final=final, threads=threads)

    monkeypatch.setattr(engine, "decrypt_span", spy)
    fd_original = engine.decrypt_span_fd

    def fd_spy(aead_key, base_nonce, first_chunk, fd, offset, length, dst, *, final, threads=0,
               digests=None):
        calls.append(-(-length // ENCRYPTED_CHUNK_SIZE))
        return fd_original(aead_key, base_nonce, first_chunk, fd, offset, length, dst, final=final,
                           threads=threads)

    monkeypatch.setattr(engine, "decrypt_span_fd", fd_spy)
    return calls


def expected_row(row: int) -> np.ndarray:
    return np.arange(row * BIG_COLS, (row + 1) * BIG_COLS, dtype=np.float32)


def test_one_row_decrypts_at_most_two_chunks(big_file, decrypted_chunks):
    with sealtensors.safe_open(big_file, "np", key=KEY) as handle:
        decrypted_chunks.clear()  # opening decrypts the index, which is not data
        for row in (0, 1, 2, 1000, 4095, 4096, BIG_ROWS - 1, -1, -BIG_ROWS):
            before = len(decrypted_chunks)
            values = handle.get_slice("big")[row]
            assert np.array_equal(values, expected_row(row % BIG_ROWS))
            assert sum(decrypted_chunks[before:]) <= 2, (row, decrypted_chunks[before:])
        before = len(decrypted_chunks)
        rows = handle.get_slice("big")[100:110, 7]
        assert np.array_equal(rows, [expected_row(r)[7] for r in range(100, 110)])
        # 10 rows of 8 KiB: 80 KiB, so at most 5 chunks plus one for a straddled edge.
        assert sum(decrypted_chunks[before:]) <= 6
        before = len(decrypted_chunks)
        assert np.array_equal(handle.get_slice("big")[5:8:2, -1],
                              [expected_row(5)[-1], expected_row(7)[-1]])
        # Rows 5..7 (24 KiB): at most 2 chunks for the bytes plus one for a straddled edge.
        assert sum(decrypted_chunks[before:]) <= 3
        before = len(decrypted_chunks)
        assert handle.get_slice("big")[5:5].shape == (0, BIG_COLS)
        assert sum(decrypted_chunks[before:]) <= 1


def test_get_tensor_decrypts_only_its_own_chunks(big_file, decrypted_chunks):
    with sealtensors.safe_open(big_file, "np", key=KEY) as handle:
        decrypted_chunks.clear()
        assert np.array_equal(handle.get_tensor("head"), np.arange(25, dtype=np.float32))
        assert sum(decrypted_chunks) == 1
        decrypted_chunks.clear()
        assert np.array_equal(handle.get_tensor("tail"), np.arange(15, dtype=np.int16).reshape(3, 5))
        assert sum(decrypted_chunks) <= 2
        decrypted_chunks.clear()
        big = handle.get_tensor("big")
        assert big.shape == (BIG_ROWS, BIG_COLS)
        assert np.array_equal(big[-1], expected_row(BIG_ROWS - 1))
        # The whole tensor: every chunk it touches, and not more than one beyond.
        needed = -(-(BIG_ROWS * BIG_COLS * 4) // CHUNK_SIZE)
        assert needed <= sum(decrypted_chunks) <= needed + 2
