"""The distillation objective: frozen teacher, trainable student with heads, cosine loss.

Per step, for B clean images and K timestep bins:

    latent x0 = VAE-encoder mean × 0.18215                    (B, 4, h, w)   frozen, no grad
    t_k ~ U(bin k of [1, 999]) per image and bin              (B·K,)         stratified
    teacher taps at x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε      {tap: (B·K, C, h_tap, w_tap)}
    student taps at x0 and the learned timestep                {tap: (B, C, h_tap, w_tap)}
        → repeated per bin → head(feature, t_k)                {tap: (B·K, C, h_tap, w_tap)}
    loss = Σ_taps −mean(cos over channels)                    (scalar)

Both sides use ``cleandift_rt``'s ``TruncatedUNet``, so the distilled taps are exactly the taps
the runtime reads, and nothing after the deepest tap runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cleandift_rt.models.featurenet import LatentEncoder, images_to_unit_range
from cleandift_rt.models.noise import NUM_TRAIN_TIMESTEPS, add_noise, sd_alphas_cumprod
from cleandift_rt.models.unet import TruncatedUNet

from .heads import FeatureHeads

T_MIN, T_MAX = 1, NUM_TRAIN_TIMESTEPS - 1  # teacher timesteps are drawn from [1, 999]


class Student(nn.Module):
    """Trainable student: full diffusers U-Net copy, projection heads, learned timestep (scalar).

    Forward: clean latent (B, 4, h, w), context (1 or B, L, D), teacher timesteps (B·K,)
    → {tap: head(student tap repeated K times per image, t)} each (B·K, C, h_tap, w_tap).
    """

    def __init__(
        self, unet: nn.Module, taps: Sequence[str], init_timestep: float, vae_stride: int = 8
    ):
        super().__init__()
        self.unet = unet
        truncated = TruncatedUNet(unet, taps, vae_stride)
        self.taps = truncated.taps
        self.channels = {s.name: s.channels for s in truncated.specs}
        self.heads = FeatureHeads(self.channels)
        self.timestep = nn.Parameter(torch.tensor(float(init_timestep)))
        # shares the U-Net's modules; kept out of the registered children (no duplicate keys)
        self.__dict__["truncated"] = truncated

    def compile_unet(self, **kwargs) -> None:
        """torch.compile the U-Net forward (the heads are small and stay eager)."""
        self.__dict__["truncated"] = torch.compile(self.__dict__["truncated"], **kwargs)

    def features(self, latent: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw student taps at the learned timestep {tap: (B, C, h_tap, w_tap)}."""
        return dict(zip(self.taps, self.__dict__["truncated"](latent, self.timestep, context)))

    def forward(
        self, latent: torch.Tensor, context: torch.Tensor, t: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        bins = t.shape[0] // latent.shape[0]
        feats = {
            k: v.repeat_interleave(bins, dim=0) for k, v in self.features(latent, context).items()
        }
        return self.heads(feats, t)


class Teacher(nn.Module):
    """Frozen VAE encoder + frozen truncated teacher U-Net (no parameter requires grad)."""

    def __init__(self, vae: nn.Module, unet: nn.Module, taps: Sequence[str]):
        super().__init__()
        self.encoder = LatentEncoder(vae)
        self.unet = TruncatedUNet(unet, taps, self.encoder.stride)
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod(), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def compile_unet(self, **kwargs) -> None:
        self.encoder = torch.compile(self.encoder, **kwargs)
        self.unet = torch.compile(self.unet, **kwargs)

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, R, R, 3) → clean latent (B, 4, R/8, R/8), posterior mean × scaling factor."""
        return self.encoder(images_to_unit_range(images, torch.float32))

    @torch.no_grad()
    def features(
        self, latent: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Teacher taps at x_t for latents (B·K, 4, h, w), noise like it, t (B·K,) int."""
        noisy = add_noise(latent, noise, t, self.alphas_cumprod)
        return dict(zip(self.unet.taps, self.unet(noisy, t.float(), context)))


def bin_edges(bins: int, t_max: int = T_MAX) -> torch.Tensor:
    """(bins + 1,) float64 edges of ``bins`` equal-width teacher timestep bins over [1, t_max]."""
    return torch.linspace(T_MIN, t_max + 1, bins + 1, dtype=torch.float64)


def stratified_timesteps(
    batch: int, bins: int, generator: torch.Generator, t_max: int = T_MAX
) -> torch.Tensor:
    """(batch·bins,) int64 teacher timesteps, image-major: one uniform draw in each of ``bins``
    equal-width bins over [1, t_max] per image (the recipe: t_max = 999)."""
    edges = bin_edges(bins, t_max)
    u = torch.rand(batch, bins, generator=generator, dtype=torch.float64)
    t = edges[:-1] + u * (edges[1:] - edges[:-1])
    return t.floor().clamp(T_MIN, t_max).long().reshape(-1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for the noise and timesteps of global ``step`` (same on every rank)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def cosine_loss(
    student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ_taps −mean cos, {tap: mean cos}) with cosine over channels, computed in fp32."""
    cos = {
        tap: F.cosine_similarity(student[tap].float(), teacher[tap].float(), dim=1).mean()
        for tap in teacher
    }
    return -torch.stack(list(cos.values())).sum(), cos


def distillation_step(
    teacher: Teacher,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    context: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    autocast,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on uint8 images (B, R, R, 3), context (1 or B, L, D), teacher
    timesteps t (B·K,) int and noise (B·K, 4, R/8, R/8). ``student``: a ``Student`` or its DDP
    wrapper; ``autocast``: a context manager (bf16 autocast or nullcontext).
    Returns the loss (scalar, graph-free) and the mean cosine per tap."""
    bins = t.shape[0] // images.shape[0]
    with autocast:
        latent = teacher.latents(images)
        teacher_context = context if context.shape[0] == 1 else context.repeat_interleave(bins, 0)
        target = teacher.features(latent.repeat_interleave(bins, 0), noise, t, teacher_context)
        pred = student(latent, context, t)
    loss, cos = cosine_loss(pred, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), {tap: c.detach() for tap, c in cos.items()}
