"""Evaluation: PCK bookkeeping, SPair-71k on a synthetic folder with known answers, the seeded
homography benchmark (ground truth checked on an identity warp and on marked points), the
`eval` commands."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cleandift_rt import cli
from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.evaluation import PCKTally, end_point_errors
from cleandift_rt.evaluation.homography import (
    evaluate_homography,
    load_photos,
    make_pairs,
    random_warp,
    warped_pair,
)
from cleandift_rt.evaluation.spair import evaluate_spair, read_pairs

# ---------------------------------------------------------------------------------- PCK


def test_pck_per_point_and_per_image_averages_differ_as_defined():
    tally = PCKTally(alphas=(0.1, 0.2))
    # pair 1 (scale 100): errors 5, 15 → @0.1 1/2, @0.2 2/2; pair 2 (scale 50): 1, 2, 30
    tally.add("cat", np.array([5.0, 15.0]), {"bbox": 100})
    tally.add("cat", np.array([1.0, 2.0, 30.0]), {"bbox": 50})
    tally.add("dog", np.array([0.0]), {"bbox": 10})
    tally.add("dog", np.array([]), {"bbox": 10})  # no points: ignored
    s = tally.summary()
    cat = s["groups"]["cat"]
    assert cat["per_point"]["bbox@0.1"] == pytest.approx(3 / 5)
    assert cat["per_image"]["bbox@0.1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert cat["per_point"]["bbox@0.2"] == pytest.approx(4 / 5)
    assert s["overall"]["per_point"]["bbox@0.1"] == pytest.approx(4 / 6)
    assert s["overall"]["pairs"] == 3 and s["overall"]["points"] == 6
    assert s["group_mean"]["per_point"]["bbox@0.1"] == pytest.approx((3 / 5 + 1) / 2)
    assert s["overall"]["mean_epe_px"] == pytest.approx(53 / 6)


def test_end_point_errors_and_empty_tally():
    assert end_point_errors([[0, 0], [3, 4]], [[0, 0], [0, 0]]).tolist() == [0, 5]
    with pytest.raises(ValueError):
        end_point_errors([[0, 0]], [[0, 0], [1, 1]])
    with pytest.raises(ValueError):
        PCKTally().summary()


# ---------------------------------------------------------------------------------- SPair


# (category, source (W, H), target (W, H), target bbox, number of keypoints)
PAIRS = [
    ("cat", (64, 48), (56, 72), [4, 6, 44, 56], 5),  # bbox max side 50 → 0.1 = 5 px
    ("cat", (56, 72), (64, 48), [10, 8, 40, 38], 4),  # bbox 30 → 3 px; image 64 → 6.4 px
    ("dog", (80, 40), (48, 64), [0, 0, 20, 10], 3),  # bbox 20 → 2 px; image 64 → 6.4 px
]


def colour_image(w: int, h: int, points: np.ndarray, seed: int) -> np.ndarray:
    """Dark random background with each keypoint's pixel in a unique bright colour."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
    for k, (x, y) in enumerate(points.astype(int)):
        image[y, x] = (255, 40 * k + 20, 255 - 40 * k)
    return image


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory) -> Path:
    """A tiny SPair-71k folder: PairAnnotation/test, ImageAnnotation, JPEGImages (PNG data in
    .jpg files so colours survive exactly)."""
    root = tmp_path_factory.mktemp("SPair-71k")
    rng = np.random.default_rng(0)
    for i, (cat, (sw, sh), (tw, th), bbox, n) in enumerate(PAIRS):
        src = np.c_[rng.integers(0, sw, n), rng.integers(0, sh, n)]
        tgt = np.c_[rng.integers(0, tw, n), rng.integers(0, th, n)]
        names = [f"{i:04d}_src.jpg", f"{i:04d}_trg.jpg"]
        for name, (w, h), pts, seed in (
            (names[0], (sw, sh), src, 2 * i),
            (names[1], (tw, th), tgt, 2 * i + 1),
        ):
            folder = root / "JPEGImages" / cat
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colour_image(w, h, pts, seed)).save(folder / name, format="PNG")
            ann = root / "ImageAnnotation" / cat
            ann.mkdir(parents=True, exist_ok=True)
            (ann / name.replace(".jpg", ".json")).write_text(json.dumps({"filename": name}))
        pair = {
            "pair_id": i,
            "category": cat,
            "src_imname": names[0],
            "trg_imname": names[1],
            "src_imsize": [sw, sh, 3],
            "trg_imsize": [tw, th, 3],
            "src_kps": src.tolist(),
            "trg_kps": tgt.tolist(),
            "src_bndbox": [0, 0, sw - 1, sh - 1],
            "trg_bndbox": bbox,
        }
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}-{names[0][:-4]}-{names[1][:-4]}:{cat}.json").write_text(
            json.dumps(pair)
        )
    return root


def colour_predictor(source, target, points, **_keys) -> np.ndarray:
    """Exact from the pixels alone: the target pixel with the source point's colour."""
    out = []
    for x, y in np.asarray(points).astype(int):
        ys, xs = np.nonzero((target == source[y, x]).all(axis=2))
        out.append([xs[0], ys[0]])
    return np.asarray(out, dtype=np.float64)


def test_a_perfect_predictor_scores_one(spair_root):
    s = evaluate_spair(spair_root, colour_predictor, "test")
    assert s["overall"]["pairs"] == 3 and s["overall"]["points"] == 12
    assert set(s["groups"]) == {"cat", "dog"}
    for part in ("overall", "group_mean"):
        for avg in ("per_point", "per_image"):
            assert s[part][avg] == {"bbox@0.1": 1.0, "img@0.1": 1.0}
    assert s["overall"]["mean_epe_px"] == 0.0


def test_a_shifted_predictor_scores_what_the_thresholds_say(spair_root):
    """Shift every prediction 4 px: within 0.1·bbox only for pair 0 (5 px), within 0.1·image
    for every pair (≥ 6.4 px)."""

    def shifted(source, target, points, **keys):
        return colour_predictor(source, target, points) + [4.0, 0.0]

    s = evaluate_spair(spair_root, shifted, "test")
    cat, dog = s["groups"]["cat"], s["groups"]["dog"]
    assert cat["per_point"]["bbox@0.1"] == pytest.approx(5 / 9)
    assert cat["per_image"]["bbox@0.1"] == pytest.approx(0.5)
    assert dog["per_point"]["bbox@0.1"] == 0.0
    assert s["overall"]["per_point"]["bbox@0.1"] == pytest.approx(5 / 12)
    assert s["overall"]["per_image"]["bbox@0.1"] == pytest.approx(1 / 3)
    assert s["overall"]["per_point"]["img@0.1"] == 1.0
    assert s["overall"]["mean_epe_px"] == pytest.approx(4.0)


def test_pair_reading_filters_and_errors(spair_root, tmp_path):
    assert [p.category for p in read_pairs(spair_root, "test", ["dog"])] == ["dog"]
    assert len(read_pairs(spair_root, "test", max_pairs_per_category=1)) == 2
    pair = read_pairs(spair_root)[0]
    assert pair.target_size == (72, 56) and pair.bbox_scale == 50 and pair.image_scale == 72
    with pytest.raises(CleanDIFTError, match="PairAnnotation"):
        read_pairs(tmp_path)
    with pytest.raises(CleanDIFTError, match="horse"):
        read_pairs(spair_root, "test", ["horse"])
    bad = tmp_path / "PairAnnotation" / "test"
    bad.mkdir(parents=True)
    (bad / "x.json").write_text('{"category": "cat"}')
    with pytest.raises(CleanDIFTError, match="x.json.*src_kps"):
        read_pairs(tmp_path)


# ---------------------------------------------------------------------------------- homography


def test_identity_warp_ground_truth_and_a_real_model_finds_it(tiny):
    """Identity: the target is the source and the truth is the points; the tiny model's own
    features then match every point to itself (within the sub-pixel grid offset)."""
    from cleandift_rt import FeatureExtractor
    from cleandift_rt.backends import TorchRunner
    from cleandift_rt.evaluation import ExtractorPredictor

    photo = load_photos(["chelsea"])
    pairs = make_pairs(photo, 1, "identity", grid=6)
    assert np.array_equal(pairs[0].target, pairs[0].source)
    np.testing.assert_array_equal(pairs[0].target_points, pairs[0].source_points)
    fx = FeatureExtractor(TorchRunner(tiny.feature_net(["us6"])), resolution=128)
    s = evaluate_homography(ExtractorPredictor(fx), pairs, alphas=(0.01, 0.1))
    assert s["overall"]["per_point"]["img@0.01"] == 1.0
    assert s["overall"]["mean_epe_px"] < 1.0


def test_warped_marks_land_on_the_ground_truth():
    """Gaussian marks at source points, warped by random homographies and affines: the
    intensity centroid near each ground-truth point is that point."""
    h, w = 120, 160
    pts = np.array([[40.0, 30.0], [80.0, 60.0], [120.0, 90.0], [60.0, 85.0]])
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w), np.float64)
    for x, y in pts:
        image += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
    image = np.dstack([np.clip(image, 0, 255).astype(np.uint8)] * 3)
    rng = np.random.default_rng(3)
    for kind in ("homography", "affine"):
        m = random_warp((h, w), rng, kind, strength=0.5)
        pair = warped_pair("marks", image, m, grid=2)
        target = pair.target[..., 0].astype(np.float64)
        truth = cv2.perspectiveTransform(pts[None], m)[0]
        for tx, ty in truth:
            x0, y0 = int(round(tx)), int(round(ty))
            win = target[y0 - 6 : y0 + 7, x0 - 6 : x0 + 7]
            gy, gx = np.mgrid[y0 - 6 : y0 + 7, x0 - 6 : x0 + 7]
            centroid = np.array([(win * gx).sum(), (win * gy).sum()]) / win.sum()
            assert np.linalg.norm(centroid - [tx, ty]) < 0.35, (kind, centroid, (tx, ty))


def test_pairs_are_deterministic_under_a_seed():
    photo = [("p", np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))]
    a, b = make_pairs(photo, 2, seed=5), make_pairs(photo, 2, seed=5)
    c = make_pairs(photo, 2, seed=6)
    for x, y in zip(a, b):
        assert np.array_equal(x.warp, y.warp) and np.array_equal(x.target, y.target)
    assert not np.allclose(a[0].warp, c[0].warp)
    assert not np.allclose(a[0].warp, a[1].warp)
    with pytest.raises(CleanDIFTError, match="kind"):
        random_warp((10, 10), np.random.default_rng(0), "twist")


# ---------------------------------------------------------------------------------- CLI


def call_main(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return (info.value.code or 0), out, err


def test_cli_eval_spair_on_the_synthetic_folder(spair_root, tmp_path, capsys):
    out_file = tmp_path / "spair.json"
    args = [
        "eval",
        "spair",
        "--root",
        spair_root,
        "--model",
        "tiny",
        "--resolution",
        "64",
        "--device",
        "cpu",
        "--max-pairs",
        "1",
        "--out",
        out_file,
        "--json",
    ]
    code, out, err = call_main(args, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload["groups"]) == {"cat", "dog"} and payload["overall"]["pairs"] == 2
    for value in payload["overall"]["per_point"].values():
        assert 0.0 <= value <= 1.0
    assert json.loads(out_file.read_text())["overall"] == payload["overall"]


def test_cli_eval_homography_dift_baseline(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / "a.png")
    args = [
        "eval",
        "homography",
        "--images",
        folder,
        "--pairs-per-image",
        "1",
        "--grid",
        "3",
        "--resolution",
        "64",
        "--device",
        "cpu",
        "--dift",
        "--dift-ensemble",
        "2",
        "--json",
    ]
    code, out, err = call_main(args, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["dift_baseline"] is True and "DIFT" in payload["description"]
    assert list(payload["groups"]) == ["a.png"]
    assert set(payload["overall"]["per_point"]) == {"img@0.01", "img@0.05", "img@0.1"}


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "spair", "--root", "{missing}"],
        ["eval", "spair", "--root", "{spair}", "--categories", "horse"],
        ["eval", "spair", "--root", "{spair}", "--alpha", "2"],
        ["eval", "spair", "--root", "{spair}", "--out", "x.txt"],
        ["eval", "homography", "--images", "{missing}"],
        ["eval", "homography", "--photos", "nosuchphoto"],
        ["eval", "homography", "--thresholds", "a,b"],
        ["eval", "homography", "--photos", "chelsea", "--tap", "us99", "--resolution", "64"],
    ],
)
def test_cli_eval_bad_input_exits_2_with_one_line(args, spair_root, tmp_path, capsys):
    args = [a.format(missing=tmp_path / "nope", spair=spair_root) for a in args]
    code, out, err = call_main(args, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert out == ""


# ------------------------------------------------------- refinement and flip alignment in eval


@pytest.fixture
def match_spy(monkeypatch):
    """Every ``ExtractorPredictor.match`` call of a run: (source, target, points, result)."""
    from cleandift_rt.evaluation import ExtractorPredictor

    calls = []
    original = ExtractorPredictor.match

    def spy(self, source, target, points, *args, **kwargs):
        result = original(self, source, target, points, *args, **kwargs)
        calls.append((source, target, np.array(points), result))
        return result

    monkeypatch.setattr(ExtractorPredictor, "match", spy)
    return calls


def test_cli_eval_homography_refines_and_flip_aligns_as_match_does(match_spy, capsys):
    """`eval homography --refine quadratic --flip-align`: the options are recorded, the flipped
    pairs counted, and every pair's prediction is what ``FeatureExtractor.match`` returns with
    the same options (it extracts the pair in one batch, the evaluator one image at a time:
    equal to float rounding)."""
    from cleandift_rt import FeatureExtractor

    args = ["eval", "homography", "--model", "tiny", "--resolution", 64, "--device", "cpu",
            "--photos", "chelsea", "--pairs-per-image", 2, "--grid", 3, "--refine", "quadratic",
            "--flip-align", "--json"]  # fmt: skip
    code, out, err = call_main(args, capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["matching"] == {
        "refine": "quadratic", "refine_window": 4, "refine_temperature": 0.01, "flip_align": True,
    }  # fmt: skip
    assert len(match_spy) == payload["overall"]["pairs"] == 2
    flips = [result.flipped for *_, result in match_spy]
    assert payload["overall"]["flipped_pairs"] == sum(flips) >= 1  # the flip branch ran
    assert payload["groups"]["chelsea"]["flipped_pairs"] == sum(flips)

    fx = FeatureExtractor.from_pretrained("tiny", ("us6",), device="cpu", resolution=64)
    refined = False
    for source, target, points, result in match_spy:
        want = fx.match(source, target, points, refine="quadratic", flip_align=True)
        assert result.flipped == want.flipped and result.refine == "quadratic"
        np.testing.assert_allclose(result.target_points, want.target_points, rtol=0, atol=1e-3)
        np.testing.assert_allclose(result.scores, want.scores, rtol=0, atol=1e-5)
        refined |= bool((want.target_points != np.round(want.target_points)).any())
    assert refined  # sub-pixel positions, not integer pixels


@pytest.fixture(scope="module")
def mirrored_spair(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A SPair-format folder of two pairs: "cat", a photo and its horizontal mirror (keypoints
    at x' = W - 1 - x); "dog", a photo and an identical copy. Returns (root, source points,
    photo size (H, W))."""
    root = tmp_path_factory.mktemp("SPair-mirror")
    photo = cv2.resize(load_photos(["chelsea"])[0][1], (96, 64), interpolation=cv2.INTER_AREA)
    h, w = photo.shape[:2]
    src = np.array([[20, 16], [40, 30], [71, 44], [57, 20]])  # inside: no edge-clamped ties
    mirrored = np.c_[w - 1 - src[:, 0], src[:, 1]]
    for i, (cat, target, trg_kps) in enumerate(
        (("cat", cv2.flip(photo, 1), mirrored), ("dog", photo.copy(), src))
    ):
        folder = root / "JPEGImages" / cat
        folder.mkdir(parents=True)
        names = [f"{i:04d}_src.jpg", f"{i:04d}_trg.jpg"]
        Image.fromarray(photo).save(folder / names[0], format="PNG")
        Image.fromarray(target).save(folder / names[1], format="PNG")
        pair = {
            "category": cat, "src_imname": names[0], "trg_imname": names[1],
            "src_imsize": [w, h, 3], "trg_imsize": [w, h, 3], "src_kps": src.tolist(),
            "trg_kps": trg_kps.tolist(), "src_bndbox": [0, 0, w - 1, h - 1],
            "trg_bndbox": [0, 0, w - 1, h - 1],
        }  # fmt: skip
        annotations = root / "PairAnnotation" / "test"
        annotations.mkdir(parents=True, exist_ok=True)
        (annotations / f"{i:06d}-{cat}.json").write_text(json.dumps(pair))
    return root, src.astype(np.float64), np.array([h, w])


def test_cli_eval_spair_flip_align_scores_in_the_original_targets_pixels(
    mirrored_spair, monkeypatch, capsys
):
    """On a mirrored target `--flip-align` uses the flip, reports it, and PCK sees the points
    mapped back to the target as given: the source point (x, y) lands at (W - 1 - x, y), its
    annotated keypoint, so every point is exact. The identical pair keeps the unflipped target;
    without `--flip-align` the mirrored pair's points are wrong."""
    import cleandift_rt.evaluation.spair as spair

    root, src, (h, w) = mirrored_spair
    scored = []  # (predicted, truth) as PCK receives them, per pair

    def recording(predicted, truth):
        scored.append((np.array(predicted), np.array(truth)))
        return end_point_errors(predicted, truth)

    monkeypatch.setattr(spair, "end_point_errors", recording)
    args = ["eval", "spair", "--root", root, "--model", "tiny", "--resolution", 128,
            "--device", "cpu", "--json"]  # fmt: skip
    code, out, err = call_main([*args, "--flip-align"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["matching"]["flip_align"] is True and payload["matching"]["refine"] == "none"
    assert payload["overall"]["flipped_pairs"] == 1
    assert payload["groups"]["cat"]["flipped_pairs"] == 1
    assert payload["groups"]["dog"]["flipped_pairs"] == 0
    (cat_pred, cat_truth), (dog_pred, dog_truth) = scored
    np.testing.assert_array_equal(cat_truth[1], [w - 1 - 40, 30])  # the annotated keypoint
    np.testing.assert_array_equal(cat_pred[1], [w - 1 - src[1, 0], src[1, 1]])  # (55, 30)
    np.testing.assert_array_equal(cat_pred, cat_truth)
    np.testing.assert_array_equal(dog_pred, dog_truth)
    assert payload["overall"]["per_point"] == {"bbox@0.1": 1.0, "img@0.1": 1.0}
    assert payload["overall"]["mean_epe_px"] == 0.0

    scored.clear()
    code, out, err = call_main(args, capsys)
    assert code == 0, err
    plain = json.loads(out)
    assert "flipped_pairs" not in plain["overall"] and plain["matching"]["flip_align"] is False
    assert plain["groups"]["cat"]["mean_epe_px"] > 10
    np.testing.assert_array_equal(scored[1][0], dog_pred)  # the identical pair: unchanged
