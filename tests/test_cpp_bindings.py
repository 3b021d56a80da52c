"""Parity of the C++ matcher (cpp_bindings/, Python module ``cleandift_rt_cpp``) with the Python
matcher (cleandift_rt.matching). Skipped when the extension is not built (``make test-cpp``
builds it into cpp_bindings/build/python; CLEANDIFT_RT_CPP_BUILD overrides that directory)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cleandift_rt.matching import (
    PixelGrid,
    cosine_argmax_lowres,
    cosine_argmax_reference,
    match_points,
    mutual_nearest,
    nearest,
    sample_descriptors,
)

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("CLEANDIFT_RT_CPP_BUILD", ROOT / "cpp_bindings" / "build" / "python"))


def _import_cpp():
    if not list(BUILD.glob("cleandift_rt_cpp*.so")):
        pytest.skip(f"C++ bindings not built (no cleandift_rt_cpp*.so in {BUILD}): make test-cpp",
                    allow_module_level=True)  # fmt: skip
    sys.path.insert(0, str(BUILD))
    try:
        return importlib.import_module("cleandift_rt_cpp")
    except ImportError as exc:  # e.g. built with CUDA, run where libcudart is missing
        pytest.skip(f"C++ bindings in {BUILD} do not load: {exc}", allow_module_level=True)
    finally:
        sys.path.remove(str(BUILD))


cpp = _import_cpp()
TIE_TOL = 1e-5  # a different argmax is accepted only when its score is this close to the best


def cpp_grid(grid: PixelGrid):
    """The C++ twin of a Python PixelGrid."""
    return cpp.PixelGrid(*grid.size, *grid.scale, *grid.shift)


def score_at(query: torch.Tensor, target: torch.Tensor, grid: PixelGrid, xy) -> torch.Tensor:
    """Naive cosine of each query with the upsampled target at integer pixels ``xy`` (K, 2)."""
    f = sample_descriptors(target.double(), torch.as_tensor(xy, dtype=torch.float64), grid)
    return torch.nn.functional.cosine_similarity(query.double(), f, dim=1, eps=1e-12)


def assert_same_argmax(queries, target, grid, got, want):
    """Equal argmax, except near-ties (the C++ pixel scores within TIE_TOL of the best)."""
    (got_xy, got_scores), (want_xy, want_scores) = got, want
    np.testing.assert_allclose(got_scores, want_scores.numpy(), atol=TIE_TOL, rtol=0)
    differ = np.flatnonzero((got_xy != want_xy.numpy()).any(axis=1))
    if differ.size:
        at = score_at(queries[differ], target, grid, got_xy[differ]).numpy()
        np.testing.assert_allclose(at, want_scores.numpy()[differ], atol=TIE_TOL, rtol=0)
    assert differ.size <= max(1, len(got_xy) // 20), f"{differ.size} near-ties of {len(got_xy)}"


def random_case(seed: int, c: int, h: int, w: int, k: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, c, generator=g), torch.randn(c, h, w, generator=g)


GRIDS = {
    "upsample": lambda h, w: PixelGrid.interpolate((h, w), (97, 83)),
    "downsample": lambda h, w: PixelGrid.interpolate((h, w), (5, 4)),
    "identity": lambda h, w: PixelGrid.identity((h, w)),
    "resize_pad": lambda h, w: PixelGrid.from_input_transform((150, 201), 0.32, (0.0, 7.5), 8.0),
}


@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_cosine_argmax_equals_reference(grid_name):
    queries, target = random_case(1, c=64, h=9, w=8, k=120)
    grid = GRIDS[grid_name](9, 8)
    got = cpp.Matcher().cosine_argmax(queries.numpy(), target.numpy(), cpp_grid(grid))
    assert got[0].dtype == np.int64 and got[0].shape == (120, 2) and got[1].dtype == np.float32
    assert_same_argmax(
        queries, target, grid, got, cosine_argmax_reference(queries, target, grid=grid)
    )
    assert_same_argmax(queries, target, grid, got, cosine_argmax_lowres(queries, target, grid=grid))


def test_real_features_match_points():
    """tiny-model features of two photos: C++ match_points == Python match_points."""
    skimage_data = pytest.importorskip("skimage.data")
    from cleandift_rt.imaging import prepare_image
    from cleandift_rt.models import load_model

    net = load_model("tiny").feature_net(["us6"]).eval()
    photos = [skimage_data.astronaut(), skimage_data.chelsea()]
    images = np.stack([prepare_image(p, (64, 64)).array for p in photos])
    with torch.inference_mode():
        (maps,) = net(torch.from_numpy(images))
    src, tgt = maps[0].float(), maps[1].float()
    points = torch.tensor(
        [[x, y] for y in range(0, 64, 9) for x in range(0, 64, 7)], dtype=torch.float64
    )
    want = match_points(src, tgt, points, (64, 64), (300, 451))
    src_grid = PixelGrid.interpolate(src.shape[1:], (64, 64))
    tgt_grid = PixelGrid.interpolate(tgt.shape[1:], (300, 451))
    got = cpp.Matcher().match_points(src.numpy(), cpp_grid(src_grid), points.numpy(), tgt.numpy(),
                                     cpp_grid(tgt_grid))  # fmt: skip
    queries = sample_descriptors(src, points, src_grid)
    assert_same_argmax(queries, tgt, tgt_grid, got, (want.target, want.scores))


def test_sample_descriptors_equals_python():
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(32, 6, 7, generator=g)
    grid = PixelGrid.from_input_transform((50, 61), (0.9, 0.8), (1.0, 2.5), (8.0, 8.0))
    points = torch.rand(40, 2, generator=g, dtype=torch.float64) * torch.tensor([61.0, 50.0]) - 0.5
    points[0] = torch.tensor([-0.5, -0.5])
    points[1] = torch.tensor([60.5, 49.5])  # the far corner
    got = cpp.Matcher().sample_descriptors(fmap.numpy(), points.numpy(), cpp_grid(grid))
    np.testing.assert_allclose(got, sample_descriptors(fmap, points, grid).numpy(), atol=1e-6)
    assert cpp.Matcher().sample_descriptors(
        fmap.numpy(), np.zeros((0, 2)), cpp_grid(grid)
    ).shape == (0, 32)


def test_descriptor_sets_equal_python():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 40, generator=g)
    b = torch.cat(
        [a[::3] + 0.2 * torch.randn(100, 40, generator=g), torch.randn(150, 40, generator=g)]
    )
    b[120] = b[5]  # an exact duplicate: ties go to the lowest index
    matcher = cpp.Matcher(num_threads=3)
    for cpp_fn, py_fn in ((matcher.mutual_nearest, mutual_nearest), (matcher.nearest, nearest)):
        scores, pairs = cpp_fn(a.numpy(), b.numpy())
        want = py_fn(a, b)
        np.testing.assert_array_equal(pairs, want.pairs.numpy())
        np.testing.assert_allclose(scores, want.scores.numpy(), atol=1e-5)
    empty_scores, empty_pairs = matcher.mutual_nearest(a.numpy()[:0], b.numpy())
    assert empty_scores.shape == (0,) and empty_pairs.shape == (0, 2)


def test_ties_and_zero_pixels_like_python():
    queries = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    grid = PixelGrid.interpolate((4, 4), (13, 11))
    for target in (torch.full((8, 4, 4), 0.25), torch.zeros(8, 4, 4)):
        xy, scores = cpp.Matcher().cosine_argmax(queries.numpy(), target.numpy(), cpp_grid(grid))
        want_xy, want_scores = cosine_argmax_reference(queries, target, grid=grid)
        np.testing.assert_array_equal(xy, want_xy.numpy())
        np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-6)


def test_threads_give_identical_results():
    queries, target = random_case(5, c=32, h=11, w=10, k=150)
    grid = cpp.PixelGrid.interpolate(11, 10, 77, 70)
    one = cpp.Matcher(num_threads=1).cosine_argmax(queries.numpy(), target.numpy(), grid)
    four = cpp.Matcher(num_threads=4).cosine_argmax(queries.numpy(), target.numpy(), grid)
    np.testing.assert_array_equal(one[0], four[0])
    np.testing.assert_array_equal(one[1], four[1])


def test_errors_are_one_line():
    matcher = cpp.Matcher()
    grid = cpp.PixelGrid.identity(3, 3)
    bad = np.ones((4, 3, 3), np.float32)
    bad[1, 1, 1] = np.nan
    cases = [
        (lambda: matcher.cosine_argmax(np.ones((2, 4), np.float32), bad, grid), "NaN or Inf"),
        (lambda: matcher.cosine_argmax(np.ones((2, 5), np.float32), np.ones((4, 3, 3)), grid),
         "channel mismatch"),
        (lambda: matcher.sample_descriptors(np.ones((4, 3, 3)), np.array([[3.0, 0.0]]), grid),
         "points must lie in"),
        (lambda: matcher.cosine_argmax(np.ones((2, 4)), np.ones((4, 3)), grid), "(C, h, w)"),
        (lambda: cpp.PixelGrid(0, 3, 1.0, 1.0, 0.0, 0.0), "positive"),
    ]  # fmt: skip
    for call, text in cases:
        with pytest.raises(cpp.Error, match=text.replace("(", r"\(").replace(")", r"\)")) as info:
            call()
        assert "\n" not in str(info.value)
    assert issubclass(cpp.Error, ValueError)


@pytest.mark.gpu
@pytest.mark.skipif(not cpp.cuda_available(), reason="needs the CUDA build and a CUDA GPU")
def test_cuda_equals_cpu():
    queries, target = random_case(6, c=256, h=24, w=24, k=500)
    grid = cpp.PixelGrid.interpolate(24, 24, 384, 384)
    cpu_xy, cpu_scores = cpp.Matcher().cosine_argmax(queries.numpy(), target.numpy(), grid)
    gpu_xy, gpu_scores = cpp.cuda_cosine_argmax(queries.numpy(), target.numpy(), grid)
    np.testing.assert_array_equal(gpu_xy, cpu_xy)
    np.testing.assert_array_equal(gpu_scores, cpu_scores)
