"""What every cosine-argmax backend shares: input checks, the output grid, and the outer
wrapper (batch axis, per-map call, flat index → (x, y)).

A backend supplies only ``match_one(q (K, C), t (C, h, w), rows, cols) → (flat (K,) int64,
scores (K,) float32)`` for one target map; :func:`argmax_over_maps` does the rest, so the
reference, the low-resolution method and the Triton kernels agree on shapes, errors and ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.grid import PixelGrid

#: Denominator floor of ``F.normalize`` (the naive pipeline's), used by every backend.
NORM_EPS = 1e-12

AxisWeights = tuple[Tensor, Tensor]
MatchOne = Callable[[Tensor, Tensor, AxisWeights, AxisWeights], tuple[Tensor, Tensor]]


def all_finite(t: Tensor) -> bool:
    """True when ``t`` holds no NaN/Inf. ``aminmax`` propagates NaN and keeps ±Inf, so one
    reduction decides without the full-size temporaries of ``isfinite(t).all()`` (an ``abs``
    copy plus a bool map: 14 MB for a 320 × 96² float32 map)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_positive_int(value: object, name: str, *, optional: bool = True) -> None:
    """MatchError unless ``value`` is a positive int (or None when ``optional``); bools are
    refused."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MatchError(f"{name} must be a positive integer, got {value!r}")


def check_features(t: Tensor, name: str, ndims: tuple[int, ...]) -> None:
    """Validate a floating, finite, non-degenerate feature tensor."""
    if not isinstance(t, Tensor):
        raise MatchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise MatchError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise MatchError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if any(s == 0 for s in t.shape[-3:]):
        raise MatchError(f"{name} has an empty channel or spatial dimension: {tuple(t.shape)}")
    if not all_finite(t):
        raise MatchError(f"{name} contains NaN or Inf values")


def resolve_grid(
    feature_size: tuple[int, int],
    out_size: tuple[int, int] | Sequence[int] | None,
    grid: PixelGrid | None,
    *,
    names: tuple[str, str] = ("out_size", "grid"),
) -> PixelGrid:
    """The output grid: explicit ``grid``, the ``F.interpolate`` grid of ``out_size``, or the
    feature grid itself. ``names``: the two arguments' names in error messages."""
    if grid is not None and out_size is not None:
        raise MatchError(f"give either {names[0]} or {names[1]}, not both")
    if grid is not None:
        if not isinstance(grid, PixelGrid):
            raise MatchError(f"{names[1]} must be a PixelGrid, got {type(grid).__name__}")
        return grid
    if out_size is not None:
        return PixelGrid.interpolate(feature_size, tuple(out_size))  # type: ignore[arg-type]
    return PixelGrid.identity(feature_size)


def check_inputs(queries: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Validate ``queries`` / ``target`` (shared by every cosine_argmax backend).

    Returns:
        ``(queries (B, K, C), target (B, C, h, w), batched)``: views with a batch axis added when
        the inputs were unbatched.

    Raises:
        MatchError: bad shapes or dtypes, mismatched batch or channels, NaN/Inf values.
    """
    check_features(target, "target", (3, 4))
    batched = target.ndim == 4
    if not isinstance(queries, Tensor):
        raise MatchError(f"queries must be a torch.Tensor, got {type(queries).__name__}")
    if queries.ndim != (3 if batched else 2):
        shape = "(B, K, C)" if batched else "(K, C)"
        raise MatchError(f"queries must have shape {shape}, got {tuple(queries.shape)}")
    if batched and queries.shape[0] != target.shape[0]:
        raise MatchError(
            f"batch sizes differ: queries {queries.shape[0]}, target {target.shape[0]}"
        )
    if queries.shape[-1] != target.shape[-3]:
        raise MatchError(
            f"channel mismatch: queries have {queries.shape[-1]}, target has {target.shape[-3]}"
        )
    if not queries.is_floating_point():
        raise MatchError(f"queries must be a floating-point tensor, got {queries.dtype}")
    if not all_finite(queries):
        raise MatchError("queries contain NaN or Inf values")
    if batched:
        return queries, target, True
    return queries[None], target[None], False


def argmax_over_maps(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None,
    grid: PixelGrid | None,
    match_one: MatchOne,
    check: Callable[[Tensor, PixelGrid], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """The outer wrapper of every backend: validate, resolve the output grid, run
    ``match_one`` per target map (queries moved to the target's device, K > 0 only) and turn
    flat indices ``y * W + x`` into ``(x, y)``. ``check(target (B, C, h, w), grid)`` runs
    after validation, before any work.

    Returns ``coords`` ``(K, 2)`` int64 and ``scores`` ``(K,)`` float32 (``(B, K, 2)`` and
    ``(B, K)`` for a batched target), on ``target.device``.
    """
    qs, tgt, batched = check_inputs(queries, target)
    b, _, h, w = tgt.shape
    k = qs.shape[1]
    g = resolve_grid((h, w), out_size, grid)
    if check is not None:
        check(tgt, g)
    big_w = g.size[1]
    dev = tgt.device
    coords = torch.zeros((b, k, 2), dtype=torch.int64, device=dev)
    scores = torch.zeros((b, k), dtype=torch.float32, device=dev)
    if k > 0:
        rows = g.axis_weights("y", h, device=dev)
        cols = g.axis_weights("x", w, device=dev)
        qs = qs.to(dev)
        for i in range(b):
            flat, best = match_one(qs[i], tgt[i], rows, cols)
            coords[i, :, 0] = flat % big_w
            coords[i, :, 1] = flat // big_w
            scores[i] = best
    return (coords, scores) if batched else (coords[0], scores[0])
