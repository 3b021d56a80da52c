"""FeatureNet: uint8 images → CleanDIFT taps, as one module for every backend.

    uint8 (B, H, W, 3) NHWC → [-1, 1] → VAE encoder posterior mean × scaling factor
    → U-Net at a fixed timestep with a baked prompt embedding, stopped after the deepest tap
    → tuple of taps (B, C, H / stride, W / stride)

The same module runs in PyTorch and is what ONNX / AOTInductor export and TensorRT build from,
so every backend computes one function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .unet import TruncatedUNet

INPUT_MULTIPLE = 64  # input H and W must be multiples of this (SD: 8 VAE × 8 U-Net)


def images_to_unit_range(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1] of ``dtype``."""
    return images.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


class LatentEncoder(nn.Module):
    """The VAE encoder half: image in [-1, 1] (B, 3, H, W) → posterior moments / latents.

    Holds only ``encoder`` and ``quant_conv`` of a diffusers ``AutoencoderKL`` (shared).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv if getattr(vae.config, "use_quant_conv", True) else None
        self.scaling_factor = float(vae.config.scaling_factor)
        self.stride = 2 ** (len(vae.config.block_out_channels) - 1)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → posterior mean and log-variance, each (B, 4, H/8, W/8), unscaled."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → scaled posterior-mean latent (B, 4, H/8, W/8)."""
        return self.moments(x)[0] * self.scaling_factor


class FeatureNet(nn.Module):
    """uint8 images (B, H, W, 3) → tuple of taps, in ``self.taps`` order.

    Args:
        encoder: the VAE encoder half.
        unet: the truncated U-Net (its taps are this net's outputs).
        context: prompt embedding (1, L, D), baked in as a buffer.
        timestep: the fixed U-Net timestep (261 for CleanDIFT's released students).
    """

    def __init__(
        self,
        encoder: LatentEncoder,
        unet: TruncatedUNet,
        context: torch.Tensor,
        timestep: float,
    ):
        super().__init__()
        self.encoder = encoder
        self.unet = unet
        self.register_buffer("context", context.detach().clone(), persistent=True)
        # shape (1,): expands to the batch in every exporter (a 0-dim constant trips inductor)
        self.register_buffer("timestep", torch.tensor([float(timestep)]), persistent=True)

    @property
    def taps(self) -> tuple[str, ...]:
        return self.unet.taps

    @property
    def strides(self) -> dict[str, int]:
        """Image pixels per feature cell of each tap."""
        return {s.name: s.stride for s in self.unet.specs}

    @property
    def channels(self) -> dict[str, int]:
        return {s.name: s.channels for s in self.unet.specs}

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Shape (B, C, H/stride, W/stride) of each tap for an input of (B, H, W, 3)."""
        return {
            s.name: (batch, s.channels, height // s.stride, width // s.stride)
            for s in self.unet.specs
        }

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.context.dtype
        latent = self.encoder(images_to_unit_range(images, dtype))
        return self.unet(latent, self.timestep, self.context)


def build_feature_net(
    vae: nn.Module, unet: nn.Module, context: torch.Tensor, timestep: float, taps: Sequence[str]
) -> FeatureNet:
    """FeatureNet over diffusers ``vae`` and ``unet`` (modules shared, not copied)."""
    encoder = LatentEncoder(vae)
    return FeatureNet(encoder, TruncatedUNet(unet, taps, encoder.stride), context, timestep)
