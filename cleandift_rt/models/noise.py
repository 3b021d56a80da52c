"""Stable Diffusion's DDPM forward process (training schedule), shared by DIFT and training."""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012  # "scaled_linear" schedule of SD 1.x / 2.x


def sd_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ᾱ_t for t = 0 … num_steps-1, float32 (num_steps,), computed as diffusers' DDPMScheduler."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε for latents (B, C, h, w) and integer t (B,)."""
    a = alphas_cumprod.to(x0.device)[t.to(x0.device).long()].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise
