"""Pick the fastest exact cosine-argmax implementation for the inputs at hand.

* ``"triton"``: fused Triton kernels (:mod:`.triton_argmax`), the default for CUDA tensors when
  ``triton`` is importable (and not in interpreter mode);
* ``"torch"``: the low-resolution torch method (:mod:`.lowres`), the default otherwise;
* ``"reference"``: the banded reference (:mod:`.reference`), the ground truth.

All three return the same matches (up to float32 rounding) with the same ties and errors.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cosine_argmax_lowres
from cleandift_rt.matching.reference import cosine_argmax
from cleandift_rt.matching.triton_argmax import (
    cosine_argmax_triton,
    interpreting,
    triton_available,
)

__all__ = ["BACKENDS", "cosine_argmax_fast", "select_backend"]

Backend = Literal["auto", "torch", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "reference")


def select_backend(target: Tensor, backend: str = "auto") -> str:
    """The backend that ``cosine_argmax_fast`` runs for ``target`` (``"auto"`` resolved).

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
    return "torch"


def cosine_argmax_fast(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """:func:`~cleandift_rt.matching.reference.cosine_argmax` on the fastest exact backend.

    Args:
        queries: ``(K, C)`` descriptors, or ``(B, K, C)`` for a batched target (any float dtype).
        target: ``(C, h, w)`` feature map, or a batch ``(B, C, h, w)``.
        out_size: ``(H, W)``: match on the ``F.interpolate`` grid of that size.
        grid: an explicit :class:`PixelGrid` (mutually exclusive with ``out_size``).
        backend: ``"auto"`` (compiled Triton for CUDA tensors when available, else torch), or force
            ``"torch"``, ``"triton"`` (CUDA, or the CPU interpreter under ``TRITON_INTERPRET=1``)
            or ``"reference"``.

    Returns:
        ``coords`` ``(K, 2)`` int64 ``(x, y)`` and ``scores`` ``(K,)`` float32 (``(B, K, 2)``
        and ``(B, K)`` when batched), on ``target.device``; ties go to the lowest ``y * W + x``.

    Raises:
        MatchError: unknown backend, Triton forced but unusable, or bad inputs.
    """
    chosen = select_backend(target, backend)
    if chosen == "triton":
        return cosine_argmax_triton(queries, target, out_size, grid=grid)
    if chosen == "reference":
        return cosine_argmax(queries, target, out_size, grid=grid)
    return cosine_argmax_lowres(queries, target, out_size, grid=grid)
