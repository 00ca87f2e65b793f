"""Concurrent use: threads with different files and keys, processes sharing a file, and readers
racing an in-place rewrap in another process."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import sealtensors
from sealtensors import WrongKeyError, key_id
from sealtensors.numpy import load_file, save_file

A, B = bytes(range(32)), bytes(range(32, 64))


def file_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((257, 129)).astype(np.float32),  # ~130 KiB: several chunks
        "ids": rng.integers(0, 1 << 30, size=seed + 1, dtype=np.int64),
    }


def digest(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: hashlib.sha256(array.tobytes()).hexdigest() for name, array in arrays.items()}


def use_backend(backend: str) -> None:
    """Select ``backend`` (a conftest id such as ``python`` or ``c-openssl``) in a child process."""
    from sealtensors.engine import backends as _backends

    if backend == "python":
        _backends.use("python")
    else:
        from sealtensors.engine.cengine import CEngine

        _backends._current = CEngine(backend.split("-", 1)[1])


# --- threads ---------------------------------------------------------------------------------------


def test_eight_threads_with_different_files_and_keys(tmp_path):
    keys = [bytes([i]) * 32 for i in range(1, 9)]
    paths = []
    for i, key in enumerate(keys):
        paths.append(tmp_path / f"m{i}.sealed")
        save_file(file_arrays(i), paths[-1], key, metadata={"file": str(i)})
    start = threading.Barrier(8)

    def work(i: int) -> str:
        start.wait()
        expected = file_arrays(i)
        for _ in range(4):
            loaded = load_file(paths[i], keys[i])
            assert set(loaded) == set(expected)
            for name in expected:
                assert np.array_equal(loaded[name], expected[name])
            with sealtensors.safe_open(paths[i], "np", key=keys[i]) as handle:
                assert handle.metadata() == {"file": str(i)}
                assert np.array_equal(handle.get_slice("w")[i::7, -3], expected["w"][i::7, -3])
            with pytest.raises(WrongKeyError):
                load_file(paths[i], keys[(i + 1) % 8])
        return sealtensors.backend

    with ThreadPoolExecutor(max_workers=8) as pool:
        backends = list(pool.map(work, range(8)))
    assert len(set(backends)) == 1


def test_threads_sharing_one_file_and_one_handle(tmp_path):
    path = tmp_path / "shared.sealed"
    expected = file_arrays(3)
    save_file(expected, path, A)
    with sealtensors.safe_open(path, "np", key=A) as handle:
        def work(i: int) -> bool:
            for step in range(10):
                row = (i * 31 + step) % 257
                assert np.array_equal(handle.get_slice("w")[row], expected["w"][row])
                assert np.array_equal(load_file(path, A)["ids"], expected["ids"])
            return True

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(work, range(8)))


# --- processes -------------------------------------------------------------------------------------


def _load_in_child(args) -> dict[str, str]:
    backend, path, key, rounds = args
    use_backend(backend)
    result = None
    for _ in range(rounds):
        result = digest(load_file(path, key))
    return result


def test_processes_loading_the_same_file(backend, tmp_path):
    path = tmp_path / "shared.sealed"
    expected = file_arrays(5)
    save_file(expected, path, [A, B])
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        jobs = [(backend, str(path), key, 5) for key in (A, B, A, B, A, B)]
        results = pool.map(_load_in_child, jobs)
    assert results == [digest(expected)] * len(jobs)


def _rewrap_loop(backend: str, path: str, rounds: int, ready, done) -> None:
    use_backend(backend)
    ready.set()
    try:
        for step in range(rounds):
            if step % 2 == 0:
                sealtensors.rewrap(path, A, add=[B])
            else:
                sealtensors.rewrap(path, A, remove=[B])
    finally:
        done.set()


def test_readers_racing_an_in_place_rewrap_in_another_process(backend, tmp_path):
    path = tmp_path / "live.sealed"
    expected = file_arrays(7)
    save_file(expected, path, A)
    # slot ids are per file: count the slots instead of naming them
    only_a, both = 1, 2

    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    rounds = 40
    rewrapper = context.Process(target=_rewrap_loop, args=(backend, str(path), rounds, ready, done))
    rewrapper.start()
    assert ready.wait(60), "the rewrapping process did not start"

    outcomes = {"a_ok": 0, "b_ok": 0, "b_refused": 0, "headers": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            outcomes[name] += 1

    def read_with_a() -> None:
        while not done.is_set():
            loaded = load_file(path, A)
            assert digest(loaded) == digest(expected)
            count("a_ok")

    def read_with_b() -> None:
        while not done.is_set():
            try:
                with sealtensors.safe_open(path, "np", key=B) as handle:
                    assert np.array_equal(handle.get_tensor("ids"), expected["ids"])
                    assert np.array_equal(handle.get_slice("w")[-1], expected["w"][-1])
            except WrongKeyError:
                count("b_refused")
            else:
                count("b_ok")

    def read_headers() -> None:
        while not done.is_set():
            assert len(sealtensors.inspect(path)["recipients"]) in (only_a, both)
            count("headers")

    def guarded(function):
        def run() -> None:
            try:
                function()
            except BaseException as exc:  # collected and re-raised below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guarded(f)) for f in (read_with_a, read_with_b, read_headers)]
    for thread in threads:
        thread.start()
    rewrapper.join(120)
    done.set()
    for thread in threads:
        thread.join(60)
    assert rewrapper.exitcode == 0
    if errors:
        raise errors[0]
    assert outcomes["a_ok"] > 0 and outcomes["headers"] > 0, outcomes
    assert outcomes["b_ok"] + outcomes["b_refused"] > 0, outcomes
    # 40 rewraps alternate add/remove: B ends removed; nothing but the header ever changed.
    assert len(sealtensors.inspect(path)["recipients"]) == only_a
    assert digest(load_file(path, A)) == digest(expected)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_open_handle_keeps_reading_after_its_key_is_removed(tmp_path):
    path = tmp_path / "m.sealed"
    expected = file_arrays(2)
    save_file(expected, path, [A, B])
    with sealtensors.safe_open(path, "np", key=B) as handle:
        sealtensors.rewrap(path, A, remove=[B])
        # The handle still maps the file it authenticated (the rename left that inode intact).
        assert np.array_equal(handle.get_tensor("w"), expected["w"])
    with pytest.raises(WrongKeyError):
        sealtensors.safe_open(path, "np", key=B)


@pytest.mark.slow
def test_readers_racing_many_rewraps(backend, tmp_path):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        test_readers_racing_an_in_place_rewrap_in_another_process(backend, tmp_path)
        for leftover in tmp_path.iterdir():
            leftover.unlink()
