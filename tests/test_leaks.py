"""Thousands of mixed successful and failing calls leave memory, objects and descriptors flat.

Each round runs every operation once: whole-file loads (bytes and path), ``safe_open`` +
``get_tensor``, ``chunked.decrypt`` of good and tampered messages, wrong keys, truncated and
tampered files. After a warm-up (allocator arenas, caches, the engine's first use) the resident set
size (``/proc/self/statm``), ``len(gc.get_objects())`` and the number of open file descriptors are
sampled, more rounds run, and the growth must stay within a small slack. Growth is measured between
two samples taken *after* warm-up, so one-off allocations do not count, while anything retained per
call (a buffer, a mapping, a descriptor, a reference cycle the collector cannot free) scales with the
number of rounds and shows.

The default run is sized to take a few seconds per backend; ``pytest -m slow`` runs 10x more.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

from sealtensors import (
    IntegrityError,
    SealError,
    WrongKeyError,
    safe_open,
)
from sealtensors.crypto import chunked
from sealtensors import numpy as stnp

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sample() -> tuple[int, int, int]:
    gc.collect()
    gc.collect()
    return rss_bytes(), len(gc.get_objects()), open_fds()


class Workload:
    """Every operation of one round; each call's outcome is checked, so a leak test cannot pass by
    silently doing nothing."""

    def __init__(self, directory: Path) -> None:
        rng = np.random.default_rng(7)
        self.tensors = {"w": rng.standard_normal((96, 128)).astype(np.float32),  # 48 KiB: 4 chunks
                        "b": np.arange(100, dtype=np.int16), "empty": np.zeros((0, 3), np.uint8)}
        self.blob = stnp.save(self.tensors, KEY, metadata={"m": "v"})
        tampered = bytearray(self.blob)
        tampered[-5000] ^= 1
        self.tampered = bytes(tampered)
        self.good_path = directory / "good.sealed"
        self.good_path.write_bytes(self.blob)
        self.bad_path = directory / "tampered.sealed"
        self.bad_path.write_bytes(self.tampered)
        self.short_path = directory / "short.sealed"
        self.short_path.write_bytes(self.blob[:-1])
        self.message = chunked.encrypt(KEY, bytes(40000), b"ctx")
        broken = bytearray(self.message)
        broken[100] ^= 1
        self.broken_message = bytes(broken)
        self.counts = {"ok": 0, "error": 0}

    def _expect_error(self, kind, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except kind:
            self.counts["error"] += 1
        else:
            raise AssertionError(f"{fn.__name__} accepted a bad input")

    def round(self) -> None:
        out = stnp.load(self.blob, KEY)
        assert out["w"].shape == (96, 128) and out["b"][99] == 99
        del out
        out = stnp.load_file(self.good_path, [OTHER_KEY, KEY])
        assert out["empty"].shape == (0, 3)
        del out
        with safe_open(self.good_path, "np", key=KEY) as handle:
            assert handle.get_tensor("b")[5] == 5
            assert handle.get_slice("w")[3:5].shape == (2, 128)
        self._expect_error(IntegrityError, stnp.load, self.tampered, KEY)
        self._expect_error(IntegrityError, stnp.load_file, self.bad_path, KEY)
        with safe_open(self.bad_path, "np", key=KEY) as handle:
            assert handle.get_tensor("b")[1] == 1  # chunk 0 is intact
            self._expect_error(IntegrityError, handle.get_tensor, "w")
        self._expect_error(WrongKeyError, stnp.load, self.blob, OTHER_KEY)
        self._expect_error(WrongKeyError, safe_open, self.good_path, "np", key=OTHER_KEY)
        self._expect_error(IntegrityError, stnp.load_file, self.short_path, KEY)
        self._expect_error(SealError, stnp.load, self.blob[:40], KEY)
        assert chunked.decrypt(KEY, self.message, b"ctx") == bytes(40000)
        self._expect_error(IntegrityError, chunked.decrypt, KEY, self.broken_message, b"ctx")
        self._expect_error(IntegrityError, chunked.decrypt, OTHER_KEY, self.message, b"ctx")
        self.counts["ok"] += 1


def _check_flat(workload: Workload, warmup: int, rounds: int, *, rss_slack: int,
                object_slack: int) -> None:
    for _ in range(warmup):
        workload.round()
    rss0, objects0, fds0 = sample()
    for _ in range(rounds):
        workload.round()
    rss1, objects1, fds1 = sample()
    assert workload.counts["ok"] == warmup + rounds
    assert fds1 == fds0, f"file descriptors grew from {fds0} to {fds1}"
    assert objects1 - objects0 <= object_slack, \
        f"{objects1 - objects0} more live objects after {rounds} rounds"
    assert rss1 - rss0 <= rss_slack, \
        f"RSS grew by {(rss1 - rss0) / MiB:.1f} MiB over {rounds} rounds"


def test_mixed_calls_do_not_leak(tmp_path, backend):
    # 300 rounds x 15 calls; a leak of even one 48 KiB buffer per round would be 14 MiB.
    workload = Workload(tmp_path)
    _check_flat(workload, warmup=60, rounds=300, rss_slack=6 * MiB, object_slack=300)


@pytest.mark.slow
def test_mixed_calls_do_not_leak_long(tmp_path, backend):
    workload = Workload(tmp_path)
    _check_flat(workload, warmup=200, rounds=3000, rss_slack=8 * MiB, object_slack=300)


def test_kept_errors_are_collectable(tmp_path, backend):
    """Errors that callers keep (with their tracebacks, in reference cycles) are freed by the
    collector and take the buffers their frames referenced with them."""
    workload = Workload(tmp_path)
    kept = []

    def attempt():
        try:
            stnp.load(workload.tampered, KEY)
        except IntegrityError as exc:
            error = exc  # the frame keeps its own exception: a cycle through the traceback
            kept.append(error)

    for _ in range(50):
        attempt()
    kept.clear()
    rss0, objects0, fds0 = sample()
    for _ in range(300):
        attempt()
        kept.clear()
    rss1, objects1, fds1 = sample()
    assert fds1 == fds0
    assert objects1 - objects0 <= 300
    assert rss1 - rss0 <= 6 * MiB


def _mapping_of(address: int) -> tuple[str, list[str]] | None:
    """(range line, VmFlags) of the mapping holding ``address`` in /proc/self/smaps, or None."""
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                current = line.strip() if low <= address < high else None
            elif current is not None and line.startswith("VmFlags:"):
                return current, fields[1:]
    return None


def test_plaintext_is_dontdump_and_unmapped_when_the_last_view_dies(tmp_path):
    """The decrypted buffer of a load is its own mapping, excluded from core dumps (MADV_DONTDUMP:
    VmFlags 'dd'), and gone once the last array viewing it is collected (it is wiped first)."""
    workload = Workload(tmp_path)
    out = stnp.load(workload.blob, KEY)
    address = out["w"].__array_interface__["data"][0]  # tensor "w" begins at offset 0
    found = _mapping_of(address)
    assert found is not None
    assert "dd" in found[1], f"plaintext mapping not MADV_DONTDUMP: {found}"
    view = out["b"]
    del out
    gc.collect()
    assert _mapping_of(address) is not None  # "b" still views the buffer
    del view
    gc.collect()
    again = _mapping_of(address)
    assert again is None or again[0] != found[0], "plaintext mapping outlived its last view"
