"""Models with fixed-seed random weights, built offline.

`tiny`: an SD 2.1-shaped VAE + U-Net at small widths; exercises the plumbing (shapes, taps,
truncation, export, matching code) in milliseconds. `random:sd21` / `random:sd15`: the full SD
architectures with random weights, for benchmarks (the cost is that of the real model). Random
weights give features that do not match real photos.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from .configs import CONTEXT_TOKENS, SD_VAE, UNET_CONFIGS, scaled_unet_config, scaled_vae_config

TINY_SEED = 0
TINY_WIDTH = 32  # U-Net widths (32, 64, 64, 64); VAE widths (16, 32, 32, 32)
TINY_CONTEXT_DIM = 32


def build_tiny(seed: int = TINY_SEED) -> tuple[UNet2DConditionModel, AutoencoderKL, torch.Tensor]:
    """(unet, vae, context (1, 77, 32)) with weights drawn from ``seed``; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**scaled_unet_config("sd21", TINY_WIDTH, TINY_CONTEXT_DIM))
        vae = AutoencoderKL(**scaled_vae_config(TINY_WIDTH // 2))
        context = torch.randn(1, CONTEXT_TOKENS, TINY_CONTEXT_DIM)
    return unet.eval(), vae.eval(), context


def build_random_sd(arch: str, seed: int = TINY_SEED):
    """(unet, vae, context (1, 77, D)) of the full SD 1.5 / 2.1 architecture, random weights."""
    config = UNET_CONFIGS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(**SD_VAE)
        context = torch.randn(1, CONTEXT_TOKENS, config["cross_attention_dim"])
    return unet.eval(), vae.eval(), context
