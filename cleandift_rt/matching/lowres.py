"""Exact upsampled cosine argmax computed on the low-resolution map (no upsampled map).

Bilinear upsampling is linear, so for output pixel ``p`` with corner cells ``i`` and weights
``w_i(p)`` (``F.interpolate(mode="bilinear", align_corners=False)`` taps, edge clamping included)

    q . F̂(p)   = Σ_i w_i(p) (q . f_i)                 one (h·w × K) GEMM per target
    ‖F̂(p)‖²   = Σ_i Σ_j w_i(p) w_j(p) (f_i . f_j)    five Gram entries per cell, once per target

:func:`cosine_argmax_lowres` streams blocks of output rows: it interpolates the low-resolution dot
products along rows then columns, multiplies by the per-pixel inverse norm and keeps a running
max / argmax per query. It never builds the upsampled ``C × H × W`` map nor a ``K × H·W`` matrix.
Output columns come in runs sharing their two corner cells and output rows in runs sharing their
two cell rows, so both interpolations are broadcasts of a few low-resolution values (no gathers
of full blocks): per output value one lerp, one multiply and one max, exactly the operations of
interpolating the whole block, in the same order.
Bands of rows that provably cannot hold a query's maximum are skipped for that query (an exact
branch and bound, see :func:`_stream_argmax`): on smooth real features most of them.

The helpers :func:`cell_gram` and :func:`inverse_norms` are shared with the Triton kernels.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.matching.frontend import NORM_EPS, argmax_over_maps, check_positive_int
from cleandift_rt.matching.grid import PixelGrid

__all__ = ["cell_gram", "cosine_argmax_lowres", "inverse_norms"]

# Floats in one streamed block tensor (K_chunk * rows * W): 10 MB, enough for a whole run of 8
# output rows sharing their cell rows (8x upsampling) for the ~410 queries of a chunk against a
# 96² map, so each run is folded in one set of ops; the other temporaries are a fraction of it.
_BLOCK_FLOATS = 5 * 512 * 1024
# Floats of one query chunk's low-resolution dots (K_chunk * h * w): 16 MB. Chunking the queries
# costs few extra streaming steps (their number is about K * H * W / _BLOCK_FLOATS either way).
_DOTS_FLOATS = 4 * 1024 * 1024
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
        norm = sq.clamp_min_(0.0).sqrt_().clamp_min_(NORM_EPS)
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


@dataclass(frozen=True)
class _ColumnRuns:
    """Output columns regrouped as runs of ``P`` slots sharing their two corner cells.

    Consecutive output columns with the same corner cells ``(c0, c1)`` form a run; long runs are
    split so that every run fits ``P`` slots, and short ones are padded by repeating their last
    column. A padded slot evaluates exactly like the column it repeats and comes after it, so
    the first maximum over slots is still the first maximum over columns. The column lerp then
    is one broadcast of each run's two corner values over its slots (no gathers of full rows).

    Attributes:
        ends: ``(2R,)`` int64 corner cells: each run's left cells ``c0``, then its right ``c1``.
        x: ``(R * P,)`` int64 output column of each slot (run-major, increasing).
        weight: ``(R, P, 1)`` float32 lerp weight towards ``c1`` of each slot.
        inv: ``(H, R, P, 1)`` float32 inverse norm of each slot, per output row.
    """

    ends: Tensor
    x: Tensor
    weight: Tensor
    inv: Tensor


def _column_runs(cols: tuple[Tensor, Tensor], inv_norm: Tensor) -> _ColumnRuns:
    """Split the ``W`` output columns into ``R`` runs of ``P`` slots.

    ``P`` minimises the values written per output row, ``R * P`` slots plus the ``2R``
    interpolated corner values (ties: the larger ``P``); e.g. runs of 8 columns at 8×
    upsampling, with the two clamped half runs of 4 at the borders padded to 8.

    Args:
        cols: ``(W, 2)`` int64 corner cells and ``(W, 2)`` float32 weights along x.
        inv_norm: ``(H, W)`` float32 inverse norms.
    """
    ci, cw = cols
    key = ci[:, 0] * (int(ci.max()) + 1) + ci[:, 1]
    counts = torch.unique_consecutive(key.cpu(), return_counts=True)[1].tolist()
    n_runs = {p: sum(-(-n // p) for n in counts) for p in range(1, max(counts) + 1)}
    p = min(n_runs, key=lambda q: ((q + 2) * n_runs[q], -q))
    starts, x = [], []  # first column of each run, column of each slot
    first = 0
    for n in counts:
        for start in range(first, first + n, p):
            starts.append(start)
            x.extend(min(start + j, first + n - 1) for j in range(p))
        first += n
    start_t = torch.tensor(starts, device=ci.device)
    x_t = torch.tensor(x, device=ci.device).view(-1, p)  # (R, P)
    return _ColumnRuns(
        ends=torch.cat([ci[start_t, 0], ci[start_t, 1]]),
        x=x_t.reshape(-1),
        weight=cw[:, 1][x_t].unsqueeze(-1),
        inv=inv_norm[:, x_t].unsqueeze(-1),
    )


def _fold_rows(
    dots: Tensor,
    runs: _ColumnRuns,
    rows: tuple[Tensor, Tensor],
    y_range: tuple[int, int],
    best: Tensor,
    best_idx: Tensor,
    width: int,
    queries: Tensor | None = None,
) -> None:
    """Fold output rows ``y0 <= y < y1`` into the running max / argmax (in place).

    Per element the same float32 operations as interpolating rows then columns of the whole
    block: ``lerp`` along y, ``lerp`` along x, times the inverse norm. Each column run's two
    corner values are interpolated along y (a ``(rows, 2R, Kact)`` tensor: broadcasts of two
    cell rows when all rows share them, as :func:`_row_pieces` cuts bands) and broadcast over
    the run's slots: the only full-size passes are the column lerp that writes the block, the
    inverse-norm multiply and the max.

    Args:
        dots: ``(h, w, K)`` float32 low-resolution dots ``q̂_k . f_ij``.
        runs: the output columns as runs (:func:`_column_runs`), with ``runs.inv`` covering the
            rows ``rows`` describes.
        rows: taps along y, ``(n, 2)`` int64 cell rows and ``(n, 2)`` float32 weights.
        y_range: ``(y0, y1)``: the output rows folded here.
        best, best_idx: ``(K,)`` float32 running max and int64 flat argmax ``y * width + x``,
            updated in place.
        width: output columns per row in the flat index.
        queries: ``(Kact,)`` int64: fold only these queries (default: all).
    """
    ri, rw = rows
    y0, y1 = y_range
    r0, r1 = ri[y0:y1, 0], ri[y0:y1, 1]
    lo, hi = int(r0.min()), int(r1.max())
    part = dots[lo : hi + 1]  # (n, w, K): the cell rows these output rows read
    if queries is not None:
        part = part.index_select(2, queries)
    a1 = rw[y0:y1, 1, None, None]  # (rows, 1, 1)
    # Lerp form: equal corners give exactly their value, so constant regions tie exactly.
    if int(r0.max()) == lo and int(r1.min()) == hi:  # one pair of cell rows: broadcast it
        ends = part.index_select(1, runs.ends)  # (1 or 2, 2R, Kact)
        sides = torch.lerp(ends[:1], ends[-1:], a1)  # (rows, 2R, Kact)
    else:
        d_rows = torch.lerp(part.index_select(0, r0 - lo), part.index_select(0, r1 - lo), a1)
        sides = d_rows.index_select(1, runs.ends)
        del d_rows
    n_runs = runs.weight.shape[0]
    left, right = sides[:, :n_runs, None], sides[:, n_runs:, None]  # (rows, R, 1, Kact)
    s = torch.lerp(left, right, runs.weight)  # (rows, R, P, Kact)
    del sides, left, right
    s.mul_(runs.inv[y0:y1])  # cosines
    # Max values first (a fast reduction: over slots, then runs); positions only for queries
    # that improve.
    row_max = s.amax(dim=2).amax(dim=1)  # (rows, Kact)
    s = s.flatten(1, 2)  # (rows, R * P, Kact)
    val = row_max.amax(dim=0)
    current = best if queries is None else best[queries]
    # Strictly greater: on ties the earlier rows (lower flat index) keep the win.
    sel = (val > current).nonzero()[:, 0]
    if sel.numel():
        v = val[sel]
        row = (row_max[:, sel] == v).to(torch.uint8).argmax(dim=0)  # first row with the max
        slot = (s[row, :, sel] == v[:, None]).to(torch.uint8).argmax(dim=1)  # first slot
        target = sel if queries is None else queries[sel]
        best[target] = v
        best_idx[target] = (row + y0) * width + runs.x[slot]


def _row_starts(rows: tuple[Tensor, Tensor]) -> list[int]:
    """Output rows where the pair of corner cell rows changes (always including 0), on the host."""
    ri = rows[0].cpu()
    change = (ri[1:] != ri[:-1]).any(dim=1).nonzero()[:, 0] + 1
    return [0, *change.tolist()]


def _row_pieces(y0: int, y1: int, step: int, starts: list[int]) -> list[tuple[int, int]]:
    """Cut output rows ``[y0, y1)`` into pieces of at most ``step`` rows that each lie within
    one run of rows sharing their corner cell rows (runs begin at ``starts``, sorted)."""
    cuts = [y0, *starts[bisect.bisect_right(starts, y0) : bisect.bisect_left(starts, y1)], y1]
    return [
        (ya, min(end, ya + step))
        for start, end in zip(cuts, cuts[1:])
        for ya in range(start, end, step)
    ]


def _subgrid(n: int, cells: int) -> Tensor:
    """About one output index per feature cell along an axis of ``n`` outputs (never empty)."""
    step = max(1, n // max(1, cells))
    return torch.arange(step // 2, n, step)


def _stream_argmax(
    dots: Tensor,
    inv_norm: Tensor,
    rows: tuple[Tensor, Tensor],
    cols: tuple[Tensor, Tensor],
    block: int,
) -> tuple[Tensor, Tensor]:
    """Running max / argmax of the upsampled cosine over bands of output rows, with pruning.

    Exact branch and bound: an interpolated dot lies between its corner dots, so over a band of
    output rows a query's cosine is at most ``max corner dot × max inverse norm`` (``× min
    inverse norm`` when that dot is negative), taken per run of columns. The cosines at about
    one output pixel per feature cell give each query a value it surely reaches; a band whose
    bound is below that value (or below the best found so far) cannot hold the maximum, nor a
    tie, so it is skipped for that query. Bounds carry a relative margin of 1e-5 against
    float32 rounding. Every other pixel is evaluated exactly as without pruning.

    Args:
        dots: ``(h, w, K)`` float32 low-resolution dots ``q̂_k . f_ij``.
        inv_norm: ``(H, W)`` float32 per-pixel inverse norms.
        rows, cols: per-axis taps ``(n, 2)`` int64 indices and ``(n, 2)`` float32 weights.
        block: output rows per streamed block for all K queries (more when fewer are active,
            in the same memory).

    Returns:
        ``(K,)`` int64 flat indices ``y * W + x`` (lowest on ties) and ``(K,)`` float32 scores.
    """
    h, w, k = dots.shape
    big_h, big_w = inv_norm.shape
    dev = dots.device
    best = torch.full((k,), float("-inf"), dtype=torch.float32, device=dev)
    best_idx = torch.zeros(k, dtype=torch.int64, device=dev)

    # A value each query surely reaches: its best cosine on a sub-grid of output pixels.
    sy, sx = _subgrid(big_h, h).to(dev), _subgrid(big_w, w).to(dev)
    sub_rows = (rows[0][sy], rows[1][sy])
    sub_runs = _column_runs((cols[0][sx], cols[1][sx]), inv_norm[sy][:, sx])
    reach = torch.full_like(best, float("-inf"))
    sub_idx = torch.zeros_like(best_idx)
    # A quarter block: rows of the sub-grid read different cell rows, so the gathered rows and
    # corner values are temporaries of a few times the block.
    sub_block = max(1, _BLOCK_FLOATS // max(1, 4 * k * sx.numel()))
    for y0 in range(0, sy.numel(), sub_block):
        y_range = (y0, min(sy.numel(), y0 + sub_block))
        _fold_rows(dots, sub_runs, sub_rows, y_range, reach, sub_idx, sx.numel())
    reach -= 1e-5 * reach.abs() + 1e-12

    runs = _column_runs(cols, inv_norm)
    inv_max = runs.inv.amax(dim=(2, 3))  # (H, R): per row, the extremes over each run's slots
    inv_min = runs.inv.amin(dim=(2, 3))
    ri, starts = rows[0], _row_starts(rows)
    # Bands of two runs of rows sharing their corner cell rows (three cell rows): bounds stay
    # local, and a band is folded in whole runs when the block allows.
    bounds = [*starts[::2], big_h]
    for y0, y1 in zip(bounds[:-1], bounds[1:]):
        lo, hi = int(ri[y0:y1, 0].min()), int(ri[y0:y1, 1].max())
        top = dots[lo : hi + 1].amax(dim=0)  # (w, K): best corner dot per cell column
        corner = top.index_select(0, runs.ends).view(2, -1, k).amax(dim=0)  # (R, K)
        inv_hi = inv_max[y0:y1].amax(dim=0)[:, None]  # (R, 1)
        inv_lo = inv_min[y0:y1].amin(dim=0)[:, None]
        bound = torch.where(corner >= 0, corner * inv_hi, corner * inv_lo).amax(dim=0)  # (K,)
        bound += 1e-5 * bound.abs() + 1e-12
        active = (bound >= torch.maximum(best, reach)).nonzero()[:, 0]
        if active.numel() == 0:
            continue
        queries = None if active.numel() == k else active
        step = max(block, _BLOCK_FLOATS // (active.numel() * big_w))
        for y_range in _row_pieces(y0, y1, step, starts):
            _fold_rows(dots, runs, rows, y_range, best, best_idx, big_w, queries)
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

    Same contract and results as :func:`.reference.cosine_argmax_reference` (up to float32
    rounding), computed from the low-resolution map: one ``(h·w × K)`` GEMM, five Gram
    entries per cell and ``H·W`` inverse norms, then blocks of output rows streamed through a
    running max that skips, per query, the bands of rows whose cosine bound is below a value the
    query surely reaches (exact branch and bound). Extra memory is ``H·W`` inverse norms (twice:
    per pixel and per run slot), a query chunk's dots (at most 16 MB) and a 10 MB block with a
    few smaller temporaries, independent of ``C`` and ``K``.

    Arguments, results (``coords`` int64 ``(x, y)``, ``scores`` float32), ties and errors as
    :func:`.reference.cosine_argmax_reference`, plus ``block``: output rows per streamed block
    (default: each ``K_chunk × rows × W`` block tensor under 10 MB of float32; queries are
    chunked too when ``K·W`` alone exceeds it).
    """
    check_positive_int(block, "block")

    def match_one(q: Tensor, t: Tensor, rows, cols) -> tuple[Tensor, Tensor]:
        c, h, w = t.shape
        big_h, big_w = rows[0].shape[0], cols[0].shape[0]
        kq, rows_per_block = _auto_chunks(q.shape[0], big_h, big_w, h * w)
        qn = F.normalize(q.to(torch.float32), dim=-1, eps=NORM_EPS)
        t = t.to(torch.float32)  # a view when already float32
        inv_norm = inverse_norms(cell_gram(t), rows, cols)  # (H, W)
        flat_t = t.reshape(c, h * w)  # copies only when the map's strides require it
        found = []
        for k0 in range(0, q.shape[0], kq):
            # (h·w, K_chunk): transposed so blocks gather whole rows of K contiguous floats.
            dots = (flat_t.T @ qn[k0 : k0 + kq].T).contiguous().view(h, w, -1)
            found.append(_stream_argmax(dots, inv_norm, rows, cols, block or rows_per_block))
        if len(found) == 1:
            return found[0]
        return torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])

    return argmax_over_maps(queries, target, out_size, grid, match_one)
