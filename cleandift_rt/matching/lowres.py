"""Exact upsampled cosine argmax computed on the low-resolution map (no upsampled map).

Bilinear upsampling is linear, so for output pixel ``p`` with corner cells ``i`` and weights
``w_i(p)`` (``F.interpolate(mode="bilinear", align_corners=False)`` taps, edge clamping included)

    q . F̂(p)   = Σ_i w_i(p) (q . f_i)                 one (h·w × K) GEMM per target
    ‖F̂(p)‖²   = Σ_i Σ_j w_i(p) w_j(p) (f_i . f_j)    five Gram entries per cell, once per target

:func:`cosine_argmax_lowres` streams blocks of output rows: it interpolates the low-resolution dot
products along rows then columns, multiplies by the per-pixel inverse norm and keeps a running
max / argmax per query. It never builds the upsampled ``C × H × W`` map nor a ``K × H·W`` matrix.

The helpers :func:`cell_gram` and :func:`inverse_norms` are shared with the Triton kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.reference import _NORM_EPS, check_inputs, resolve_grid

__all__ = ["cell_gram", "cosine_argmax_lowres", "inverse_norms"]

# Floats in one streamed block tensor (K_chunk * rows * W): 4 MB, so the two such tensors live
# at once stay cache-friendly and far under ~32 MB.
_BLOCK_FLOATS = 1024 * 1024
# Floats of one query chunk's low-resolution dots (K_chunk * h * w): 4 MB. Chunking the queries
# costs no extra streaming steps (their number is K * H * W / _BLOCK_FLOATS either way).
_DOTS_FLOATS = 1024 * 1024
# Float64 values in one temporary of the Gram / inverse-norm computations: 8 MB on GPUs (a few
# kernel launches, and a few such temporaries stay far under the dots of K = 4096 queries against
# a 48² map, 38 MB), 0.5 MB on CPUs (cache-resident).
_F64_CHUNK = {"cuda": (8 * 1024 * 1024) // 8, "cpu": 64 * 1024}


def _f64_chunk(device: torch.device) -> int:
    return _F64_CHUNK["cpu" if device.type == "cpu" else "cuda"]


def cell_gram(target: Tensor) -> Tensor:
    """Dot products between each feature cell and its right / lower neighbours.

    Args:
        target: ``(C, h, w)`` floating map (any dtype; products are accumulated in float64).

    Returns:
        ``(5, h, w)`` float64 on ``target.device``: for cell ``(i, j)``, with ``f = target``,
        ``[f_ij.f_ij, f_ij.f_i(j+1), f_ij.f_(i+1)j, f_ij.f_(i+1)(j+1), f_i(j+1).f_(i+1)j]``
        (norm², right, down, diagonal, anti-diagonal); entries reaching past the last row or
        column are 0.
    """
    c, h, w = target.shape
    gram = torch.zeros((5, h, w), dtype=torch.float64, device=target.device)
    step = max(1, _f64_chunk(target.device) // (h * w))
    for c0 in range(0, c, step):
        f = target[c0 : c0 + step].to(torch.float64)
        gram[0] += (f * f).sum(0)
        gram[1, :, :-1] += (f[:, :, :-1] * f[:, :, 1:]).sum(0)
        gram[2, :-1, :] += (f[:, :-1, :] * f[:, 1:, :]).sum(0)
        gram[3, :-1, :-1] += (f[:, :-1, :-1] * f[:, 1:, 1:]).sum(0)
        gram[4, :-1, :-1] += (f[:, :-1, 1:] * f[:, 1:, :-1]).sum(0)
    return gram


def inverse_norms(
    gram: Tensor,
    rows: tuple[Tensor, Tensor],
    cols: tuple[Tensor, Tensor],
    row_range: tuple[int, int] | None = None,
) -> Tensor:
    """``1 / max(‖F̂(p)‖, 1e-12)`` of every upsampled pixel, from the cell Gram entries.

    Separable: along y the taps of each output row give the norms and right-neighbour dots of the
    row-interpolated cells, then along x the taps of each column give the pixel norms.

    Args:
        gram: ``(5, h, w)`` float64 from :func:`cell_gram`.
        rows: ``(H, 2)`` int64 indices and ``(H, 2)`` float32 weights along y (each row's upper
            tap is its lower tap or the next cell, as ``PixelGrid.axis_weights`` gives).
        cols: ``(W, 2)`` int64 indices and ``(W, 2)`` float32 weights along x (same rule).
        row_range: ``(y0, y1)``: only output rows ``y0 <= y < y1`` (default: all ``H``).

    Returns:
        ``(y1 - y0, W)`` float32 inverse norms (``1e12`` where the upsampled pixel is zero).
    """
    n, right, down, diag, anti = gram
    ri, rw = rows
    ci, cw = cols
    y0, y1 = row_range if row_range is not None else (0, ri.shape[0])
    big_w = ci.shape[0]
    c0, c1 = ci[:, 0], ci[:, 1]
    # Weights (1 - t, t) as in the lerp of the dots, so constant regions get equal norms.
    b1 = cw[:, 1].to(torch.float64)
    b0 = 1.0 - b1
    same_c = c1 == c0
    out = torch.empty((y1 - y0, big_w), dtype=torch.float32, device=gram.device)
    step = max(1, _f64_chunk(gram.device) // max(big_w, gram.shape[2]))
    for ya in range(y0, y1, step):
        yb = min(y1, ya + step)
        r0, r1 = ri[ya:yb, 0], ri[ya:yb, 1]
        a1 = rw[ya:yb, 1, None].to(torch.float64)
        a0 = 1.0 - a1
        same_r = (r1 == r0)[:, None]
        # Row-interpolated cells g(y, c) = a0 f[r0, c] + a1 f[r1, c]: their norms and right dots.
        cross_n = torch.where(same_r, n[r0], down[r0])
        cross_x = torch.where(same_r, 2.0 * right[r0], diag[r0] + anti[r0])
        norm_g = a0 * a0 * n[r0] + a1 * a1 * n[r1] + 2.0 * a0 * a1 * cross_n  # (rows, w)
        right_g = a0 * a0 * right[r0] + a1 * a1 * right[r1] + a0 * a1 * cross_x
        # Along x between g(y, c0) and g(y, c1).
        n0, n1 = norm_g[:, c0], norm_g[:, c1]
        cross = torch.where(same_c, n0, right_g[:, c0])
        sq = b0 * b0 * n0 + b1 * b1 * n1 + 2.0 * b0 * b1 * cross
        norm = sq.clamp_min_(0.0).sqrt_().clamp_min_(_NORM_EPS)
        out[ya - y0 : yb - y0] = norm.reciprocal_().to(torch.float32)
    return out


def _auto_chunks(k: int, big_h: int, big_w: int, cells: int) -> tuple[int, int]:
    """``(queries, rows)`` per streamed block: ``queries * rows * W <= _BLOCK_FLOATS`` and the
    chunk's low-resolution dots ``queries * cells <= _DOTS_FLOATS`` (``cells = h * w``); query
    chunks are balanced (sizes differ by at most one)."""
    kq = max(1, min(k, _BLOCK_FLOATS // big_w, _DOTS_FLOATS // cells))
    chunks = max(1, -(-k // kq))
    kq = max(1, -(-k // chunks))  # ceil(k / chunks)
    return kq, max(1, min(big_h, _BLOCK_FLOATS // (kq * big_w)))


def _stream_argmax(
    dots: Tensor,
    inv_norm: Tensor,
    rows: tuple[Tensor, Tensor],
    cols: tuple[Tensor, Tensor],
    block: int,
) -> tuple[Tensor, Tensor]:
    """Running max / argmax of the upsampled cosine over blocks of output rows.

    Args:
        dots: ``(h, w, K)`` float32 low-resolution dots ``q̂_k . f_ij``.
        inv_norm: ``(H, W)`` float32 per-pixel inverse norms.
        rows, cols: per-axis taps ``(n, 2)`` int64 indices and ``(n, 2)`` float32 weights.
        block: output rows per block.

    Returns:
        ``(K,)`` int64 flat indices ``y * W + x`` (lowest on ties) and ``(K,)`` float32 scores.
    """
    ri, rw = rows
    ci, cw = cols
    big_h, big_w = inv_norm.shape
    k = dots.shape[2]
    r0, r1 = ri[:, 0].contiguous(), ri[:, 1].contiguous()
    c0, c1 = ci[:, 0].contiguous(), ci[:, 1].contiguous()
    b1 = cw[:, 1, None].contiguous()  # (W, 1), broadcast over queries
    best = torch.full((k,), float("-inf"), dtype=torch.float32, device=dots.device)
    best_idx = torch.zeros(k, dtype=torch.int64, device=dots.device)
    for y0 in range(0, big_h, block):
        y1 = min(big_h, y0 + block)
        a1 = rw[y0:y1, 1, None, None]
        # Lerp form: equal corners give exactly their value, so constant regions tie exactly.
        d_rows = torch.lerp(dots.index_select(0, r0[y0:y1]), dots.index_select(0, r1[y0:y1]), a1)
        s = d_rows.index_select(1, c0)  # (b, W, K)
        s.lerp_(d_rows.index_select(1, c1), b1)
        del d_rows
        s.mul_(inv_norm[y0:y1, :, None])
        # Max values first (a fast reduction); positions only for queries that improve.
        row_max = s.amax(dim=1)  # (b, K)
        val = row_max.amax(dim=0)
        # Strictly greater: on ties the earlier block (lower flat index) keeps the win.
        sel = (val > best).nonzero()[:, 0]
        if sel.numel():
            v = val[sel]
            row = (row_max[:, sel] == v).to(torch.uint8).argmax(dim=0)  # first row with the max
            x = (s[row, :, sel] == v[:, None]).to(torch.uint8).argmax(dim=1)  # first column
            best[sel] = v
            best_idx[sel] = (row + y0) * big_w + x
    return best_idx, best


@torch.no_grad()
def cosine_argmax_lowres(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
    block: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Best-matching output pixel of each query in a bilinearly upsampled target map.

    Same contract and results as :func:`~cleandift_rt.matching.reference.cosine_argmax` (up to
    float32 rounding), computed from the low-resolution map: one ``(h·w × K)`` GEMM, five Gram
    entries per cell and ``H·W`` inverse norms, then blocks of output rows streamed through a
    running max. Extra memory is ``H·W`` inverse norms plus a few 4 MB blocks (query chunks'
    dots and streamed rows), independent of ``C`` and ``K``.

    Args:
        queries: ``(K, C)`` descriptors, or ``(B, K, C)`` for a batched target. Any floating
            dtype (fp16/bf16 are computed in fp32) and any strides.
        target: ``(C, h, w)`` feature map, or a batch ``(B, C, h, w)``.
        out_size: ``(H, W)``: match on the ``F.interpolate`` grid of that size.
        grid: an explicit :class:`PixelGrid` (mutually exclusive with ``out_size``). With neither,
            the feature grid itself (``(h, w)``, no upsampling) is searched.
        block: output rows per streamed block; default keeps each ``K_chunk × rows × W`` block
            tensor under 4 MB of float32 (queries are chunked too when ``K·W`` alone exceeds it).

    Returns:
        ``coords`` ``(K, 2)`` int64 ``(x, y)`` in the output grid and ``scores`` ``(K,)`` float32
        cosine similarities (``(B, K, 2)`` and ``(B, K)`` when batched), on ``target.device``.
        Ties go to the lowest flat index ``y * W + x``; zero target pixels score 0.

    Raises:
        MatchError: bad shapes or dtypes, mismatched channels, NaN/Inf inputs, bad arguments.
    """
    qs, tgt, batched = check_inputs(queries, target)
    b, c, h, w = tgt.shape
    k = qs.shape[1]
    g = resolve_grid((h, w), out_size, grid)
    big_h, big_w = g.size
    kq, rows_per_block = _auto_chunks(k, big_h, big_w, h * w)
    if block is not None:
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise MatchError(f"block must be a positive integer, got {block!r}")
        rows_per_block = block
    dev = tgt.device

    coords = torch.zeros((b, k, 2), dtype=torch.int64, device=dev)
    scores = torch.zeros((b, k), dtype=torch.float32, device=dev)
    if k == 0:
        return (coords, scores) if batched else (coords[0], scores[0])
    rows = g.axis_weights("y", h, device=dev)
    cols = g.axis_weights("x", w, device=dev)
    qn = F.normalize(qs.to(device=dev, dtype=torch.float32), dim=-1, eps=_NORM_EPS)
    for i in range(b):
        t = tgt[i].to(torch.float32)  # a view when already float32
        inv_norm = inverse_norms(cell_gram(t), rows, cols)  # (H, W)
        flat_t = t.reshape(c, h * w)  # copies only when the map's strides require it
        for k0 in range(0, k, kq):
            # (h·w, K_chunk): transposed so blocks gather whole rows of K contiguous floats.
            dots = (flat_t.T @ qn[i, k0 : k0 + kq].T).contiguous().view(h, w, -1)
            idx, best = _stream_argmax(dots, inv_norm, rows, cols, rows_per_block)
            coords[i, k0 : k0 + kq, 0] = idx % big_w
            coords[i, k0 : k0 + kq, 1] = idx // big_w
            scores[i, k0 : k0 + kq] = best
    return (coords, scores) if batched else (coords[0], scores[0])
