"""Runner of the DIFT baseline (the noisy ensemble CleanDIFT replaces).

``DIFTRunner`` puts the DIFT extractor behind the runner interface, so the baseline goes through
exactly the same resizing, coordinate transforms and matching as CleanDIFT.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import DIFTExtractor
from .base import ANY_BATCH, check_batch


class DIFTRunner:
    """uint8 (B, H, W, 3) → {tap: ensemble-averaged (B, C, h, w)} in the extractor's dtype.

    Noise comes from ``seed`` on every call, so the same images give the same features.
    """

    name = "dift"

    def __init__(self, dift: DIFTExtractor, seed: int = 0):
        param = next(dift.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.dift = dift.eval()
        self.seed = seed
        self.taps = dift.taps
        self.strides = {s.name: s.stride for s in dift.unet.specs}
        self.channels = {s.name: s.channels for s in dift.unet.specs}
        self.input_size = None
        self.batch_range = ANY_BATCH

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(images, None)
        x = torch.as_tensor(images).to(self.device)
        with torch.inference_mode():
            return dict(zip(self.taps, self.dift(x, seed=self.seed)))
