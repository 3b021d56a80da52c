"""The low-resolution cosine argmax against the banded reference and the literal naive pipeline."""

from __future__ import annotations

import math

import cv2
import pytest
import torch
import torch.nn.functional as F
from naive_pipeline import naive_scores

from cleandift_rt.errors import MatchError
from cleandift_rt.matching import PixelGrid, cosine_argmax_reference, lowres, sample_descriptors
from cleandift_rt.matching.argmax import cosine_argmax, select_backend
from cleandift_rt.matching.lowres import cell_gram, cosine_argmax_lowres, inverse_norms
from cleandift_rt.matching.triton_argmax import interpreting, triton_available

SCORE_TOL = 1e-5  # |score - reference score|, and how far below the best a differing argmax may be
MAX_DIFFER = 0.001  # fraction of queries whose argmax may differ from the reference (near-ties)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_agrees(
    coords, scores, ref_coords, ref_scores, naive=None, w=None, max_differ=MAX_DIFFER
):
    """``coords (K, 2)`` / ``scores (K,)`` against the reference (and naive ``(K, H*W)`` scores).

    Scores agree to SCORE_TOL; at most ``max_differ`` of the argmaxes differ (rounded down: none
    for K < 1000), and with naive scores a differing argmax must be a near-tie there. Naive scores
    prove such a tie, so then the bound rounds up (one rounding tie in a small query set: fp32
    GEMM and bilinear evaluation orders differ by ~1e-7 near a score peak).
    """
    assert coords.dtype == torch.int64 and scores.dtype == torch.float32
    assert coords.shape == ref_coords.shape and scores.shape == ref_scores.shape
    torch.testing.assert_close(scores, ref_scores, atol=SCORE_TOL, rtol=0)
    differ = (coords != ref_coords).any(dim=-1)
    rounding = math.floor if naive is None else math.ceil
    assert int(differ.sum()) <= rounding(max_differ * differ.numel())
    if naive is not None:
        best = naive.max(dim=1).values
        mine = coords[:, 1] * w + coords[:, 0]
        torch.testing.assert_close(scores, best, atol=SCORE_TOL, rtol=0)
        assert bool((naive.gather(1, mine[:, None])[:, 0] >= best - SCORE_TOL).all())


# --------------------------------------------------------------------------- random maps


@pytest.mark.parametrize(
    ("c", "h", "w", "big_h", "big_w", "k"),
    [
        (16, 8, 8, 64, 64, 20),  # square, 8x upsampling
        (12, 5, 7, 23, 17, 50),  # h != w, H != W, non-integer factors
        (8, 16, 12, 9, 6, 10),  # out_size smaller than the map
        (4, 1, 1, 10, 13, 5),  # 1x1 map: every pixel ties
        (32, 12, 20, 96, 160, 64),
        (3, 2, 9, 40, 7, 30),  # few channels, thin maps
    ],
)
def test_matches_reference_and_naive(c, h, w, big_h, big_w, k):
    gen = _gen(100 + h * w)
    t = torch.randn(c, h, w, generator=gen)
    q = torch.randn(k, c, generator=gen)
    coords, scores = cosine_argmax_lowres(q, t, (big_h, big_w))
    ref_c, ref_s = cosine_argmax_reference(q, t, (big_h, big_w))
    if h == w == 1:  # exact ties everywhere: flat index 0, like the reference
        assert bool((coords == 0).all()) and torch.equal(coords, ref_c)
        torch.testing.assert_close(scores, ref_s, atol=SCORE_TOL, rtol=0)
        return
    assert_agrees(coords, scores, ref_c, ref_s, naive_scores(q, t, (big_h, big_w)), big_w)


def test_many_queries_agree():
    # K large enough to measure the >= 99.9 % identical-argmax requirement.
    gen = _gen(1)
    t = torch.randn(48, 24, 24, generator=gen)
    q = torch.randn(3000, 48, generator=gen)
    out = (160, 176)
    coords, scores = cosine_argmax_lowres(q, t, out)
    ref_c, ref_s = cosine_argmax_reference(q, t, out)
    assert_agrees(coords, scores, ref_c, ref_s, naive_scores(q, t, out), out[1])


def test_feature_grid_default_and_arbitrary_grid():
    gen = _gen(2)
    t = torch.randn(10, 7, 9, generator=gen)
    q = torch.randn(15, 10, generator=gen)
    coords, scores = cosine_argmax_lowres(q, t)
    ref = F.normalize(q, dim=1) @ F.normalize(t.reshape(10, -1), dim=0)
    assert torch.equal(coords[:, 1] * 9 + coords[:, 0], ref.argmax(dim=1))
    torch.testing.assert_close(scores, ref.max(dim=1).values, atol=SCORE_TOL, rtol=0)

    grid = PixelGrid.from_input_transform((45, 60), (1.1, 0.9), (5.0, -3.0), (8.0, 8.0))
    coords, scores = cosine_argmax_lowres(q, t, grid=grid)
    assert_agrees(coords, scores, *cosine_argmax_reference(q, t, grid=grid))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    gen = _gen(3)
    t = torch.randn(16, 8, 6, generator=gen).to(dtype)
    q = torch.randn(40, 16, generator=gen).to(dtype)
    out = (40, 30)
    coords, scores = cosine_argmax_lowres(q, t, out)
    assert scores.dtype == torch.float32
    naive = naive_scores(q.float(), t.float(), out)
    assert_agrees(coords, scores, *cosine_argmax_reference(q, t, out), naive, out[1])
    # Mixed dtypes are fine too (everything is computed in float32).
    assert_agrees(*cosine_argmax_lowres(q.float(), t, out), coords, scores)


def test_batch():
    gen = _gen(4)
    t = torch.randn(3, 8, 6, 10, generator=gen)
    q = torch.randn(3, 12, 8, generator=gen)
    out = (30, 50)
    coords, scores = cosine_argmax_lowres(q, t, out, block=7)
    assert coords.shape == (3, 12, 2) and scores.shape == (3, 12)
    for i in range(3):
        c_i, s_i = cosine_argmax_lowres(q[i], t[i], out)
        assert torch.equal(coords[i], c_i) and torch.equal(scores[i], s_i)
        assert_agrees(
            c_i, s_i, *cosine_argmax_reference(q[i], t[i], out), naive_scores(q[i], t[i], out), 50
        )


def test_empty_queries():
    t = torch.randn(6, 4, 5)
    coords, scores = cosine_argmax_lowres(torch.zeros(0, 6), t, (16, 20))
    assert coords.shape == (0, 2) and coords.dtype == torch.int64
    assert scores.shape == (0,) and scores.dtype == torch.float32
    coords, scores = cosine_argmax_lowres(torch.zeros(2, 0, 6), t.expand(2, -1, -1, -1), (16, 20))
    assert coords.shape == (2, 0, 2) and scores.shape == (2, 0)


def test_non_contiguous():
    gen = _gen(5)
    t = torch.randn(9, 7, 12, generator=gen).permute(2, 1, 0)  # (C=12, h=7, w=9), strided
    q = torch.randn(12, 25, generator=gen).T  # (K=25, C=12), transposed
    assert not t.is_contiguous() and not q.is_contiguous()
    out = (33, 41)
    coords, scores = cosine_argmax_lowres(q, t, out, block=4)
    c2, s2 = cosine_argmax_lowres(q.contiguous(), t.contiguous(), out, block=4)
    assert torch.equal(coords, c2) and torch.equal(scores, s2)
    assert_agrees(
        coords, scores, *cosine_argmax_reference(q, t, out), naive_scores(q, t, out), out[1]
    )


def test_zero_norm_pixels_and_ties():
    gen = _gen(6)
    v = torch.randn(8, generator=gen)
    t = torch.zeros(8, 6, 6)
    t[:, 4, 2] = v
    q = torch.stack([v + 0.1 * torch.randn(8, generator=gen), -v])
    coords, scores = cosine_argmax_lowres(q, t)
    # Only negative cosines elsewhere: a zero pixel (cos 0) wins, lowest flat index among them.
    assert coords.tolist() == [[2, 4], [0, 0]]
    assert float(scores[0]) > 0.9 and float(scores[1]) == 0.0
    # Every pixel blending only the one cell with zeros is parallel to it: a plateau of exact
    # ties (up to rounding) around it, so any pixel of the plateau may win.
    coords, scores = cosine_argmax_lowres(q, t, (24, 24))
    naive = naive_scores(q, t, (24, 24))
    assert_agrees(
        coords, scores, *cosine_argmax_reference(q, t, (24, 24)), naive, 24, max_differ=1.0
    )
    assert coords[1].tolist() == [0, 0] and float(scores[1]) == 0.0
    # Constant maps tie exactly everywhere -> (0, 0), for any (non-dyadic too) factor.
    for out in ((16, 16), (23, 37)):
        coords, _ = cosine_argmax_lowres(torch.randn(3, 5, generator=gen), torch.ones(5, 4, 4), out)
        assert bool((coords == 0).all())


def test_block_sizes_and_query_chunks_identical(monkeypatch):
    gen = _gen(7)
    t = torch.randn(16, 9, 11, generator=gen)
    q = torch.randn(30, 16, generator=gen)
    out = (37, 45)
    c_all, s_all = cosine_argmax_lowres(q, t, out, block=out[0])
    for b in (1, 3, 1000, None):
        c_b, s_b = cosine_argmax_lowres(q, t, out, block=b)
        assert torch.equal(c_b, c_all) and torch.equal(s_b, s_all)
    # A tiny block budget forces several query chunks and single-row blocks.
    monkeypatch.setattr(lowres, "_BLOCK_FLOATS", 4 * out[1])
    c_small, s_small = cosine_argmax_lowres(q, t, out)
    assert torch.equal(c_small, c_all)  # GEMM rounding may depend on the chunk width
    torch.testing.assert_close(s_small, s_all, atol=1e-6, rtol=0)


def test_block_memory_bound(monkeypatch):
    # The chosen chunking keeps every streamed block under the bound, also for huge problems
    # (checked without running them).
    bound = lowres._BLOCK_FLOATS
    assert bound * 4 <= 16 * 1024 * 1024  # the few live block tensors stay under ~32 MB
    cases = [(4096, 768, 768, 96 * 96), (1, 4096, 4096, 9), (100_000, 512, 8192, 64 * 1024),
             (7, 5, 3, 6), (256, 768, 768, 96 * 96)]  # fmt: skip
    for k, big_h, big_w, cells in cases:
        kq, rows = lowres._auto_chunks(k, big_h, big_w, cells)
        assert 1 <= kq <= k and 1 <= rows <= big_h
        assert kq * rows * big_w <= bound or (kq == 1 and rows == 1)
        assert kq * cells <= lowres._DOTS_FLOATS or kq == 1  # one chunk's dots
    assert lowres._auto_chunks(7, 5, 3, 6) == (7, 5)
    assert lowres._auto_chunks(4096, 768, 768, 96 * 96) == (410, 8)  # 10 chunks of <= 410

    # And the streaming loop really uses blocks of that size (spy on a run).
    seen = []
    stream = lowres._stream_argmax

    def spy(dots, inv_norm, rows, cols, block):
        seen.append(dots.shape[2] * min(block, inv_norm.shape[0]) * inv_norm.shape[1])
        return stream(dots, inv_norm, rows, cols, block)

    monkeypatch.setattr(lowres, "_BLOCK_FLOATS", 2000)
    monkeypatch.setattr(lowres, "_stream_argmax", spy)
    gen = _gen(8)
    cosine_argmax_lowres(torch.randn(64, 8, generator=gen), torch.randn(8, 6, 6), (60, 70))
    assert len(seen) == 3 and max(seen) <= 2000  # 3 chunks of <= 28 queries, 1-row blocks


def test_block_must_be_a_positive_int():
    q, t = torch.randn(2, 4), torch.randn(4, 3, 3)
    for bad_block in (0, -1, True, 2.0):
        with pytest.raises(MatchError):
            cosine_argmax_lowres(q, t, (9, 9), block=bad_block)
    with pytest.raises(MatchError):
        cosine_argmax_lowres(q, torch.randn(4, 0, 3))  # an empty map


# --------------------------------------------------------------------------- building blocks


def test_inverse_norms_equal_upsampled_norms(monkeypatch):
    gen = _gen(9)
    t = torch.randn(7, 6, 9, generator=gen, dtype=torch.float64)
    t[:, 2, 3] = -t[:, 2, 4]  # antipodal neighbours: strong cancellation between them
    t[:, 5, :] = 0.0  # a zero row: zero pixels get 1 / eps
    grids = [
        PixelGrid.interpolate((6, 9), (50, 70)),
        PixelGrid.interpolate((6, 9), (4, 5)),
        PixelGrid.from_input_transform((45, 60), (1.1, 0.9), (5.0, -3.0), (8.0, 8.0)),
    ]
    for g in grids:
        rows, cols = g.axis_weights("y", 6), g.axis_weights("x", 9)
        inv = inverse_norms(cell_gram(t), rows, cols)
        # Explicit separable upsampling in float64 with the same taps, weights (1 - t, t).
        (ri, rw), (ci, cw) = rows, cols
        a1, b1 = rw[:, 1, None].double(), cw[:, 1].double()
        up = t[:, ri[:, 0]] * (1 - a1) + t[:, ri[:, 1]] * a1
        up = up[:, :, ci[:, 0]] * (1 - b1) + up[:, :, ci[:, 1]] * b1
        want = 1.0 / up.norm(dim=0).clamp_min(1e-12)
        assert inv.shape == g.size and inv.dtype == torch.float32
        torch.testing.assert_close(inv.double(), want, rtol=1e-6, atol=0)
        part = inverse_norms(cell_gram(t), rows, cols, row_range=(3, 4))
        assert torch.equal(part, inv[3:4])
        with monkeypatch.context() as m:  # many small channel and row chunks: same values
            m.setattr(lowres, "_F64_CHUNK", {"cpu": 100, "cuda": 100})
            torch.testing.assert_close(inverse_norms(cell_gram(t), rows, cols), inv)


def test_cell_gram_entries():
    gen = _gen(10)
    t = torch.randn(5, 3, 4, generator=gen)
    g = cell_gram(t)
    d = t.double()
    assert g.shape == (5, 3, 4) and g.dtype == torch.float64
    torch.testing.assert_close(g[0], (d * d).sum(0))
    torch.testing.assert_close(g[1, 1, 2], (d[:, 1, 2] * d[:, 1, 3]).sum())
    torch.testing.assert_close(g[2, 0, 1], (d[:, 0, 1] * d[:, 1, 1]).sum())
    torch.testing.assert_close(g[3, 1, 0], (d[:, 1, 0] * d[:, 2, 1]).sum())
    torch.testing.assert_close(g[4, 0, 2], (d[:, 0, 3] * d[:, 1, 2]).sum())
    assert bool((g[1, :, -1] == 0).all() and (g[2, -1] == 0).all() and (g[3:, -1] == 0).all())


# --------------------------------------------------------------------------- real features


@pytest.fixture(scope="module")
def photo_features():
    """us6 (64 x 8 x 8) and us9 (64 x 16 x 16) taps of the tiny model on two 128² photos."""
    skdata = pytest.importorskip("skimage.data")
    from cleandift_rt.models import load_model

    net = load_model("tiny").feature_net(["us6", "us9"])
    feats = []
    for image in (skdata.astronaut(), skdata.chelsea()):
        small = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(small)[None]  # uint8 (1, 128, 128, 3)
        with torch.no_grad():
            feats.append([f[0] for f in net(x)])
    return feats  # [[us6, us9] of astronaut, [us6, us9] of chelsea]


@pytest.mark.parametrize("tap", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_real_photo_features(photo_features, tap, dtype):
    src, tgt = photo_features[0][tap].to(dtype), photo_features[1][tap].to(dtype)
    out = (128, 128)
    pts = torch.randint(0, 128, (300, 2), generator=_gen(11 + tap))
    q = sample_descriptors(src, pts, out)
    coords, scores = cosine_argmax_lowres(q, tgt, out)
    naive = naive_scores(q.float(), tgt.float(), out)
    assert_agrees(coords, scores, *cosine_argmax_reference(q, tgt, out), naive, out[1])
    # Matching an image against itself finds pixels as good as the query's own (cosine ~1).
    _, self_scores = cosine_argmax_lowres(q, src, out)
    assert float(self_scores.min()) > 0.999


def test_real_photo_batch(photo_features):
    tgt = torch.stack([photo_features[1][1], photo_features[0][1]])  # (2, 64, 16, 16)
    pts = torch.randint(0, 96, (2, 50, 2), generator=_gen(12))
    q = sample_descriptors(torch.stack([photo_features[0][1], photo_features[1][1]]), pts, (96, 96))
    coords, scores = cosine_argmax_lowres(q, tgt, (96, 96))
    assert_agrees(coords[0], scores[0], *cosine_argmax_reference(q[0], tgt[0], (96, 96)))
    assert_agrees(coords[1], scores[1], *cosine_argmax_reference(q[1], tgt[1], (96, 96)))


# --------------------------------------------------------------------------- dispatch


def test_cosine_argmax_default_equals_the_naive_pipeline():
    """The public entry point (backend "auto", the low-res method on the CPU) at the benchmark's
    K = 256 and C = 640 (map 12² → 192², 16× upsampling): the naive upsample pipeline's argmax
    and scores. Speed is measured in benchmarks/matcher.py, not here."""
    gen = _gen(29)
    t = torch.randn(640, 12, 12, generator=gen)
    q = torch.randn(256, 640, generator=gen)
    naive = naive_scores(q, t, (192, 192))
    best, flat = naive.max(dim=1)
    coords, scores = cosine_argmax(q, t, (192, 192))
    ref = torch.stack([flat % 192, flat // 192], dim=1)
    assert_agrees(coords, scores, ref, best, naive, 192)


def test_dispatch_backends():
    gen = _gen(13)
    t = torch.randn(8, 6, 7, generator=gen)
    q = torch.randn(20, 8, generator=gen)
    out = (30, 35)
    assert select_backend(t) == "lowres"  # CPU tensors never pick Triton automatically
    ref = cosine_argmax_reference(q, t, out)
    fast = cosine_argmax(q, t, out)
    assert_agrees(*fast, *ref)
    low = cosine_argmax_lowres(q, t, out)
    assert torch.equal(fast[0], low[0]) and torch.equal(fast[1], low[1])
    r = cosine_argmax(q, t, out, backend="reference")
    assert torch.equal(r[0], ref[0]) and torch.equal(r[1], ref[1])
    assert_agrees(*cosine_argmax(q, t, grid=PixelGrid.interpolate((6, 7), out)), *ref)
    with pytest.raises(MatchError):
        cosine_argmax(q, t, out, backend="cuda")  # type: ignore[arg-type]
    if triton_available() and interpreting():
        assert_agrees(*cosine_argmax(q, t, out, backend="triton"), *ref)
    else:  # CPU tensors need Triton's interpreter
        with pytest.raises(MatchError):
            cosine_argmax(q, t, out, backend="triton")


def test_pruning_skips_work_on_smooth_maps_and_stays_exact(monkeypatch):
    # Smooth maps (neighbouring cells alike, as real features are) make the band bounds tight:
    # many (query, band) pairs are skipped, and the answer is still the reference's, bit for bit
    # in the argmax and within rounding in the score. Zero cells (inverse norm 1e12) included.
    gen = _gen(21)
    coarse = torch.randn(1, 24, 4, 5, generator=gen)
    t = F.interpolate(coarse, (16, 20), mode="bilinear", align_corners=False)[0]
    t[:, 3:5, 7:9] = 0.0
    q = t[:, torch.randint(0, 16, (40,), generator=gen), torch.randint(0, 20, (40,), generator=gen)]
    q = q.T + 0.05 * torch.randn(40, 24, generator=gen)
    out = (128, 160)
    folded = []
    fold = lowres._fold_rows

    def spy(dots, runs, rows, y_range, best, best_idx, width, queries=None):
        if width == out[1]:  # the full grid, not the sub-grid giving reachable values
            n = dots.shape[2] if queries is None else queries.numel()
            folded.append(n * (y_range[1] - y_range[0]) * width)
        return fold(dots, runs, rows, y_range, best, best_idx, width, queries)

    monkeypatch.setattr(lowres, "_fold_rows", spy)
    coords, scores = cosine_argmax_lowres(q, t, out)
    naive = naive_scores(q, t, out)
    assert_agrees(coords, scores, *cosine_argmax_reference(q, t, out), naive, out[1])
    # Without pruning every query folds every row (1.0); here 0.54 (the bands around the zero
    # cells, whose inverse norms are huge, can never be skipped).
    assert sum(folded) < 0.6 * 40 * out[0] * out[1]


def _dense_lerp_argmax(q, t, grid):
    """The low-res method's float32 operations on the whole output grid at once (no blocks,
    no runs, no pruning): lerp along y, lerp along x, times the inverse norm, first maximum."""
    c, h, w = t.shape
    (ri, rw), (ci, cw) = grid.axis_weights("y", h), grid.axis_weights("x", w)
    dots = (t.reshape(c, h * w).T @ F.normalize(q, dim=1).T).contiguous().view(h, w, -1)
    d_rows = torch.lerp(dots[ri[:, 0]], dots[ri[:, 1]], rw[:, 1, None, None])  # (H, w, K)
    s = torch.lerp(d_rows[:, ci[:, 0]], d_rows[:, ci[:, 1]], cw[:, 1, None])  # (H, W, K)
    s *= inverse_norms(cell_gram(t), (ri, rw), (ci, cw))[..., None]
    flat = s.reshape(-1, s.shape[2])
    idx = flat.argmax(dim=0)  # first maximum: lowest flat index
    return torch.stack([idx % grid.size[1], idx // grid.size[1]], dim=1), flat.max(dim=0).values


@pytest.mark.parametrize(
    "grid",
    [
        PixelGrid.interpolate((7, 9), (23, 37)),  # non-integer factors: runs of 2 and 3 columns
        PixelGrid.interpolate((7, 9), (70, 90)),  # runs of 10, edge runs of 5
        # Long clamped edge runs (padding) next to short ones: runs are split and padded.
        PixelGrid.from_input_transform((45, 60), (1.1, 0.9), (40.0, -3.0), (8.0, 8.0)),
    ],
)
def test_runs_evaluate_exactly_like_dense_lerps(grid, monkeypatch):
    # Column runs, row pieces, single-pair broadcasts and pruning change which values are
    # computed when, never how: scores and argmax (ties included) are bit for bit those of the
    # dense evaluation, for any block size. Zero cells and a constant patch give exact ties.
    gen = _gen(30)
    t = torch.randn(12, 7, 9, generator=gen)
    t[:, 2:4, 3:6] = t[:, 2:3, 3:4]  # a constant patch: a plateau of exactly equal cosines
    t[:, 5, 7] = 0.0
    q = torch.cat([torch.randn(20, 12, generator=gen), t[:, 2, 3][None], -t[:, 2, 3][None]])
    want_c, want_s = _dense_lerp_argmax(q, t, grid)
    for block in (1, 2, None):
        coords, scores = cosine_argmax_lowres(q, t, grid=grid, block=block)
        assert torch.equal(coords, want_c) and torch.equal(scores, want_s)
    # Small blocks also split the sub-grid and the bands into many pieces (and the queries into
    # chunks: the GEMM of the dots may round differently for another chunk width).
    monkeypatch.setattr(lowres, "_BLOCK_FLOATS", 3 * grid.size[1])
    coords, scores = cosine_argmax_lowres(q, t, grid=grid)
    assert torch.equal(coords, want_c)
    torch.testing.assert_close(scores, want_s, atol=1e-6, rtol=0)


def test_column_runs_cover_every_column_in_order():
    grid = PixelGrid.from_input_transform((45, 60), (1.1, 0.9), (40.0, -3.0), (8.0, 8.0))
    cols = grid.axis_weights("x", 9)
    inv = torch.rand(5, 60, generator=_gen(31))
    runs = lowres._column_runs(cols, inv)
    n_runs, p = runs.weight.shape[:2]
    x = runs.x.view(n_runs, p)
    # Every column once, in increasing order; padding repeats a run's last column.
    assert torch.equal(torch.unique_consecutive(runs.x), torch.arange(60))
    assert bool((runs.x[1:] >= runs.x[:-1]).all())
    # Each slot has its column's corner cells, weight and inverse norms.
    assert torch.equal(runs.ends[:n_runs, None].expand(-1, p), cols[0][x, 0])
    assert torch.equal(runs.ends[n_runs:, None].expand(-1, p), cols[0][x, 1])
    assert torch.equal(runs.weight[..., 0], cols[1][x, 1])
    assert torch.equal(runs.inv[..., 0], inv[:, x])
    assert n_runs * p <= 1.25 * 60  # few padded slots


def test_row_pieces_stay_within_runs_of_rows():
    starts = [0, 4, 12, 20]  # rows sharing their corner cell rows: [0, 4), [4, 12), ...
    pieces = lowres._row_pieces(2, 22, 3, starts)
    assert pieces == [(2, 4), (4, 7), (7, 10), (10, 12), (12, 15), (15, 18), (18, 20), (20, 22)]
    assert lowres._row_pieces(5, 6, 100, starts) == [(5, 6)]
    # 3 cells -> 12 rows: rows 0-5 read cells (0, 1) (the top two clamped, weight 0), rows 6-9
    # cells (1, 2), rows 10-11 the clamped last cell (2, 2).
    rows = PixelGrid.interpolate((3, 5), (12, 5)).axis_weights("y", 3)
    assert lowres._row_starts(rows) == [0, 6, 10]
