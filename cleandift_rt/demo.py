"""The offline demo: a real photo, a known warp of it, and the matches CleanDIFT finds.

The target is the source warped by a known homography, so every match has a ground truth and
the demo reports PCK (fraction of matches within a threshold) and the mean end-point error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .extractor import FeatureExtractor, MatchResult
from .geometry import apply_homography, grid_points, known_homography
from .viz import draw_correspondences, feature_panel, save_png

RANDOM_WEIGHT_MODELS = {"tiny"}


def demo_image(name: str = "astronaut") -> np.ndarray:
    """A sample photo (bundled, or scikit-image's; see ``photos``), uint8 (H, W, 3) RGB."""
    from .photos import sample_photo

    return sample_photo(name)


@dataclass
class DemoReport:
    """What the demo found: PCK at 5 % and 10 % of the image size, mean error (px)."""

    model: str
    tap: str
    points: int
    pck_05: float
    pck_10: float
    mean_error_px: float
    correspondences_png: str
    features_png: str
    random_weights: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_demo(
    extractor: FeatureExtractor,
    out_dir: str | Path,
    image: np.ndarray | None = None,
    grid: int = 10,
) -> DemoReport:
    """Match a grid of points from a photo to a known warp of it; write two PNGs into out_dir."""
    src = demo_image() if image is None else image
    size = src.shape[:2]
    m = known_homography(size)
    tgt = cv2.warpPerspective(src, m, (size[1], size[0]), flags=cv2.INTER_LINEAR)
    points = grid_points(size, grid, margin=0.12)
    truth = apply_homography(m, points)
    inside = (truth >= 0).all(1) & (truth[:, 0] <= size[1] - 1) & (truth[:, 1] <= size[0] - 1)
    points, truth = points[inside], truth[inside]

    feats = extractor([src, tgt])
    result: MatchResult = extractor.match_features(feats, points)
    err = np.linalg.norm(result.target_points - truth, axis=1)
    side = max(size)
    correct = err <= 0.1 * side

    out = Path(out_dir)
    corr_png = save_png(
        out / "correspondences.png",
        draw_correspondences(
            src, tgt, result.source_points, result.target_points, scores=None, keep=correct
        ),
    )
    maps = [feats[result.tap][i].float().cpu() for i in range(2)]
    feat_png = save_png(out / "features_pca.png", feature_panel([src, tgt], maps))
    return DemoReport(
        model=extractor.model_name,
        tap=result.tap,
        points=len(points),
        pck_05=float((err <= 0.05 * side).mean()),
        pck_10=float(correct.mean()),
        mean_error_px=float(err.mean()),
        correspondences_png=str(corr_png),
        features_png=str(feat_png),
        random_weights=extractor.model_name in RANDOM_WEIGHT_MODELS,
    )
