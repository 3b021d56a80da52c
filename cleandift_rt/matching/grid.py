"""Mapping between output pixel grids and low-resolution feature grids.

Conventions used throughout :mod:`cleandift_rt.matching`:

* Sizes are ``(H, W)`` / ``(h, w)`` (torch order); points and per-axis factors are ``(x, y)``.
* Pixel centres sit at integer coordinates, so an image of width ``W`` covers ``[-0.5, W - 0.5]``.
* Feature cell ``j`` has its centre at feature coordinate ``u = j``.
* An output pixel ``(x, y)`` maps to feature coordinates ``u = x * sx + tx``, ``v = y * sy + ty``.
* Bilinear sampling clamps the feature coordinate to ``[0, n - 1]`` before interpolating, which is
  exactly what ``F.interpolate(mode="bilinear", align_corners=False)`` does at the borders.

Index arithmetic is done in float64 on the CPU (the tables are tiny), so results agree with
``F.interpolate`` up to PyTorch's own float32 rounding of the source coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cleandift_rt.errors import MatchError

__all__ = ["PixelGrid", "bilinear_weights"]


def _pair(value: float | tuple[float, float] | list[float], name: str) -> tuple[float, float]:
    """Normalise a scalar or a 2-sequence to a pair of finite floats."""
    if isinstance(value, (int, float)):
        pair = (float(value), float(value))
    else:
        try:
            a, b = value
            pair = (float(a), float(b))
        except (TypeError, ValueError):
            raise MatchError(
                f"{name} must be a number or a pair of numbers, got {value!r}"
            ) from None
    if not all(math.isfinite(v) for v in pair):
        raise MatchError(f"{name} must be finite, got {pair}")
    return pair


def _size(value: tuple[int, int] | list[int] | torch.Size, name: str) -> tuple[int, int]:
    """Normalise a (rows, cols) size to a pair of positive ints."""
    try:
        a, b = value
        if isinstance(a, bool) or isinstance(b, bool) or int(a) != a or int(b) != b:
            raise ValueError
        size = (int(a), int(b))
    except (TypeError, ValueError):
        raise MatchError(f"{name} must be a pair of integers (H, W), got {value!r}") from None
    if size[0] < 1 or size[1] < 1:
        raise MatchError(f"{name} must be positive, got {size}")
    return size


def bilinear_weights(coords: Tensor, n_cells: int) -> tuple[Tensor, Tensor]:
    """Two-tap linear interpolation weights along one axis, with edge clamping.

    Args:
        coords: ``(N,)`` float tensor of feature-cell coordinates (cell ``j`` centred at ``j``).
        n_cells: number of feature cells ``n >= 1`` along the axis.

    Returns:
        ``(indices, weights)``: ``indices`` ``(N, 2)`` int64 with the lower and upper neighbour
        cell, ``weights`` ``(N, 2)`` in ``coords.dtype`` (summing to 1). The coordinate is first
        clamped to ``[0, n - 1]``; at the upper edge both indices are ``n - 1``.
    """
    u = coords.clamp(0.0, float(n_cells - 1))
    lo = u.floor().to(torch.int64).clamp_(max=n_cells - 1)
    hi = (lo + 1).clamp_(max=n_cells - 1)
    frac = u - lo.to(u.dtype)
    return torch.stack([lo, hi], dim=-1), torch.stack([1.0 - frac, frac], dim=-1)


@dataclass(frozen=True)
class PixelGrid:
    """An output pixel grid of ``size = (H, W)`` and its affine map to feature-cell coordinates.

    A pixel ``(x, y)`` maps to ``u = x * scale[0] + shift[0]`` and ``v = y * scale[1] + shift[1]``
    (``u`` along feature width ``w``, ``v`` along feature height ``h``).

    Attributes:
        size: ``(H, W)`` of the output grid.
        scale: ``(sx, sy)``, feature cells per output pixel along x and y.
        shift: ``(tx, ty)``, feature coordinate of output pixel 0 along x and y.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    shift: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size(self.size, "grid size"))
        object.__setattr__(self, "scale", _pair(self.scale, "grid scale"))
        object.__setattr__(self, "shift", _pair(self.shift, "grid shift"))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def interpolate(cls, feature_size: tuple[int, int], out_size: tuple[int, int]) -> PixelGrid:
        """The ``F.interpolate(size=out_size, mode="bilinear", align_corners=False)`` grid.

        Per axis ``scale = n_feat / n_out`` and ``shift = 0.5 * scale - 0.5``.
        """
        h, w = _size(feature_size, "feature size")
        big_h, big_w = _size(out_size, "output size")
        sx, sy = w / big_w, h / big_h
        return cls((big_h, big_w), (sx, sy), (0.5 * sx - 0.5, 0.5 * sy - 0.5))

    @classmethod
    def identity(cls, feature_size: tuple[int, int]) -> PixelGrid:
        """The feature grid itself: output pixel ``(x, y)`` is feature cell ``(x, y)``."""
        return cls(_size(feature_size, "feature size"), (1.0, 1.0), (0.0, 0.0))

    @classmethod
    def from_input_transform(
        cls,
        original_size: tuple[int, int],
        input_scale: float | tuple[float, float],
        input_offset: float | tuple[float, float],
        stride: float | tuple[float, float],
    ) -> PixelGrid:
        """Grid over an original image that was resized/padded into the network input.

        An original pixel ``x`` lands at network-input coordinate
        ``x_in = (x + 0.5) * s_in - 0.5 + o`` and feature cell ``j`` is centred at
        ``x_in = (j + 0.5) * stride - 0.5``, hence
        ``u = x * (s_in / stride) + ((0.5 * s_in + o) / stride - 0.5)`` (same for y).

        Args:
            original_size: ``(H, W)`` of the original image (the output grid).
            input_scale: ``(sx_in, sy_in)`` network-input pixels per original pixel (or a scalar).
            input_offset: ``(ox, oy)`` offset in network-input pixels, e.g. padding (or a scalar).
            stride: ``(stride_x, stride_y)`` network-input pixels per feature cell (or a scalar).
        """
        size = _size(original_size, "original size")
        s_in = _pair(input_scale, "input scale")
        off = _pair(input_offset, "input offset")
        st = _pair(stride, "stride")
        if st[0] <= 0 or st[1] <= 0 or s_in[0] <= 0 or s_in[1] <= 0:
            raise MatchError(f"input scale and stride must be positive, got {s_in} and {st}")
        scale = (s_in[0] / st[0], s_in[1] / st[1])
        shift = (
            (0.5 * s_in[0] + off[0]) / st[0] - 0.5,
            (0.5 * s_in[1] + off[1]) / st[1] - 0.5,
        )
        return cls(size, scale, shift)

    # ------------------------------------------------------------------ mapping

    def axis_weights(
        self,
        axis: Literal["x", "y"],
        n_cells: int,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Bilinear taps for every output pixel along one axis.

        Args:
            axis: ``"x"`` (``W`` output columns onto ``n_cells = w``) or ``"y"`` (``H`` rows onto
                ``n_cells = h``).
            n_cells: number of feature cells along that axis.
            device: device of the returned tensors.

        Returns:
            ``indices`` ``(n_out, 2)`` int64 and ``weights`` ``(n_out, 2)`` float32.
        """
        if axis not in ("x", "y"):
            raise MatchError(f"axis must be 'x' or 'y', got {axis!r}")
        if n_cells < 1:
            raise MatchError(f"feature axis must have at least one cell, got {n_cells}")
        i = 0 if axis == "x" else 1
        n_out = self.size[1 - i]
        coords = torch.arange(n_out, dtype=torch.float64) * self.scale[i] + self.shift[i]
        idx, wts = bilinear_weights(coords, n_cells)
        return idx.to(device), wts.to(device=device, dtype=torch.float32)

    def feature_coords(self, points: Tensor) -> Tensor:
        """Map output pixel points to (unclamped) feature coordinates.

        Args:
            points: ``(..., 2)`` real tensor of ``(x, y)`` pixel coordinates.

        Returns:
            ``(..., 2)`` float64 CPU tensor of ``(u, v)`` feature coordinates (float64 is not
            available on every accelerator; move the result where it is needed).
        """
        p = points.detach().to(device="cpu", dtype=torch.float64)
        scale = torch.tensor(self.scale, dtype=torch.float64)
        shift = torch.tensor(self.shift, dtype=torch.float64)
        return p * scale + shift

    def contains(self, points: Tensor) -> Tensor:
        """``(...,)`` bool mask of points inside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (NaN: False).

        Args:
            points: ``(..., 2)`` real tensor of ``(x, y)`` pixel coordinates.
        """
        big_h, big_w = self.size
        x, y = points[..., 0], points[..., 1]
        return (x >= -0.5) & (x <= big_w - 0.5) & (y >= -0.5) & (y <= big_h - 0.5)
