"""Pixel geometry shared by the demo, the evaluators, the tracker and the CLI: point grids and
homographies on pixel coordinates ``(x, y)`` with pixel centres at integers."""

from __future__ import annotations

import numpy as np


def known_homography(
    size: tuple[int, int],
    angle_deg: float = 8.0,
    scale: float = 0.9,
    shift: tuple[float, float] = (12.0, -8.0),
    tilt: float = 1e-4,
) -> np.ndarray:
    """A 3×3 homography on pixel coordinates (x, y): rotation and scale about the image centre,
    a shift and a mild perspective tilt."""
    h, w = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c + np.asarray(shift) - rot @ c
    m[2, :2] = (tilt, -tilt / 2)
    return m / m[2, 2]


def apply_homography(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) pixel points (x, y) → (N, 2) under the 3×3 homography ``m``."""
    p = np.c_[points, np.ones(len(points))] @ m.T
    return p[:, :2] / p[:, 2:3]


def grid_points(size: tuple[int, int], n: int, margin: float = 0.0) -> np.ndarray:
    """n×n points at cell centres of an (H, W) image, inset by ``margin`` × size; (n², 2)."""
    h, w = size
    fx = margin + (1 - 2 * margin) * (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(fx * w - 0.5, fx * h - 0.5)
    return np.c_[xs.ravel(), ys.ravel()]
