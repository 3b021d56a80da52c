"""Exact, memory-bounded reference for DIFT-style matching on low-resolution feature maps.

The naive pipeline upsamples the whole target map to ``(H, W)`` with
``F.interpolate(mode="bilinear", align_corners=False)``, L2-normalises every pixel, dots it with
normalised queries and takes the argmax over all ``H * W`` pixels.
:func:`cosine_argmax_reference` computes the same result band-by-band (a few output rows at a
time, separable interpolation), so memory stays bounded for any image size. It is the ground
truth that faster kernels are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.frontend import (
    NORM_EPS,
    argmax_over_maps,
    check_features,
    check_positive_int,
)
from cleandift_rt.matching.grid import PixelGrid, bilinear_weights

__all__ = ["cosine_argmax_reference", "sample_descriptors"]

# Floats allowed in one band: (C + K) * band_rows * W stays under ~64 MB of float32.
_BAND_FLOATS = (64 * 1024 * 1024) // 4


def sample_descriptors(
    feature_map: Tensor,
    points: Tensor | Sequence[Sequence[float]],
    grid: PixelGrid | tuple[int, int],
) -> Tensor:
    """Bilinearly sample descriptors at pixel points of an output grid.

    For an ``(H, W)`` image size and integer points this equals
    ``F.interpolate(feature_map[None], (H, W), mode="bilinear", align_corners=False)[0, :, y, x]``;
    between pixel centres it is bilinear in the same upsampled map.

    Args:
        feature_map: ``(C, h, w)`` or batched ``(B, C, h, w)`` floating tensor (any strides).
        points: ``(K, 2)`` (or ``(B, K, 2)`` for a batched map) ``(x, y)`` pixel coordinates,
            int or float, inside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; ``K = 0`` is allowed.
        grid: a :class:`PixelGrid`, or an image size ``(H, W)`` meaning
            ``PixelGrid.interpolate((h, w), (H, W))``.

    Returns:
        ``(K, C)`` (or ``(B, K, C)``) descriptors in ``feature_map.dtype``, computed in float32.

    Raises:
        MatchError: bad shapes or dtypes, NaN/Inf features, non-finite or out-of-range points.
    """
    check_features(feature_map, "feature_map", (3, 4))
    batched = feature_map.ndim == 4
    fmap = feature_map if batched else feature_map[None]
    b, c, h, w = fmap.shape
    if not isinstance(grid, PixelGrid):
        grid = PixelGrid.interpolate((h, w), grid)  # type: ignore[arg-type]

    pts = torch.as_tensor(points, device=fmap.device)
    if pts.is_complex() or pts.dtype == torch.bool:
        raise MatchError(f"points must be real numbers, got {pts.dtype}")
    if pts.numel() == 0 and not batched:
        pts = pts.reshape(0, 2)  # any empty input (e.g. []) means "no points"
    if batched:
        if pts.ndim != 3 or pts.shape[0] != b or pts.shape[-1] != 2:
            raise MatchError(f"points must have shape (B={b}, K, 2), got {tuple(pts.shape)}")
    else:
        if pts.ndim != 2 or pts.shape[-1] != 2:
            raise MatchError(f"points must have shape (K, 2), got {tuple(pts.shape)}")
        pts = pts[None]
    k = pts.shape[1]
    if k == 0:
        out = fmap.new_empty((b, 0, c))
        return out if batched else out[0]
    if not bool(grid.contains(pts).all()):
        big_h, big_w = grid.size
        raise MatchError(f"points must lie in [-0.5, {big_w - 0.5}] x [-0.5, {big_h - 0.5}]")

    # Per-point taps along each axis, float64 index math on the CPU.
    uv = grid.feature_coords(pts).reshape(-1, 2)  # (B*K, 2)
    xi, xw = bilinear_weights(uv[:, 0], w)
    yi, yw = bilinear_weights(uv[:, 1], h)
    dev = fmap.device
    xi, yi = xi.to(dev), yi.to(dev)
    xw, yw = xw.to(dev, torch.float32), yw.to(dev, torch.float32)
    bi = torch.arange(b, device=dev).repeat_interleave(k)  # (B*K,)

    f = fmap.permute(0, 2, 3, 1).to(torch.float32)  # (B, h, w, C), a view when already fp32
    # Separable: along x within the two neighbour rows, then along y.
    top = f[bi, yi[:, 0], xi[:, 0]] * xw[:, :1] + f[bi, yi[:, 0], xi[:, 1]] * xw[:, 1:]
    bot = f[bi, yi[:, 1], xi[:, 0]] * xw[:, :1] + f[bi, yi[:, 1], xi[:, 1]] * xw[:, 1:]
    out = (top * yw[:, :1] + bot * yw[:, 1:]).reshape(b, k, c).to(fmap.dtype)
    return out if batched else out[0]


def _auto_band_rows(c: int, k: int, big_h: int, big_w: int) -> int:
    """Rows per band so that ``(C + K) * rows * W`` float32 values stay under ~64 MB."""
    return max(1, min(big_h, _BAND_FLOATS // max(1, (c + k) * big_w)))


def _argmax_one(
    qn: Tensor,
    target: Tensor,
    rows: tuple[Tensor, Tensor],
    cols: tuple[Tensor, Tensor],
    band_rows: int,
) -> tuple[Tensor, Tensor]:
    """Banded cosine argmax for one target map.

    Args:
        qn: ``(K, C)`` float32 unit queries.
        target: ``(C, h, w)`` float32 contiguous map.
        rows: ``(H, 2)`` int64 indices and ``(H, 2)`` float32 weights along y.
        cols: ``(W, 2)`` int64 indices and ``(W, 2)`` float32 weights along x.
        band_rows: output rows per band.

    Returns:
        ``(K,)`` int64 flat indices ``y * W + x`` and ``(K,)`` float32 scores.
    """
    c = target.shape[0]
    ri, rw = rows
    ci, cw = cols
    big_h, big_w = ri.shape[0], ci.shape[0]
    k = qn.shape[0]
    best = torch.full((k,), float("-inf"), dtype=torch.float32, device=qn.device)
    best_idx = torch.zeros(k, dtype=torch.int64, device=qn.device)
    for y0 in range(0, big_h, band_rows):
        bri, brw = ri[y0 : y0 + band_rows], rw[y0 : y0 + band_rows]
        nb = bri.shape[0]
        # Rows first: (C, nb, w), then columns: (C, nb, W).
        tmp = target.index_select(1, bri[:, 0]).mul_(brw[:, 0, None])
        tmp.addcmul_(target.index_select(1, bri[:, 1]), brw[:, 1, None])
        band = tmp.index_select(2, ci[:, 0]).mul_(cw[:, 0])
        band.addcmul_(tmp.index_select(2, ci[:, 1]), cw[:, 1])
        del tmp
        flat = band.reshape(c, nb * big_w)
        # cos = q . (x / max(|x|, eps)) as in F.normalize; a zero pixel scores exactly 0.
        norms = torch.linalg.vector_norm(flat, dim=0).clamp_min_(NORM_EPS)
        scores = (qn @ flat).div_(norms)  # (K, nb * W)
        del band, flat
        idx = scores.argmax(dim=1)  # first maximum within the band
        val = scores.gather(1, idx[:, None]).squeeze(1)
        # Strictly greater: on ties the earlier band (lower flat index) keeps the win.
        better = val > best
        best = torch.where(better, val, best)
        best_idx = torch.where(better, idx + y0 * big_w, best_idx)
    return best_idx, best


@torch.no_grad()
def cosine_argmax_reference(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
    band_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Best-matching output pixel of each query in a bilinearly upsampled target map.

    Exactly the naive pipeline (upsample the whole map, ``F.normalize`` each pixel, dot with
    ``F.normalize``-d queries, ``argmax`` over pixels) computed in bands of output rows, in
    float32. Ties go to the lowest flat index ``y * W + x``; zero target pixels score 0.

    Args:
        queries: ``(K, C)`` descriptors, or ``(B, K, C)`` for a batched target. Any floating
            dtype (fp16/bf16 are computed in fp32) and any strides.
        target: ``(C, h, w)`` feature map, or a batch ``(B, C, h, w)``.
        out_size: ``(H, W)``: match on the ``F.interpolate`` grid of that size.
        grid: an explicit :class:`PixelGrid` (mutually exclusive with ``out_size``). With neither,
            the feature grid itself (``(h, w)``, no upsampling) is searched.
        band_rows: output rows per band; default keeps ``(C + K) * band_rows * W`` float32
            values under ~64 MB.

    Returns:
        ``coords`` ``(K, 2)`` int64 ``(x, y)`` in the output grid and ``scores`` ``(K,)`` float32
        cosine similarities (``(B, K, 2)`` and ``(B, K)`` when batched), on ``target.device``.

    Raises:
        MatchError: bad shapes or dtypes, mismatched channels, NaN/Inf inputs, bad arguments.
    """
    check_positive_int(band_rows, "band_rows")

    def match_one(q: Tensor, t: Tensor, rows, cols) -> tuple[Tensor, Tensor]:
        c, k, big_h, big_w = t.shape[0], q.shape[0], rows[0].shape[0], cols[0].shape[0]
        qn = F.normalize(q.to(torch.float32), dim=-1, eps=NORM_EPS)
        band = band_rows or _auto_band_rows(c, k, big_h, big_w)
        return _argmax_one(qn, t.to(torch.float32).contiguous(), rows, cols, band)

    return argmax_over_maps(queries, target, out_size, grid, match_one)
