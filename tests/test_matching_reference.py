"""Tests of the exact banded matching reference against the literal naive pipeline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from naive_pipeline import naive_scores

from cleandift_rt.errors import MatchError
from cleandift_rt.matching import (
    PixelGrid,
    cosine_argmax,
    cosine_argmax_lowres,
    cosine_argmax_reference,
    sample_descriptors,
)
from cleandift_rt.matching.grid import bilinear_weights
from cleandift_rt.matching.reference import _BAND_FLOATS, _auto_band_rows

# A different argmax is accepted only when the naive scores are tied to within float32 rounding
# (e.g. pixels clamped onto the same border cell, which F.interpolate blends with weights that
# sum to 1 only up to an ulp).
TIE_TOL = 2e-6
SCORE_TOL = 1e-5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_grid_scores(queries: torch.Tensor, target: torch.Tensor, grid: PixelGrid):
    """Naive pipeline for an arbitrary PixelGrid via grid_sample (border clamping), in float64."""
    c, h, w = target.shape
    big_h, big_w = grid.size
    u = torch.arange(big_w, dtype=torch.float64) * grid.scale[0] + grid.shift[0]
    v = torch.arange(big_h, dtype=torch.float64) * grid.scale[1] + grid.shift[1]
    gx = (2 * u + 1) / w - 1  # align_corners=False normalisation
    gy = (2 * v + 1) / h - 1
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, H, W, 2)
    up = F.grid_sample(
        target[None].double(), g, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    up = F.normalize(up.reshape(c, -1), dim=0)
    return (F.normalize(queries.double(), dim=1) @ up).float()


def assert_matches_naive(
    coords: torch.Tensor,
    scores: torch.Tensor,
    ref: torch.Tensor,
    w: int,
    max_differ: float = 0.25,
) -> None:
    """coords (K, 2) int64, scores (K,) float32 against naive float32 scores ref (K, H*W)."""
    assert coords.dtype == torch.int64 and scores.dtype == torch.float32
    k = ref.shape[0]
    assert coords.shape == (k, 2) and scores.shape == (k,)
    ref_best, ref_idx = ref.max(dim=1)
    mine = coords[:, 1] * w + coords[:, 0]
    torch.testing.assert_close(scores, ref_best, atol=SCORE_TOL, rtol=0)
    at_mine = ref.gather(1, mine[:, None])[:, 0]
    differ = mine != ref_idx
    assert bool(((ref_best - at_mine)[differ] <= TIE_TOL).all()), "argmax differs beyond a tie"
    assert float(differ.float().mean()) <= max_differ


# --------------------------------------------------------------------------- PixelGrid


def test_interpolate_grid_formula():
    g = PixelGrid.interpolate((6, 10), (48, 37))
    assert g.size == (48, 37)
    assert g.scale == pytest.approx((10 / 37, 6 / 48))
    assert g.shift == pytest.approx((0.5 * 10 / 37 - 0.5, 0.5 * 6 / 48 - 0.5))
    assert PixelGrid.identity((5, 7)) == PixelGrid((5, 7), (1.0, 1.0), (0.0, 0.0))
    assert PixelGrid.interpolate((5, 7), (5, 7)) == PixelGrid.identity((5, 7))


@pytest.mark.parametrize(
    ("h", "w", "big_h", "big_w", "side"), [(16, 16, 128, 128, 128), (12, 20, 90, 150, 160)]
)
def test_from_input_transform_matches_interpolate(h, w, big_h, big_w, side):
    # Resize an H x W image to side x side network input, features at stride side / n.
    g = PixelGrid.from_input_transform(
        (big_h, big_w), (side / big_w, side / big_h), (0.0, 0.0), (side / w, side / h)
    )
    ref = PixelGrid.interpolate((h, w), (big_h, big_w))
    assert g.size == ref.size
    assert g.scale == pytest.approx(ref.scale, abs=1e-12)
    assert g.shift == pytest.approx(ref.shift, abs=1e-12)

    gen = _gen(0)
    t = torch.randn(6, h, w, generator=gen)
    q = torch.randn(9, 6, generator=gen)
    c1, s1 = cosine_argmax_reference(q, t, grid=g)
    c2, s2 = cosine_argmax_reference(q, t, (big_h, big_w))
    assert torch.equal(c1, c2)
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=0)


def test_from_input_transform_offset_and_scalars():
    # Scalars broadcast to both axes; a padding offset shifts the feature coordinate.
    g = PixelGrid.from_input_transform((10, 20), 2.0, 3.0, 8)
    assert g.scale == (0.25, 0.25)
    assert g.shift == pytest.approx(((0.5 * 2 + 3) / 8 - 0.5,) * 2)
    with pytest.raises(MatchError):
        PixelGrid.from_input_transform((10, 20), 1.0, 0.0, 0.0)


def test_bilinear_weights_clamp():
    idx, wts = bilinear_weights(torch.tensor([-3.0, 0.0, 0.25, 2.5, 3.0, 9.0]), 4)
    assert idx.tolist() == [[0, 1], [0, 1], [0, 1], [2, 3], [3, 3], [3, 3]]
    assert wts.tolist() == [[1, 0], [1, 0], [0.75, 0.25], [0.5, 0.5], [1, 0], [1, 0]]
    idx, wts = PixelGrid.interpolate((1, 1), (3, 4)).axis_weights("x", 1)
    assert idx.shape == (4, 2) and bool((idx == 0).all()) and wts.dtype == torch.float32


def test_grid_validation():
    with pytest.raises(MatchError):
        PixelGrid((0, 4), (1.0, 1.0), (0.0, 0.0))
    with pytest.raises(MatchError):
        PixelGrid((4, 4), (math.nan, 1.0), (0.0, 0.0))
    with pytest.raises(MatchError):
        PixelGrid.interpolate((4, 4), (3.5, 2))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sample_descriptors


@pytest.mark.parametrize(
    ("h", "w", "big_h", "big_w"),
    [(8, 8, 64, 64), (5, 7, 23, 17), (16, 12, 9, 6), (1, 1, 4, 5), (6, 9, 6, 9)],
)
def test_sample_descriptors_equals_interpolate_at_integers(h, w, big_h, big_w):
    t = torch.randn(5, h, w, generator=_gen(1))
    up = F.interpolate(t[None], (big_h, big_w), mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(big_h), torch.arange(big_w), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # int64 points
    d = sample_descriptors(t, pts, (big_h, big_w))
    assert d.shape == (big_h * big_w, 5) and d.dtype == torch.float32
    torch.testing.assert_close(d, up[:, pts[:, 1], pts[:, 0]].T, atol=1e-5, rtol=0)


def _manual_bilinear(t: torch.Tensor, grid: PixelGrid, x: float, y: float) -> torch.Tensor:
    """Independent scalar bilinear sample with edge clamping."""
    _, h, w = t.shape
    u = min(max(x * grid.scale[0] + grid.shift[0], 0.0), w - 1.0)
    v = min(max(y * grid.scale[1] + grid.shift[1], 0.0), h - 1.0)
    x0, y0 = math.floor(u), math.floor(v)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    a, b = u - x0, v - y0
    return (
        (1 - a) * (1 - b) * t[:, y0, x0]
        + a * (1 - b) * t[:, y0, x1]
        + (1 - a) * b * t[:, y1, x0]
        + a * b * t[:, y1, x1]
    )


def test_sample_descriptors_fractional_is_bilinear():
    gen = _gen(2)
    t = torch.randn(7, 6, 9, generator=gen, dtype=torch.float64)
    grid = PixelGrid.interpolate((6, 9), (50, 70))
    pts = torch.rand(40, 2, generator=gen, dtype=torch.float64) * torch.tensor([70.0, 50.0]) - 0.5
    pts = torch.cat([pts, torch.tensor([[-0.5, -0.5], [69.5, 49.5], [0.3, 49.1]])])
    d = sample_descriptors(t, pts, grid)
    ref = torch.stack([_manual_bilinear(t, grid, float(x), float(y)) for x, y in pts])
    torch.testing.assert_close(d, ref, atol=1e-6, rtol=0)  # fp32 compute, fp64 out
    assert d.dtype == torch.float64
    # Arbitrary affine grid too (shifted, anisotropic).
    g2 = PixelGrid.from_input_transform((50, 70), (0.7, 1.3), (4.0, -2.0), (8.0, 8.0))
    d2 = sample_descriptors(t, pts, g2)
    ref2 = torch.stack([_manual_bilinear(t, g2, float(x), float(y)) for x, y in pts])
    torch.testing.assert_close(d2, ref2, atol=1e-6, rtol=0)


def test_sample_descriptors_batched_dtypes_and_empty():
    gen = _gen(3)
    t = torch.randn(2, 4, 5, 6, generator=gen)
    pts = torch.rand(2, 10, 2, generator=gen) * 30
    d = sample_descriptors(t, pts, (31, 31))
    assert d.shape == (2, 10, 4)
    for i in range(2):
        torch.testing.assert_close(d[i], sample_descriptors(t[i], pts[i], (31, 31)))
    d16 = sample_descriptors(t.half(), pts, (31, 31))
    assert d16.dtype == torch.float16
    ref16 = sample_descriptors(t.half().float(), pts, (31, 31)).half()  # fp32 compute, fp16 out
    torch.testing.assert_close(d16, ref16, atol=0, rtol=0)
    # Non-contiguous map.
    tt = t[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not tt.is_contiguous()
    torch.testing.assert_close(sample_descriptors(tt, pts[0], (31, 31)), d[0])
    assert sample_descriptors(t[0], torch.zeros(0, 2), (31, 31)).shape == (0, 4)
    assert sample_descriptors(t[0], [], (31, 31)).shape == (0, 4)
    assert sample_descriptors(t, torch.zeros(2, 0, 2), (31, 31)).shape == (2, 0, 4)


def test_sample_descriptors_errors():
    t = torch.randn(3, 4, 4)
    for bad in ([[16.0, 3.0]], [[-0.6, 0.0]], [[0.0, 15.51]], [[math.nan, 1.0]]):
        with pytest.raises(MatchError):
            sample_descriptors(t, torch.tensor(bad), (16, 16))
    sample_descriptors(t, torch.tensor([[15.5, 15.5], [-0.5, -0.5]]), (16, 16))  # edges are fine
    with pytest.raises(MatchError):
        sample_descriptors(t, torch.zeros(3, 3), (16, 16))
    with pytest.raises(MatchError):
        sample_descriptors(t.unsqueeze(0).expand(2, -1, -1, -1), torch.zeros(3, 2), (16, 16))
    bad_map = t.clone()
    bad_map[1, 2, 2] = math.inf
    with pytest.raises(MatchError):
        sample_descriptors(bad_map, torch.zeros(1, 2), (16, 16))
    with pytest.raises(MatchError):
        sample_descriptors(t.long(), torch.zeros(1, 2), (16, 16))


# ------------------------------------------------------------------------ cosine_argmax_reference


@pytest.mark.parametrize(
    ("c", "h", "w", "big_h", "big_w", "k"),
    [
        (16, 8, 8, 64, 64, 20),  # square, 8x upsampling
        (12, 5, 7, 23, 17, 50),  # h != w, H != W, non-integer factors
        (8, 16, 12, 9, 6, 10),  # out_size smaller than the map
        (4, 1, 1, 10, 13, 5),  # 1x1 map: every pixel ties
        (32, 12, 20, 96, 160, 64),
    ],
)
def test_cosine_argmax_matches_naive(c, h, w, big_h, big_w, k):
    gen = _gen(10 + h)
    t = torch.randn(c, h, w, generator=gen)
    q = torch.randn(k, c, generator=gen)
    coords, scores = cosine_argmax_reference(q, t, (big_h, big_w))
    tie_only = h == w == 1  # F.interpolate adds ulp noise to what are exact ties
    ref = naive_scores(q, t, (big_h, big_w))
    assert_matches_naive(coords, scores, ref, big_w, max_differ=1.0 if tie_only else 0.25)
    if tie_only:
        assert bool((coords == 0).all())  # exact ties resolve to flat index 0


def test_cosine_argmax_feature_grid_default():
    gen = _gen(4)
    t = torch.randn(10, 7, 9, generator=gen)
    q = torch.randn(15, 10, generator=gen)
    coords, scores = cosine_argmax_reference(q, t)
    ref = F.normalize(q, dim=1) @ F.normalize(t.reshape(10, -1), dim=0)
    assert torch.equal(coords[:, 1] * 9 + coords[:, 0], ref.argmax(dim=1))
    torch.testing.assert_close(scores, ref.max(dim=1).values, atol=SCORE_TOL, rtol=0)


def test_cosine_argmax_band_sizes_identical():
    gen = _gen(5)
    t = torch.randn(16, 9, 11, generator=gen)
    q = torch.randn(30, 16, generator=gen)
    out = (37, 45)
    c_all, s_all = cosine_argmax_reference(q, t, out, band_rows=out[0])
    assert_matches_naive(c_all, s_all, naive_scores(q, t, out), out[1])
    for b in (1, 3, 1000, None):
        c_b, s_b = cosine_argmax_reference(q, t, out, band_rows=b)
        assert torch.equal(c_b, c_all)
        torch.testing.assert_close(s_b, s_all, atol=1e-6, rtol=0)


def test_auto_band_rows_bound():
    for c, k, big_h, big_w in [(1280, 1000, 512, 512), (640, 5, 2048, 4096), (4, 1, 8, 8)]:
        b = _auto_band_rows(c, k, big_h, big_w)
        assert 1 <= b <= big_h
        assert b == 1 or (c + k) * b * big_w <= _BAND_FLOATS
    assert _auto_band_rows(4, 1, 8, 8) == 8


def test_cosine_argmax_empty_queries():
    t = torch.randn(6, 4, 5)
    coords, scores = cosine_argmax_reference(torch.zeros(0, 6), t, (16, 20))
    assert coords.shape == (0, 2) and coords.dtype == torch.int64
    assert scores.shape == (0,) and scores.dtype == torch.float32
    coords, scores = cosine_argmax_reference(
        torch.zeros(2, 0, 6), t.expand(2, -1, -1, -1), (16, 20)
    )
    assert coords.shape == (2, 0, 2) and scores.shape == (2, 0)


def test_cosine_argmax_batch():
    gen = _gen(6)
    t = torch.randn(2, 8, 6, 10, generator=gen)
    q = torch.randn(2, 12, 8, generator=gen)
    out = (30, 50)
    coords, scores = cosine_argmax_reference(q, t, out, band_rows=7)
    assert coords.shape == (2, 12, 2) and scores.shape == (2, 12)
    for i in range(2):
        assert_matches_naive(coords[i], scores[i], naive_scores(q[i], t[i], out), out[1])
        c_i, s_i = cosine_argmax_reference(q[i], t[i], out, band_rows=7)
        assert torch.equal(coords[i], c_i)
        torch.testing.assert_close(scores[i], s_i, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosine_argmax_half_inputs(dtype):
    gen = _gen(7)
    t = torch.randn(16, 8, 6, generator=gen).to(dtype)
    q = torch.randn(20, 16, generator=gen).to(dtype)
    out = (40, 30)
    coords, scores = cosine_argmax_reference(q, t, out)
    assert scores.dtype == torch.float32
    assert_matches_naive(coords, scores, naive_scores(q.float(), t.float(), out), out[1])


def test_cosine_argmax_non_contiguous():
    gen = _gen(8)
    t = torch.randn(9, 7, 12, generator=gen).permute(2, 1, 0)  # (C=12, h=7, w=9), strided
    q = torch.randn(12, 25, generator=gen).T  # (K=25, C=12), transposed
    assert not t.is_contiguous() and not q.is_contiguous()
    out = (33, 41)
    coords, scores = cosine_argmax_reference(q, t, out, band_rows=4)
    assert_matches_naive(coords, scores, naive_scores(q, t, out), out[1])
    c2, s2 = cosine_argmax_reference(q.contiguous(), t.contiguous(), out, band_rows=4)
    assert torch.equal(coords, c2)
    torch.testing.assert_close(scores, s2, atol=0, rtol=0)


def test_cosine_argmax_arbitrary_grid():
    gen = _gen(9)
    t = torch.randn(10, 8, 10, generator=gen)
    q = torch.randn(30, 10, generator=gen)
    grid = PixelGrid.from_input_transform((45, 60), (1.1, 0.9), (5.0, -3.0), (8.0, 8.0))
    coords, scores = cosine_argmax_reference(q, t, grid=grid, band_rows=5)
    assert_matches_naive(coords, scores, naive_grid_scores(q, t, grid), grid.size[1])


def test_shifted_copy_is_found():
    gen = _gen(11)
    src = torch.randn(32, 16, 16, generator=gen)
    tgt = torch.roll(src, shifts=(2, 3), dims=(1, 2))  # y by 2 cells, x by 3 cells
    out = (128, 128)  # 8 px per cell
    pts = torch.randint(12, 85, (40, 2), generator=gen)  # away from borders and the roll seam
    q = sample_descriptors(src, pts, out)
    coords, scores = cosine_argmax_reference(q, tgt, out)
    expected = pts + torch.tensor([3 * 8, 2 * 8])
    assert int((coords - expected).abs().max()) <= 1
    assert float(scores.min()) > 0.999


def test_zero_norm_pixels_and_ties():
    gen = _gen(12)
    v = torch.randn(8, generator=gen)
    t = torch.zeros(8, 6, 6)
    t[:, 4, 2] = v
    q = torch.stack([v + 0.1 * torch.randn(8, generator=gen), -v])
    coords, scores = cosine_argmax_reference(q, t)
    # Positive cosine beats zero pixels; with only negative ones, a zero pixel (cos 0) wins and
    # the tie among all zero pixels goes to flat index 0.
    assert coords.tolist() == [[2, 4], [0, 0]]
    assert float(scores[0]) > 0.9 and float(scores[1]) == 0.0
    coords, scores = cosine_argmax_reference(q[:1], t, (24, 24))
    assert float(scores[0]) > 0.9 and abs(int(coords[0, 0]) - 9) <= 2
    # A constant map upsampled by a power of two: all pixels exactly tie -> (0, 0).
    coords, _ = cosine_argmax_reference(
        torch.randn(3, 5, generator=gen), torch.ones(5, 4, 4), (16, 16)
    )
    assert bool((coords == 0).all())


@pytest.mark.parametrize("argmax", [cosine_argmax_reference, cosine_argmax_lowres, cosine_argmax])
def test_cosine_argmax_errors(argmax):
    """Every backend refuses the same bad input (shared validation)."""
    t = torch.randn(4, 3, 3)
    q = torch.randn(2, 4)
    bad_t = t.clone()
    bad_t[0, 1, 1] = math.nan
    with pytest.raises(MatchError):
        argmax(q, bad_t, (9, 9))
    bad_q = q.clone()
    bad_q[1, 0] = math.inf
    with pytest.raises(MatchError):
        argmax(bad_q, t, (9, 9))
    with pytest.raises(MatchError):
        argmax(torch.randn(2, 5), t, (9, 9))  # channel mismatch
    with pytest.raises(MatchError):
        argmax(q, t, (9, 9), grid=PixelGrid.interpolate((3, 3), (9, 9)))
    with pytest.raises(MatchError):
        argmax(q, t[None], (9, 9))  # batched target needs (B, K, C) queries
    with pytest.raises(MatchError):
        argmax(q[None].expand(3, -1, -1), t[None].expand(2, -1, -1, -1))
    with pytest.raises(MatchError):
        argmax(q.long(), t)


def test_band_rows_must_be_positive():
    with pytest.raises(MatchError):
        cosine_argmax_reference(torch.randn(2, 4), torch.randn(4, 3, 3), (9, 9), band_rows=0)
