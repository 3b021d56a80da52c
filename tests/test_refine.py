"""Sub-pixel refinement: agreement with the naive pipeline (upsample, window, softmax /
parabola), every backend, pixel coordinates, bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleandift_rt.errors import MatchError
from cleandift_rt.matching import PixelGrid, cosine_argmax, match_points
from cleandift_rt.matching.refine import cosine_at

BACKENDS = ["lowres", "reference"]


def _smooth_map(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, c, h, w, generator=g)
    return F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)[0]


def _naive_upsampled(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(target[None].double(), size, mode="bilinear", align_corners=False)[0]
    return F.normalize(up, dim=0, eps=1e-12)  # (C, H, W)


def _naive_refine(queries, target, size, coords, mode, window, temperature):
    up = _naive_upsampled(target, size)
    big_h, big_w = size
    qn = F.normalize(queries.double(), dim=1)
    out = []
    for q, (x, y) in zip(qn, coords.tolist()):
        cos = torch.einsum("c,chw->hw", q, up)
        if mode == "softargmax":
            ys = range(max(0, y - window), min(big_h, y + window + 1))
            xs = range(max(0, x - window), min(big_w, x + window + 1))
            pts = torch.tensor([(xx, yy) for yy in ys for xx in xs], dtype=torch.float64)
            vals = torch.stack([cos[yy, xx] for yy in ys for xx in xs])
            p = torch.softmax(vals / temperature, 0)
            out.append((p[:, None] * pts).sum(0))
        else:
            res = [float(x), float(y)]
            for axis, n in ((0, big_w), (1, big_h)):
                c = (x, y)[axis]
                if 0 < c < n - 1:
                    line = cos[y] if axis == 0 else cos[:, x]
                    a, m, b = line[c - 1], line[c], line[c + 1]
                    curv = a - 2 * m + b
                    if curv < 0:
                        res[axis] += float((0.5 * (a - b) / curv).clamp(-0.5, 0.5))
            out.append(torch.tensor(res, dtype=torch.float64))
    return torch.stack(out)


def test_cosine_at_equals_naive_upsampled_cosine():
    target = _smooth_map(16, 7, 9)
    queries = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    size = (29, 37)
    grid = PixelGrid.interpolate((7, 9), size)
    g = torch.Generator().manual_seed(2)
    px = torch.randint(0, size[1], (5, 40), generator=g)
    py = torch.randint(0, size[0], (5, 40), generator=g)
    px[:, :4] = torch.tensor([0, size[1] - 1, 0, size[1] - 1])  # corners: edge clamping
    py[:, :4] = torch.tensor([0, 0, size[0] - 1, size[0] - 1])
    got = cosine_at(queries, target, grid, px, py)
    up = _naive_upsampled(target, size)
    want = torch.einsum("kc,ckp->kp", F.normalize(queries.double(), dim=1), up[:, py, px])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("mode", "window", "temperature"),
    [("softargmax", 3, 0.02), ("softargmax", 1, 0.005), ("quadratic", 1, 1.0)],
)
def test_refinement_matches_naive_reference(backend, mode, window, temperature):
    target = _smooth_map(12, 6, 8, seed=3)
    size = (45, 61)
    src = _smooth_map(12, 6, 8, seed=3) + 0.05 * _smooth_map(12, 6, 8, seed=4)
    grid = PixelGrid.interpolate((6, 8), size)
    pts = torch.tensor([[0.0, 0.0], [60.0, 44.0], [13.3, 20.7], [30.0, 5.0], [47.5, 33.2]])
    from cleandift_rt.matching import sample_descriptors

    queries = sample_descriptors(src, pts, grid)
    plain, s0 = cosine_argmax(queries, target, size, backend=backend)
    refined, s1 = cosine_argmax(
        queries, target, size, backend=backend, refine=mode, refine_window=window,
        refine_temperature=temperature,
    )  # fmt: skip
    assert refined.dtype == torch.float32 and plain.dtype == torch.int64
    torch.testing.assert_close(s0, s1)  # scores stay the argmax cosine
    want = _naive_refine(queries, target, size, plain, mode, window, temperature)
    assert (refined.double() - want).abs().max() <= 1e-4
    # Original-grid pixels: within the window of the integer argmax, inside the image.
    assert ((refined - plain.float()).abs() <= window + 1e-6).all()
    assert (refined[:, 0] >= 0).all() and (refined[:, 0] <= size[1] - 1).all()
    assert (refined[:, 1] >= 0).all() and (refined[:, 1] <= size[0] - 1).all()


def test_refinement_recovers_a_subpixel_shift_of_a_smooth_peak():
    """A target whose features are the source's sampled half a pixel off: refinement lands
    closer to the true position than the integer argmax."""
    size = (64, 64)
    src = _smooth_map(32, 16, 16, seed=5)
    grid = PixelGrid.interpolate((16, 16), size)
    pts = torch.tensor([[20.0, 20.0], [40.0, 28.0], [31.0, 44.0]])
    shift = torch.tensor([0.5, -0.5])
    from cleandift_rt.matching import sample_descriptors

    queries = sample_descriptors(src, pts + shift, grid)
    plain, _ = cosine_argmax(queries, src, size)
    err_plain = (plain.float() - (pts + shift)).norm(dim=1).mean()
    for mode in ("softargmax", "quadratic"):
        refined, _ = cosine_argmax(queries, src, size, refine=mode, refine_temperature=0.002)
        err = (refined - (pts + shift)).norm(dim=1).mean()
        assert err < err_plain, (mode, err, err_plain)


def test_batched_target_and_match_points_refine_in_image_pixels():
    src = _smooth_map(8, 5, 5, seed=6)
    tgt = torch.stack([src, _smooth_map(8, 5, 5, seed=7)])
    pts = torch.tensor([[3.0, 4.0], [17.0, 9.0]])
    grid = PixelGrid.from_input_transform((20, 30), (1.0, 1.0), (0.0, 0.0), 6.0)
    res = match_points(src, tgt, pts, src_grid=grid, tgt_grid=grid, refine="softargmax")
    assert res.target.shape == (2, 2, 2) and res.target.dtype == torch.float32
    for i in range(2):
        one = match_points(src, tgt[i], pts, src_grid=grid, tgt_grid=grid, refine="softargmax")
        torch.testing.assert_close(res.target[i], one.target)
    plain = match_points(src, tgt[0], pts, src_grid=grid, tgt_grid=grid)
    assert ((res.target[0] - plain.target.float()).abs() <= 4 + 1e-6).all()
    assert (res.target[..., 0] <= 29).all() and (res.target[..., 1] <= 19).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"refine": "bogus"}, "refine must be one of none, softargmax, quadratic"),
        ({"refine": "softargmax", "refine_window": 0}, "refine window must be an integer >= 1"),
        ({"refine": "softargmax", "refine_window": 2.5}, "refine window must be an integer"),
        ({"refine": "softargmax", "refine_temperature": 0.0}, "temperature must be a finite"),
        ({"refine": "softargmax", "refine_temperature": -1}, "temperature must be a finite"),
        ({"refine": "softargmax", "refine_temperature": float("nan")}, "temperature must"),
    ],
)
def test_bad_refine_values_are_one_line_errors(kwargs, message):
    target = _smooth_map(4, 3, 3)
    with pytest.raises(MatchError, match=message) as info:
        cosine_argmax(torch.ones(1, 4), target, (9, 9), **kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------- extractor, CLI, flip


@pytest.fixture(scope="module")
def toy_extractor():
    from cleandift_rt import FeatureExtractor

    return FeatureExtractor.from_pretrained("toy", resolution=128, device="cpu")


@pytest.fixture(scope="module")
def photo():
    import cv2

    from cleandift_rt.evaluation.homography import load_photos

    return cv2.resize(load_photos(("astronaut",))[0][1], (160, 128), interpolation=cv2.INTER_AREA)


def test_extractor_match_refines_in_original_pixels(toy_extractor, photo):
    from cleandift_rt.matching import sample_descriptors

    pts = [[20.0, 30.0], [100.5, 64.0], [150.0, 120.0]]
    res = toy_extractor.match(photo, photo[:, ::-1].copy(), pts, refine="softargmax")
    assert res.refine == "softargmax" and res.flipped is None
    feats = toy_extractor([photo, photo[:, ::-1].copy()])
    tap = res.tap
    q = sample_descriptors(feats[tap][0], torch.tensor(pts), feats.grid(0, tap))
    want, _ = cosine_argmax(q, feats[tap][1], grid=feats.grid(1, tap), refine="softargmax")
    assert feats.grid(1, tap).size == (128, 160)  # original image pixels
    assert abs(res.target_points - want.numpy()).max() <= 1e-4
    assert res.to_dict()["refine"] == "softargmax"


def test_flip_alignment_picks_the_flip_of_a_mirrored_pair(toy_extractor, photo, tmp_path, capsys):
    """Through the CLI (``--flip-align --refine quadratic --json``) on an image and its
    ``cv2.flip``; through ``FeatureExtractor.match`` on an identical pair."""
    import json

    import cv2
    from PIL import Image

    from cleandift_rt.geometry import grid_points

    a, b = tmp_path / "a.png", tmp_path / "mirrored.png"
    Image.fromarray(photo).save(a)
    Image.fromarray(cv2.flip(photo, 1)).save(b)
    opts = ["--model", "toy", "--resolution", 128, "--device", "cpu", "--grid", 5]
    code, out, err = _cli(
        ["match", a, b, *opts, "--flip-align", "--refine", "quadratic", "--json"], capsys
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["flipped"] is True and payload["refine"] == "quadratic"
    # Mapped back into the mirrored image's pixels: near x' = W - 1 - x of each source point.
    src = np.array([m["source"] for m in payload["matches"]])
    tgt = np.array([m["target"] for m in payload["matches"]])
    assert np.median(np.abs(tgt[:, 0] - (photo.shape[1] - 1 - src[:, 0]))) <= 8
    assert (tgt != np.round(tgt)).any()  # refined: sub-pixel positions

    pts = grid_points(photo.shape[:2], 5)
    same = toy_extractor.match(photo, photo, pts, flip_align=True)
    assert same.flipped is False
    plain = toy_extractor.match(photo, photo, pts)
    np.testing.assert_array_equal(same.target_points, plain.target_points)


def _cli(args, capsys):
    from cleandift_rt import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["--refine", "cubic"], "--refine must be one of none, softargmax, quadratic"),
        (["--refine-window", "0"], "--refine-window must be an integer >= 1"),
        (["--refine-window", "two"], "--refine-window must be an integer >= 1"),
        (["--refine-temperature", "0"], "--refine-temperature must be a number > 0"),
        (["--refine-temperature", "nan"], "--refine-temperature must be a number > 0"),
    ],
)
@pytest.mark.parametrize("command", ["match", "track"])
def test_cli_refine_options_are_checked_before_any_model_loads(
    command, opts, message, capsys, tmp_path
):
    # The images / video do not exist: the option check comes first.
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    if command == "track":
        files = ["--source", tmp_path / "v.mp4"]
    code, out, err = _cli([command, *files, "--grid", 2, *opts], capsys)
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_defaults_agree_with_the_matcher():
    from cleandift_rt.cli import common
    from cleandift_rt.matching import refine

    assert common.REFINE_MODES == refine.REFINE_MODES
    assert common.refine_options("quadratic", "3", "0.5") == {
        "refine": "quadratic", "refine_window": 3, "refine_temperature": 0.5,
    }  # fmt: skip
    assert common.refine_options("quadratic", "3", "0.5") == {
        "refine": "quadratic", "refine_window": 3, "refine_temperature": 0.5,
    }  # fmt: skip
    assert common.REFINE_DEFAULTS == {
        "refine_window": refine.DEFAULT_WINDOW,
        "refine_temperature": refine.DEFAULT_TEMPERATURE,
    }
