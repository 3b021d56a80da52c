"""Tests of the user-facing matching API against brute-force references."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleandift_rt.errors import MatchError
from cleandift_rt.matching import PixelGrid, api, cosine_argmax_reference
from cleandift_rt.matching.api import (
    dense_matches,
    match_points,
    mutual_nearest,
    nearest,
    ratio_test,
    top_k,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- brute force


def brute_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full (N, M) cosine matrix in float64."""
    return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T


def brute_nearest(s: torch.Tensor) -> list[tuple[int, int]]:
    return [(i, int(s[i].argmax())) for i in range(s.shape[0])]


def brute_mutual(s: torch.Tensor) -> list[tuple[int, int]]:
    col = s.argmax(dim=0)
    return [(i, j) for i, j in brute_nearest(s) if int(col[j]) == i]


def brute_top_k(s: torch.Tensor, k: int) -> list[list[int]]:
    m = s.shape[1]
    return [sorted(range(m), key=lambda j, r=row: (-r[j], j))[:k] for row in s.tolist()]


def brute_ratios(s: torch.Tensor) -> list[float]:
    out = []
    for row in s.tolist():
        if len(row) == 1:
            out.append(0.0)
            continue
        c1, c2 = sorted(row, reverse=True)[:2]
        d1, d2 = max(0.0, 1 - c1), max(0.0, 1 - c2)
        out.append(1.0 if d2 == 0 else d1 / d2)
    return out


def sign_data(seed: int, n: int, m: int, c: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """±1 descriptors with C = 16: unit-normalised entries are ±1/4, so every cosine is an exact
    multiple of 1/16 in any summation order, with many exact ties. Plants duplicates too."""
    g = _gen(seed)
    a = torch.randint(0, 2, (n, c), generator=g).float() * 2 - 1
    b = torch.randint(0, 2, (m, c), generator=g).float() * 2 - 1
    b[5] = b[2]  # duplicate candidates: the lower index must win
    b[9] = -2 * b[2]
    a[3] = 2 * b[7]  # scaled copy: cosine exactly 1
    a[4] = a[1]  # duplicate queries
    return a, b


def gauss_data(seed: int, n: int, m: int, c: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, c, generator=g), torch.randn(m, c, generator=g)


DATA = [
    pytest.param(sign_data(0, 37, 23), id="signs"),
    pytest.param(gauss_data(1, 50, 40), id="gauss"),
]
BLOCKS = [None, 5]


# --------------------------------------------------------------------------- descriptor sets


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("block_rows", BLOCKS)
def test_nearest_matches_brute_force(data, block_rows):
    a, b = data
    s = brute_sim(a, b)
    scores, pairs = nearest(a, b, block_rows=block_rows)
    assert pairs.dtype == torch.int64 and scores.dtype == torch.float32
    assert pairs.shape == (len(a), 2) and scores.shape == (len(a),)
    assert pairs.tolist() == [list(p) for p in brute_nearest(s)]
    torch.testing.assert_close(scores.double(), s.max(dim=1).values, atol=1e-6, rtol=0)


def test_one_row_blocks_equal_default():
    a, b = sign_data(0, 37, 23)
    for fn in (nearest, mutual_nearest, ratio_test, lambda x, y, **kw: top_k(x, y, 4, **kw)):
        for got, want in zip(fn(a, b, block_rows=1), fn(a, b)):
            assert torch.equal(got, want)


def test_nearest_ties_go_to_lowest_index():
    a, b = sign_data(0, 37, 23)
    _, pairs = nearest(a, b)
    assert pairs[3].tolist() == [3, 7]
    # Queries equal to b[2] == b[5] pick 2; the same holds against -b[2] == b[9] / 2 scaled.
    _, pairs = nearest(torch.stack([b[5], -b[9]]), b)
    assert pairs[:, 1].tolist() == [2, 2]
    # A full row of ties picks index 0.
    _, pairs = nearest(torch.ones(1, 4), torch.ones(6, 4))
    assert pairs.tolist() == [[0, 0]]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("block_rows", BLOCKS)
def test_mutual_nearest_matches_brute_force(data, block_rows):
    a, b = data
    s = brute_sim(a, b)
    scores, pairs = mutual_nearest(a, b, block_rows=block_rows)
    want = brute_mutual(s)
    assert len(want) > 0
    assert pairs.tolist() == [list(p) for p in want]
    torch.testing.assert_close(scores.double(), s[pairs[:, 0], pairs[:, 1]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("data", DATA)
def test_mutual_nearest_is_symmetric(data):
    a, b = data
    _, ab = mutual_nearest(a, b)
    scores_ba, ba = mutual_nearest(b, a, block_rows=4)
    swapped = sorted(map(tuple, ba.flip(1).tolist()))
    assert swapped == list(map(tuple, ab.tolist()))


def test_mutual_nearest_duplicates():
    # b[0] == b[1]: only the lower index can be mutual; a[0] == a[1]: only a[0] can be.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    _, pairs = mutual_nearest(a, b)
    assert pairs.tolist() == [[0, 0], [2, 2]]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("block_rows", BLOCKS)
def test_ratio_test_matches_brute_force(data, block_rows):
    a, b = data
    s = brute_sim(a, b)
    ratios = torch.tensor(brute_ratios(s), dtype=torch.float64)
    for thr in (0.0, 0.5, 0.8, 0.95, 1.0):
        res = ratio_test(a, b, thr, block_rows=block_rows)
        torch.testing.assert_close(res.ratios.double(), ratios, atol=1e-5, rtol=0)
        want = ratios <= thr
        # Exact data decides the boundary exactly; random data is far from it.
        assert torch.equal(res.mask, want)
        keep = torch.nonzero(want)[:, 0]
        assert res.pairs[:, 0].tolist() == keep.tolist()
        assert res.pairs[:, 1].tolist() == s[keep].argmax(dim=1).tolist()
        assert res.scores.shape == (len(keep),)


def test_ratio_test_threshold_boundary():
    # With ±1 vectors in 16-D, cosine = 1 - hamming / 8: distances are exact.
    g = _gen(3)
    q = torch.randint(0, 2, (16,), generator=g).float() * 2 - 1

    def flip(n: int) -> torch.Tensor:
        v = q.clone()
        v[:n] = -v[:n]
        return v

    a = q[None]
    b = torch.stack([flip(8), flip(4)])  # d2 = 1 (index 0), d1 = 0.5 (index 1): ratio 0.5
    res = ratio_test(a, b, 0.5)
    assert res.ratios.tolist() == [0.5] and res.mask.tolist() == [True]
    assert res.pairs.tolist() == [[0, 1]] and res.scores.tolist() == [0.5]
    below = ratio_test(a, b, math.nextafter(0.5, 0.0))
    assert below.mask.tolist() == [False] and below.pairs.shape == (0, 2)
    assert below.scores.shape == (0,)
    # d1 / d2 = 0.5 / 0.625 = 4 / 5 passes threshold 0.8 (no float32 rounding of the ratio).
    res = ratio_test(a, torch.stack([flip(5), flip(4)]), 0.8)
    assert res.ratios.tolist() == [0.8] and res.mask.tolist() == [True]
    # d1 = 0 (exact match), d2 > 0: ratio 0, kept even at threshold 0.
    assert ratio_test(a, torch.stack([flip(4), q]), 0.0).pairs.tolist() == [[0, 1]]
    # Two perfect matches: d1 = d2 = 0 is ambiguous, ratio 1.
    res = ratio_test(a, torch.stack([flip(4), q, 3 * q]), 0.8)
    assert res.ratios.tolist() == [1.0] and not bool(res.mask.any())
    assert ratio_test(a, torch.stack([q, 3 * q]), 1.0).pairs.tolist() == [[0, 0]]
    # Equal second-best distances: ratio 1.
    assert ratio_test(a, torch.stack([flip(4), flip(4)]), 0.99).mask.tolist() == [False]
    # M == 1: no second neighbour, everything kept with ratio 0.
    a3 = torch.randn(3, 16, generator=g)
    res = ratio_test(a3, q[None], 0.0)
    assert res.ratios.tolist() == [0.0] * 3 and res.pairs[:, 1].tolist() == [0, 0, 0]
    # Usable as a mask over a.
    res = ratio_test(a3, torch.randn(5, 16, generator=g), 0.9)
    assert a3[res.mask].shape[0] == res.pairs.shape[0]
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(MatchError):
            ratio_test(a3, b, bad)


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("block_rows", BLOCKS)
def test_top_k_matches_brute_force(data, block_rows):
    a, b = data
    s = brute_sim(a, b)
    for k in (1, 2, 5, b.shape[0]):
        scores, idx = top_k(a, b, k, block_rows=block_rows)
        assert idx.shape == (len(a), k) and idx.dtype == torch.int64
        assert idx.tolist() == brute_top_k(s, k)
        torch.testing.assert_close(scores.double(), s.gather(1, idx), atol=1e-6, rtol=0)
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert torch.equal(top_k(a, b, 1).indices[:, 0], nearest(a, b).pairs[:, 1])


def test_top_k_ties_and_errors():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.0]])
    scores, idx = top_k(a, b, 5)
    assert idx.tolist() == [[1, 3, 4, 0, 2]] and scores.tolist() == [[1, 1, 1, 0, 0]]
    assert top_k(a, b, 0).indices.shape == (1, 0)
    for bad in (6, -1, 1.5, True):
        with pytest.raises(MatchError):
            top_k(a, b, bad)


def test_empty_inputs():
    a, b = gauss_data(2, 6, 5)
    for x, y in ((a[:0], b), (a, b[:0]), (a[:0], b[:0])):
        for fn in (nearest, mutual_nearest):
            scores, pairs = fn(x, y)
            assert scores.shape == (0,) and pairs.shape == (0, 2) and pairs.dtype == torch.int64
        res = ratio_test(x, y)
        assert res.scores.shape == (0,) and res.pairs.shape == (0, 2)
        assert res.mask.shape == (x.shape[0],) and not bool(res.mask.any())
    assert top_k(a[:0], b, 3).indices.shape == (0, 3)
    assert top_k(a, b[:0], 0).scores.shape == (6, 0)
    with pytest.raises(MatchError):
        top_k(a, b[:0], 1)


def test_bad_descriptors_raise():
    a, b = gauss_data(4, 6, 5)
    for bad_value in (float("nan"), float("inf")):
        bad = a.clone()
        bad[2, 3] = bad_value
        for fn in (nearest, mutual_nearest, ratio_test, lambda x, y: top_k(x, y, 2)):
            with pytest.raises(MatchError, match="NaN or Inf"):
                fn(bad, b)
            with pytest.raises(MatchError, match="NaN or Inf"):
                fn(b, bad)
    with pytest.raises(MatchError):
        nearest(a, b[:, :4])  # channel mismatch
    with pytest.raises(MatchError):
        nearest(a[0], b)  # 1-D
    with pytest.raises(MatchError):
        nearest(a.long(), b.long())
    with pytest.raises(MatchError):
        nearest(a, b, block_rows=0)


def test_float64_inputs_stay_float64():
    a, b = gauss_data(5, 6, 5)
    assert nearest(a.double(), b.double()).scores.dtype == torch.float64
    assert nearest(a.half(), b).scores.dtype == torch.float32


# --------------------------------------------------------------------------- feature maps


def _interior(lo: int, hi: float, step: int) -> list[int]:
    return list(range(lo, int(hi) + 1, step))


def test_match_points_recovers_whole_cell_shift():
    c, h, w, s = 16, 8, 8, 8
    src = torch.randn(c, h, w, generator=_gen(10))
    dy, dx = 1, 2
    tgt = torch.roll(src, shifts=(dy, dx), dims=(1, 2))
    # Pixel x samples cells floor(u), floor(u) + 1 with u = (x + 0.5) / 8 - 0.5; the shifted
    # neighbourhood must neither be clamped at the border nor wrap around.
    xs = _interior(4, 8 * (w - 0.5 - dx) - 1, 3)
    ys = _interior(4, 8 * (h - 0.5 - dy) - 1, 5)
    pts = torch.tensor([(x, y) for y in ys for x in xs])
    res = match_points(src, tgt, pts, (h * s, w * s), (h * s, w * s), mutual=True)
    assert res.source.dtype == torch.float32 and res.target.dtype == torch.int64
    assert res.scores.shape == (len(pts),) and res.mutual.dtype == torch.bool
    assert torch.equal(res.target, pts + torch.tensor([dx * s, dy * s]))
    assert bool(res.mutual.all())
    assert bool((res.scores > 0.9999).all())
    # Exact round trip: mutual even with a zero radius.
    assert bool(match_points(src, tgt, pts, (64, 64), (64, 64), mutual=True, radius=0).mutual.all())
    assert match_points(src, tgt, pts, (64, 64), (64, 64)).mutual is None


def test_cropped_point_is_not_mutual():
    c, h, w, s = 16, 16, 16, 8
    g = _gen(11)
    src = torch.randn(c, h, w, generator=g)
    # Source cell (row 8, col 14) resembles cell (row 8, col 2) but is cropped out of the target.
    src[:, 8, 14] = src[:, 8, 2] + 0.3 * torch.randn(c, generator=g)
    tgt = torch.roll(src, shifts=4, dims=2)
    tgt[:, :, :4] = torch.randn(c, h, 4, generator=g)  # source columns 12..15 are gone
    size = (h * s, w * s)
    lost = torch.tensor([[14 * s + 3, 8 * s + 3]])
    kept = torch.tensor([[5 * s + 3, 8 * s + 3], [2 * s + 3, 8 * s + 3], [9 * s + 3, 3 * s + 3]])
    res = match_points(src, tgt, torch.cat([lost, kept]), size, size, mutual=True)
    assert res.mutual.tolist() == [False, True, True, True]
    assert abs(int(res.target[0, 0]) - (6 * s + 3)) <= s  # it went to the look-alike
    # Radius semantics: mutual exactly when the manual round trip is within the radius.
    back = match_points(tgt, src, res.target[:1].float(), size, size).target
    d = float(torch.linalg.vector_norm((back - lost).double()))
    assert d > s
    assert match_points(src, tgt, lost, size, size, mutual=True, radius=d).mutual.tolist() == [True]
    assert not bool(match_points(src, tgt, lost, size, size, mutual=True, radius=d - 1e-3).mutual)


def test_default_radius_is_one_source_stride():
    g = _gen(12)
    src = torch.randn(8, 6, 5, generator=g)
    tgt = torch.randn(8, 7, 9, generator=g)
    src_size, tgt_size = (30, 40), (28, 36)  # strides 5 (y) and 8 (x): radius 8
    pts = torch.stack(
        [torch.randint(0, 40, (200,), generator=g), torch.randint(0, 30, (200,), generator=g)],
        dim=1,
    )
    res = match_points(src, tgt, pts, src_size, tgt_size, mutual=True)
    back = match_points(tgt, src, res.target, tgt_size, src_size).target
    dist = torch.linalg.vector_norm((back - pts).double(), dim=1)
    assert torch.equal(res.mutual, dist <= 8.0)
    assert 0 < int(res.mutual.sum()) < len(pts)  # the test exercises both outcomes


def test_match_points_grids_and_argmax_hook(monkeypatch):
    g = _gen(13)
    src = torch.randn(8, 6, 5, generator=g)
    tgt = torch.randn(8, 7, 9, generator=g)
    pts = torch.tensor([[0.0, 0.0], [12.25, 7.5], [39.0, 29.0]])
    ref = match_points(src, tgt, pts, (30, 40), (28, 36), mutual=True)
    sg, tg = PixelGrid.interpolate((6, 5), (30, 40)), PixelGrid.interpolate((7, 9), (28, 36))
    for res in (
        match_points(src, tgt, pts, sg, tg, mutual=True),
        match_points(src, tgt, pts, src_grid=sg, tgt_grid=tg, mutual=True),
    ):
        assert torch.equal(res.target, ref.target) and torch.equal(res.mutual, ref.mutual)
        torch.testing.assert_close(res.scores, ref.scores)
    # None: the feature grids themselves.
    res = match_points(src, tgt, torch.tensor([[1, 2]]))
    want = cosine_argmax_reference(src[:, 2, 1][None], tgt)  # the reference
    assert torch.equal(res.target, want[0])
    with pytest.raises(MatchError):
        match_points(src, tgt, pts, (30, 40), src_grid=sg)
    with pytest.raises(MatchError):
        match_points(src, tgt, torch.tensor([[40.0, 0.0]]), (30, 40), (28, 36))  # outside
    with pytest.raises(MatchError):
        match_points(src, tgt[:4], pts, (30, 40), (28, 36))  # channel mismatch
    with pytest.raises(MatchError):
        match_points(src, tgt, pts, (30, 40), (28, 36), mutual=True, radius=-1)
    bad = tgt.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(MatchError):
        match_points(src, bad, pts, (30, 40), (28, 36))
    # Empty point sets.
    res = match_points(src, tgt, torch.zeros(0, 2), (30, 40), (28, 36), mutual=True)
    assert res.target.shape == (0, 2) and res.mutual.shape == (0,)

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return cosine_argmax_reference(*args, **kwargs)

    monkeypatch.setattr(api, "_argmax", spy)
    res = match_points(src, tgt, pts, (30, 40), (28, 36), mutual=True)
    assert len(calls) == 2 and torch.equal(res.target, ref.target)


def test_batch_of_target_maps_equals_per_map_calls():
    g = _gen(14)
    src = torch.randn(8, 6, 5, generator=g)
    tgts = torch.randn(3, 8, 7, 9, generator=g)
    tgts[1] = F.interpolate(src[None], (7, 9), mode="bilinear")[0]  # some mutual matches
    pts = torch.rand(25, 2, generator=g) * torch.tensor([39.0, 29.0])
    res = match_points(src, tgts, pts, (30, 40), (28, 36), mutual=True)
    assert res.source.shape == (3, 25, 2) and res.target.shape == (3, 25, 2)
    assert res.scores.shape == (3, 25) and res.mutual.shape == (3, 25)
    for i in range(3):
        one = match_points(src, tgts[i], pts, (30, 40), (28, 36), mutual=True)
        assert torch.equal(res.source[i], one.source)
        assert torch.equal(res.target[i], one.target)
        assert torch.equal(res.mutual[i], one.mutual)
        torch.testing.assert_close(res.scores[i], one.scores)
    assert bool(res.mutual[1].any())


def test_dense_matches_identity_on_feature_grid():
    m = torch.randn(16, 6, 7, generator=_gen(15))
    src, tgt, scores = dense_matches(m, m)
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    assert torch.equal(src, torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))
    assert torch.equal(tgt, src)
    torch.testing.assert_close(scores, torch.ones(42), atol=1e-5, rtol=0)
    # Strided, chunked: the same pixels, the same answers.
    src2, tgt2, _ = dense_matches(m, m, stride=2, chunk=5)
    assert src2.shape == (3 * 4, 2) and torch.equal(tgt2, src2)
    assert torch.equal(src2, src.reshape(6, 7, 2)[::2, ::2].reshape(-1, 2))


def test_dense_matches_pixel_grid():
    g = _gen(16)
    m = torch.randn(16, 6, 7, generator=g)
    size = (24, 28)  # stride 4
    src, tgt, scores = dense_matches(m, m, size, size, stride=3, chunk=17)
    assert src.shape == (8 * 10, 2) and scores.dtype == torch.float32
    # Pixels whose feature coordinate is clamped at the border share a descriptor (ties go to
    # the first); every other pixel maps to itself.
    inner = (src >= 2).all(dim=1) & (src[:, 0] <= 25) & (src[:, 1] <= 21)
    assert torch.equal(tgt[inner], src[inner])
    # Same as match_points on the same pixels, whatever the chunking.
    other = torch.randn(16, 5, 9, generator=g)
    dense = dense_matches(m, other, size, (20, 36), stride=3, chunk=7)
    ref = match_points(m, other, dense.source, size, (20, 36))
    assert torch.equal(dense.target, ref.target)
    torch.testing.assert_close(dense.scores, ref.scores)
    full = dense_matches(m, other, size, (20, 36))
    assert full.source.shape == (24 * 28, 2)
    sel = (full.source % 3 == 0).all(dim=1)
    assert torch.equal(full.target[sel], dense.target)
    with pytest.raises(MatchError):
        dense_matches(m, m, stride=0)
    with pytest.raises(MatchError):
        dense_matches(m, m[None])


# --------------------------------------------------------------------------- real features


def test_tiny_model_self_matching_on_astronaut(tiny):
    skdata = pytest.importorskip("skimage.data")
    img = cv2.resize(skdata.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(img))[None]  # (1, 128, 128, 3) uint8
    net = tiny.feature_net(["us6"])
    with torch.no_grad():
        fmap = net(x)[0][0]  # (C, 8, 8)
    stride = 128 // fmap.shape[-1]
    coords = list(range(2 * stride, 128 - 2 * stride + 1, stride // 2))
    pts = torch.tensor([(px, py) for py in coords for px in coords])
    res = match_points(fmap, fmap, pts, (128, 128), (128, 128), mutual=True)
    err = (res.target - pts).abs().max(dim=1).values
    assert int(err.max()) <= stride
    assert bool(res.mutual.all())
    assert bool((res.scores > 0.99).all())
