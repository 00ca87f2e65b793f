"""load_into: decrypting into memory the caller owns, whole files or chosen tensors."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn
from sealtensors import IntegrityError, WrongKeyError
from sealtensors.crypto import chunked
from sealtensors.reader import SealedReader

KEY = bytes(range(32))


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(7)
    tensors = {
        "embed": rng.standard_normal((300, 70)).astype(np.float32),  # crosses several chunks
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "tail": rng.integers(0, 255, size=20_001, dtype=np.uint8),
    }
    path = tmp_path / "m.sealed"
    stn.save_file(tensors, path, KEY)
    return path, tensors


def test_whole_file_into_caller_buffer(model):
    path, tensors = model
    size = sealtensors.buffer_size(path, KEY)
    buffer = np.full(size + 100, 0x5A, dtype=np.uint8)
    result = sealtensors.load_into(path, KEY, buffer)
    for name, array in tensors.items():
        assert np.array_equal(result[name], array) and result[name].dtype == array.dtype
        if result[name].nbytes:
            assert np.shares_memory(result[name], buffer)
    assert (buffer[size:] == 0x5A).all(), "bytes past the needed size are not touched"


@pytest.mark.parametrize("names", [["tail"], ["scalar", "embed"], ["empty", "tail", "scalar"]])
def test_chosen_tensors_are_packed_aligned(model, names):
    path, tensors = model
    size = sealtensors.buffer_size(path, KEY, names)
    buffer = bytearray(size)
    result = sealtensors.load_into(path, KEY, buffer, names=names)
    assert list(result) == names
    base = np.frombuffer(buffer, dtype=np.uint8).ctypes.data
    for name in names:
        assert np.array_equal(result[name], tensors[name])
        assert (result[name].ctypes.data - base) % 64 == 0


def test_chosen_tensor_decrypts_only_its_chunks(model, monkeypatch):
    path, _ = model
    engine = sealtensors.engine.backends.engine()
    counted = []
    original = engine.decrypt_span_fd

    def spy(aead_key, base_nonce, first_chunk, fd, offset, length, dst, *, final, threads=0,
            digests=None):
        counted.append(-(-length // chunked.ENCRYPTED_CHUNK_SIZE))
        return original(aead_key, base_nonce, first_chunk, fd, offset, length, dst, final=final,
                        threads=threads)

    monkeypatch.setattr(engine, "decrypt_span_fd", spy)
    with SealedReader.open(path, KEY) as reader:
        total = chunked.chunk_count(reader.data_length)
        counted.clear()
        info = reader.info("scalar")
        out = np.empty(info.nbytes, np.uint8)
        reader.read_range_into(info.begin, info.end, out)
    assert sum(counted) == 1 < total


def test_too_small_and_read_only_buffers_are_refused(model):
    path, _ = model
    size = sealtensors.buffer_size(path, KEY)
    with pytest.raises(ValueError, match="needed"):
        sealtensors.load_into(path, KEY, bytearray(size - 1))
    with pytest.raises(ValueError, match="writable"):
        sealtensors.load_into(path, KEY, bytes(size))
    with pytest.raises(ValueError, match="contiguous"):
        sealtensors.load_into(path, KEY, np.zeros((size, 2), np.uint8)[:, 0])
    with pytest.raises(KeyError):
        sealtensors.load_into(path, KEY, bytearray(size), names=["missing"])
    with pytest.raises(WrongKeyError):
        sealtensors.load_into(path, bytes(32), bytearray(size))


@pytest.mark.parametrize("names", [None, ["tail", "embed"]])
def test_failure_wipes_what_was_written(model, names):
    path, _ = model
    data = bytearray(path.read_bytes())
    data[-30] ^= 0x01  # a byte of the last chunk
    path.write_bytes(bytes(data))
    size = sealtensors.buffer_size(path, KEY, names)
    buffer = mmap.mmap(-1, size + 64)
    buffer[:] = b"\xee" * len(buffer)
    with pytest.raises(IntegrityError):
        sealtensors.load_into(path, KEY, buffer, names=names)
    assert buffer[:size] == bytes(size)
    assert buffer[size:] == b"\xee" * 64


def test_read_range_into_matches_full_decrypt_at_every_edge(tmp_path):
    size = chunked.CHUNK_SIZE
    for length in (0, 1, size - 1, size, size + 1, 2 * size, 3 * size + 5):
        blob = stn.save({"x": np.arange(length, dtype=np.uint8)}, KEY)
        with SealedReader.from_bytes(blob, KEY) as reader:
            full = np.empty(reader.data_length, np.uint8)
            reader.read_all_into(full)
            points = sorted({0, 1, size - 1, size, size + 1, 2 * size, length - 1, length} &
                            set(range(length + 1)))
            for begin in points:
                for end in points:
                    if begin <= end:
                        assert np.array_equal(reader.read_range(begin, end), full[begin:end])


def test_failed_file_read_wipes_the_destination(model, monkeypatch):
    """An OSError while reading the file leaves no plaintext of earlier pieces behind."""
    import os

    path, _ = model
    with SealedReader.open(path, KEY) as reader:
        destination = np.full(reader.data_length, 0x77, dtype=np.uint8)
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)  # a descriptor number that is now invalid
        from sealtensors.engine import backends as _backends

        engine = _backends.engine()
        with pytest.raises(OSError):
            engine.decrypt_span_fd(reader._data_keys.aead_key, reader._data_keys.base_nonce, 0, fd,
                                   reader.header.data_offset + chunked.HEADER_SIZE,
                                   reader.header.data_length - chunked.HEADER_SIZE, destination,
                                   final=True)
        assert not destination.any()
