"""Tests for cleandift_rt.viz (fast, CPU only)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from cleandift_rt import viz


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return data.chelsea()  # (300, 451, 3) uint8


def _px(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Pixel at the nearest integer position of a float (x, y)."""
    x, y = np.rint(xy).astype(int)
    return img[y, x].astype(int)


# ---------------------------------------------------------------------------------------------
# draw_correspondences
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_height", [None, 256, 1000])
def test_composite_shape_and_gap(astronaut, chelsea, max_height):
    out = viz.draw_correspondences(
        astronaut, chelsea, np.zeros((0, 2)), np.zeros((0, 2)), max_height=max_height
    )
    height = min(512, max_height or 768)
    w1 = round(512 * height / 512)
    w2 = round(451 * height / 300)
    lay = viz.side_by_side_layout(astronaut.shape, chelsea.shape, max_height)
    assert (lay.height, lay.src_width, lay.tgt_width) == (height, w1, w2)
    assert 1 <= lay.gap <= 10
    assert out.dtype == np.uint8
    assert out.shape == (height, w1 + lay.gap + w2, 3)
    # The gap is white, the images are (scaled) copies of the inputs.
    assert (out[:, w1 : w1 + lay.gap] == 255).all()
    ref = cv2.resize(chelsea, (w2, height), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[:, w1 + lay.gap :].astype(int) - ref).mean() < 2


@pytest.mark.parametrize("max_height", [None, 200])
def test_points_drawn_at_expected_positions(astronaut, chelsea, max_height):
    src = np.array([[100.0, 200.0]])
    tgt = np.array([[300.0, 150.0]])
    base = viz.draw_correspondences(astronaut, chelsea, src[:0], tgt[:0], max_height=max_height)
    out = viz.draw_correspondences(astronaut, chelsea, src, tgt, max_height=max_height)
    assert out.shape == base.shape
    lay = viz.side_by_side_layout(astronaut.shape, chelsea.shape, max_height)
    r = max(2.0, lay.height / 150)
    color = viz.point_colors(src, astronaut.shape)[0].astype(int)

    for p in (lay.src_to_composite(src)[0], lay.tgt_to_composite(tgt)[0]):
        # Marker centre: the pair colour, differing from the underlying image.
        assert np.abs(_px(out, p) - _px(base, p)).sum() > 30
        assert np.abs(_px(out, p) - color).max() <= 2
        # Marker is centred there: nearby pixels changed, pixels well above/below untouched.
        for d in (-0.5 * r, 0.5 * r):
            assert np.abs(_px(out, p + [0, d]) - _px(base, p + [0, d])).sum() > 0
        for d in (-3 * r, 3 * r):
            q = p + [0, d]
            assert (_px(out, q) == _px(base, q)).all()
    # Scaling check: the target point lands where the scaled coordinates say.
    expected_tgt = np.array(
        [
            lay.tgt_offset + (300.5 * lay.tgt_width / 451) - 0.5,
            (150.5 * lay.height / 300) - 0.5,
        ]
    )
    np.testing.assert_allclose(lay.tgt_to_composite(tgt)[0], expected_tgt)
    # Far corners are untouched.
    assert (out[:5, :5] == base[:5, :5]).all() and (out[-5:, -5:] == base[-5:, -5:]).all()


def test_rejected_pairs_are_grey(astronaut, chelsea):
    src = np.array([[100.0, 100.0], [400.0, 400.0]])
    tgt = np.array([[100.0, 100.0], [350.0, 250.0]])
    keep = np.array([False, True])
    out = viz.draw_correspondences(astronaut, chelsea, src, tgt, keep=keep)
    lay = viz.side_by_side_layout(astronaut.shape, chelsea.shape)
    for p in (lay.src_to_composite(src)[0], lay.tgt_to_composite(tgt)[0]):
        r, g, b = _px(out, p)
        assert r == g == b  # grey marker
    for p in (lay.src_to_composite(src)[1], lay.tgt_to_composite(tgt)[1]):
        c = _px(out, p)
        assert c.max() - c.min() > 60  # saturated colour
    # Torch inputs are accepted and give the same picture.
    out_t = viz.draw_correspondences(
        astronaut,
        chelsea,
        torch.from_numpy(src),
        torch.from_numpy(tgt),
        keep=torch.tensor(keep),
    )
    np.testing.assert_array_equal(out, out_t)


def test_scores_set_line_opacity(astronaut, chelsea):
    src = np.array([[50.0, 256.0]])
    tgt = np.array([[400.0, 150.0]])
    lay = viz.side_by_side_layout(astronaut.shape, chelsea.shape)
    a, b = lay.src_to_composite(src)[0], lay.tgt_to_composite(tgt)[0]
    mid = (a + b) / 2  # on the line, far from both markers
    base = viz.draw_correspondences(astronaut, chelsea, src[:0], tgt[:0])

    def change(score: float) -> int:
        out = viz.draw_correspondences(astronaut, chelsea, src, tgt, scores=[score], thickness=3)
        return int(np.abs(_px(out, mid) - _px(base, mid)).sum())

    assert 0 < change(0.0) < change(0.5) < change(1.0)


def test_point_colors_are_smooth():
    pts = np.array([[100.0, 100.0], [102.0, 101.0], [400.0, 100.0], [100.0, 400.0]])
    c = viz.point_colors(pts, (512, 512, 3)).astype(int)
    assert c.shape == (4, 3)
    near = np.abs(c[0] - c[1]).sum()
    assert near < 15
    assert np.abs(c[0] - c[2]).sum() > 5 * near and np.abs(c[0] - c[3]).sum() > 5 * near


def test_draw_validation(astronaut, chelsea):
    with pytest.raises(ValueError):
        viz.draw_correspondences(astronaut, chelsea, np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        viz.draw_correspondences(astronaut, chelsea, [[np.nan, 0.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError):
        viz.draw_correspondences(astronaut.astype(np.float32), chelsea, [[0, 0]], [[0, 0]])


def test_draw_deterministic(astronaut, chelsea):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 511, (50, 2))
    tgt = rng.uniform(0, 299, (50, 2))
    kw = {"scores": rng.uniform(0, 1, 50), "keep": rng.uniform(0, 1, 50) > 0.3}
    a = viz.draw_correspondences(astronaut, chelsea, src, tgt, **kw)
    b = viz.draw_correspondences(astronaut, chelsea, src, tgt, **kw)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# pca_rgb / feature_panel
# ---------------------------------------------------------------------------------------------

C = 16
_VECS = np.random.default_rng(1).normal(size=(4, C))  # background + 3 pattern feature vectors


def _synthetic(labels: np.ndarray) -> np.ndarray:
    """(C, h, w) float32 map whose pixel features are _VECS[label]."""
    return np.ascontiguousarray(_VECS[labels].transpose(2, 0, 1)).astype(np.float32)


def _labels_a() -> np.ndarray:
    lab = np.zeros((24, 32), int)
    lab[:, 8:16] = 1  # vertical stripe
    lab[:12, 16:] = 2  # top-right block
    lab[12:, 24:] = 3  # bottom-right block
    return lab


def _labels_b() -> np.ndarray:
    lab = np.zeros((20, 20), int)
    lab[:10, :] = 1  # only background and pattern 1, in a different layout
    return lab


def _region_colours(img: np.ndarray, lab: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for k in np.unique(lab):
        px = img[lab == k].astype(int)
        assert (px.max(axis=0) - px.min(axis=0)).max() <= 1  # uniform within a region
        out[int(k)] = px[0]
    return out


def test_pca_separates_patterns():
    lab = _labels_a()
    img = viz.pca_rgb(_synthetic(lab))
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (24, 32, 3)
    cols = _region_colours(img, lab)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(cols[i] - cols[j]).sum() > 60, (i, j, cols)


def test_pca_joint_same_feature_same_colour():
    la, lb = _labels_a(), _labels_b()
    ma, mb = _synthetic(la), torch.from_numpy(_synthetic(lb))
    ia, ib = viz.pca_rgb([ma, mb])
    ca, cb = _region_colours(ia, la), _region_colours(ib, lb)
    for k in (0, 1):
        assert np.abs(ca[k] - cb[k]).max() <= 1
    # Fitting map b alone gives other colours (the joint fit is what makes them agree).
    alone = _region_colours(viz.pca_rgb(mb), lb)
    assert any(np.abs(alone[k] - ca[k]).max() > 10 for k in (0, 1))


def test_pca_deterministic_and_resizing():
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(8, 12, 10)).astype(np.float32), rng.normal(size=(8, 6, 7))]
    a = viz.pca_rgb(maps)
    b = viz.pca_rgb([torch.from_numpy(m) for m in maps])
    assert [x.shape for x in a] == [(12, 10, 3), (6, 7, 3)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    r = viz.pca_rgb(maps, size=(24, 20))
    assert [x.shape for x in r] == [(24, 20, 3), (24, 20, 3)]
    np.testing.assert_array_equal(r[0][::2, ::2], a[0])  # nearest upsampling by 2
    r = viz.pca_rgb(maps, size=[(5, 5), (9, 8)], interpolation="linear")
    assert [x.shape for x in r] == [(5, 5, 3), (9, 8, 3)]
    with pytest.raises(ValueError):
        viz.pca_rgb([maps[0], rng.normal(size=(4, 6, 7))])  # channel mismatch
    # A small region (< 1 % of pixels) still gets its own colour (min/max fallback).
    lab = np.zeros((40, 40), int)
    lab[0, :3] = 1
    img = viz.pca_rgb(_synthetic(lab))
    assert np.abs(img[0, 0].astype(int) - img[20, 20]).sum() > 100
    # Degenerate input: constant map → no variance → black, no crash.
    assert (viz.pca_rgb(np.ones((5, 3, 3))) == 0).all()


def test_feature_panel(astronaut, chelsea):
    la, lb = _labels_a(), _labels_b()
    panel = viz.feature_panel([astronaut, chelsea], [_synthetic(la), _synthetic(lb)])
    height = 512
    w1, w2 = 512, round(451 * height / 300)
    gap = viz.side_by_side_layout(astronaut.shape, chelsea.shape).gap
    assert panel.dtype == np.uint8
    assert panel.shape == (height, 2 * w1 + 2 * w2 + 3 * gap, 3)
    np.testing.assert_array_equal(panel[:, :w1], astronaut)
    assert (panel[:, w1 : w1 + gap] == 255).all()


# ---------------------------------------------------------------------------------------------
# save_png
# ---------------------------------------------------------------------------------------------


def test_save_png_roundtrip(tmp_path, chelsea):
    path = tmp_path / "a" / "b" / "out.png"
    got = viz.save_png(str(path), chelsea)
    assert got == path and path.is_file()
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), chelsea)
    assert os.listdir(path.parent) == ["out.png"]  # no temp file left behind
    # Overwriting works and stays atomic.
    viz.save_png(path, chelsea[::-1])
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, chelsea[::-1])
    assert os.listdir(path.parent) == ["out.png"]


def test_save_png_errors(tmp_path, chelsea):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create directory"):
        viz.save_png(blocker / "sub" / "x.png", chelsea)
    with pytest.raises(OSError, match="cannot create directory"):
        viz.save_png(blocker / "x.png", chelsea)
    with pytest.raises(ValueError):
        viz.save_png(tmp_path / "x.png", chelsea.astype(np.float32))
    # Writing onto a directory fails with the OS error unchanged and cleans up.
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OSError):
        viz.save_png(tmp_path / "d.png", chelsea)
    assert sorted(os.listdir(tmp_path)) == ["d.png", "file.txt"]
