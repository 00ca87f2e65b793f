"""The staging ring, driven by a fake device that copies on a background thread with random delays.

It checks what a real GPU upload depends on: a slot is never rewritten before its copy completed,
only authenticated spans are copied, failures wipe the ring and return nothing.
"""

from __future__ import annotations

import hashlib
import queue
import random
import threading
import time

import numpy as np
import pytest

from sealtensors import IntegrityError
from sealtensors.engine import staging as _staging
from sealtensors.crypto import chunked
from sealtensors.reader import SealedReader
import sealtensors.numpy as stn


class FakeDevice:
    def __init__(self, *, seed: int = 0, fail_copy_at: int | None = None, max_delay: float = 0.002):
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.fail_copy_at = fail_copy_at
        self.copies: list[tuple[int, int]] = []
        self.violations: list[str] = []
        self.staging: list[np.ndarray] = []
        self.released = False
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()
        self._enqueued = 0

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            source, destination, offset, digest, event = item
            time.sleep(self.rng.random() * self.max_delay)
            if hashlib.sha256(source).digest() != digest:
                self.violations.append(f"slot rewritten before its copy at offset {offset} finished")
            destination[offset:offset + len(source)] = source
            self.copies.append((offset, len(source)))
            event.set()

    def allocate_staging(self, nbytes):
        buffer = np.zeros(nbytes, dtype=np.uint8)
        self.staging.append(buffer)
        return buffer

    def allocate_destination(self, nbytes):
        return np.full(nbytes, 0xAA, dtype=np.uint8)

    def copy_async(self, source, destination, offset):
        if self.fail_copy_at is not None and self._enqueued == self.fail_copy_at:
            raise RuntimeError("injected device copy failure")
        self._enqueued += 1
        event = threading.Event()
        self._queue.put((source, destination, offset, hashlib.sha256(source).digest(), event))
        return event

    def wait(self, event):
        event.wait()

    def synchronize(self):
        done = threading.Event()
        self._queue.put((np.empty(0, np.uint8), np.empty(0, np.uint8), 0,
                         hashlib.sha256(b"").digest(), done))
        done.wait()

    def release_destination(self, destination):
        self.released = True
        destination.fill(0)

    def close(self):
        self._queue.put(None)
        self._worker.join()


def _sealed(tmp_path, nbytes: int, key: bytes, seed: int = 1):
    rng = np.random.default_rng(seed)
    tensors = {"a": rng.integers(0, 255, size=nbytes // 2, dtype=np.uint8),
               "b": rng.standard_normal(nbytes // 8).astype(np.float32)}
    path = tmp_path / "model.sealed"
    stn.save_file(tensors, path, key)
    return path, tensors


def test_plan_spans_tile_the_data():
    for length in (0, 1, chunked.CHUNK_SIZE - 1, chunked.CHUNK_SIZE, 5 * chunked.CHUNK_SIZE + 7):
        spans = _staging.plan_spans(length, 2 * chunked.CHUNK_SIZE)
        assert spans[0].begin == 0 and spans[-1].end == length
        assert spans[-1].stop_chunk == chunked.chunk_count(length)
        for left, right in zip(spans, spans[1:]):
            assert left.end == right.begin and left.stop_chunk == right.first_chunk
    with pytest.raises(ValueError):
        _staging.plan_spans(10, chunked.CHUNK_SIZE - 1)


@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_uploads_everything_in_order_without_overwriting(tmp_path, slots, seed):
    key = bytes(range(32))
    path, _ = _sealed(tmp_path, 300_000, key)
    device = FakeDevice(seed=seed)
    try:
        with SealedReader.open(path, key) as reader:
            destination = _staging.upload(reader.read_chunks_into, reader.data_length, device,
                                          slots=slots, slot_bytes=2 * chunked.CHUNK_SIZE)
            expected = np.empty(reader.data_length, np.uint8)
            reader.read_all_into(expected)
    finally:
        device.close()
    assert device.violations == []
    assert np.array_equal(destination, expected)
    offsets = [offset for offset, length in device.copies if length]
    assert offsets == sorted(offsets) and len(offsets) == len(
        _staging.plan_spans(len(expected), 2 * chunked.CHUNK_SIZE))
    assert all(not buffer.any() for buffer in device.staging), "staging ring must be wiped"
    assert len(device.staging) == min(slots, len(offsets))


def test_tampered_span_is_never_copied_and_ring_is_wiped(tmp_path):
    key = bytes(range(32))
    path, _ = _sealed(tmp_path, 300_000, key)
    data = bytearray(path.read_bytes())
    data[-40_000] ^= 1  # inside one of the last chunks
    path.write_bytes(bytes(data))
    device = FakeDevice(seed=3)
    try:
        with SealedReader.open(path, key) as reader:
            with pytest.raises(IntegrityError) as failure:
                _staging.upload(reader.read_chunks_into, reader.data_length, device, slots=2,
                                slot_bytes=2 * chunked.CHUNK_SIZE)
            bad_chunk = failure.value.chunk_index
    finally:
        device.close()
    assert device.released
    assert device.violations == []
    assert all(not buffer.any() for buffer in device.staging)
    # Every copied span ends before the failing chunk: nothing unauthenticated reached the device.
    for offset, length in device.copies:
        assert offset + length <= bad_chunk * chunked.CHUNK_SIZE


def test_device_copy_failure_releases_destination_and_wipes_ring(tmp_path):
    key = bytes(range(32))
    path, _ = _sealed(tmp_path, 300_000, key)
    device = FakeDevice(seed=4, fail_copy_at=3)
    try:
        with SealedReader.open(path, key) as reader:
            with pytest.raises(RuntimeError, match="injected"):
                _staging.upload(reader.read_chunks_into, reader.data_length, device, slots=2,
                                slot_bytes=2 * chunked.CHUNK_SIZE)
    finally:
        device.close()
    assert device.released
    assert all(not buffer.any() for buffer in device.staging)


def test_ring_memory_is_bounded_by_slots_not_model(tmp_path):
    key = bytes(range(32))
    path, _ = _sealed(tmp_path, 1_000_000, key)
    device = FakeDevice(seed=5, max_delay=0)
    try:
        with SealedReader.open(path, key) as reader:
            _staging.upload(reader.read_chunks_into, reader.data_length, device, slots=3,
                            slot_bytes=4 * chunked.CHUNK_SIZE)
    finally:
        device.close()
    assert sum(buffer.nbytes for buffer in device.staging) == 3 * 4 * chunked.CHUNK_SIZE
