"""PCA of feature maps (``--fuse pca:D``): exact, outside the graph.

Fitted on every cell of the maps given (the pair being matched, or every image of a feature
store), in float64: per-batch means and centred scatter matrices merged exactly (Chan et al.'s
pairwise update), then the eigenvectors of the covariance, largest first. Each component's
sign is fixed so that its largest-magnitude entry is positive, so a fit is reproducible.

Projection ``(f − mean) · Wᵀ`` is affine with weights summing to one in every bilinear sample,
so projecting the low-resolution map equals projecting the upsampled one: the exact matcher runs
on the projected maps unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import MatchError


@dataclass
class PCA:
    """mean (C,) float64; components (D, C) float64, orthonormal rows, by decreasing variance;
    variances (D,) float64 (of the fitted cells along each component)."""

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """(..., C, h, w) → (..., D, h, w) in the input's dtype and device."""
        c = maps.shape[-3]
        if c != self.mean.numel():
            raise MatchError(f"PCA fitted on {self.mean.numel()} channels, map has {c}")
        w = self.components.to(maps.device, torch.float64)
        mean = self.mean.to(maps.device, torch.float64)
        x = maps.to(torch.float64).movedim(-3, -1) - mean  # (..., h, w, C)
        return (x @ w.T).movedim(-1, -3).to(maps.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to store (safetensors): ``pca_mean``, ``pca_components``, ``pca_variances``."""
        return {"pca_mean": self.mean, "pca_components": self.components,
                "pca_variances": self.variances}  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PCA:
        return cls(state["pca_mean"], state["pca_components"], state["pca_variances"])


class PCAFitter:
    """Accumulates cells of feature maps (any number of ``update`` calls, any batch split)
    and fits the same PCA as one SVD of all of them, centred."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None  # (C,) float64
        self.scatter: torch.Tensor | None = None  # (C, C) float64: Σ (x − mean)(x − mean)ᵀ

    def update(self, maps: torch.Tensor) -> PCAFitter:
        """Add every cell of ``maps`` (C, h, w) or (B, C, h, w)."""
        x = maps.detach().to(torch.float64)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4:
            raise MatchError(f"PCA takes maps (C, h, w) or (B, C, h, w), got {tuple(maps.shape)}")
        cells = x.movedim(1, -1).reshape(-1, x.shape[1]).cpu()
        n = cells.shape[0]
        if n == 0:
            return self
        mean = cells.mean(0)
        centred = cells - mean
        scatter = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.scatter = n, mean, scatter
            return self
        if mean.numel() != self.mean.numel():
            raise MatchError(f"PCA over {self.mean.numel()} channels, map has {mean.numel()}")
        total = self.count + n
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + torch.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total
        return self

    def fit(self, dim: int) -> PCA:
        """The top ``dim`` components; MatchError if ``dim`` exceeds the channels or the cells."""
        if self.mean is None:
            raise MatchError("no feature cells to fit a PCA on")
        channels = self.mean.numel()
        if not 1 <= dim <= min(channels, self.count):
            raise MatchError(
                f"pca:{dim} needs 1 <= D <= min(channels {channels}, cells {self.count})"
            )
        cov = self.scatter / max(self.count - 1, 1)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim].T  # (D,), (D, C)
        peak = vectors.abs().argmax(dim=1, keepdim=True)
        vectors = vectors * torch.sign(vectors.gather(1, peak))
        return PCA(self.mean.clone(), vectors.contiguous(), values.clamp_min(0))


def fit_pca(maps: Iterable[torch.Tensor], dim: int) -> PCA:
    """PCA with ``dim`` components of every cell of ``maps`` (each (C, h, w) or (B, C, h, w))."""
    fitter = PCAFitter()
    for m in maps:
        fitter.update(m)
    return fitter.fit(dim)


def pca_pair(source: torch.Tensor, target: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    """Both maps (C, h, w) projected on the ``dim``-component PCA of their cells together."""
    pca = fit_pca([source, target], dim)
    return pca.project(source), pca.project(target)
