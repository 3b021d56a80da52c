"""``cosine_argmax``: the exact upsampled cosine argmax on the fastest exact backend.

* ``"triton"``: fused Triton kernels (:mod:`.triton_argmax`), the default for CUDA tensors when
  ``triton`` is importable (and not in interpreter mode);
* ``"lowres"``: the low-resolution torch method (:mod:`.lowres`), the default otherwise;
* ``"reference"``: the banded reference (:mod:`.reference`), the ground truth.

All three return the same matches (up to float32 rounding) with the same ties and errors.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.frontend import resolve_grid
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cosine_argmax_lowres
from cleandift_rt.matching.reference import cosine_argmax_reference
from cleandift_rt.matching.refine import (
    DEFAULT_TEMPERATURE,
    DEFAULT_WINDOW,
    check_refine,
    refine_matches,
)
from cleandift_rt.matching.triton_argmax import (
    cosine_argmax_triton,
    interpreting,
    triton_available,
)

__all__ = ["BACKENDS", "cosine_argmax", "select_backend"]

Backend = Literal["auto", "triton", "lowres", "reference"]
Refine = Literal["none", "softargmax", "quadratic"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "lowres", "reference")
_IMPLEMENTATIONS = {
    "triton": cosine_argmax_triton,
    "lowres": cosine_argmax_lowres,
    "reference": cosine_argmax_reference,
}


def select_backend(target: Tensor, backend: str = "auto") -> str:
    """The backend that ``cosine_argmax`` runs for ``target`` (``"auto"`` resolved).

    Raises:
        MatchError: unknown backend name.
    """
    if backend not in BACKENDS:
        raise MatchError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend != "auto":
        return backend
    # Compiled kernels only: under TRITON_INTERPRET=1 the torch method is far faster.
    if isinstance(target, Tensor) and target.is_cuda and triton_available() and not interpreting():
        return "triton"
    return "lowres"


def cosine_argmax(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
    backend: Backend = "auto",
    refine: Refine = "none",
    refine_window: int = DEFAULT_WINDOW,
    refine_temperature: float = DEFAULT_TEMPERATURE,
) -> tuple[Tensor, Tensor]:
    """Best-matching output pixel of each query in the bilinearly upsampled target map.

    Exactly the naive DIFT pipeline (upsample the map with ``F.interpolate(mode="bilinear",
    align_corners=False)``, ``F.normalize`` every pixel, dot with the normalised queries,
    argmax over pixels), without ever building the upsampled map, on the fastest exact backend.

    Args:
        queries: ``(K, C)`` descriptors, or ``(B, K, C)`` for a batched target (any float dtype).
        target: ``(C, h, w)`` feature map, or a batch ``(B, C, h, w)``.
        out_size: ``(H, W)``: match on the ``F.interpolate`` grid of that size.
        grid: an explicit :class:`PixelGrid` (mutually exclusive with ``out_size``). With neither,
            the feature grid itself is searched.
        backend: ``"auto"`` (compiled Triton for CUDA tensors when available, else ``"lowres"``),
            or force ``"lowres"``, ``"triton"`` (CUDA, or the CPU interpreter under
            ``TRITON_INTERPRET=1``) or ``"reference"`` (the banded ground truth).
        refine: ``"none"``, or sub-pixel refinement after the argmax (any backend):
            ``"softargmax"`` (temperature softmax of the exact upsampled cosine over the
            ``(2 · refine_window + 1)²`` px window around the argmax) or ``"quadratic"``
            (separable parabola through the 3 × 3 neighbourhood); see :mod:`.refine`.
        refine_window: soft-argmax half-width in output pixels (integer ``>= 1``).
        refine_temperature: soft-argmax temperature in cosine units (``> 0``).

    Returns:
        ``coords`` ``(K, 2)`` int64 ``(x, y)`` (float32 when refined) and ``scores`` ``(K,)``
        float32 cosine similarity at the integer argmax (``(B, K, 2)`` and ``(B, K)`` when
        batched), on ``target.device``; ties go to the lowest ``y * W + x``.

    Raises:
        MatchError: unknown backend or refine mode, bad refine window / temperature, Triton
            forced but unusable, or bad inputs.
    """
    check_refine(refine, refine_window, refine_temperature)
    chosen = select_backend(target, backend)
    coords, scores = _IMPLEMENTATIONS[chosen](queries, target, out_size, grid=grid)
    if refine == "none":
        return coords, scores
    g = resolve_grid(tuple(target.shape[-2:]), out_size, grid)
    if target.ndim == 3:
        return refine_matches(
            queries, target, g, coords, refine, refine_window, refine_temperature
        ), scores
    refined = (
        torch.stack(
            [
                refine_matches(q, t, g, c, refine, refine_window, refine_temperature)
                for q, t, c in zip(queries, target, coords)
            ]
        )
        if target.shape[0]
        else coords.to(torch.float32)
    )
    return refined, scores
