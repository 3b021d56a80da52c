"""User-facing matching API: descriptor sets and feature maps with pixel coordinates.

Two families share one set of conventions:

**A. Descriptor sets** (kornia-like): ``a`` ``(N, C)`` and ``b`` ``(M, C)`` floating tensors.
:func:`nearest`, :func:`mutual_nearest` and :func:`ratio_test` return ``(scores (P,), pairs
(P, 2) int64)`` where ``pairs[:, 0]`` indexes rows of ``a`` and ``pairs[:, 1]`` rows of ``b``,
ordered by the ``a`` index. :func:`top_k` returns ``(scores (N, k), indices (N, k))``.

* Similarity is the **cosine** ``<a_i, b_j> / (|a_i| |b_j|)`` (vectors are ``F.normalize``-d with
  ``eps = 1e-12``, so an all-zero descriptor scores 0 against everything). Unlike kornia's
  ``match_nn`` / ``match_mnn`` / ``match_snn``, which return L2 *distances* of shape ``(P, 1)``
  (lower is better), the scores here are cosine similarities of shape ``(P,)``: **higher is
  better**. For unit vectors ``|a - b|^2 = 2 (1 - cos)``, so the neighbours are the same.
* Ties go to the lowest index, as ``torch.argmax`` does.
* Computation is in float32 (float64 when both inputs are float64), on the inputs' device,
  without gradients. Rows of ``a`` are processed in blocks, so at most a ``(block_rows, M)``
  score matrix exists at any time (default ~64 MB), never the full ``(N, M)`` one.
* ``N = 0`` or ``M = 0`` gives empty outputs; NaN/Inf descriptors raise :class:`MatchError`.

**B. Feature maps** ``(C, h, w)`` matched at pixel coordinates: :func:`match_points` and
:func:`dense_matches`. Each map lives on an output pixel grid (:class:`PixelGrid`): given an
image size ``(H, W)`` it is the ``F.interpolate(mode="bilinear", align_corners=False)`` grid of
that size; given ``None`` it is the feature grid itself; an explicit :class:`PixelGrid` (e.g.
:meth:`PixelGrid.from_input_transform` for original-image pixels) is used as is. Points are
``(x, y)`` pixels; targets are the exact cosine argmax over the bilinearly upsampled target map
(integer ``(x, y)`` pixels of the target grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.argmax import cosine_argmax
from cleandift_rt.matching.frontend import NORM_EPS, all_finite, check_positive_int, resolve_grid
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.reference import sample_descriptors
from cleandift_rt.matching.refine import DEFAULT_TEMPERATURE, DEFAULT_WINDOW, check_refine

__all__ = [
    "DenseMatches",
    "MapMatches",
    "Matches",
    "RatioMatches",
    "TopK",
    "dense_matches",
    "match_points",
    "mutual_nearest",
    "nearest",
    "ratio_test",
    "top_k",
]

# The map-to-map argmax: the fastest exact backend (same results as the reference).
_argmax = cosine_argmax

# Score-matrix elements per block of rows of ``a`` (~64 MB of float32).
_BLOCK_ELEMS = (64 * 1024 * 1024) // 4
# Queries per chunk in dense_matches.
_DENSE_CHUNK = 4096

Size = tuple[int, int] | Sequence[int]


# =============================================================================== result types


class Matches(NamedTuple):
    """Descriptor-set matches.

    Attributes:
        scores: ``(P,)`` cosine similarities (float32, float64 for float64 inputs); higher is
            better.
        pairs: ``(P, 2)`` int64; ``pairs[:, 0]`` indexes ``a``, ``pairs[:, 1]`` indexes ``b``,
            sorted by the ``a`` index.
    """

    scores: Tensor
    pairs: Tensor


class RatioMatches(NamedTuple):
    """Result of :func:`ratio_test`: the kept matches plus per-row diagnostics.

    Attributes:
        scores: ``(P,)`` cosine similarities of the kept matches.
        pairs: ``(P, 2)`` int64 kept pairs (``a`` index, ``b`` index), sorted by the ``a`` index.
        mask: ``(N,)`` bool, True for the rows of ``a`` that pass (``P = mask.sum()``);
            ``a[mask]`` are the kept descriptors.
        ratios: ``(N,)`` float64 ratio ``d1 / d2`` of every row of ``a`` (see :func:`ratio_test`;
            float32 on devices without float64), so ``mask == (ratios <= threshold)``.
    """

    scores: Tensor
    pairs: Tensor
    mask: Tensor
    ratios: Tensor


class TopK(NamedTuple):
    """Result of :func:`top_k`.

    Attributes:
        scores: ``(N, k)`` cosine similarities, best first.
        indices: ``(N, k)`` int64 indices into ``b``; equal scores in increasing index order.
    """

    scores: Tensor
    indices: Tensor


@dataclass(frozen=True)
class MapMatches:
    """Point matches between feature maps (a leading ``B`` for a batch of target maps).

    Attributes:
        source: ``(K, 2)`` (``(B, K, 2)``) float ``(x, y)`` query pixels in the source grid.
        target: ``(K, 2)`` (``(B, K, 2)``) int64 ``(x, y)`` best pixels in the target grid.
        scores: ``(K,)`` (``(B, K)``) float32 cosine similarity at the target pixel.
        mutual: ``(K,)`` (``(B, K)``) bool cycle-consistency flags, or None when not requested.
    """

    source: Tensor
    target: Tensor
    scores: Tensor
    mutual: Tensor | None = None


class DenseMatches(NamedTuple):
    """Result of :func:`dense_matches`.

    Attributes:
        source: ``(P, 2)`` int64 ``(x, y)`` source pixels, row-major (y, then x).
        target: ``(P, 2)`` int64 ``(x, y)`` best target pixels.
        scores: ``(P,)`` float32 cosine similarities.
    """

    source: Tensor
    target: Tensor
    scores: Tensor


# =============================================================================== descriptor sets


def _check_descriptors(a: Tensor, b: Tensor) -> torch.dtype:
    """Validate a descriptor pair; returns the computation dtype."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise MatchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise MatchError(f"{name} must have shape (N, C), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise MatchError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if a.shape[1] != b.shape[1]:
        raise MatchError(f"channel mismatch: a has {a.shape[1]}, b has {b.shape[1]}")
    if a.shape[1] == 0:
        raise MatchError("descriptors must have at least one channel")
    if a.device != b.device:
        raise MatchError(f"a and b are on different devices: {a.device} and {b.device}")
    for name, t in (("a", a), ("b", b)):
        if not all_finite(t):
            raise MatchError(f"{name} contains NaN or Inf values")
    both64 = a.dtype == torch.float64 and b.dtype == torch.float64
    return torch.float64 if both64 else torch.float32


def _block_rows(m: int, block_rows: int | None) -> int:
    """Rows of ``a`` per block: explicit, or keep ``rows * M`` under ``_BLOCK_ELEMS``."""
    if block_rows is None:
        return max(1, _BLOCK_ELEMS // max(1, m))
    check_positive_int(block_rows, "block_rows")
    return block_rows


def _blocks(a: Tensor, b: Tensor, dtype: torch.dtype, block_rows: int | None):
    """Yield ``(start, scores)`` with ``scores`` the ``(n, M)`` cosine block of rows ``start:``."""
    an = F.normalize(a.to(dtype), dim=1, eps=NORM_EPS)
    bn_t = F.normalize(b.to(dtype), dim=1, eps=NORM_EPS).T
    step = _block_rows(b.shape[0], block_rows)
    for start in range(0, a.shape[0], step):
        yield start, an[start : start + step] @ bn_t


def _wide(device: torch.device) -> torch.dtype:
    """float64, or float32 on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _pairs(rows: Tensor, cols: Tensor) -> Tensor:
    """Stack ``(P,)`` row and column indices into ``(P, 2)`` int64 pairs."""
    return torch.stack([rows, cols], dim=1).to(torch.int64)


def _empty(a: Tensor, dtype: torch.dtype) -> Matches:
    return Matches(a.new_empty((0,), dtype=dtype), a.new_empty((0, 2), dtype=torch.int64))


@torch.no_grad()
def nearest(a: Tensor, b: Tensor, *, block_rows: int | None = None) -> Matches:
    """Nearest neighbour in ``b`` (highest cosine) of every row of ``a``.

    Args:
        a: ``(N, C)`` floating descriptors.
        b: ``(M, C)`` floating descriptors.
        block_rows: rows of ``a`` per block (default: keep a block under ~64 MB).

    Returns:
        :class:`Matches` with ``P = N`` (``pairs[:, 0] == arange(N)``), or ``P = 0`` when
        ``M = 0``. Ties go to the lowest index of ``b``.

    Raises:
        MatchError: bad shapes/dtypes, mismatched channels or devices, NaN/Inf values.
    """
    dtype = _check_descriptors(a, b)
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return _empty(a, dtype)
    scores = a.new_empty((n,), dtype=dtype)
    idx = a.new_empty((n,), dtype=torch.int64)
    for start, s in _blocks(a, b, dtype, block_rows):
        j = s.argmax(dim=1)
        idx[start : start + s.shape[0]] = j
        scores[start : start + s.shape[0]] = s.gather(1, j[:, None])[:, 0]
    return Matches(scores, _pairs(torch.arange(n, device=a.device), idx))


@torch.no_grad()
def mutual_nearest(a: Tensor, b: Tensor, *, block_rows: int | None = None) -> Matches:
    """Pairs ``(i, j)`` where ``j`` is the nearest ``b`` of ``a_i`` and ``i`` the nearest ``a``
    of ``b_j`` (both with lowest-index tie-breaking).

    Both directions come from the same score blocks, so ``mutual_nearest(b, a)`` returns the
    same pairs with the columns swapped (up to float rounding of the two matrix products).

    Args:
        a: ``(N, C)`` floating descriptors.
        b: ``(M, C)`` floating descriptors.
        block_rows: rows of ``a`` per block (default: keep a block under ~64 MB).

    Returns:
        :class:`Matches`, ``P <= min(N, M)``, sorted by the ``a`` index.

    Raises:
        MatchError: as :func:`nearest`.
    """
    dtype = _check_descriptors(a, b)
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return _empty(a, dtype)
    ab_idx = a.new_empty((n,), dtype=torch.int64)
    ab_val = a.new_empty((n,), dtype=dtype)
    ba_val = torch.full((m,), float("-inf"), dtype=dtype, device=a.device)
    ba_idx = torch.zeros((m,), dtype=torch.int64, device=a.device)
    for start, s in _blocks(a, b, dtype, block_rows):
        rows = slice(start, start + s.shape[0])
        j = s.argmax(dim=1)
        ab_idx[rows] = j
        ab_val[rows] = s.gather(1, j[:, None])[:, 0]
        # Column-wise best over this block; strictly greater keeps the earlier (lower) row.
        i = s.argmax(dim=0)
        v = s.gather(0, i[None])[0]
        better = v > ba_val
        ba_val = torch.where(better, v, ba_val)
        ba_idx = torch.where(better, i + start, ba_idx)
    rows = torch.arange(n, device=a.device)
    keep = ba_idx[ab_idx] == rows
    return Matches(ab_val[keep], _pairs(rows[keep], ab_idx[keep]))


@torch.no_grad()
def ratio_test(
    a: Tensor, b: Tensor, threshold: float = 0.8, *, block_rows: int | None = None
) -> RatioMatches:
    """Lowe's ratio test on cosine distances ``d = 1 - cos`` (clamped at 0).

    For each row ``a_i`` let ``d1`` be the distance to its nearest ``b`` and ``d2`` to the
    second nearest (the second-highest cosine over the other rows of ``b``; a duplicate of the
    best counts). The row is kept when ``ratio = d1 / d2 <= threshold``, with:

    * ``M == 1`` (no second neighbour): ``ratio = 0``, every row kept;
    * ``d1 == d2 == 0`` (two perfect matches): ``ratio = 1``, ambiguous like any exact tie.

    Note kornia's ``match_snn`` takes the ratio of L2 distances; for unit vectors
    ``|a - b|^2 = 2 d``, so kornia's threshold ``t`` corresponds to ``t**2`` here.

    Args:
        a: ``(N, C)`` floating descriptors.
        b: ``(M, C)`` floating descriptors.
        threshold: keep rows with ``ratio <= threshold`` (finite, ``>= 0``).
        block_rows: rows of ``a`` per block (default: keep a block under ~64 MB).

    Returns:
        :class:`RatioMatches` ``(scores (P,), pairs (P, 2), mask (N,), ratios (N,))``: the kept
        nearest-neighbour matches, the boolean mask over rows of ``a`` and every row's ratio
        (float64, formed from the computed distances; ``mask == (ratios <= threshold)``).
        With ``M == 0`` nothing is kept (``mask`` all False, ``ratios`` all ``inf``).

    Raises:
        MatchError: as :func:`nearest`, or a negative / non-finite threshold.
    """
    dtype = _check_descriptors(a, b)
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise MatchError(f"threshold must be a number, got {threshold!r}") from None
    if not thr >= 0.0 or thr == float("inf"):
        raise MatchError(f"threshold must be finite and >= 0, got {threshold!r}")
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        mask = torch.zeros((n,), dtype=torch.bool, device=a.device)
        ratios = torch.full((n,), math.inf, dtype=_wide(a.device), device=a.device)
        return RatioMatches(*_empty(a, dtype), mask, ratios)
    idx = a.new_empty((n,), dtype=torch.int64)
    best = a.new_empty((n,), dtype=dtype)
    # The ratio of the two distances is formed in float64 and compared with the (float64)
    # threshold, so e.g. d1 / d2 = 4 / 5 passes threshold 0.8 as it should.
    wide = _wide(a.device)
    ratios = a.new_empty((n,), dtype=wide)
    for start, s in _blocks(a, b, dtype, block_rows):
        rows = slice(start, start + s.shape[0])
        j = s.argmax(dim=1)
        idx[rows] = j
        best[rows] = s.gather(1, j[:, None])[:, 0]
        if m == 1:
            ratios[rows] = 0.0
            continue
        top2 = s.topk(2, dim=1).values  # values are order-independent of tie-breaking
        d1 = (1.0 - top2[:, 0]).clamp_min(0.0)
        d2 = (1.0 - top2[:, 1]).clamp_min(0.0)
        d1, d2 = d1.to(wide), d2.to(wide)
        ratios[rows] = torch.where(d2 > 0, d1 / d2.clamp_min(torch.finfo(wide).tiny), 1.0)
    mask = ratios <= thr
    rows = torch.arange(n, device=a.device)
    return RatioMatches(best[mask], _pairs(rows[mask], idx[mask]), mask, ratios)


@torch.no_grad()
def top_k(a: Tensor, b: Tensor, k: int, *, block_rows: int | None = None) -> TopK:
    """The ``k`` most similar rows of ``b`` for every row of ``a``.

    Args:
        a: ``(N, C)`` floating descriptors.
        b: ``(M, C)`` floating descriptors.
        k: neighbours per row, ``0 <= k <= M``.
        block_rows: rows of ``a`` per block (default: keep a block under ~64 MB).

    Returns:
        :class:`TopK` ``(scores (N, k), indices (N, k) int64)``, best first; equal scores are
        listed in increasing index order (a stable sort), so column 0 equals :func:`nearest`.

    Raises:
        MatchError: as :func:`nearest`, or ``k`` not an integer in ``[0, M]``.
    """
    dtype = _check_descriptors(a, b)
    n, m = a.shape[0], b.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise MatchError(f"k must be a non-negative integer, got {k!r}")
    if k > m:
        raise MatchError(f"k = {k} exceeds the number of candidates M = {m}")
    scores = a.new_empty((n, k), dtype=dtype)
    indices = a.new_empty((n, k), dtype=torch.int64)
    if n == 0 or k == 0:
        return TopK(scores, indices)
    for start, s in _blocks(a, b, dtype, block_rows):
        rows = slice(start, start + s.shape[0])
        if k == 1:  # argmax already breaks ties by lowest index
            j = s.argmax(dim=1, keepdim=True)
            scores[rows], indices[rows] = s.gather(1, j), j
        else:
            vals, order = torch.sort(s, dim=1, descending=True, stable=True)
            scores[rows], indices[rows] = vals[:, :k], order[:, :k]
    return TopK(scores, indices)


# =============================================================================== feature maps


def _map_grid(
    fmap: Tensor, size: Size | PixelGrid | None, grid: PixelGrid | None, name: str
) -> PixelGrid:
    """Resolve a map's output grid from a size, a PixelGrid (either argument) or neither."""
    if grid is None and isinstance(size, PixelGrid):
        grid, size = size, None
    return resolve_grid(tuple(fmap.shape[-2:]), size, grid, names=(f"{name}_size", f"{name}_grid"))


def _check_map(t: Tensor, name: str, ndims: tuple[int, ...]) -> None:
    """Shape/type check of a feature map (values are checked by the reference functions)."""
    if not isinstance(t, Tensor):
        raise MatchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim not in ndims:
        want = " or ".join({3: "(C, h, w)", 4: "(B, C, h, w)"}[d] for d in ndims)
        raise MatchError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _check_pair(src_map: Tensor, tgt_map: Tensor) -> None:
    if src_map.shape[0] != tgt_map.shape[-3]:
        raise MatchError(
            f"channel mismatch: src_map has {src_map.shape[0]}, tgt_map has {tgt_map.shape[-3]}"
        )
    if src_map.device != tgt_map.device:
        raise MatchError(
            f"src_map and tgt_map are on different devices: {src_map.device}, {tgt_map.device}"
        )


def _feature_stride(grid: PixelGrid) -> float:
    """Output pixels per feature cell of ``grid``: ``max(1 / sx, 1 / sy)`` (``max(H/h, W/w)``
    for an interpolate grid)."""
    sx, sy = grid.scale
    return max(1.0 / abs(sx), 1.0 / abs(sy))


@torch.no_grad()
def match_points(
    src_map: Tensor,
    tgt_map: Tensor,
    points: Tensor | Sequence[Sequence[float]],
    src_size: Size | PixelGrid | None = None,
    tgt_size: Size | PixelGrid | None = None,
    *,
    src_grid: PixelGrid | None = None,
    tgt_grid: PixelGrid | None = None,
    mutual: bool = False,
    radius: float | None = None,
    refine: str = "none",
    refine_window: int = DEFAULT_WINDOW,
    refine_temperature: float = DEFAULT_TEMPERATURE,
) -> MapMatches:
    """Match source pixels to their best target pixels (DIFT-style cosine argmax).

    Each point's descriptor is sampled bilinearly from ``src_map`` on the source grid
    (:func:`sample_descriptors`); its match is the exact cosine argmax over ``tgt_map``
    bilinearly upsampled onto the target grid (ties: lowest ``y * W + x``).

    Cycle consistency (``mutual=True``): the descriptor of ``tgt_map`` at each found target
    pixel is matched back into the source grid the same way; a point is mutual when the round
    trip lands within ``radius`` pixels (Euclidean, inclusive) of where it started. The default
    radius is one source feature stride, ``max(H / h, W / w)`` pixels (``1 / scale`` of an
    explicit grid; 1 on the feature grid).

    Args:
        src_map: ``(C, h, w)`` floating source feature map.
        tgt_map: ``(C, h', w')`` target map, or ``(B, C, h', w')`` to match the same points into
            ``B`` targets.
        points: ``(K, 2)`` ``(x, y)`` source pixels (int or float), within
            ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; ``K = 0`` is allowed.
        src_size: source image size ``(H, W)`` (interpolate grid), a :class:`PixelGrid`, or None
            for the feature grid ``(h, w)``.
        tgt_size: the same for the target, ``(H', W')``.
        src_grid: explicit source :class:`PixelGrid` (instead of ``src_size``).
        tgt_grid: explicit target :class:`PixelGrid` (instead of ``tgt_size``).
        mutual: also compute the cycle-consistency flags.
        radius: round-trip tolerance in source pixels (``>= 0``); default one feature stride.
        refine, refine_window, refine_temperature: sub-pixel refinement of the target pixels
            (``"none"``, ``"softargmax"``, ``"quadratic"``), as in
            :func:`~cleandift_rt.matching.cosine_argmax`; the cycle check starts from the
            refined positions.

    Returns:
        :class:`MapMatches` on ``tgt_map.device``: ``source`` (float32, or the points' floating
        dtype), ``target`` int64 (float32 when refined), ``scores`` float32, ``mutual`` bool
        or None; a leading ``B`` on every field for a batched ``tgt_map``.

    Raises:
        MatchError: bad shapes, dtypes or grids, NaN/Inf features, points outside the source
            grid, mismatched channels or devices, negative radius, bad refine values.
    """
    check_refine(refine, refine_window, refine_temperature)
    _check_map(src_map, "src_map", (3,))
    _check_map(tgt_map, "tgt_map", (3, 4))
    _check_pair(src_map, tgt_map)
    sgrid = _map_grid(src_map, src_size, src_grid, "src")
    tgrid = _map_grid(tgt_map, tgt_size, tgt_grid, "tgt")
    if radius is None:
        radius = _feature_stride(sgrid)
    else:
        try:
            radius = float(radius)
        except (TypeError, ValueError):
            raise MatchError(f"radius must be a number, got {radius!r}") from None
        if not radius >= 0.0:
            raise MatchError(f"radius must be >= 0, got {radius!r}")

    dev = tgt_map.device
    pts = torch.as_tensor(points, device=dev)
    if pts.numel() == 0:
        pts = pts.reshape(0, 2)
    src_pts = pts if pts.is_floating_point() else pts.to(torch.float32)
    queries = sample_descriptors(src_map, pts, sgrid)  # (K, C); validates the points
    k = queries.shape[0]

    batched = tgt_map.ndim == 4
    if batched:
        b = tgt_map.shape[0]
        queries = queries[None].expand(b, k, queries.shape[1])
    refined = {}
    if refine != "none":
        refined = {"refine": refine, "refine_window": refine_window}
        refined["refine_temperature"] = refine_temperature
    target, scores = _argmax(queries, tgt_map, grid=tgrid, **refined)  # (B?, K, 2), (B?, K)

    flags = None
    if mutual:
        back_q = sample_descriptors(tgt_map, target.to(torch.float32), tgrid)  # (B?, K, C)
        # One pass over the source map for all batches' queries.
        back, _ = _argmax(back_q.reshape(-1, back_q.shape[-1]), src_map, grid=sgrid)
        wide = _wide(dev)
        back = back.reshape(target.shape).to(wide)
        dist = torch.linalg.vector_norm(back - src_pts.to(wide), dim=-1)
        flags = dist <= radius

    if batched:
        src_pts = src_pts[None].expand(tgt_map.shape[0], k, 2).clone()
    return MapMatches(src_pts, target, scores, flags)


@torch.no_grad()
def dense_matches(
    src_map: Tensor,
    tgt_map: Tensor,
    src_size: Size | PixelGrid | None = None,
    tgt_size: Size | PixelGrid | None = None,
    *,
    src_grid: PixelGrid | None = None,
    tgt_grid: PixelGrid | None = None,
    stride: int = 1,
    chunk: int | None = None,
) -> DenseMatches:
    """Match every ``stride``-th pixel of the source grid into the target grid.

    Source pixels are ``(x, y)`` for ``y in range(0, H, stride)``, ``x in range(0, W, stride)``
    in row-major order; each is matched as in :func:`match_points`. With both sizes None the
    feature grids themselves are matched (one pixel per feature cell). Queries are processed
    ``chunk`` at a time, so memory stays bounded for any image size.

    Args:
        src_map: ``(C, h, w)`` floating source feature map.
        tgt_map: ``(C, h', w')`` floating target feature map.
        src_size: source image size ``(H, W)``, a :class:`PixelGrid`, or None (feature grid).
        tgt_size: target image size ``(H', W')``, a :class:`PixelGrid`, or None (feature grid).
        src_grid: explicit source :class:`PixelGrid` (instead of ``src_size``).
        tgt_grid: explicit target :class:`PixelGrid` (instead of ``tgt_size``).
        stride: source pixel step (positive integer).
        chunk: queries per chunk (default 4096).

    Returns:
        :class:`DenseMatches` ``(source (P, 2) int64, target (P, 2) int64, scores (P,) float32)``
        on ``tgt_map.device`` with ``P = ceil(H / stride) * ceil(W / stride)``.

    Raises:
        MatchError: as :func:`match_points`, or a bad ``stride`` / ``chunk``.
    """
    _check_map(src_map, "src_map", (3,))
    _check_map(tgt_map, "tgt_map", (3,))
    _check_pair(src_map, tgt_map)
    check_positive_int(stride, "stride")
    check_positive_int(chunk, "chunk")
    chunk = _DENSE_CHUNK if chunk is None else chunk
    sgrid = _map_grid(src_map, src_size, src_grid, "src")
    tgrid = _map_grid(tgt_map, tgt_size, tgt_grid, "tgt")

    dev = tgt_map.device
    big_h, big_w = sgrid.size
    ys = torch.arange(0, big_h, stride, device=dev)
    xs = torch.arange(0, big_w, stride, device=dev)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    source = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (P, 2) int64, row-major
    p = source.shape[0]
    target = torch.empty((p, 2), dtype=torch.int64, device=dev)
    scores = torch.empty((p,), dtype=torch.float32, device=dev)
    for start in range(0, p, chunk):
        sl = slice(start, start + chunk)
        queries = sample_descriptors(src_map, source[sl], sgrid)
        target[sl], scores[sl] = _argmax(queries, tgt_map, grid=tgrid)
    return DenseMatches(source, target, scores)
