"""CleanDIFT's projection heads and their timestep conditioning.

At training time every distilled tap gets a light head that maps the student's clean feature to
the teacher's noisy feature at teacher timestep t. The heads are dropped at inference.

    t (B,) in [1, 999] → t / 999 → Fourier features (256) → Linear 256→256 (no bias)
        → mapping network (RMSNorm, 2 SwiGLU feed-forward blocks d_ff 768, RMSNorm) → cond (B, 256)
    head(x, cond): 3 × [x + down(SwiGLU(up(AdaRMSNorm(x, cond))))], over channels of x (B, C, h, w)

SwiGLU(z) = a · SiLU(g) with (a, g) the first and second halves of z (as CompVis/cleandift's
``layers.py``: the mapping network and the heads gate alike). Every modulation and
down-projection is zero-initialised, so each head starts as the identity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

COND_WIDTH = 256
MAPPING_FF = 768
MAPPING_LAYERS = 2
HEAD_BLOCKS = 3
HEAD_EXPANSION = 1
MAX_TIMESTEP = 999.0


def rms_norm(x: torch.Tensor, scale: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) over the last dim (in fp32), times ``scale`` (broadcast) when given."""
    x32 = x.float()
    out = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    if scale is not None:
        out = out * scale.float()
    return out.to(x.dtype)


def swiglu(z: torch.Tensor) -> torch.Tensor:
    """(..., 2n) → (..., n): first half times SiLU of the second half."""
    a, gate = z.chunk(2, dim=-1)
    return a * F.silu(gate)


def zero_linear(n_in: int, n_out: int, bias: bool = False) -> nn.Linear:
    """A Linear layer with zero weights (and bias): its block starts as a no-op."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.zeros_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learnable scale (init 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale)


class FourierFeatures(nn.Module):
    """Scalar (B, 1) → (B, width) random Fourier features [cos, sin](2π x Wᵀ); W fixed (buffer)."""

    def __init__(self, width: int = COND_WIDTH, std: float = 1.0):
        super().__init__()
        self.register_buffer("weight", torch.randn(width // 2, 1) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x.float() @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class MappingFeedForward(nn.Module):
    """x + down(SwiGLU(up(RMSNorm(x)))) over (B, width): width → 2·d_ff → d_ff → width, no
    biases; down zero-initialised."""

    def __init__(self, width: int = COND_WIDTH, d_ff: int = MAPPING_FF):
        super().__init__()
        self.norm = RMSNorm(width)
        self.up = nn.Linear(width, 2 * d_ff, bias=False)
        self.down = zero_linear(d_ff, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(swiglu(self.up(self.norm(x))))


class TimestepConditioner(nn.Module):
    """Teacher timestep t (B,) (float, 1…999) → head conditioning (B, 256)."""

    def __init__(self, width: int = COND_WIDTH, d_ff: int = MAPPING_FF):
        super().__init__()
        self.fourier = FourierFeatures(width)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm_in = RMSNorm(width)
        self.blocks = nn.ModuleList(MappingFeedForward(width, d_ff) for _ in range(MAPPING_LAYERS))
        self.norm_out = RMSNorm(width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.fourier(t.float().view(-1, 1) / MAX_TIMESTEP))
        x = self.norm_in(x)
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x)


class HeadBlock(nn.Module):
    """x + down(SwiGLU(up(AdaRMSNorm(x, cond)))) over channels-last x (B, h, w, C).

    AdaRMSNorm scale = 1 + Linear(cond) (zero-init); up: C → 2·C·expansion (no bias);
    down: C·expansion → C, zero-init (no bias).
    """

    def __init__(self, channels: int, cond_width: int = COND_WIDTH, expansion: int = 1):
        super().__init__()
        hidden = channels * expansion
        self.modulation = zero_linear(cond_width, channels)
        self.up = nn.Linear(channels, 2 * hidden, bias=False)
        self.down = zero_linear(hidden, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.modulation(cond)[:, None, None, :]  # (B, 1, 1, C)
        return x + self.down(swiglu(self.up(rms_norm(x, scale))))


class ProjectionHead(nn.Module):
    """Student feature (B, C, h, w) + cond (B, 256) → projected feature (B, C, h, w)."""

    def __init__(self, channels: int, cond_width: int = COND_WIDTH, blocks: int = HEAD_BLOCKS):
        super().__init__()
        self.blocks = nn.ModuleList(
            HeadBlock(channels, cond_width, HEAD_EXPANSION) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x.permute(0, 2, 3, 1)  # channels last: the blocks act per pixel
        for block in self.blocks:
            h = block(h, cond)
        return h.permute(0, 3, 1, 2)


class FeatureHeads(nn.Module):
    """One ProjectionHead per tap plus the shared timestep conditioner.

    Args:
        channels: tap name → channels C of that tap.
    Forward: features {tap: (B, C, h, w)}, t (B,) teacher timesteps → {tap: (B, C, h, w)}.
    """

    def __init__(self, channels: Mapping[str, int], cond_width: int = COND_WIDTH):
        super().__init__()
        self.conditioner = TimestepConditioner(cond_width)
        self.heads = nn.ModuleDict(
            {tap: ProjectionHead(c, cond_width) for tap, c in channels.items()}
        )

    def forward(
        self, features: Mapping[str, torch.Tensor], t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        cond = self.conditioner(t)
        return {tap: self.heads[tap](x, cond) for tap, x in features.items()}
