"""The CUDA device for the staging ring (:mod:`sealtensors.engine.staging`), through torch.

Staging slots are pinned host tensors (handed to the engine as numpy views); copies run on a
dedicated stream with ``non_blocking=True`` from the pinned tensor itself, so torch always sees
page-locked memory; each copy records an event that the ring waits on before reusing the slot.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchCudaDevice:
    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._pinned: list[tuple[int, torch.Tensor]] = []

    def allocate_staging(self, nbytes: int) -> np.ndarray:
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self._pinned.append((pinned.data_ptr(), pinned))
        return pinned.numpy()

    def _pinned_slice(self, source: np.ndarray) -> torch.Tensor:
        address = source.ctypes.data
        for base, tensor in self._pinned:
            offset = address - base
            if 0 <= offset and offset + source.nbytes <= tensor.numel():
                return tensor[offset:offset + source.nbytes]
        raise ValueError("copy source is not a staging slot of this device")

    def allocate_destination(self, nbytes: int) -> torch.Tensor:
        destination = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        # The allocator may hand out memory that work queued on the current stream still uses;
        # the copy stream must not overtake it.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        return destination

    def copy_async(self, source: np.ndarray, destination: torch.Tensor, offset: int):
        host = self._pinned_slice(source)
        with torch.cuda.stream(self.stream):
            destination[offset:offset + host.numel()].copy_(host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def wait(self, event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        self.stream.synchronize()
        # Later work on the current stream must see the uploaded bytes.
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def release_destination(self, destination: torch.Tensor) -> None:
        # Device memory of a failed load is zeroed before the allocator can hand it out again.
        with torch.cuda.stream(self.stream):
            destination.zero_()
        self.stream.synchronize()
