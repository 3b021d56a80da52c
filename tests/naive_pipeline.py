"""The literal DIFT matching pipeline, the ground truth of the matcher tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_scores(queries: torch.Tensor, target: torch.Tensor, out_size: tuple[int, int]):
    """Upsample the whole (C, h, w) map to out_size, normalise, matmul: (K, H*W) float32."""
    c = target.shape[0]
    up = F.interpolate(target[None].float(), out_size, mode="bilinear", align_corners=False)[0]
    up = F.normalize(up.reshape(c, -1), dim=0)
    return F.normalize(queries.float(), dim=1) @ up
