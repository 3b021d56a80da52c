"""The offline demo: a real photo, a known warp of it, and the matches CleanDIFT finds.

The target is the source warped by a known homography (``DEMO_WARP``: large enough that
predicting "no motion" fails), so every match has a ground truth: the demo reports PCK
(fraction of matches within a threshold) and the mean end-point error of the model, of its base
model (the U-Net before distillation) and of "no motion" side by side, and draws the matches
that pass a cycle check (target → source lands back near the start) apart from those that fail.

``choose_model`` resolves ``--model auto``: the real ``sd21`` student when its files are in the
Hugging Face cache or the hub answers within a few seconds (never when ``HF_HUB_OFFLINE`` is
set), else the bundled ``toy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import CleanDIFTError
from .extractor import FeatureExtractor, MatchResult
from .geometry import apply_homography, grid_points, known_homography
from .viz import add_caption, draw_correspondences, feature_overlays, save_png

RANDOM_WEIGHT_MODELS = {"tiny"}
#: the demo's warp: rotation (deg) and scale about the centre, shift (fractions of W, H) and a
#: perspective tilt (per image side); "no motion" scores PCK@0.1 ≈ 0.3 on it
DEMO_WARP = {"angle_deg": 15.0, "scale": 0.85, "shift": (0.10, -0.07), "tilt": 0.05}
#: the base U-Net each distilled preset is compared with (its teacher, single clean pass)
BASE_OF = {"toy": "toy-base"}
#: the tap each model's demo shows by default (else us6): at 256 px the toy's us6 is a 16 × 16
#: map, too coarse for this warp; its us9 (32 × 32) is the tap its benchmark favours
DEMO_TAP = {"toy": "us9", "toy-base": "us9"}
AUTO_MODEL, OFFLINE_MODEL, HUB_TIMEOUT_S = "sd21", "toy", 3.0
CYCLE_RADIUS = 0.05  # cycle check tolerance, fraction of the image's longer side


def demo_image(name: str = "astronaut") -> np.ndarray:
    """A sample photo (bundled, or scikit-image's; see ``photos``), uint8 (H, W, 3) RGB."""
    from .photos import sample_photo

    return sample_photo(name)


def demo_warp(size: tuple[int, int]) -> np.ndarray:
    """``DEMO_WARP`` as a 3×3 homography on pixel coordinates (x, y) of an (H, W) image."""
    h, w = size
    sx, sy = DEMO_WARP["shift"]
    return known_homography(
        size,
        DEMO_WARP["angle_deg"],
        DEMO_WARP["scale"],
        (sx * w, sy * h),
        DEMO_WARP["tilt"] / max(h, w),
    )


def _scores(predicted: np.ndarray, truth: np.ndarray, side: float) -> dict[str, float]:
    err = np.linalg.norm(predicted - truth, axis=1)
    return {
        "pck_05": float((err <= 0.05 * side).mean()),
        "pck_10": float((err <= 0.1 * side).mean()),
        "mean_error_px": float(err.mean()),
    }


def cycle_check(
    extractor: FeatureExtractor, feats, result: MatchResult, radius_px: float
) -> np.ndarray:
    """(N,) bool: matching each found target point back into the source lands within
    ``radius_px`` of the point it came from."""
    back = extractor.match_features(feats, result.target_points, source=1, target=0, tap=result.tap)
    return np.linalg.norm(back.target_points - result.source_points, axis=1) <= radius_px


@dataclass
class DemoReport:
    """What the demo found: PCK at 5 % and 10 % of the image size, mean error (px), for the
    model, its base (``base``: None when not compared) and "no motion" (``no_motion``)."""

    model: str
    tap: str
    points: int
    pck_05: float
    pck_10: float
    mean_error_px: float
    correspondences_png: str
    features_png: str
    random_weights: bool
    no_motion: dict = field(default_factory=dict)
    base: dict | None = None
    cycle_consistent: int = 0
    cycle_radius_px: float = 0.0
    pck_10_cycle_consistent: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _score_line(label: str, s: dict[str, float]) -> str:
    return (
        f"{label}\tPCK@0.1  {s['pck_10']:.2f}\tPCK@0.05  {s['pck_05']:.2f}"
        f"\tmean error  {s['mean_error_px']:.0f} px"
    )


def run_demo(
    extractor: FeatureExtractor,
    out_dir: str | Path,
    image: np.ndarray | None = None,
    grid: int = 10,
    base: FeatureExtractor | None = None,
) -> DemoReport:
    """Match a grid of points from a photo to ``DEMO_WARP`` of it; write two PNGs into out_dir.

    ``base``: an extractor of the base model, scored on the same points for comparison."""
    src = demo_image() if image is None else image
    size = src.shape[:2]
    m = demo_warp(size)
    tgt = cv2.warpPerspective(src, m, (size[1], size[0]), flags=cv2.INTER_LINEAR)
    points = grid_points(size, grid, margin=0.12)
    truth = apply_homography(m, points)
    inside = (truth >= 0).all(1) & (truth[:, 0] <= size[1] - 1) & (truth[:, 1] <= size[0] - 1)
    points, truth = points[inside], truth[inside]
    if len(points) == 0:
        raise CleanDIFTError("the demo warp moves every grid point out of the image")
    side = float(max(size))

    feats = extractor([src, tgt])
    result: MatchResult = extractor.match_features(feats, points)
    scores = _scores(result.target_points, truth, side)
    no_motion = _scores(points, truth, side)
    base_scores = None
    if base is not None:
        base_result = base.match_features(base([src, tgt]), points)
        base_scores = {"model": base.model_name} | _scores(base_result.target_points, truth, side)
    radius = CYCLE_RADIUS * side
    consistent = cycle_check(extractor, feats, result, radius)
    correct = np.linalg.norm(result.target_points - truth, axis=1) <= 0.1 * side
    pck_consistent = float(correct[consistent].mean()) if consistent.any() else None

    label = f"{extractor.model_name} (tap {result.tap})"
    lines = [_score_line(label, scores)]
    if base_scores is not None:
        lines.append(_score_line(f"{base_scores['model']} (base, no distillation)", base_scores))
    lines.append(_score_line("no motion (every point stays put)", no_motion))
    sub = np.arange(grid) % 2 == 0  # every other row and column: a quarter of the points
    drawn = np.logical_and.outer(sub, sub).ravel()[inside]
    picture = draw_correspondences(
        src,
        tgt,
        result.source_points[drawn],
        result.target_points[drawn],
        keep=consistent[drawn],
        thickness=3,
        rejected_thickness=1,
        radius=5,
    )
    n_drawn, n_ok = int(drawn.sum()), int(consistent[drawn].sum())
    kept = "" if pck_consistent is None else f"; {pck_consistent:.0%} of all that pass are right"
    legend = [
        f"passes the cycle check (back within {radius:.0f} px): {n_ok} of {n_drawn} drawn{kept}",
        "fails the cycle check",
    ]
    out = Path(out_dir)
    corr_png = save_png(
        out / "correspondences.png",
        add_caption(
            picture,
            lines + legend,
            [None] * len(lines) + [((230, 80, 40), 3), ((150, 150, 150), 1)],
        ),
    )
    maps = [feats[result.tap][i].float().cpu() for i in range(2)]
    overlays = feature_overlays([src, tgt], maps)
    gap = np.full((size[0], max(4, size[1] // 64), 3), 255, np.uint8)
    feat_png = save_png(
        out / "features_pca.png",
        add_caption(
            np.concatenate([overlays[0], gap, overlays[1]], axis=1),
            [
                f"{extractor.model_name} {result.tap} features: joint PCA (3 components as RGB),",
                "upsampled and blended on the photo and its warp: same colour = same feature",
            ],
        ),
    )
    return DemoReport(
        model=extractor.model_name,
        tap=result.tap,
        points=len(points),
        pck_05=scores["pck_05"],
        pck_10=scores["pck_10"],
        mean_error_px=scores["mean_error_px"],
        correspondences_png=str(corr_png),
        features_png=str(feat_png),
        random_weights=extractor.model_name in RANDOM_WEIGHT_MODELS,
        no_motion=no_motion,
        base=base_scores,
        cycle_consistent=int(consistent.sum()),
        cycle_radius_px=float(radius),
        pck_10_cycle_consistent=pck_consistent,
    )


# ------------------------------------------------------------------- --model auto


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _needed_files(name: str) -> list[tuple[str, str]]:
    """(repo, file) of everything ``name`` (a hub preset) loads for the empty prompt."""
    from .models.hub import WEIGHT_PATTERNS
    from .models.presets import PRESETS

    preset = PRESETS[name]
    files = ["model_index.json", "unet/config.json", "vae/config.json"]
    files += WEIGHT_PATTERNS["vae"] + WEIGHT_PATTERNS["text"][:2]
    files += ["tokenizer/vocab.json", "tokenizer/merges.txt"]
    if preset.unet_file is None:
        files += WEIGHT_PATTERNS["unet"]
    needed = [(preset.base, f) for f in files]
    return needed + ([preset.unet_file] if preset.unet_file else [])


def _missing_from_cache(
    files: list[tuple[str, str]], cache_dir: str | None = None
) -> list[tuple[str, str]]:
    from huggingface_hub import try_to_load_from_cache

    def cached(repo: str, name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str)

    return [(r, f) for r, f in files if not cached(r, f)]


def _download_bytes(missing: list[tuple[str, str]], timeout: float) -> int:
    """Bytes of ``missing`` files per the hub (raises when it does not answer in time)."""
    from huggingface_hub import HfApi

    api, total = HfApi(), 0
    for repo in sorted({r for r, _ in missing}):
        wanted = {f for r, f in missing if r == repo}
        info = api.model_info(repo, timeout=timeout, files_metadata=True)
        total += sum(s.size or 0 for s in info.siblings or [] if s.rfilename in wanted)
    return total


def choose_model(
    name: str = AUTO_MODEL, timeout: float = HUB_TIMEOUT_S, cache_dir: str | None = None
) -> tuple[str, str]:
    """(model, one line saying why) for ``--model auto``: ``name`` when its files are in the
    Hugging Face cache (``cache_dir``: default the hub's) or the hub answers within ``timeout``
    seconds (then it downloads, with progress bars), else the bundled offline model."""
    files = _needed_files(name)
    try:
        missing = _missing_from_cache(files, cache_dir)
    except ImportError:
        return OFFLINE_MODEL, f"model auto: {OFFLINE_MODEL} (huggingface_hub not installed)"
    if not missing:
        return name, f"model auto: {name} (its weights are in the Hugging Face cache)"
    if _hub_offline():
        return OFFLINE_MODEL, (
            f"model auto: {OFFLINE_MODEL}, the bundled offline model ({name} is not cached and "
            "HF_HUB_OFFLINE is set)"
        )
    try:
        size = _download_bytes(missing, timeout)
    except Exception:  # offline, DNS, timeout, HTTP errors: fall back, say so
        return OFFLINE_MODEL, (
            f"model auto: {OFFLINE_MODEL}, the bundled offline model ({name} is not cached and "
            f"the hub did not answer within {timeout:g} s)"
        )
    return name, f"model auto: {name}, downloading {size / 1e9:.1f} GB into the Hugging Face cache"
