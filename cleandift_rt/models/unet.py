"""The U-Net forward of diffusers' ``UNet2DConditionModel``, stopped after the deepest tap.

``TruncatedUNet`` reuses the diffusers sub-modules (conv_in, time embedding, down-blocks,
mid-block, up-blocks) and reproduces ``UNet2DConditionModel.forward`` step for step for SD-style
models (no class / addition embeddings, no adapters), recording the requested taps and returning
as soon as the deepest one is computed: nothing after it runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .taps import TapLayout

_UNSUPPORTED = ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type")


class TruncatedUNet(nn.Module):
    """U-Net from a latent to the requested taps.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (its modules are shared, not copied).
        taps: tap names (see ``TapLayout``).
        vae_stride: image pixels per latent cell (8 for SD), used for tap strides.

    Forward: latent (B, 4, h, w), timestep () or (B,) float, context (1 or B, L, D)
    → tuple of taps (B, C_tap, h_tap, w_tap) in ``self.taps`` order.
    """

    def __init__(self, unet: nn.Module, taps: str | Sequence[str], vae_stride: int = 8):
        super().__init__()
        cfg = unet.config
        for key in _UNSUPPORTED:
            if cfg.get(key) is not None:
                raise ModelError(f"unsupported U-Net: {key}={cfg[key]!r} (SD 1.x/2.x U-Nets only)")
        self.layout = TapLayout(cfg, vae_stride)
        self.taps = self.layout.resolve(taps)
        self.deepest = self.layout.deepest(self.taps)
        self.num_upsamplers = sum(1 for b in unet.up_blocks if b.upsamplers is not None)

        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.time_embed_act = unet.time_embed_act
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        # Only the up-blocks up to the deepest tap are part of this module (and of exports).
        self.up_blocks = nn.ModuleList(unet.up_blocks[: self.deepest.block + 1])
        self._tap_index = {self.layout.specs[t].order: t for t in self.taps}

    @property
    def specs(self):
        """TapSpec of each requested tap, in ``self.taps`` order."""
        return [self.layout.specs[t] for t in self.taps]

    def time_embed(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Timestep () or (B,) → embedding (B, 4·C0), as ``UNet2DConditionModel.get_time_embed``."""
        t = (timestep[None] if timestep.dim() == 0 else timestep).expand(batch)  # → (B,)
        emb = self.time_proj(t).to(dtype=dtype)  # Timesteps returns fp32
        emb = self.time_embedding(emb)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def forward(
        self, latent: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        batch = latent.shape[0]
        context = context.expand(batch, -1, -1) if context.shape[0] == 1 else context
        emb = self.time_embed(timestep.to(latent.device), batch, latent.dtype)
        found: dict[str, torch.Tensor] = {}
        stop = self.deepest.order

        h = self.conv_in(latent)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips += res

        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=context)
        else:
            h = self.mid_block(h, emb)
        if (-1, 0) in self._tap_index:
            found[self._tap_index[(-1, 0)]] = h
        if stop == (-1, 0):
            return tuple(found[t] for t in self.taps)

        # diffusers passes explicit upsample sizes when the latent is not divisible by 2^n_up
        factor = 2**self.num_upsamplers
        forward_size = any(d % factor != 0 for d in latent.shape[-2:])
        for b, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if forward_size and skips else None
            attentions = getattr(block, "attentions", None)
            for i, resnet in enumerate(block.resnets):
                h = torch.cat([h, res[-1 - i]], dim=1)
                h = resnet(h, emb)
                if attentions is not None:
                    h = attentions[i](h, encoder_hidden_states=context, return_dict=False)[0]
                if i == n - 1 and block.upsamplers is not None:
                    for upsampler in block.upsamplers:
                        h = upsampler(h, upsample_size)
                if (b, i) in self._tap_index:
                    found[self._tap_index[(b, i)]] = h
                if (b, i) == stop:
                    return tuple(found[t] for t in self.taps)
        raise AssertionError("deepest tap was not reached")  # unreachable for a valid layout
