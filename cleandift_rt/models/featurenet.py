"""FeatureNet: uint8 images → CleanDIFT taps, as one module for every backend.

    uint8 (B, H, W, 3) NHWC → [-1, 1] → VAE encoder posterior mean × scaling factor
    → U-Net at a fixed timestep with a baked prompt embedding, stopped after the deepest tap
    → tuple of taps (B, C, H / stride, W / stride)
    [→ fusion (models/fusion.py): the taps fused on the finest grid and/or with a DINOv2 branch
       run on the same uint8 images → one output ``fused`` (B, Σ C, H / stride, W / stride)]

The same module runs in PyTorch and is what ONNX / AOTInductor export and TensorRT build from,
so every backend computes one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError
from ..fusion import FUSED, Fusion
from .fusion_layers import DinoBranch, TapFusion, fuse_with_dino
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


@dataclass(frozen=True)
class OutputSpec:
    """One output of a FeatureNet: its name (a tap, or ``fused``), channels C and stride
    (input pixels per cell)."""

    name: str
    channels: int
    stride: int


class FeatureNet(nn.Module):
    """uint8 images (B, H, W, 3) → tuple of outputs, in ``self.taps`` order: the SD taps, or
    with fusion the one map ``fused``.

    Args:
        encoder: the VAE encoder half.
        unet: the truncated U-Net (its taps are this net's outputs, or its fusion's inputs).
        context: prompt embedding (1, L, D), baked in as a buffer.
        timestep: the fixed U-Net timestep (261 for CleanDIFT's released students).
        fusion: how the taps are fused (``cleandift_rt.fusion.Fusion``), or None.
        dino: the DINOv2 branch of SD + DINOv2 fusion (needs ``fusion``), or None.
    """

    def __init__(
        self,
        encoder: LatentEncoder,
        unet: TruncatedUNet,
        context: torch.Tensor,
        timestep: float,
        fusion: Fusion | None = None,
        dino: DinoBranch | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.unet = unet
        self.register_buffer("context", context.detach().clone(), persistent=True)
        # shape (1,): expands to the batch in every exporter (a 0-dim constant trips inductor)
        self.register_buffer("timestep", torch.tensor([float(timestep)]), persistent=True)
        if dino is not None and fusion is None:
            raise ModelError("a DINOv2 branch needs a Fusion (its alpha)")
        self.fusion = fusion
        self.tap_fusion = None
        if fusion is not None and fusion.fuses_taps:
            if len(fusion.weights) != len(unet.taps):
                raise ModelError(
                    f"{len(fusion.weights)} tap weight(s) for the {len(unet.taps)} distinct "
                    f"tap(s) {', '.join(unet.taps)}: give one per tap"
                )
            self.tap_fusion = TapFusion([s.stride for s in unet.specs], fusion.weights)
        self.dino = dino

    @property
    def sd_taps(self) -> tuple[str, ...]:
        """The U-Net taps computed (the outputs, or the fusion's inputs)."""
        return self.unet.taps

    @property
    def outputs(self) -> list[OutputSpec]:
        """Name, channels and stride of each output, in ``self.taps`` order."""
        specs = self.unet.specs
        if self.fusion is None:
            return [OutputSpec(s.name, s.channels, s.stride) for s in specs]
        channels = sum(s.channels for s in specs) if self.tap_fusion else specs[0].channels
        if self.dino is not None:
            channels += self.dino.channels
        return [OutputSpec(FUSED, channels, min(s.stride for s in specs))]

    @property
    def taps(self) -> tuple[str, ...]:
        """Output names: the SD taps, or ``("fused",)`` with fusion."""
        return tuple(o.name for o in self.outputs)

    @property
    def strides(self) -> dict[str, int]:
        """Image pixels per feature cell of each output."""
        return {o.name: o.stride for o in self.outputs}

    @property
    def channels(self) -> dict[str, int]:
        return {o.name: o.channels for o in self.outputs}

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """Shape (B, C, H/stride, W/stride) of each output for an input of (B, H, W, 3)."""
        return {
            o.name: (batch, o.channels, height // o.stride, width // o.stride) for o in self.outputs
        }

    def fusion_info(self, height: int | None = None, width: int | None = None) -> dict:
        """What the ``fused`` output is made of, for sidecars and file headers ({} without
        fusion): its channels and stride, the SD taps (name, channels, stride, weight), and the
        DINOv2 branch (name, channels, patch, register tokens dropped, alpha, and its input
        size for an (height, width) image when given)."""
        if self.fusion is None:
            return {}
        out = self.outputs[0]
        weights = self.fusion.weights if self.tap_fusion else (1.0,)
        info = {
            "output": out.name, "channels": out.channels, "stride": out.stride,
            "mode": "concat",
            "taps": [{"name": s.name, "channels": s.channels, "stride": s.stride, "weight": w}
                     for s, w in zip(self.unet.specs, weights)],
        }  # fmt: skip
        if self.dino is not None:
            info["alpha"] = self.fusion.alpha
            dino = self.dino
            info["dino"] = {"model": dino.name, "channels": dino.channels, "patch": dino.patch,
                            "prefix_tokens": dino.prefix}  # fmt: skip
            if height is not None and width is not None:
                info["dino"]["input_size"] = list(self.dino.input_size(height, width))
        return info

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.context.dtype
        latent = self.encoder(images_to_unit_range(images, dtype))
        taps = self.unet(latent, self.timestep, self.context)
        if self.fusion is None:
            return taps
        sd = self.tap_fusion(taps) if self.tap_fusion is not None else taps[0]
        if self.dino is None:
            return (sd,)
        return (fuse_with_dino(sd, self.dino(images), self.fusion.alpha),)


def build_feature_net(
    vae: nn.Module,
    unet: nn.Module,
    context: torch.Tensor,
    timestep: float,
    taps: Sequence[str],
    fusion: Fusion | None = None,
    dino: DinoBranch | None = None,
) -> FeatureNet:
    """FeatureNet over diffusers ``vae`` and ``unet`` (modules shared, not copied), with the
    optional ``fusion`` and DINOv2 branch ``dino``."""
    encoder = LatentEncoder(vae)
    truncated = TruncatedUNet(unet, taps, encoder.stride)
    return FeatureNet(encoder, truncated, context, timestep, fusion, dino)
