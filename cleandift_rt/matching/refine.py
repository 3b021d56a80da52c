"""Sub-pixel refinement of cosine-argmax matches, from the low-resolution map.

After any backend has found each query's best integer pixel, the exact upsampled cosine is
evaluated in a window around it by :func:`cosine_at` (the same low-resolution dots and per-cell
Gram entries as the argmax; no upsampled map) and turned into float coordinates:

* ``"softargmax"``: ``Σ softmax(cos / T) · (x, y)`` over the square window of half-width
  ``window`` pixels (pixels outside the grid are left out);
* ``"quadratic"``: a parabola through the argmax and its two neighbours, separately along x and
  y; the vertex offset is clamped to ±0.5 px, and an axis without both neighbours inside the
  grid (or without a strict maximum) keeps its integer coordinate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.frontend import NORM_EPS
from cleandift_rt.matching.grid import PixelGrid, bilinear_weights
from cleandift_rt.matching.lowres import cell_gram

__all__ = ["REFINE_MODES", "check_refine", "cosine_at", "refine_matches"]

REFINE_MODES: tuple[str, ...] = ("none", "softargmax", "quadratic")
#: Defaults: a 9 × 9 px window, softmax temperature 0.01 (cosine units).
DEFAULT_WINDOW = 4
DEFAULT_TEMPERATURE = 0.01

# Gathered cell features per chunk of queries (C * K_chunk * box values): 32 MB of float64.
_DOTS_FLOATS = 4 * 1024 * 1024


def check_refine(refine: str, window: int, temperature: float) -> None:
    """MatchError (one line) unless ``refine`` is a known mode, ``window`` an int ``>= 1`` and
    ``temperature`` a finite number ``> 0``."""
    if refine not in REFINE_MODES:
        raise MatchError(f"refine must be one of {', '.join(REFINE_MODES)}; got {refine!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise MatchError(f"refine window must be an integer >= 1 pixel, got {window!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise MatchError(f"refine temperature must be a finite number > 0, got {temperature!r}")


def _pixel_inverse_norms(
    gram: Tensor, ri: Tensor, rw: Tensor, ci: Tensor, cw: Tensor, py: Tensor, px: Tensor
) -> Tensor:
    """``1 / max(‖F̂(p)‖, 1e-12)`` at pixels ``(px, py)`` (any equal shapes, int64), with the
    same separable formula as :func:`.lowres.inverse_norms`, in ``gram``'s dtype."""
    n, right, down, diag, anti = gram
    r0, r1 = ri[py, 0], ri[py, 1]
    c0, c1 = ci[px, 0], ci[px, 1]
    a1 = rw[py, 1].to(gram.dtype)
    a0 = 1.0 - a1
    b1 = cw[px, 1].to(gram.dtype)
    b0 = 1.0 - b1
    same_r = r1 == r0

    def row_interp(c: Tensor) -> tuple[Tensor, Tensor]:
        cross_n = torch.where(same_r, n[r0, c], down[r0, c])
        cross_x = torch.where(same_r, 2.0 * right[r0, c], diag[r0, c] + anti[r0, c])
        norm_g = a0 * a0 * n[r0, c] + a1 * a1 * n[r1, c] + 2.0 * a0 * a1 * cross_n
        right_g = a0 * a0 * right[r0, c] + a1 * a1 * right[r1, c] + a0 * a1 * cross_x
        return norm_g, right_g

    n0, right0 = row_interp(c0)
    n1, _ = row_interp(c1)
    cross = torch.where(c1 == c0, n0, right0)
    sq = b0 * b0 * n0 + b1 * b1 * n1 + 2.0 * b0 * b1 * cross
    return sq.clamp_min(0.0).sqrt().clamp_min(NORM_EPS).reciprocal()


def _axis_taps(
    grid: PixelGrid, i: int, n_cells: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``PixelGrid.axis_weights`` (``i``: 0 for x, 1 for y) with the weights kept in ``dtype``
    (float64 index arithmetic, as the grid does)."""
    coords = torch.arange(grid.size[1 - i], dtype=torch.float64) * grid.scale[i] + grid.shift[i]
    idx, wts = bilinear_weights(coords, n_cells)
    return idx.to(device), wts.to(device=device, dtype=dtype)


@torch.no_grad()
def cosine_at(queries: Tensor, target: Tensor, grid: PixelGrid, px: Tensor, py: Tensor) -> Tensor:
    """The exact upsampled cosine of each query at given integer output pixels.

    Equals ``cos(q_k, F.interpolate(target, grid)[:, py[k, p], px[k, p]])`` (bilinear,
    ``align_corners=False`` taps with edge clamping, as :class:`PixelGrid` gives) computed from
    the low-resolution dots ``q̂ · f_ij`` and the per-cell Gram entries of ``target``, like the
    argmax itself, but in float64 (float32 on MPS): the few window values are cheap, and the
    parabola of ``"quadratic"`` divides by differences of neighbouring cosines.

    Args:
        queries: ``(K, C)`` floating descriptors.
        target: ``(C, h, w)`` floating feature map.
        grid: the output :class:`PixelGrid` of ``target``.
        px, py: ``(K, P)`` int64 output columns / rows inside the grid.

    Returns:
        ``(K, P)`` float64 (MPS: float32) cosines on ``target.device``.
    """
    dev = target.device
    c, h, w = target.shape
    k = queries.shape[0]
    wide = torch.float32 if dev.type == "mps" else torch.float64
    out = torch.empty(px.shape, dtype=wide, device=dev)
    if k == 0 or px.numel() == 0:
        return out
    t = target.to(wide)
    ri, rw = _axis_taps(grid, 1, h, dev, wide)
    ci, cw = _axis_taps(grid, 0, w, dev, wide)
    px, py = px.to(dev), py.to(dev)
    inv = _pixel_inverse_norms(cell_gram(t).to(wide), ri, rw, ci, cw, py, px)  # (K, P)
    qn = F.normalize(queries.to(device=dev, dtype=wide), dim=1, eps=NORM_EPS)
    # Each query's pixels read a small box of cells: dots with those cells only (K × box,
    # not K × h·w), then the two lerps per pixel.
    r_lo = ri[py, 0].amin(dim=1)  # (K,)
    c_lo = ci[px, 0].amin(dim=1)
    box_h = int((ri[py, 1].amax(dim=1) - r_lo).max()) + 1
    box_w = int((ci[px, 1].amax(dim=1) - c_lo).max()) + 1
    rr = (r_lo[:, None] + torch.arange(box_h, device=dev)).clamp_(max=h - 1)  # (K, bh)
    cc = (c_lo[:, None] + torch.arange(box_w, device=dev)).clamp_(max=w - 1)  # (K, bw)
    cells = (rr[:, :, None] * w + cc[:, None, :]).reshape(k, -1)  # (K, bh·bw)
    y0 = (ri[py, 0] - r_lo[:, None]) * box_w
    y1 = (ri[py, 1] - r_lo[:, None]) * box_w
    x0, x1 = ci[px, 0] - c_lo[:, None], ci[px, 1] - c_lo[:, None]
    wy, wx = rw[py, 1], cw[px, 1]
    flat_t = t.reshape(c, h * w)
    step = max(1, _DOTS_FLOATS // (c * cells.shape[1]))
    for k0 in range(0, k, step):
        sl = slice(k0, k0 + step)
        f = flat_t[:, cells[sl]]  # (C, k, box)
        d = torch.einsum("kc,ckb->kb", qn[sl], f)  # (k, box)
        # Rows first, then columns: the interpolation order of the streamed argmax.
        left = torch.lerp(d.gather(1, y0[sl] + x0[sl]), d.gather(1, y1[sl] + x0[sl]), wy[sl])
        right = torch.lerp(d.gather(1, y0[sl] + x1[sl]), d.gather(1, y1[sl] + x1[sl]), wy[sl])
        out[sl] = torch.lerp(left, right, wx[sl]) * inv[sl]
    return out


def _square_offsets(radius: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(P,)`` int64 ``dx``, ``dy`` of the ``(2r + 1)²`` window, row-major."""
    d = torch.arange(-radius, radius + 1, dtype=torch.int64, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return dx.reshape(-1), dy.reshape(-1)


@torch.no_grad()
def refine_matches(
    queries: Tensor,
    target: Tensor,
    grid: PixelGrid,
    coords: Tensor,
    refine: str,
    window: int = DEFAULT_WINDOW,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Tensor:
    """Sub-pixel positions around integer argmax ``coords`` (see the module docstring).

    Args:
        queries: ``(K, C)`` floating descriptors.
        target: ``(C, h, w)`` floating feature map.
        grid: the output :class:`PixelGrid` the argmax searched.
        coords: ``(K, 2)`` int64 ``(x, y)`` argmax pixels.
        refine: ``"softargmax"`` or ``"quadratic"`` (``"none"`` returns ``coords`` as float32).
        window: soft-argmax half-width in output pixels (``>= 1``); quadratic uses 1.
        temperature: soft-argmax temperature (``> 0``) in cosine units.

    Returns:
        ``(K, 2)`` float32 ``(x, y)`` in the grid's pixels, on ``target.device``.
    """
    check_refine(refine, window, temperature)
    dev = target.device
    coords = coords.to(dev)
    out = coords.to(torch.float32)
    if refine == "none" or coords.shape[0] == 0:
        return out
    big_h, big_w = grid.size
    r = 1 if refine == "quadratic" else window
    dx, dy = _square_offsets(r, dev)
    px = coords[:, :1] + dx[None]  # (K, P)
    py = coords[:, 1:] + dy[None]
    inside = (px >= 0) & (px < big_w) & (py >= 0) & (py < big_h)
    s = cosine_at(queries, target, grid, px.clamp(0, big_w - 1), py.clamp(0, big_h - 1))
    if refine == "softargmax":
        logits = (s / float(temperature)).masked_fill(~inside, float("-inf"))
        p = torch.softmax(logits, dim=1)
        out[:, 0] = (p * px.to(s.dtype)).sum(1).to(torch.float32)
        out[:, 1] = (p * py.to(s.dtype)).sum(1).to(torch.float32)
        return out
    # Quadratic: the 3 × 3 window, row-major; centre 4, left 3, right 5, up 1, down 7.
    for axis, (lo, hi) in enumerate(((3, 5), (1, 7))):
        a, b, cen = s[:, lo], s[:, hi], s[:, 4]
        ok = inside[:, lo] & inside[:, hi]
        curv = a - 2.0 * cen + b
        ok &= curv < 0
        delta = torch.where(ok, 0.5 * (a - b) / torch.where(ok, curv, -1.0), 0.0)
        out[:, axis] += delta.clamp(-0.5, 0.5).to(torch.float32)
    return out
