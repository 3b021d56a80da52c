"""PyTorch eager runner of a FeatureNet (CPU or CUDA; fp32, fp16 or bf16)."""

from __future__ import annotations

import numpy as np
import torch

from ..models.featurenet import FeatureNet
from .base import check_batch


class TorchRunner:
    """Runs ``net`` on its own device and dtype; any input size that is a multiple of 64.

    Thread-safe for concurrent calls (inference mode, no shared mutable state).
    """

    name = "torch"

    def __init__(self, net: FeatureNet, input_size: tuple[int, int] | None = None):
        self.net = net.eval()
        self.taps = net.taps
        self.strides = net.strides
        self.channels = net.channels
        self.input_size = input_size
        param = next(net.parameters())
        self.device, self.dtype = param.device, param.dtype

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(images, self.input_size)
        x = torch.as_tensor(images)
        if self.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)  # uint8 upload, 4× < fp32
        else:
            x = x.to(self.device)
        with torch.inference_mode():
            return dict(zip(self.taps, self.net(x)))
