"""Closing a handle while other threads read from it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import sealtensors
import sealtensors.numpy as stn

KEY = bytes(range(32))


def test_close_during_reads_gives_data_or_a_closed_error(tmp_path):
    tensors = {f"t{i}": np.full(40_000, i, dtype=np.float32) for i in range(8)}
    path = tmp_path / "m.sealed"
    stn.save_file(tensors, path, KEY)
    for _ in range(5):
        handle = sealtensors.safe_open(path, "np", key=KEY)
        outcomes, problems = [], []
        start = threading.Barrier(5)

        def reader(index: int) -> None:
            start.wait()
            for round_number in range(200):
                name = f"t{(index + round_number) % 8}"
                try:
                    value = handle.get_tensor(name)
                except ValueError as exc:
                    assert "closed" in str(exc)
                    outcomes.append("closed")
                    return
                except Exception as exc:  # noqa: BLE001 - anything else is the bug under test
                    problems.append(repr(exc))
                    return
                if not np.array_equal(value, tensors[name]):
                    problems.append(f"wrong data for {name}")
                    return
                outcomes.append("ok")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        start.wait()
        handle.close()
        for thread in threads:
            thread.join()
        assert problems == []
        with pytest.raises(ValueError, match="closed"):
            handle.get_tensor("t0")
