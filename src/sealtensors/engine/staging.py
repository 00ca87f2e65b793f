"""Decrypt-then-upload through a small ring of staging buffers, overlapped with async copies.

The pipeline is device-neutral: a :class:`Device` supplies the staging buffers (pinned host memory
for a GPU), the destination, asynchronous copies and completion events. CPU tests drive it with a
fake device; :mod:`sealtensors.engine.torch_cuda` drives it with CUDA streams.

Rules the ring enforces:
- a span is copied to the device only after ``decrypt`` returned for it, that is after the engine
  authenticated every chunk in it and the plaintext rules of FORMAT.md (zero padding, BOOL bytes
  0 or 1) accepted it (:meth:`sealtensors.reader.SealedReader.read_chunks_into` does both), so
  unauthenticated or ill-formed plaintext never reaches device memory;
- a slot is written again only after the event of its previous copy completed;
- on any failure, all copies in flight are waited for, the staging ring is wiped, the destination is
  released, and nothing is returned. Memory in use is the ring, whatever the model size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..crypto import chunked

DEFAULT_SLOTS = 4
DEFAULT_SLOT_BYTES = 16 * 1024 * 1024


class Device(Protocol):
    def allocate_staging(self, nbytes: int) -> np.ndarray: ...
    def allocate_destination(self, nbytes: int): ...
    def copy_async(self, source: np.ndarray, destination, offset: int): ...
    def wait(self, event) -> None: ...
    def synchronize(self) -> None: ...
    def release_destination(self, destination) -> None: ...


@dataclass(frozen=True)
class Span:
    """Plaintext bytes [begin, end) of the data section: chunks [first_chunk, stop_chunk)."""

    begin: int
    end: int
    first_chunk: int
    stop_chunk: int


def plan_spans(data_length: int, slot_bytes: int) -> list[Span]:
    """Cut the data section into chunk-aligned spans of at most ``slot_bytes`` plaintext bytes."""
    chunks_per_slot = slot_bytes // chunked.CHUNK_SIZE
    if chunks_per_slot < 1:
        raise ValueError(f"staging slots must hold at least one {chunked.CHUNK_SIZE}-byte chunk")
    total = chunked.chunk_count(data_length)
    spans = []
    for first in range(0, total, chunks_per_slot):
        stop = min(first + chunks_per_slot, total)
        begin = first * chunked.CHUNK_SIZE
        end = min(stop * chunked.CHUNK_SIZE, data_length)
        spans.append(Span(begin, end, first, stop))
    return spans


def upload(decrypt: Callable[[int, int, np.ndarray], None], data_length: int, device: Device, *,
           slots: int = DEFAULT_SLOTS, slot_bytes: int = DEFAULT_SLOT_BYTES):
    """Decrypt the whole data section into device memory; returns the device destination.

    ``decrypt(first_chunk, stop_chunk, out)`` must authenticate and decrypt those chunks into
    ``out`` (exactly their plaintext) and apply the plaintext rules to them, or raise after wiping
    ``out``. On failure the destination is released (``device.release_destination`` zeroes it) and
    the error re-raised.
    """
    if slots < 1:
        raise ValueError("the staging ring needs at least one slot")
    spans = plan_spans(data_length, slot_bytes)
    slot_bytes = min(slot_bytes, max(span.end - span.begin for span in spans) or chunked.CHUNK_SIZE)
    slots = min(slots, len(spans))
    ring = [device.allocate_staging(slot_bytes) for _ in range(slots)]
    pending: list = [None] * slots
    destination = device.allocate_destination(data_length)
    try:
        for number, span in enumerate(spans):
            slot = number % slots
            if pending[slot] is not None:
                device.wait(pending[slot])
                pending[slot] = None
            staging = ring[slot][:span.end - span.begin]
            decrypt(span.first_chunk, span.stop_chunk, staging)
            pending[slot] = device.copy_async(staging, destination, span.begin)
        device.synchronize()
    except BaseException:
        for event in pending:
            if event is not None:
                try:
                    device.wait(event)
                except Exception:  # noqa: BLE001 - already failing; keep wiping
                    pass
        device.release_destination(destination)
        raise
    finally:
        for buffer in ring:
            buffer.fill(0)
    return destination
