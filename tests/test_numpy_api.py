"""The numpy API (save, save_file, load, load_file) on every engine."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import given, strategies as st

from sealtensors.engine import backends as _backends
from sealtensors.crypto import chunked
from sealtensors.format.dtypes import DTYPE_NAMES, numpy_dtype
from sealtensors.errors import FormatError, InvalidKeyError, SealError, WrongKeyError
from sealtensors.numpy import load, load_file, save, save_file
from sealtensors.reader import SealedReader

from test_chunked_vectors import SpyEngine

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_C = bytes(range(200, 232))

# Names: any Unicode without lone surrogates, never the reserved '__metadata__'.
names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).filter(
    lambda n: n != "__metadata__")
metadata_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
metadata = st.none() | st.dictionaries(metadata_values, metadata_values, max_size=4)
ITEM_COUNT_NEAR_CHUNK = [chunked.CHUNK_SIZE // 8 - 1, chunked.CHUNK_SIZE // 8, chunked.CHUNK_SIZE // 8 + 1]


@st.composite
def arrays(draw):
    """An array of any storable dtype with arbitrary bit patterns; sometimes a non-contiguous view."""
    dtype_name = draw(st.sampled_from(DTYPE_NAMES))
    dtype = numpy_dtype(dtype_name)
    shape = draw(st.one_of(
        st.just(()),  # scalar
        st.lists(st.integers(0, 6), min_size=1, max_size=4),  # small, possibly 0-size
        st.sampled_from(ITEM_COUNT_NEAR_CHUNK).map(lambda n: (n * 8 // dtype.itemsize,)),
        st.integers(1, 3 * chunked.CHUNK_SIZE).map(lambda n: (n // dtype.itemsize + 1,)),
    ))
    count = int(np.prod(shape, dtype=np.int64))
    seed = draw(st.integers(0, 2**32))
    raw = np.frombuffer(random.Random(seed).randbytes(count * dtype.itemsize), dtype=np.uint8)
    if dtype_name == "BOOL":
        raw = raw & 1
    array = raw.view(dtype).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed", "fortran"]))
    if layout == "strided" and array.ndim >= 1:
        doubled = np.concatenate([array, array], axis=0) if array.shape[0] else array
        array = doubled[::2]
    elif layout == "transposed" and array.ndim >= 2:
        array = np.ascontiguousarray(array.T).T
    elif layout == "fortran":
        array = np.asfortranarray(array)
    return array


tensor_dicts = st.dictionaries(names, arrays(), max_size=5)


def _assert_same(loaded: dict, original: dict):
    assert list(loaded) == list(original)
    for name, array in original.items():
        got = loaded[name]
        assert got.dtype == array.dtype, name
        assert got.shape == array.shape, name
        assert got.tobytes() == np.ascontiguousarray(array).tobytes(), name


@given(tensors=tensor_dicts, meta=metadata)
def test_round_trip_bytes(tensors, meta):
    sealed = save(tensors, KEY_A, meta)
    _assert_same(load(sealed, KEY_A), tensors)
    with SealedReader.from_bytes(sealed, KEY_A) as reader:
        assert reader.metadata() == (None if meta is None else dict(meta))
        assert reader.keys() == list(tensors)
        for info in reader.index.tensors:
            assert info.begin % 64 == 0


@given(tensors=tensor_dicts, meta=metadata)
def test_round_trip_file(tensors, meta):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.sealed")
        save_file(tensors, path, [KEY_A, KEY_B], meta)
        for key in (KEY_A, KEY_B, [KEY_C, KEY_B]):
            _assert_same(load_file(path, key), tensors)
        assert os.listdir(directory) == ["model.sealed"]


def test_every_dtype_scalar_and_empty(make_sealed):
    tensors = {}
    for name in DTYPE_NAMES:
        dtype = numpy_dtype(name)
        tensors[f"{name}-scalar"] = np.zeros((), dtype=dtype)
        tensors[f"{name}-empty"] = np.zeros((3, 0, 2), dtype=dtype)
        tensors[f"{name}-row"] = np.arange(5).astype(dtype) if name != "F8_E8M0" else \
            np.ones(5, dtype=dtype)
    path = make_sealed(tensors, KEY_A)
    loaded = load_file(path, KEY_A)
    _assert_same(loaded, tensors)
    assert loaded["F32-scalar"].shape == ()


def test_zero_tensors_and_metadata_only():
    for meta in (None, {}, {"format": "np", "ünïcode": "välue"}):
        sealed = save({}, KEY_A, meta)
        assert load(sealed, KEY_A) == {}
        with SealedReader.from_bytes(sealed, KEY_A) as reader:
            assert reader.metadata() == meta
            assert reader.data_length == 0


def test_large_tensors_straddling_chunks():
    rng = np.random.default_rng(5)
    tensors = {
        "a": rng.standard_normal(chunked.CHUNK_SIZE // 4 + 3).astype(np.float32),
        "b": rng.integers(0, 255, size=(3, chunked.CHUNK_SIZE + 1), dtype=np.uint8),
        "c": rng.standard_normal((70, 300)).astype(np.float64)[:, ::3],
    }
    _assert_same(load(save(tensors, KEY_A), KEY_A), tensors)


def test_multiple_recipients_each_can_load(make_sealed):
    tensors = {"w": np.arange(12, dtype=np.int16).reshape(3, 4)}
    path = make_sealed(tensors, [KEY_A, KEY_B, KEY_C, KEY_B])  # duplicate recipient is folded
    for key in (KEY_A, KEY_B, KEY_C, [KEY_C], [bytes(32), KEY_A]):
        _assert_same(load_file(path, key), tensors)
    with SealedReader.open(path, KEY_A) as reader:
        assert len(reader.header.slots) == 3


def test_wrong_key_before_any_data_is_decrypted(make_sealed, monkeypatch):
    path = make_sealed({"w": np.ones(50000, dtype=np.float32)}, [KEY_A, KEY_B])
    spy = SpyEngine(_backends.engine())
    monkeypatch.setattr(_backends, "_current", spy)
    for wrong in (KEY_C, [KEY_C, bytes(32)]):
        with pytest.raises(WrongKeyError):
            load_file(path, wrong)
        with pytest.raises(WrongKeyError):
            load(path.read_bytes(), wrong)
    assert spy.decrypt_calls == []
    load_file(path, KEY_B)
    assert spy.decrypt_calls  # the spy does see decryption when the key is right


def test_save_file_replaces_by_default_and_refuses_with_overwrite_false(make_sealed, tmp_path):
    # safetensors' save_file replaces an existing file; overwrite=False keeps the old refusal.
    path = make_sealed({"x": np.arange(3)}, KEY_A, name="model.sealed")
    before = path.read_bytes()
    with pytest.raises(FileExistsError) as info:
        save_file({"x": np.arange(4)}, path, KEY_A, overwrite=False)
    assert isinstance(info.value, SealError)
    assert path.read_bytes() == before
    save_file({"x": np.arange(4)}, path, KEY_A)
    np.testing.assert_array_equal(load_file(path, KEY_A)["x"], np.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.sealed"]


def test_save_file_failure_leaves_nothing(tmp_path):
    path = tmp_path / "model.sealed"
    with pytest.raises(InvalidKeyError):
        save_file({"x": np.arange(3)}, path, b"short key")
    with pytest.raises(ValueError):
        save_file({"x": np.array(["text"])}, path, KEY_A)
    with pytest.raises(FormatError):
        save_file({"__metadata__": np.arange(3)}, path, KEY_A)
    with pytest.raises(FormatError):
        save_file({"x": np.arange(3)}, path, KEY_A, metadata={"k": 1})
    assert list(tmp_path.iterdir()) == []


def test_unsupported_inputs():
    with pytest.raises(TypeError):
        save([np.arange(3)], KEY_A)
    with pytest.raises(ValueError):
        save({"x": np.array(["text"])}, KEY_A)
    with pytest.raises(ValueError):
        save({"x": np.array([object()])}, KEY_A)
    with pytest.raises(FormatError):
        save({"": np.arange(3)}, KEY_A)


def test_key_file_paths(tmp_path):
    from sealtensors.keys.keyfile import write_key_file

    key_path = tmp_path / "key"
    key = write_key_file(key_path)
    sealed = save({"x": np.arange(3)}, str(key_path))
    np.testing.assert_array_equal(load(sealed, key)["x"], np.arange(3))
    np.testing.assert_array_equal(load(sealed, key_path)["x"], np.arange(3))


def test_loaded_arrays_are_writable_and_independent():
    sealed = save({"a": np.arange(10, dtype=np.int32), "b": np.ones(3)}, KEY_A)
    first = load(sealed, KEY_A)
    second = load(sealed, KEY_A)
    first["a"][0] = 99
    assert second["a"][0] == 0
    assert first["a"].ctypes.data % 64 == 0 and first["b"].ctypes.data % 64 == 0
