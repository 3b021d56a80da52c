"""Offline correspondence benchmark: real photos warped by seeded random homographies/affines.

Each photo is warped ``pairs_per_image`` times (``cv2.warpPerspective`` with the forward map:
source pixel (x, y) lands at H·(x, y, 1)); a grid of source points whose image under H falls
inside the target is matched, and the ground truth is the exact warp of each point. PCK at
several thresholds (fractions of the target's longer side) and the mean end-point error.
Everything is drawn from one ``numpy`` generator seeded by ``seed``: same seed, same benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..demo import demo_image
from ..errors import CleanDIFTError
from ..geometry import apply_homography, grid_points
from ..imaging import check_image_size, load_image
from .pck import PCKTally, end_point_errors, prediction

KINDS = ("homography", "affine", "identity")
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: predict(source, target, points, source_key=..., target_key=...) → (N, 2) target points, or a
#: MatchResult (``ExtractorPredictor.match``: its flip alignment is then counted)
Predictor = Callable[..., np.ndarray]


def random_warp(
    size: tuple[int, int], rng: np.random.Generator, kind: str = "homography", strength: float = 1.0
) -> np.ndarray:
    """A random 3×3 map on pixel coordinates (x, y) of an (H, W) image.

    homography: each corner moved by up to 12 % × strength of the image size (uniform, per
    axis), then the perspective map of the four corners; affine: rotation ±15°·strength, scale
    in [1 − 0.2·s, 1 + 0.2·s], shear ±0.15·s and shift ±6 %·s about the centre; identity: I.
    """
    if kind not in KINDS:
        raise CleanDIFTError(f"unknown warp kind '{kind}' ({', '.join(KINDS)})")
    h, w = size
    if kind == "identity":
        return np.eye(3)
    if kind == "homography":
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
        moved = corners + rng.uniform(-0.12, 0.12, (4, 2)) * strength * np.array([w, h])
        m = cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32))
        return m / m[2, 2]
    angle = np.deg2rad(rng.uniform(-15, 15) * strength)
    scale = 1 + rng.uniform(-0.2, 0.2) * strength
    shear = rng.uniform(-0.15, 0.15) * strength
    shift = rng.uniform(-0.06, 0.06, 2) * strength * np.array([w, h])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c + shift - a @ c
    return m


@dataclass
class WarpedPair:
    """A photo, its warp and the ground truth. Points (N, 2) float64 (x, y) pixels."""

    name: str
    source: np.ndarray  # uint8 (H, W, 3)
    target: np.ndarray  # uint8 (H, W, 3): source warped by ``warp``
    warp: np.ndarray  # (3, 3) source → target pixel map
    source_points: np.ndarray
    target_points: np.ndarray


def warped_pair(name: str, image: np.ndarray, warp: np.ndarray, grid: int = 10) -> WarpedPair:
    """Warp ``image`` by ``warp`` and keep the grid points (margin 10 %) landing inside."""
    h, w = image.shape[:2]
    target = cv2.warpPerspective(
        image, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    points = grid_points((h, w), grid, margin=0.1)
    truth = apply_homography(warp, points)
    inside = (truth >= 0).all(1) & (truth[:, 0] <= w - 1) & (truth[:, 1] <= h - 1)
    return WarpedPair(name, image, target, warp, points[inside], truth[inside])


def load_photos(photos: Sequence[str] = DEFAULT_PHOTOS, folder: str | None = None):
    """[(name, uint8 (H, W, 3))]: every image file of ``folder`` (sorted), else the named
    scikit-image photos."""
    if folder is None:
        return [(name, demo_image(name)) for name in photos]
    path = Path(folder)
    if not path.is_dir():
        raise CleanDIFTError(f"--images '{folder}' is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CleanDIFTError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
    photos = [(p.name, load_image(p)) for p in files]
    for name, image in photos:  # before any model loads
        check_image_size(image.shape[:2], name)
    return photos


def make_pairs(
    photos: Sequence[tuple[str, np.ndarray]],
    pairs_per_image: int = 4,
    kind: str = "homography",
    seed: int = 0,
    grid: int = 10,
    strength: float = 1.0,
) -> list[WarpedPair]:
    """``pairs_per_image`` seeded random warps of each photo (photo order, then warp order)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for name, image in photos:
        for i in range(pairs_per_image):
            warp = random_warp(image.shape[:2], rng, kind, strength)
            pairs.append(warped_pair(f"{name}#{i}", image, warp, grid))
    return pairs


def evaluate_homography(
    predict: Predictor,
    pairs: Sequence[WarpedPair],
    alphas: tuple[float, ...] = (0.01, 0.05, 0.1),
    progress: bool = False,
) -> dict:
    """PCK@α (α × the target's longer side) and mean end-point error of ``predict``.

    Returns PCKTally.summary() with one group per photo (metrics ``img@α``; ``flipped_pairs``
    when ``predict`` returns MatchResults with flip alignment).
    """
    tally = PCKTally(alphas)
    for pair in tqdm(pairs, desc="homography", unit="pair", disable=not progress):
        photo = pair.name.split("#")[0]
        predicted, flipped = prediction(
            predict(pair.source, pair.target, pair.source_points, source_key=photo)
        )
        errors = end_point_errors(predicted, pair.target_points)
        tally.add(photo, errors, {"img": float(max(pair.target.shape[:2]))}, flipped)
    return tally.summary()
