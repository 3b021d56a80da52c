"""DIFT baseline: taps of a noised latent, averaged over an ensemble of noises.

For each image: N copies, each with its own VAE posterior sample and its own Gaussian noise,
noised to timestep t with SD's DDPM schedule, run through the U-Net (stopped after the deepest
tap) with the prompt embedding, and the taps averaged over the N copies. DIFT's defaults:
t = 261, N = 8, SD 2.1 at 768², ``up_ft_index`` 1 (= ``us6``). This is what CleanDIFT replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from ..protocol import DIFT_ENSEMBLE, DIFT_TIMESTEP
from .featurenet import FeatureNet, LatentEncoder, images_to_unit_range
from .noise import add_noise, sd_alphas_cumprod
from .unet import TruncatedUNet


class DIFTExtractor(nn.Module):
    """uint8 images (B, H, W, 3) → tuple of ensemble-averaged taps (B, C, h, w).

    Args:
        encoder, unet, context: as for ``FeatureNet`` (a base SD U-Net, not a student).
        t: noise timestep in [0, 999].
        ensemble: N noisy copies per image.
        chunk: copies run per U-Net call (memory bound); default all B·N at once, as DIFT.
        encode_each_copy: run the VAE encoder on every copy, as DIFT's reference code does
            (N× the encoder cost, same result); default encodes each image once.

    Randomness comes only from the ``generator`` (or ``seed``) given to ``forward``: noise is
    drawn on the CPU, so a seed gives the same features on every device.
    """

    def __init__(
        self,
        encoder: LatentEncoder,
        unet: TruncatedUNet,
        context: torch.Tensor,
        t: int = DIFT_TIMESTEP,
        ensemble: int = DIFT_ENSEMBLE,
        chunk: int | None = None,
        encode_each_copy: bool = False,
    ):
        super().__init__()
        if not 0 <= int(t) < 1000 or ensemble < 1:
            raise ValueError(f"need 0 <= t < 1000 and ensemble >= 1, got t={t}, N={ensemble}")
        self.encoder = encoder
        self.unet = unet
        self.register_buffer("context", context.detach().clone())
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.t = int(t)
        self.ensemble = int(ensemble)
        self.chunk = chunk
        self.encode_each_copy = encode_each_copy

    @classmethod
    def from_feature_net(cls, net: FeatureNet, **kwargs) -> DIFTExtractor:
        """A DIFT extractor sharing a FeatureNet's encoder, U-Net and prompt embedding."""
        return cls(net.encoder, net.unet, net.context, **kwargs)

    @property
    def taps(self) -> tuple[str, ...]:
        return self.unet.taps

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, seed: int = 0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        dtype = self.context.dtype
        x = images_to_unit_range(images, dtype)
        b, n = x.shape[0], self.ensemble
        if self.encode_each_copy:
            mean, logvar = self.encoder.moments(x.repeat_interleave(n, dim=0))
            mean, logvar = mean[::n], logvar[::n]  # identical per copy
        else:
            mean, logvar = self.encoder.moments(x)  # copies differ only in their noise
        shape = (b, n, *mean.shape[1:])
        eps_vae = torch.randn(shape, generator=gen, dtype=torch.float32).to(mean.device, dtype)
        eps = torch.randn(shape, generator=gen, dtype=torch.float32).to(mean.device, dtype)
        std = torch.exp(0.5 * logvar)
        latents = (mean[:, None] + std[:, None] * eps_vae) * self.encoder.scaling_factor
        t = torch.full((b * n,), self.t, dtype=torch.long)
        noisy = add_noise(latents.flatten(0, 1), eps.flatten(0, 1), t, self.alphas_cumprod)
        timestep = torch.tensor(float(self.t), device=noisy.device)

        chunk = self.chunk or b * n
        sums: list[torch.Tensor] | None = None
        for start in range(0, b * n, chunk):
            part = self.unet(noisy[start : start + chunk], timestep, self.context)
            # accumulate per image: reshape chunk rows back to (image, copy) pairs
            rows = torch.arange(start, min(start + chunk, b * n), device=noisy.device) // n
            if sums is None:
                sums = [
                    torch.zeros((b, *f.shape[1:]), dtype=torch.float32, device=f.device)
                    for f in part
                ]
            for acc, f in zip(sums, part):
                acc.index_add_(0, rows, f.float())
        return tuple((acc / n).to(dtype) for acc in sums)
