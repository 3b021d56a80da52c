"""Frame upload: uint8 host frames to the runner's device.

On CUDA a frame is copied into a pinned host buffer and from there, on a dedicated stream, into a
preallocated device buffer (two slots, so the upload of one frame can overlap work on the
previous one); the compute stream waits on the copy with an event, never on the whole device.
uint8 is 4× less traffic than float32. On the CPU the frame is used in place (no copy).
"""

from __future__ import annotations

import numpy as np
import torch


class FrameUploader:
    """``uploader(array)`` → uint8 ``(1, H, W, 3)`` tensor on ``device`` for a uint8 (H, W, 3)
    array; call :meth:`consumed` after the work that reads it has been queued."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._slots: list[dict] = []
        self._next = 0
        self._last: dict | None = None
        if self.cuda:
            self.stream = torch.cuda.Stream(self.device)

    def _slot(self, shape: tuple[int, ...]) -> dict:
        if not self._slots or tuple(self._slots[0]["host"].shape) != shape:
            self._slots = [
                {
                    "host": torch.empty(shape, dtype=torch.uint8).pin_memory(),
                    "device": torch.empty(shape, dtype=torch.uint8, device=self.device),
                    "copied": torch.cuda.Event(),
                    "used": torch.cuda.Event(),
                }
                for _ in range(2)
            ]
            self._next = 0
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        return slot

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(array))[None]
        if not self.cuda:
            return host
        slot = self._slot(tuple(host.shape))
        slot["copied"].synchronize()  # the previous copy out of this pinned buffer is done
        slot["host"].copy_(host)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(slot["used"])  # the last reader of this device buffer is done
            slot["device"].copy_(slot["host"], non_blocking=True)
            slot["copied"].record(self.stream)
        compute.wait_event(slot["copied"])
        self._last = slot
        return slot["device"]

    def consumed(self) -> None:
        """Mark the last uploaded buffer as read by the work queued so far on the compute stream."""
        if self.cuda and self._last is not None:
            self._last["used"].record(torch.cuda.current_stream(self.device))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): stage timings end here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
