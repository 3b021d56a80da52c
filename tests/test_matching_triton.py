"""The Triton cosine-argmax kernels against the banded reference.

On a machine without CUDA the kernels run in Triton's CPU interpreter, which Triton selects when
it is *imported* (``TRITON_INTERPRET=1``). This module sets the variable at its top, when pytest
collects it, and imports triton right away, before any test runs (``cleandift_rt`` imports
triton lazily, so collecting other test modules does not import it). If something imported
triton in compiled mode earlier anyway, the in-process tests skip and ``test_in_fresh_process``
reruns this file in a subprocess with ``TRITON_INTERPRET=1``.
Sizes stay tiny: the interpreter executes every program in Python.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# Without CUDA the kernels can only run in Triton's interpreter. Triton reads TRITON_INTERPRET when
# it is imported (and again when it lazily imports submodules), so it is set here, before the
# import below, and stays set for the rest of the process (only Triton reads it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed: Triton matcher tests skipped")

from cleandift_rt.errors import MatchError  # noqa: E402
from cleandift_rt.matching import PixelGrid, cosine_argmax_reference, sample_descriptors  # noqa: E402
from cleandift_rt.matching.argmax import cosine_argmax, select_backend  # noqa: E402
from cleandift_rt.matching.triton_argmax import cosine_argmax_triton, interpreting  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RUNNABLE = DEVICE == "cuda" or interpreting()
kernels = pytest.mark.skipif(
    not RUNNABLE,
    reason="no CUDA, and triton was imported in compiled mode before this module could set "
    "TRITON_INTERPRET=1; test_in_fresh_process runs these tests in a subprocess",
)
SCORE_TOL = 1e-5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in tensors]


def _score_at(q, t, coords, grid):
    """Cosine of each query with the upsampled target at its pixel ``coords`` (K, 2)."""
    d = sample_descriptors(t.float(), coords.float(), grid)
    return (F.normalize(q.float(), dim=-1, eps=1e-12) * F.normalize(d, dim=-1, eps=1e-12)).sum(-1)


def assert_same_as_reference(q, t, out=None, grid=None, exact=False, **kwargs):
    """Triton result on DEVICE against the CPU reference: scores to 1e-5 and the same argmax.

    Unless ``exact``, a different argmax is accepted where it is a near-tie (its pixel scores
    within 1e-5 of the best): GPU GEMMs may round differently from the CPU reference.
    """
    qd, td = _on(q, t)
    coords, scores = cosine_argmax_triton(qd, td, out, grid=grid, **kwargs)
    ref_c, ref_s = cosine_argmax_reference(q, t, out, grid=grid)
    assert coords.device == td.device and scores.device == td.device
    assert coords.dtype == torch.int64 and scores.dtype == torch.float32
    coords, scores = coords.cpu(), scores.cpu()
    torch.testing.assert_close(scores, ref_s, atol=SCORE_TOL, rtol=0)
    differ = (coords != ref_c).any(dim=-1)
    if exact or not bool(differ.any()):
        assert not bool(differ.any())
        return coords, scores
    h, w = t.shape[-2:]
    g = grid or (PixelGrid.interpolate((h, w), out) if out else PixelGrid.identity((h, w)))
    qs, ts, cs = (q, t, coords) if t.ndim == 4 else (q[None], t[None], coords[None])
    at = torch.stack([_score_at(qs[i], ts[i], cs[i], g) for i in range(ts.shape[0])])
    assert bool((at.reshape(ref_s.shape)[differ] >= ref_s[differ] - SCORE_TOL).all())
    assert float(differ.float().mean()) <= 0.1
    return coords, scores


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("c", "h", "w", "big_h", "big_w", "k"),
    [
        (16, 8, 8, 64, 64, 20),  # square, 8x upsampling
        (12, 5, 7, 23, 17, 50),  # h != w, non-integer factors, K not a multiple of the block
        (40, 12, 12, 9, 6, 10),  # out_size smaller than the map; C over one channel block
        (4, 1, 1, 10, 13, 5),  # 1x1 map: every pixel ties -> (0, 0)
    ],
)
def test_matches_reference(c, h, w, big_h, big_w, k, dtype):
    gen = _gen(h * w + k)
    t = torch.randn(c, h, w, generator=gen).to(dtype)
    q = torch.randn(k, c, generator=gen).to(dtype)
    coords, _ = assert_same_as_reference(q, t, (big_h, big_w), exact=h == w == 1)
    if h == w == 1:
        assert bool((coords == 0).all())


@kernels
def test_more_queries_and_mixed_dtypes():
    gen = _gen(1)
    t = torch.randn(64, 12, 12, generator=gen)
    q = torch.randn(64, 64, generator=gen)
    assert_same_as_reference(q, t, (48, 40))
    assert_same_as_reference(q.half(), t.float(), (48, 40))  # mixed: computed in fp32


@kernels
def test_row_ranges_and_grids():
    gen = _gen(2)
    t = torch.randn(8, 6, 9, generator=gen)
    q = torch.randn(21, 8, generator=gen)
    out = (37, 70)  # W spans two column tiles
    base = assert_same_as_reference(q, t, out, row_ranges=1)
    for ranges in (2, 5, 1000):
        assert_same_as_reference(q, t, out, row_ranges=ranges)
    assert torch.equal(assert_same_as_reference(q, t, out)[0], base[0])
    grid = PixelGrid.from_input_transform((30, 40), (1.1, 0.9), (5.0, -3.0), (8.0, 8.0))
    assert_same_as_reference(q, t, grid=grid, row_ranges=3)
    assert_same_as_reference(q, t)  # the feature grid itself


@kernels
def test_exact_ties_take_the_lowest_index():
    # One random 3x3 patch copied to three places of a zero map, each with a ring of zeros, and
    # an 8x upsampling: pixels at the same offset in the copies use bit-identical inputs and
    # weights, so their scores tie exactly. Copies A and B share rows (different column
    # segments), copy C is lower (another row range). The lowest flat index (in A) must win.
    gen = _gen(3)
    patch = torch.randn(8, 3, 3, generator=gen)
    t = torch.zeros(8, 10, 14)
    t[:, 1:4, 1:4] = patch  # A
    t[:, 1:4, 9:12] = patch  # B
    t[:, 6:9, 5:8] = patch  # C
    out = (80, 112)
    pts = torch.tensor([[19, 21], [13, 26], [22, 15]])  # inside A, away from its ring
    q = sample_descriptors(t, pts, out)
    positive = t.abs()  # against -1 every non-zero pixel scores < 0: zero pixels (cos 0) tie
    for ranges in (1, 4):
        coords, _ = assert_same_as_reference(q, t, out, exact=True, row_ranges=ranges)
        assert bool((coords < 40).all())  # in A, not in its twins
        coords, _ = assert_same_as_reference(t[:, 2, 2][None], t, exact=True, row_ranges=ranges)
        assert coords[0].tolist() == [2, 2]  # identity grid
        coords, scores = assert_same_as_reference(-torch.ones(1, 8), positive, out, exact=True)
        assert coords[0].tolist() == [0, 0] and float(scores[0]) == 0.0
    # A constant map: all pixels tie -> (0, 0).
    q3 = torch.randn(3, 5, generator=gen)
    coords, _ = assert_same_as_reference(q3, torch.ones(5, 4, 4), (16, 16), exact=True)
    assert bool((coords == 0).all())


@kernels
def test_empty_queries_batch_and_strides():
    t = torch.randn(6, 4, 5)
    (td,) = _on(t)
    coords, scores = cosine_argmax_triton(torch.zeros(0, 6, device=DEVICE), td, (16, 20))
    assert coords.shape == (0, 2) and scores.shape == (0,)
    coords, scores = cosine_argmax_triton(
        torch.zeros(2, 0, 6, device=DEVICE), td.expand(2, -1, -1, -1), (16, 20)
    )
    assert coords.shape == (2, 0, 2) and scores.shape == (2, 0)

    gen = _gen(4)
    tb = torch.randn(2, 8, 6, 10, generator=gen)
    qb = torch.randn(2, 12, 8, generator=gen)
    coords, scores = assert_same_as_reference(qb, tb, (30, 50))
    assert coords.shape == (2, 12, 2) and scores.shape == (2, 12)

    ts = torch.randn(9, 7, 12, generator=gen).permute(2, 1, 0)  # (C=12, h=7, w=9), strided
    qs = torch.randn(12, 25, generator=gen).T  # (K=25, C=12), transposed
    assert not ts.is_contiguous() and not qs.is_contiguous()
    assert_same_as_reference(qs, ts, (33, 41))
    assert_same_as_reference(qs.bfloat16(), ts.bfloat16(), (33, 41))


@kernels
def test_errors_and_dispatch():
    t, q = _on(torch.randn(4, 3, 3), torch.randn(2, 4))
    bad = t.clone()
    bad[0, 1, 1] = math.nan
    with pytest.raises(MatchError):
        cosine_argmax_triton(q, bad, (9, 9))
    with pytest.raises(MatchError):
        cosine_argmax_triton(torch.randn(2, 5, device=DEVICE), t, (9, 9))
    with pytest.raises(MatchError):
        cosine_argmax_triton(q, t, (9, 9), row_ranges=0)
    with pytest.raises(MatchError):
        cosine_argmax_triton(q, t, (9, 9), grid=PixelGrid.interpolate((3, 3), (9, 9)))

    gen = _gen(5)
    tc, qc = torch.randn(8, 6, 7, generator=gen), torch.randn(20, 8, generator=gen)
    td, qd = _on(tc, qc)
    forced = cosine_argmax(qd, td, (30, 35), backend="triton")
    direct = cosine_argmax_triton(qd, td, (30, 35))
    assert torch.equal(forced[0], direct[0]) and torch.equal(forced[1], direct[1])
    assert select_backend(td) == ("triton" if DEVICE == "cuda" and not interpreting() else "lowres")


@pytest.mark.skipif(RUNNABLE, reason="the kernels already run in this process")
def test_in_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@kernels
@pytest.mark.parametrize("mode", ["softargmax", "quadratic"])
def test_refinement_after_triton_equals_lowres(mode):
    """Sub-pixel refinement runs after the argmax, whichever backend found it: the Triton path
    gives the same float coordinates as the torch low-resolution one."""
    t = F.avg_pool2d(torch.randn(1, 16, 6, 7, generator=_gen(40)), 3, 1, 1)[0]
    q = torch.randn(6, 16, generator=_gen(41))
    qd, td = _on(q, t)
    got, _ = cosine_argmax(qd, td, (40, 45), backend="triton", refine=mode)
    want, _ = cosine_argmax(q, t, (40, 45), backend="lowres", refine=mode)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)
