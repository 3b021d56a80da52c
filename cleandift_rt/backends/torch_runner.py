"""PyTorch eager runner of a FeatureNet (CPU or CUDA; fp32, fp16 or bf16)."""

from __future__ import annotations

import numpy as np
import torch

from ..models.featurenet import FeatureNet
from .base import ANY_BATCH, check_batch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class TorchRunner:
    """Runs ``net`` on its own device and dtype; any input size that is a multiple of 64.

    Args:
        net: the FeatureNet (its device and dtype are the runner's).
        input_size: a fixed (H, W), or None for any multiple of 64.
        channels_last: NHWC weights for the convolutions (default on CUDA, where cuDNN is
            faster with them; the uint8 NHWC input is already channels-last after permute).
        compile: a ``torch.compile`` mode ("default", "reduce-overhead" — which captures CUDA
            graphs for static shapes — or "max-autotune"), or None for eager.

    Thread-safe for concurrent calls (inference mode, no shared mutable state).
    """

    name = "torch"

    def __init__(
        self,
        net: FeatureNet,
        input_size: tuple[int, int] | None = None,
        *,
        channels_last: bool | None = None,
        compile: str | None = None,
    ):
        param = next(net.parameters())
        self.device, self.dtype = param.device, param.dtype
        if channels_last if channels_last is not None else self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.net = net.eval()
        if compile is not None:
            if compile not in COMPILE_MODES:
                raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {compile!r}")
            self.net = torch.compile(self.net, mode=compile, dynamic=False)
        self.taps = net.taps
        self.strides = net.strides
        self.channels = net.channels
        self.input_size = input_size
        self.batch_range = ANY_BATCH

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(images, self.input_size)
        x = torch.as_tensor(images)
        if self.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)  # uint8 upload, 4× < fp32
        else:
            x = x.to(self.device)
        with torch.inference_mode():
            return dict(zip(self.taps, self.net(x)))
