"""The fusion stages of a FeatureNet (inside the graph every backend runs):

* ``TapFusion``: SD taps {(B, C_i, h_i, w_i)} → (B, Σ C_i, h, w) on the finest tap's grid:
  bilinear resampling (``align_corners=False``), L2 normalisation over channels, per-tap weight,
  concatenation;
* ``DinoBranch``: uint8 images (B, H, W, 3) → DINOv2 patch-token map (B, C_dino, H'/14, W'/14),
  the image resized in-graph to H' × W' (multiples of the 14-px patch) and normalised with
  ImageNet's mean and std;
* ``fuse_with_dino``: ``concat(α · normalize(F_sd), (1 − α) · normalize(F_dino))`` with F_dino
  resampled to F_sd's grid.

Normalisation runs in fp32 (a sum of squares of ~1000 channels overflows fp16) and casts back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) → (B, C, *size), bilinear with ``align_corners=False`` (as is if equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def normalize_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → unit L2 norm over C at every cell (computed in fp32, cast back)."""
    return F.normalize(x.float(), dim=1).to(x.dtype)


class TapFusion(nn.Module):
    """Fuses SD taps on the finest one's grid.

    Args:
        strides: image pixels per cell of each tap (the smallest is the output grid's).
        weights: one per tap, baked into the graph as constants.

    Forward: taps (B, C_i, H / s_i, W / s_i) in this order → (B, Σ C_i, H / min s, W / min s).
    """

    def __init__(self, strides: Sequence[int], weights: Sequence[float]):
        super().__init__()
        if len(strides) != len(weights):
            raise ValueError(f"{len(weights)} weights for {len(strides)} taps")
        self.weights = tuple(float(w) for w in weights)
        self.finest = min(range(len(strides)), key=lambda i: strides[i])

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = tuple(taps[self.finest].shape[-2:])
        parts = [normalize_channels(resample(t, size)) * w for t, w in zip(taps, self.weights)]
        return torch.cat(parts, dim=1)


class DinoBranch(nn.Module):
    """uint8 images (B, H, W, 3) → DINOv2 patch tokens as a map (B, C, h, w), float in the
    model's dtype; CLS and register tokens dropped.

    Args:
        model: a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (shared).
        name: the backbone's name (for metadata).
        input_size: the (H', W') the image is resized to (multiples of the patch), or None:
            each side rounded to the nearest multiple of the patch (at least one patch).
    """

    def __init__(self, model: nn.Module, name: str, input_size: tuple[int, int] | None = None):
        super().__init__()
        config = model.config
        self.model = model
        self.name = name
        self.patch = int(config.patch_size)
        self.channels = int(config.hidden_size)
        self.prefix = 1 + int(getattr(config, "num_register_tokens", 0))  # CLS + registers
        if input_size is not None and any(s % self.patch or s <= 0 for s in input_size):
            raise ValueError(f"DINOv2 input {input_size} is not a multiple of {self.patch} px")
        self.fixed_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The DINOv2 input (H', W') for an (H, W) image."""
        if self.fixed_size is not None:
            return self.fixed_size
        return tuple(max(self.patch, round(s / self.patch) * self.patch) for s in (height, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.mean.dtype
        x = images.permute(0, 3, 1, 2).to(dtype) / 255.0
        size = self.input_size(int(images.shape[1]), int(images.shape[2]))
        x = (resample(x, size) - self.mean) / self.std
        tokens = self.model(pixel_values=x).last_hidden_state[:, self.prefix :]  # (B, h·w, C)
        h, w = size[0] // self.patch, size[1] // self.patch
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.channels, h, w)


def fuse_with_dino(sd: torch.Tensor, dino: torch.Tensor, alpha: float) -> torch.Tensor:
    """SD map (B, C_sd, h, w) and DINOv2 map (B, C_dino, h', w') →
    (B, C_sd + C_dino, h, w) = concat(α · normalize(sd), (1 − α) · normalize(dino on sd's grid))."""
    dino = resample(dino.to(sd.dtype), tuple(sd.shape[-2:]))
    return torch.cat([normalize_channels(sd) * alpha, normalize_channels(dino) * (1.0 - alpha)], 1)
