"""Search-radius matching: the exact upsampled cosine argmax restricted to a disk per query.

Tracking knows roughly where each point is (its last position), so a match far away is a wrong
match. :func:`cosine_argmax_window` evaluates the same score as
:func:`~cleandift_rt.matching.cosine_argmax` (cosine between the query and the bilinearly
upsampled target map, computed from low-resolution dot products and the per-cell Gram entries)
but only at the pixels within ``radius`` of each query's centre, and returns the best of those.
Memory is ``O(K · h·w + K · P + H·W)`` with ``P ≈ π · radius²`` window pixels; queries are
processed in chunks so that ``K_chunk · P`` stays bounded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.frontend import NORM_EPS
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cell_gram, inverse_norms

# Window scores per chunk of queries (K_chunk * P floats): ~16 MB of float32.
_CHUNK_FLOATS = 4 * 1024 * 1024


def disk_offsets(radius: float) -> Tensor:
    """``(P, 2)`` int64 ``(dx, dy)`` with ``dx² + dy² <= radius²``, sorted by ``(dy, dx)`` so
    the first maximum in a window is the one with the lowest flat index ``y * W + x``."""
    if not math.isfinite(radius) or radius < 0:
        raise MatchError(f"search radius must be a finite number >= 0, got {radius!r}")
    r = int(math.floor(radius))
    d = torch.arange(-r, r + 1, dtype=torch.int64)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = (dx * dx + dy * dy) <= radius * radius
    return torch.stack([dx[keep], dy[keep]], dim=1)


@torch.no_grad()
def cosine_argmax_window(
    queries: Tensor,
    target: Tensor,
    grid: PixelGrid,
    centers: Tensor,
    radius: float,
) -> tuple[Tensor, Tensor]:
    """Best-matching pixel of each query within ``radius`` pixels of its centre.

    Args:
        queries: ``(K, C)`` floating descriptors (computed in float32).
        target: ``(C, h, w)`` floating feature map.
        grid: the output :class:`PixelGrid` of ``target`` (e.g. original frame pixels).
        centers: ``(K, 2)`` ``(x, y)`` pixel centres of the search disks (rounded to integers,
            clamped into the grid).
        radius: disk radius in output pixels (``>= 0``; 0 searches the centre pixel only).

    Returns:
        ``coords`` ``(K, 2)`` int64 ``(x, y)`` and ``scores`` ``(K,)`` float32 cosine similarity,
        on ``target.device``. Ties go to the lowest ``y * W + x``, as in the full argmax.

    Raises:
        MatchError: bad shapes, mismatched channels, negative or non-finite radius.
    """
    if queries.ndim != 2 or target.ndim != 3 or queries.shape[1] != target.shape[0]:
        raise MatchError(
            f"expected queries (K, C) and target (C, h, w), got {tuple(queries.shape)} and "
            f"{tuple(target.shape)}"
        )
    if centers.shape != (queries.shape[0], 2):
        raise MatchError(f"centers must be (K={queries.shape[0]}, 2), got {tuple(centers.shape)}")
    dev = target.device
    c, h, w = target.shape
    big_h, big_w = grid.size
    k = queries.shape[0]
    offsets = disk_offsets(float(radius)).to(dev)  # (P, 2)
    coords = torch.zeros((k, 2), dtype=torch.int64, device=dev)
    scores = torch.zeros((k,), dtype=torch.float32, device=dev)
    if k == 0:
        return coords, scores

    t = target.to(torch.float32)
    ri, rw = grid.axis_weights("y", h, device=dev)  # (H, 2) int64, (H, 2) float32
    ci, cw = grid.axis_weights("x", w, device=dev)  # (W, 2)
    inv_norm = inverse_norms(cell_gram(t), (ri, rw), (ci, cw))  # (H, W)
    qn = F.normalize(queries.to(device=dev, dtype=torch.float32), dim=1, eps=NORM_EPS)
    dots = qn @ t.reshape(c, h * w)  # (K, h·w)
    center = centers.to(dev).round().to(torch.int64)
    center[:, 0].clamp_(0, big_w - 1)
    center[:, 1].clamp_(0, big_h - 1)

    step = max(1, _CHUNK_FLOATS // offsets.shape[0])
    for k0 in range(0, k, step):
        sl = slice(k0, k0 + step)
        px = center[sl, 0, None] + offsets[None, :, 0]  # (k, P)
        py = center[sl, 1, None] + offsets[None, :, 1]
        inside = (px >= 0) & (px < big_w) & (py >= 0) & (py < big_h)
        px.clamp_(0, big_w - 1)
        py.clamp_(0, big_h - 1)
        d = dots[sl]
        y0, y1, wy = ri[py, 0] * w, ri[py, 1] * w, rw[py, 1]
        x0, x1, wx = ci[px, 0], ci[px, 1], cw[px, 1]
        # Rows first, then columns: the same interpolation order as the streamed full argmax.
        left = torch.lerp(d.gather(1, y0 + x0), d.gather(1, y1 + x0), wy)
        right = torch.lerp(d.gather(1, y0 + x1), d.gather(1, y1 + x1), wy)
        s = torch.lerp(left, right, wx) * inv_norm[py, px]
        s.masked_fill_(~inside, float("-inf"))
        best, j = s.max(dim=1)
        coords[sl, 0] = px.gather(1, j[:, None])[:, 0]
        coords[sl, 1] = py.gather(1, j[:, None])[:, 0]
        scores[sl] = best
    return coords, scores
