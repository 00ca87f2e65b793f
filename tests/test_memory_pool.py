"""Destination memory: huge-page and pool settings, and that a pooled buffer is wiped and never shared."""

from __future__ import annotations

import gc
import warnings

import pytest

from sealtensors.engine import memory
from sealtensors.errors import BackendError

pytestmark = pytest.mark.engine_independent


@pytest.fixture(autouse=True)
def _empty_pool(monkeypatch):
    memory.clear_pool()
    yield
    memory.clear_pool()


@pytest.mark.parametrize("mode", memory.HUGEPAGE_CHOICES)
def test_every_mode_gives_zeroed_writable_memory(monkeypatch, mode):
    monkeypatch.setenv("SEALTENSORS_HUGEPAGES", mode)
    size = (40 << 20) + 5  # not a whole number of pages, more than one auto step
    buffer = memory.allocate(size)
    assert buffer.shape == (size,) and not buffer.any()
    buffer[-1] = 1
    assert buffer[-1] == 1


def _smaps_entry(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that starts at ``address``."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                if inside:
                    break
                inside = int(head.split("-")[0], 16) == address
            elif inside:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return fields


def test_default_is_four_kib_pages(monkeypatch):
    """Huge pages are opt-in (``auto``/``always``): the default mapping is never backed by them."""
    monkeypatch.delenv("SEALTENSORS_HUGEPAGES", raising=False)
    assert memory.hugepage_mode() == "never"
    buffer = memory.allocate(8 << 20)
    fields = _smaps_entry(buffer.ctypes.data)
    assert fields, "the mapping is not in /proc/self/smaps"
    assert fields.get("AnonHugePages") == "0 kB"
    assert fields.get("THPeligible", "0") == "0"
    assert int(fields["Rss"].split()[0]) >= 8 << 10  # populated up front


@pytest.mark.parametrize("name,value", [("SEALTENSORS_HUGEPAGES", "sometimes"),
                                        ("SEALTENSORS_POOL_BYTES", "-1"),
                                        ("SEALTENSORS_POOL_BYTES", "1GiB")])
def test_bad_settings_are_backend_errors(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(BackendError, match=name):
        memory.pool_limit() if name.endswith("POOL_BYTES") else memory.allocate(10)


def test_pooled_buffer_comes_back_only_after_its_last_view_and_wiped(monkeypatch):
    monkeypatch.setenv("SEALTENSORS_POOL_BYTES", str(8 << 20))
    first = memory.allocate(4 << 20)
    address = first.ctypes.data
    first[:] = 0xA5
    view = first[100:200]
    del first
    gc.collect()
    assert memory.pooled_bytes() == 0  # the view still holds the mapping
    other = memory.allocate(4 << 20)
    assert other.ctypes.data != address
    del view
    gc.collect()
    assert memory.pooled_bytes() == 4 << 20
    again = memory.allocate(4 << 20)
    assert again.ctypes.data == address and not again.any()
    assert memory.pooled_bytes() == 0


def test_pool_respects_its_limit_and_pinned_memory_is_never_pooled(monkeypatch):
    monkeypatch.setenv("SEALTENSORS_POOL_BYTES", str(4 << 20))
    a, b = memory.allocate(3 << 20), memory.allocate(3 << 20)
    del a, b
    gc.collect()
    assert memory.pooled_bytes() == 3 << 20  # the second one did not fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", memory.PinningWarning)  # a low memlock limit is fine here
        pinned = memory.allocate(1 << 20, pin=True)
    del pinned
    gc.collect()
    assert memory.pooled_bytes() == 3 << 20

