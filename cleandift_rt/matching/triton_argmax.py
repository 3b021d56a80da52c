"""Triton kernels for the exact upsampled cosine argmax (CUDA, or Triton's CPU interpreter).

Same math as :mod:`cleandift_rt.matching.lowres`, in two kernels per target map:

1. ``_dots_kernel``: ``D = normalize(Q) @ F`` as a tiled ``tl.dot`` GEMM, ``(K, C) x (C, h·w)``,
   fp32 accumulation; the query norms are accumulated from the same tiles and applied at the end.
   ``D`` is stored transposed, ``(h·w, K)``, so a cell's dots for a block of queries are contiguous.
2. ``_argmax_kernel``: the fused epilogue. Output rows (columns) are cut into segments whose
   pixels share their two row (column) taps, so a patch = row segment x column segment shares its
   four corner cells. A program owns a block of queries and a range of row segments; per patch it
   loads the four corner vectors of ``D`` once, interpolates them for every pixel of the patch
   (rows, then columns, with the per-pixel weights), multiplies by the per-pixel inverse norm
   and updates a per-lane running max / argmax in registers. Only ``(K,)`` partial results per
   range are written; a tiny torch reduction over the ranges finishes. No gathers per pixel, and
   never a ``K × H·W`` matrix.

The Gram entries and the ``H × W`` inverse norms come from :func:`~.lowres.cell_gram` and
:func:`~.lowres.inverse_norms` (torch, once per target).

Triton is optional and imported on first use only: this module imports without it, and
:func:`cosine_argmax_triton` then raises :class:`~cleandift_rt.errors.MatchError`. Triton fixes
compiled vs interpreted mode when it is imported: with ``TRITON_INTERPRET=1`` set before that, the
kernels run in Triton's CPU interpreter (slow; for tests), on CPU or CUDA tensors; otherwise they
are compiled for CUDA tensors.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import torch
from torch import Tensor

from cleandift_rt.errors import MatchError
from cleandift_rt.matching.frontend import argmax_over_maps, check_positive_int
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cell_gram, inverse_norms

__all__ = ["cosine_argmax_triton", "interpreting", "triton_available"]

# Bound by _import_triton(); the kernels below look `tl` up in this module's globals.
triton: Any = None
tl: Any = None
_IMPORT_ERROR: str | None = None
_HALF = (torch.float16, torch.bfloat16)
_LOCK = threading.Lock()


def _import_triton() -> bool:
    """Import triton once (on first use, so callers can set ``TRITON_INTERPRET`` before)."""
    global triton, tl, _IMPORT_ERROR
    with _LOCK:
        if triton is None and _IMPORT_ERROR is None:
            try:
                import triton as triton_module
                import triton.language as tl_module
            except ImportError as exc:
                _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
            else:
                triton, tl = triton_module, tl_module
    return triton is not None


def triton_available() -> bool:
    """Whether ``triton`` imports (kernels then run on CUDA, or in the interpreter).

    Imports triton on the first call.
    """
    return _import_triton()


# --------------------------------------------------------------------------- kernels
# Plain functions, jitted on first use by _kernels().


def _dots_kernel(
    q_ptr,  # (K, C) queries, fp32 / fp16 / bf16
    f_ptr,  # (C, P) target cells, same dtype
    dt_ptr,  # (P, K) fp32 output: normalize(q) . f, transposed (queries contiguous per cell)
    K,
    C,
    P,
    stride_qk,
    stride_qc,
    stride_fc,
    stride_fp,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_FP32: tl.constexpr,  # upcast tiles and use IEEE fp32 dot (fp32 inputs, interpreter)
):
    pid_k = tl.program_id(0)
    pid_p = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    kmask = ks < K
    pmask = ps < P
    acc = tl.zeros((BLOCK_K, BLOCK_P), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        q = tl.load(
            q_ptr + ks[:, None].to(tl.int64) * stride_qk + cs[None, :] * stride_qc,
            mask=kmask[:, None] & cmask[None, :],
            other=0.0,
        )
        f = tl.load(
            f_ptr + cs[:, None].to(tl.int64) * stride_fc + ps[None, :] * stride_fp,
            mask=cmask[:, None] & pmask[None, :],
            other=0.0,
        )
        q32 = q.to(tl.float32)
        sumsq += tl.sum(q32 * q32, axis=1)
        if DOT_FP32:
            acc = tl.dot(q32, f.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(q, f, acc)  # fp16 / bf16 tensor cores, exact products, fp32 sums
    # F.normalize: q / max(|q|, eps), applied to the accumulated dots.
    scale = 1.0 / tl.maximum(tl.sqrt(sumsq), 1e-12)
    acc = acc * scale[:, None]
    tl.store(
        dt_ptr + ps[None, :].to(tl.int64) * K + ks[:, None],
        acc,
        mask=kmask[:, None] & pmask[None, :],
    )


def _argmax_kernel(
    dt_ptr,  # (P, K) fp32 dots, P = h * w cells
    inv_ptr,  # (H, W) fp32 inverse pixel norms
    a1_ptr,  # (H,) fp32 weight of each output row's upper tap
    b1_ptr,  # (W,) fp32 weight of each output column's right tap
    ry0_ptr,  # (SY,) int32 first output row of each row segment (rows sharing their taps)
    rlen_ptr,  # (SY,) int32 its length (<= BLOCK_Y)
    rr0_ptr,  # (SY,) int32 its lower row tap
    rr1_ptr,  # (SY,) int32 its upper row tap
    cx0_ptr,  # (SX,) int32 first output column of each column segment
    clen_ptr,  # (SX,) int32 its length (<= BLOCK_X)
    cc0_ptr,  # (SX,) int32 its left column tap
    cc1_ptr,  # (SX,) int32 its right column tap
    best_ptr,  # (n_ranges, K) fp32 partial maxima
    idx_ptr,  # (n_ranges, K) int32 partial flat argmax y * W + x
    K,
    w,
    W,
    n_row_seg,
    n_col_seg,
    segs_per_range,
    BLOCK_K: tl.constexpr,
    BLOCK_Y: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_r = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    lanes = tl.arange(0, BLOCK_Y * BLOCK_X)  # a BLOCK_Y x BLOCK_X patch of output pixels
    li = lanes // BLOCK_X
    lj = lanes % BLOCK_X
    # Per-lane running max / argmax. A lane sees its pixels in increasing flat order, so the
    # strict > keeps the lowest index among its ties; lanes are merged at the end.
    run_best = tl.full((BLOCK_K, BLOCK_Y * BLOCK_X), float("-inf"), dtype=tl.float32)
    run_idx = tl.full((BLOCK_K, BLOCK_Y * BLOCK_X), 0, dtype=tl.int32)
    seg_start = pid_r * segs_per_range
    seg_end = tl.minimum(seg_start + segs_per_range, n_row_seg)
    for rs in range(seg_start, seg_end):
        y0 = tl.load(ry0_ptr + rs)
        ylen = tl.load(rlen_ptr + rs)
        top = tl.load(rr0_ptr + rs) * w
        bot = tl.load(rr1_ptr + rs) * w
        ys = y0 + li
        ymask = li < ylen
        a1 = tl.load(a1_ptr + ys, mask=ymask, other=0.0)
        for cs in range(0, n_col_seg):
            x0 = tl.load(cx0_ptr + cs)
            xlen = tl.load(clen_ptr + cs)
            c0 = tl.load(cc0_ptr + cs)
            c1 = tl.load(cc1_ptr + cs)
            # The patch's four corner cells: one contiguous vector of queries each.
            d00 = tl.load(dt_ptr + (top + c0).to(tl.int64) * K + ks, mask=kmask, other=0.0)
            d01 = tl.load(dt_ptr + (top + c1).to(tl.int64) * K + ks, mask=kmask, other=0.0)
            d10 = tl.load(dt_ptr + (bot + c0).to(tl.int64) * K + ks, mask=kmask, other=0.0)
            d11 = tl.load(dt_ptr + (bot + c1).to(tl.int64) * K + ks, mask=kmask, other=0.0)
            xs = x0 + lj
            m = ymask & (lj < xlen)
            b1 = tl.load(b1_ptr + xs, mask=m, other=0.0)
            inv = tl.load(inv_ptr + ys * W + xs, mask=m, other=0.0)
            # Rows, then columns, lerp form: equal corners give exactly their value.
            left = d00[:, None] + a1[None, :] * (d10 - d00)[:, None]
            right = d01[:, None] + a1[None, :] * (d11 - d01)[:, None]
            s = (left + b1[None, :] * (right - left)) * inv[None, :]
            s = tl.where(m[None, :], s, float("-inf"))
            better = s > run_best
            run_best = tl.where(better, s, run_best)
            run_idx = tl.where(better, (ys * W + xs)[None, :], run_idx)
    best = tl.max(run_best, axis=1)
    # Lowest flat index among the lanes holding the maximum.
    best_idx = tl.min(tl.where(run_best == best[:, None], run_idx, 2147483647), axis=1)
    out = pid_r * K + ks
    tl.store(best_ptr + out, best, mask=kmask)
    tl.store(idx_ptr + out, best_idx, mask=kmask)


# --------------------------------------------------------------------------- host side


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter in this process.

    Triton decides at import time (``TRITON_INTERPRET=1`` must be set before ``import triton``):
    its own ``tl.*`` helpers are then interpreted functions, and kernels must match them.
    """
    if not _import_triton():
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return isinstance(tl.zeros, InterpretedFunction)


def _jit(fn: Any, interpret: bool) -> Any:
    """``triton.jit(fn)`` in the same mode (compiled / interpreted) as Triton's own helpers.

    ``triton.jit`` reads the interpreter setting when it decorates, so it is pinned for that call
    (the environment may have changed since ``import triton``).
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        with knobs.runtime.scope():
            knobs.runtime.interpret = interpret
            return triton.jit(fn)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return triton.jit(fn)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """``(dots_kernel, argmax_kernel)``, jitted on first use."""
    mode = interpreting()
    with _LOCK:
        return _jit(_dots_kernel, mode), _jit(_argmax_kernel, mode)


def _pow2(n: int, lo: int, hi: int) -> int:
    """The power of two ``>= n``, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def tap_segments(lo: Tensor, hi: Tensor, block: int) -> tuple[Tensor, ...]:
    """Split output rows (or columns) into runs sharing both taps, each at most ``block`` long.

    Args:
        lo, hi: ``(n,)`` int64 lower / upper taps of every output row (or column).
        block: the longest segment.

    Returns:
        ``(start, length, seg_lo, seg_hi)``, each ``(S,)`` int32 on ``lo.device``, in order.
    """
    lo_c, hi_c = lo.cpu(), hi.cpu()
    n = lo_c.shape[0]
    change = torch.ones(n, dtype=torch.bool)
    change[1:] = (lo_c[1:] != lo_c[:-1]) | (hi_c[1:] != hi_c[:-1])
    run_start = change.nonzero()[:, 0]
    run_len = torch.diff(run_start, append=torch.tensor([n]))
    pieces = (run_len + block - 1) // block
    run_of = torch.repeat_interleave(torch.arange(run_start.shape[0]), pieces)
    first_piece = torch.repeat_interleave(torch.cumsum(pieces, 0) - pieces, pieces)
    start = run_start[run_of] + (torch.arange(run_of.shape[0]) - first_piece) * block
    length = torch.minimum(run_start[run_of] + run_len[run_of] - start, torch.tensor(block))
    out = (start, length, lo_c[start], hi_c[start])
    return tuple(t.to(device=lo.device, dtype=torch.int32) for t in out)


def _match_one(
    q: Tensor,
    t: Tensor,
    rows: tuple[Tensor, Tensor],
    cols: tuple[Tensor, Tensor],
    row_ranges: int | None,
) -> tuple[Tensor, Tensor]:
    """Kernels for one map: ``q`` ``(K, C)``, ``t`` ``(C, h, w)`` (any float dtypes, K > 0).

    Returns ``(K,)`` int64 flat indices ``y * W + x`` and ``(K,)`` float32 scores.
    """
    interpret = interpreting()
    dots_kernel, argmax_kernel = _kernels()
    dev = t.device
    k, c = q.shape
    _, h, w = t.shape
    p = h * w
    big_h, big_w = rows[0].shape[0], cols[0].shape[0]

    # Inverse norms first: their float64 temporaries are freed before the dots exist, so the
    # peak is max(Gram phase, dots + inverse norms), not their sum.
    inv_norm = inverse_norms(cell_gram(t), rows, cols).contiguous()  # (H, W)
    # GEMM operands: keep fp16 / bf16 when both sides share it (tensor cores), else fp32.
    dot_dtype = q.dtype if (q.dtype == t.dtype and q.dtype in _HALF) else torch.float32
    qd = q.to(dot_dtype)
    fd = t.to(dot_dtype).reshape(c, p)
    dots_t = torch.empty((p, k), dtype=torch.float32, device=dev)
    bk, bp = _pow2(k, 16, 64), _pow2(p, 16, 64)
    bc = _pow2(c, 16, 32)
    dots_kernel[(triton.cdiv(k, bk), triton.cdiv(p, bp))](
        qd, fd, dots_t, k, c, p, qd.stride(0), qd.stride(1), fd.stride(0), fd.stride(1),
        BLOCK_K=bk, BLOCK_P=bp, BLOCK_C=bc, DOT_FP32=interpret or dot_dtype == torch.float32,
    )  # fmt: skip

    (ri, rw), (ci, cw) = rows, cols
    a1, b1 = rw[:, 1].contiguous(), cw[:, 1].contiguous()
    # Patch sides: the mean run of output rows / columns sharing their taps (H / h, W / w when
    # upsampling); longer runs (clamped borders) are split.
    block_y = _pow2(triton.cdiv(big_h, h), 1, 32)
    block_x = _pow2(triton.cdiv(big_w, w), 1, 32)
    row_segs = tap_segments(ri[:, 0], ri[:, 1], block_y)
    col_segs = tap_segments(ci[:, 0], ci[:, 1], block_x)
    n_row_seg = row_segs[0].shape[0]
    block_k = min(_pow2(k, 16, 128), max(16, 4096 // (block_y * block_x)))
    n_kprog = triton.cdiv(k, block_k)
    if row_ranges is None:
        # Enough programs to fill the GPU (~4 per SM); one range in the interpreter.
        sms = 0 if interpret else torch.cuda.get_device_properties(dev).multi_processor_count
        row_ranges = max(1, triton.cdiv(4 * sms, n_kprog))
    per_range = triton.cdiv(n_row_seg, min(row_ranges, n_row_seg))
    n_ranges = triton.cdiv(n_row_seg, per_range)
    best = torch.empty((n_ranges, k), dtype=torch.float32, device=dev)
    best_idx = torch.empty((n_ranges, k), dtype=torch.int32, device=dev)
    argmax_kernel[(n_kprog, n_ranges)](
        dots_t, inv_norm, a1, b1, *row_segs, *col_segs, best, best_idx,
        k, w, big_w, n_row_seg, col_segs[0].shape[0], per_range,
        BLOCK_K=block_k, BLOCK_Y=block_y, BLOCK_X=block_x, num_warps=8,
    )  # fmt: skip
    # Ranges are in row order: the first range holding the maximum has the lowest flat index.
    score, which = best.max(dim=0)
    flat = best_idx.gather(0, which[None])[0].to(torch.int64)
    return flat, score


@torch.no_grad()
def cosine_argmax_triton(
    queries: Tensor,
    target: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
    row_ranges: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Triton version of :func:`~cleandift_rt.matching.reference.cosine_argmax_reference`.

    Same arguments, results (up to float32 rounding), ties (lowest flat index ``y * W + x``) and
    errors as the reference. fp32 / fp16 / bf16 inputs, fp32 accumulation; other floating
    dtypes are computed in fp32. CUDA tensors run compiled kernels, CPU tensors run them in
    Triton's interpreter (slow: tests only). Extra memory: ``K × h·w`` dots, ``H × W`` inverse
    norms and ``(ranges, K)`` partial results; never a ``K × H·W`` matrix.

    ``row_ranges``: number of ranges of output rows searched by separate programs (default:
    enough to fill the GPU; 1 in the interpreter). Raises MatchError also when triton is missing
    or the output grid has more than ``2**31 - 1`` pixels.
    """
    if not _import_triton():
        raise MatchError(f"the Triton matcher needs the 'triton' package ({_IMPORT_ERROR})")
    check_positive_int(row_ranges, "row_ranges")

    def check(tgt: Tensor, g: PixelGrid) -> None:
        if not tgt.is_cuda and not interpreting():
            raise MatchError(
                "the Triton matcher needs CUDA tensors, or TRITON_INTERPRET=1 set before triton "
                "is imported to run on the CPU"
            )
        if g.size[0] * g.size[1] >= 2**31:
            raise MatchError(f"output grid {g.size} has too many pixels for int32 indices")

    def match_one(q: Tensor, t: Tensor, rows, cols) -> tuple[Tensor, Tensor]:
        return _match_one(q, t, rows, cols, row_ranges)

    return argmax_over_maps(queries, target, out_size, grid, match_one, check)
