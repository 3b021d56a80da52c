"""Coordinate round trips: known correspondences come back at the right ORIGINAL pixels.

The network is replaced by a position-encoding test network: images are colour ramps
(R ∝ x, G ∝ y of a larger "world"), and the features of a cell are random Fourier features of
the ramp values at the cell. The source and target are two differently sized crops of the
world, so every source pixel has a known target pixel. Everything else — decode, resize or
fit+pad, batching, bilinear query sampling, upsampled cosine argmax, transforms back to the
original image — is the code real features go through.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleandift_rt.errors import InputSizeError, MatchError
from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.matching import PixelGrid

WORLD = (420, 640)  # H, W


class PositionNet:
    """Runner interface; feature (C, H/8, W/8) = Fourier features of each cell's mean (R, G)."""

    name = "position-test"

    def __init__(self, stride=8, channels=96, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.freqs = torch.randn(channels, 2, generator=gen) * 3.0  # cycles per unit ramp
        self.phase = torch.rand(channels, generator=gen) * 2 * np.pi
        self.taps, self.strides, self.channels = ("pos",), {"pos": stride}, {"pos": channels}
        self.input_size, self.device = None, torch.device("cpu")
        self.batch_range = (1, 2**31 - 1)  # any batch
        self.stride = stride

    def __call__(self, images):
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
        cells = F.avg_pool2d(x[:, :2], self.stride)  # (B, 2, h, w), mean R, G per cell
        proj = torch.einsum("cd,bdhw->bchw", self.freqs, cells) * 2 * np.pi
        return {"pos": torch.cos(proj + self.phase[None, :, None, None])}


def world_crop(x0, y0, h, w):
    """uint8 (h, w, 3) crop of the ramp world at (x0, y0)."""
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    r = xs * 255.0 / (WORLD[1] - 1)
    g = ys * 255.0 / (WORLD[0] - 1)
    return np.dstack([r, g, np.full_like(r, 128)]).round().astype(np.uint8)


@pytest.mark.parametrize(
    "policy,resolution",
    [("square", 256), ("square", 320), ("fit", 256), ("fit", 384)],
)
def test_known_shift_is_recovered_in_original_pixels(policy, resolution):
    shift = np.array([37.0, 21.0])  # target = world crop at (37, 21)
    src = world_crop(0, 0, 300, 451)
    tgt = world_crop(int(shift[0]), int(shift[1]), 330, 404)  # other size and aspect
    fx = FeatureExtractor(PositionNet(), resolution=resolution, policy=policy)
    ys, xs = np.mgrid[40:260:20, 60:400:30]
    points = np.c_[xs.ravel(), ys.ravel()].astype(float) + 0.25  # off-grid source points
    result = fx.match(src, tgt, points)
    truth = points - shift
    diff = result.target_points - truth
    err = np.linalg.norm(diff, axis=1)
    assert err.max() <= 2.0, f"max error {err.max():.2f} px"  # ramps quantised to 8 bit
    # no systematic offset: a half-pixel convention bug shows up here (+0.25 rounds to 0.25)
    assert np.abs(diff.mean(0)).max() <= 0.5, diff.mean(0)
    assert np.array_equal(result.target_points, np.round(result.target_points))


def test_an_axis_swap_or_offset_bug_would_be_caught():
    """The check above is sensitive: a 12 px shift in the truth breaks it."""
    src, tgt = world_crop(0, 0, 300, 451), world_crop(37, 21, 330, 404)
    fx = FeatureExtractor(PositionNet(), resolution=256, policy="fit")
    points = np.array([[200.0, 150.0], [100.0, 220.0]])
    result = fx.match(src, tgt, points)
    wrong = points - np.array([37.0 + 12, 21.0])
    assert np.linalg.norm(result.target_points - wrong, axis=1).min() > 6


def test_square_policy_grid_is_difts_interpolate_to_original_size():
    """DIFT upsamples the map of the square-resized image straight to the original size."""
    fx = FeatureExtractor(PositionNet(), resolution=256, policy="square")
    feats = fx([world_crop(0, 0, 300, 451)])
    grid = feats.grid(0, "pos")
    expect = PixelGrid.interpolate((32, 32), (300, 451))
    np.testing.assert_allclose(grid.scale, expect.scale, rtol=1e-12)
    np.testing.assert_allclose(grid.shift, expect.shift, rtol=1e-12, atol=1e-12)


def test_fit_policy_batches_images_of_different_aspect():
    fx = FeatureExtractor(PositionNet(), resolution=256, policy="fit")
    feats = fx([world_crop(0, 0, 300, 451), world_crop(0, 0, 400, 200)])
    assert feats["pos"].shape == (2, 96, 32, 32)  # 192x256 and 256x128 padded to 256x256
    assert [t.original_size for t in feats.transforms] == [(300, 451), (400, 200)]


def test_points_outside_the_source_or_none_are_errors():
    fx = FeatureExtractor(PositionNet(), resolution=128)
    img = world_crop(0, 0, 100, 150)
    with pytest.raises(MatchError):
        fx.match(img, img, [(150.0, 10.0)])
    with pytest.raises(MatchError, match="no points"):
        fx.match(img, img, [])


def test_runner_refuses_a_batch_of_the_wrong_size(tiny):
    from cleandift_rt.backends import TorchRunner

    runner = TorchRunner(tiny.feature_net(["us6"]), input_size=(128, 128))
    with pytest.raises(InputSizeError, match="takes 128x128"):
        runner(np.zeros((1, 192, 128, 3), np.uint8))
    with pytest.raises(InputSizeError, match="multiple of 64"):
        TorchRunner(tiny.feature_net(["us6"]))(np.zeros((1, 100, 128, 3), np.uint8))
    with pytest.raises(InputSizeError, match="uint8"):
        runner(np.zeros((1, 128, 128, 3), np.float32))
