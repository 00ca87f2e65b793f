"""The CUDA device for the staging ring (:mod:`sealtensors._staging`), through torch.

Staging slots are pinned host tensors; copies run on a dedicated stream with ``non_blocking=True``;
each copy records an event that the ring waits on before reusing the slot.
"""

from __future__ import annotations

import numpy as np
import torch


class TorchCudaDevice:
    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._keep = []

    def allocate_staging(self, nbytes: int) -> np.ndarray:
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self._keep.append(pinned)
        return pinned.numpy()

    def allocate_destination(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def copy_async(self, source: np.ndarray, destination: torch.Tensor, offset: int):
        host = torch.from_numpy(source)
        with torch.cuda.stream(self.stream):
            destination[offset:offset + host.numel()].copy_(host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def wait(self, event) -> None:
        event.synchronize()

    def synchronize(self) -> None:
        self.stream.synchronize()
        # Later work on the default stream must see the uploaded bytes.
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def release_destination(self, destination: torch.Tensor) -> None:
        # Device memory of a failed load is zeroed before the allocator can hand it out again.
        with torch.cuda.stream(self.stream):
            destination.zero_()
        self.stream.synchronize()
