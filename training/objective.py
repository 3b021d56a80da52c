"""The distillation objective: frozen teacher, trainable student with heads, cosine loss.

Per step, for B clean images and K timestep bins:

    latent x0 = (μ + σ·η) × 0.18215, one posterior sample      (B, 4, h, w)   frozen, no grad
                per image shared by teacher and student (``--latent mean``: x0 = μ × 0.18215)
    t_k = ⌊1 + (k + u)·(t_max − 1)/K⌋, u ~ U[0, 1)             (B·K,)         stratified
    teacher taps at x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε      {tap: (B·K, C, h_tap, w_tap)}
    student taps at x0 and the learned timestep                {tap: (B, C, h_tap, w_tap)}
        → repeated per bin → head(feature, t_k)                {tap: (B·K, C, h_tap, w_tap)}
    loss = Σ_taps −mean(cos over channels)                    (scalar)

This is CompVis/cleandift's ``StableFeatureAligner.forward`` (t_max = 999: bins [1, 333],
[333, 666], [666, 998]; 999 is never drawn). Inference keeps the posterior mean (FeatureNet):
one deterministic pass, the reference's evaluation choice.

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

T_MIN, T_MAX = 1, NUM_TRAIN_TIMESTEPS - 1  # teacher timesteps are drawn from [1, 999)
LATENT_MODES = ("sample", "mean")  # training latents: a VAE posterior sample (the recipe) or mean


def round_to_bf16_(module: nn.Module) -> nn.Module:
    """Round every floating parameter and buffer of ``module`` to bfloat16 and back, in place
    (dtype unchanged): the reference loads its pipeline in bf16 and copies the U-Net into fp32
    teacher and student, so both start from bf16-representable weights."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.bfloat16))
    return module


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
    def latents(self, images: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, R, R, 3) → clean latent (B, 4, R/8, R/8) × scaling factor: the posterior
        sample μ + σ·eps for standard-normal ``eps`` (B, 4, R/8, R/8), or μ when ``eps`` is None.
        """
        x = images_to_unit_range(images, torch.float32)
        if eps is None:
            return self.encoder(x)
        mean, logvar = self.encoder.moments(x)
        sample = mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)
        return sample * self.encoder.scaling_factor

    @torch.no_grad()
    def features(
        self, latent: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Teacher taps at x_t for latents (B·K, 4, h, w), noise like it, t (B·K,) int."""
        noisy = add_noise(latent, noise, t, self.alphas_cumprod)
        return dict(zip(self.unet.taps, self.unet(noisy, t.float(), context)))


def bin_edges(bins: int, t_max: int = T_MAX) -> torch.Tensor:
    """(bins + 1,) float64 edges of ``bins`` equal-width teacher timestep bins over [1, t_max)."""
    return torch.linspace(T_MIN, t_max, bins + 1, dtype=torch.float64)


def stratified_timesteps(
    batch: int, bins: int, generator: torch.Generator, t_max: int = T_MAX
) -> torch.Tensor:
    """(batch·bins,) int64 teacher timesteps, image-major: per image and bin k < ``bins``,
    ⌊1 + (k + u)·(t_max − 1)/bins⌋ with u ~ U[0, 1) (the reference's rule). For 3 bins and
    t_max 999: [1, 333], [333, 666], [666, 998]; t_max itself is never drawn."""
    edges = bin_edges(bins, t_max)
    u = torch.rand(batch, bins, generator=generator, dtype=torch.float64)
    t = edges[:-1] + u * (edges[1:] - edges[:-1])
    return t.floor().clamp(T_MIN, max(T_MIN, t_max - 1)).long().reshape(-1)


def constant_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr × min(1, s / warmup) at optimiser step s = 0, 1, … (lr 0 at the first step; constant
    lr when ``warmup`` is 0): transformers' ``constant_with_warmup``, the reference's schedule."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / warmup if s < warmup else 1.0)


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
    latent_eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step on uint8 images (B, R, R, 3), context (1 or B, L, D), teacher
    timesteps t (B·K,) int and noise (B·K, 4, R/8, R/8). ``student``: a ``Student`` or its DDP
    wrapper; ``autocast``: a context manager (bf16 autocast or nullcontext); ``latent_eps``
    (B, 4, R/8, R/8): the posterior sample's standard-normal draw (None: posterior mean), one
    per image, shared by its K teacher copies and the student.
    Returns the loss (scalar, graph-free) and the mean cosine per tap."""
    bins = t.shape[0] // images.shape[0]
    with autocast:
        latent = teacher.latents(images, latent_eps)
        teacher_context = context if context.shape[0] == 1 else context.repeat_interleave(bins, 0)
        target = teacher.features(latent.repeat_interleave(bins, 0), noise, t, teacher_context)
        pred = student(latent, context, t)
    loss, cos = cosine_loss(pred, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), {tap: c.detach() for tap, c in cos.items()}
