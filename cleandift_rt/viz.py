"""Visualisation helpers: correspondence drawings, PCA pictures of feature maps, PNG output.

Conventions used throughout:

* images are ``numpy.uint8`` arrays of shape ``(H, W, 3)`` in RGB order (``(H, W)`` grey images
  are accepted as input and converted);
* points are ``(N, 2)`` float arrays of ``(x, y)`` pixel coordinates, pixel centres at integers
  (so the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``);
* feature maps are ``(C, h, w)`` torch tensors or numpy arrays of any real dtype.

Only numpy, OpenCV, torch and the standard library are used (no matplotlib).
"""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import cv2
import numpy as np
import torch

from .files import write_bytes

__all__ = [
    "SideBySideLayout",
    "add_caption",
    "draw_correspondences",
    "feature_overlays",
    "feature_panel",
    "pca_rgb",
    "point_colors",
    "save_png",
    "side_by_side_layout",
]

DEFAULT_MAX_HEIGHT = 768
_SHIFT = 4  # fractional bits for sub-pixel drawing with cv2 (1/16 px)
_ONE = 1 << _SHIFT
_COORD_LIMIT = 1e5  # clip drawing coordinates (px) so cv2's int32 fixed point cannot overflow
_REJECTED_RGB = (150, 150, 150)
_REJECTED_OUTLINE_RGB = (70, 70, 70)
_OUTLINE_RGB = (0, 0, 0)
_ALPHA_LEVELS = 8  # scores are quantised to this many line-alpha levels
_MIN_ALPHA = 0.15  # line alpha for score 0

Interpolation = Literal["nearest", "linear"]
FeatureMap = torch.Tensor | np.ndarray


# --------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    """Validate an image and return it as a C-contiguous uint8 ``(H, W, 3)`` RGB array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) or (H, W), got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_points(points: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Validate points and return them as a float64 ``(N, 2)`` array."""
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _as_vector(values: object, n: int, name: str, dtype: type) -> np.ndarray:
    """Return a 1-D array of length ``n`` (torch tensors are accepted)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr.astype(dtype)


def _gap_width(height: int) -> int:
    """Width (px) of the white separator between tiles of a composite of the given height."""
    return max(2, round(height / 128))


def _resize(
    image: np.ndarray, height: int, width: int, interpolation: int | None = None
) -> np.ndarray:
    """Resize a uint8 image to ``(height, width)``; area filter when shrinking, else linear."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if interpolation is None:
        shrink = height <= h and width <= w
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _cv2_interpolation(interpolation: Interpolation) -> int:
    if interpolation == "nearest":
        return cv2.INTER_NEAREST
    if interpolation == "linear":
        return cv2.INTER_LINEAR
    raise ValueError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")


def _common_height(heights: Sequence[int], max_height: int | None) -> int:
    """The shared composite height: the tallest input, capped at ``max_height`` (default 768)."""
    cap = DEFAULT_MAX_HEIGHT if max_height is None else int(max_height)
    if cap < 1:
        raise ValueError(f"max_height must be >= 1, got {max_height}")
    return min(max(heights), cap)


def _scaled_width(shape: tuple[int, int], height: int) -> int:
    """Width of an ``(h, w)`` image scaled to ``height`` keeping its aspect ratio (>= 1)."""
    h, w = shape
    return max(1, round(w * height / h))


# --------------------------------------------------------------------------------------------
# Correspondences
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SideBySideLayout:
    """Geometry of the source | gap | target composite made by :func:`draw_correspondences`.

    Attributes:
        src_shape: original source ``(h, w)``.
        tgt_shape: original target ``(h, w)``.
        height: composite height (both images are scaled to it).
        src_width: width of the scaled source image.
        tgt_width: width of the scaled target image.
        gap: width of the white separator between them.
    """

    src_shape: tuple[int, int]
    tgt_shape: tuple[int, int]
    height: int
    src_width: int
    tgt_width: int
    gap: int

    @property
    def width(self) -> int:
        """Total composite width ``src_width + gap + tgt_width``."""
        return self.src_width + self.gap + self.tgt_width

    @property
    def tgt_offset(self) -> int:
        """Composite x of the target image's left edge."""
        return self.src_width + self.gap

    @staticmethod
    def _map(points: np.ndarray, shape: tuple[int, int], width: int, height: int) -> np.ndarray:
        # Pixel-centre convention (as cv2.resize): x' = (x + 0.5) * sx - 0.5.
        pts = _as_points(points, "points")
        scale = np.array([width / shape[1], height / shape[0]])
        return (pts + 0.5) * scale - 0.5

    def src_to_composite(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` source-image points to float64 ``(N, 2)`` composite coordinates."""
        return self._map(points, self.src_shape, self.src_width, self.height)

    def tgt_to_composite(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` target-image points to float64 ``(N, 2)`` composite coordinates."""
        out = self._map(points, self.tgt_shape, self.tgt_width, self.height)
        out[:, 0] += self.tgt_offset
        return out


def side_by_side_layout(
    src_shape: tuple[int, ...],
    tgt_shape: tuple[int, ...],
    max_height: int | None = None,
) -> SideBySideLayout:
    """Compute the composite geometry for images of shapes ``(h, w[, 3])``.

    The common height is ``min(max(h1, h2), max_height or 768)``; each image is scaled to it
    keeping its aspect ratio, and a thin white gap separates the two.
    """
    s = (int(src_shape[0]), int(src_shape[1]))
    t = (int(tgt_shape[0]), int(tgt_shape[1]))
    if min(s + t) < 1:
        raise ValueError(f"image shapes must be non-empty, got {src_shape} and {tgt_shape}")
    height = _common_height([s[0], t[0]], max_height)
    return SideBySideLayout(
        src_shape=s,
        tgt_shape=t,
        height=height,
        src_width=_scaled_width(s, height),
        tgt_width=_scaled_width(t, height),
        gap=_gap_width(height),
    )


def point_colors(points: np.ndarray | torch.Tensor, image_shape: tuple[int, ...]) -> np.ndarray:
    """Smooth colour map over image positions: nearby points get similar colours.

    Hue follows x (red at the left edge through to magenta at the right), lightness follows y
    (lighter at the top, darker at the bottom); saturation is full so no colour is grey.

    Args:
        points: ``(N, 2)`` ``(x, y)`` positions in an image of shape ``image_shape``
            ``(h, w, ...)``.

    Returns:
        uint8 ``(N, 3)`` RGB colours.
    """
    pts = _as_points(points, "points")
    h, w = int(image_shape[0]), int(image_shape[1])
    u = np.clip(pts[:, 0] / max(w - 1, 1), 0.0, 1.0)
    v = np.clip(pts[:, 1] / max(h - 1, 1), 0.0, 1.0)
    hls = np.stack([300.0 * u, 0.68 - 0.30 * v, np.ones_like(u)], axis=1).astype(np.float32)
    rgb = cv2.cvtColor(hls[:, None, :], cv2.COLOR_HLS2RGB)[:, 0, :]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _fixed(p: np.ndarray) -> tuple[int, int]:
    """A float ``(x, y)`` as cv2 fixed-point integers for ``shift=_SHIFT``."""
    q = np.clip(p, -_COORD_LIMIT, _COORD_LIMIT) * _ONE
    return round(float(q[0])), round(float(q[1]))


def _rgb_tuple(c: Sequence[int]) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def _draw_lines(canvas, a, b, colors, idx, thickness) -> None:
    for i in idx:
        cv2.line(
            canvas,
            _fixed(a[i]),
            _fixed(b[i]),
            _rgb_tuple(colors[i]),
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )


def _draw_markers(canvas, pts, fill, outline, idx, radius) -> None:
    r = max(1, round(radius * _ONE))
    ring = max(1, round(radius / 4))
    for i in idx:
        for p in (pts[0][i], pts[1][i]):
            c = _fixed(p)
            cv2.circle(canvas, c, r, _rgb_tuple(fill[i]), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(canvas, c, r, _rgb_tuple(outline[i]), ring, cv2.LINE_AA, _SHIFT)


def draw_correspondences(
    src_image: np.ndarray,
    tgt_image: np.ndarray,
    src_points: np.ndarray | torch.Tensor,
    tgt_points: np.ndarray | torch.Tensor,
    *,
    scores: np.ndarray | torch.Tensor | None = None,
    keep: np.ndarray | torch.Tensor | None = None,
    max_height: int | None = None,
    radius: float | None = None,
    thickness: int | None = None,
    rejected_thickness: int | None = None,
) -> np.ndarray:
    """Draw point correspondences between two images placed side by side.

    Both images are scaled to the common height ``min(max(h1, h2), max_height or 768)`` keeping
    their aspect ratios and separated by a thin white gap (see :func:`side_by_side_layout`).
    Each pair gets a marker at both ends and an anti-aliased line, coloured by the source
    point's position (:func:`point_colors`), so neighbouring points have similar colours.

    Args:
        src_image, tgt_image: uint8 ``(H, W, 3)`` RGB (or ``(H, W)`` grey) images.
        src_points, tgt_points: ``(N, 2)`` ``(x, y)`` pixel coordinates in the original images.
        scores: optional ``(N,)`` values in ``[0, 1]`` (clipped) used as line opacity
            (score 0 is faint, 1 opaque); higher-scoring lines are drawn on top.
        keep: optional ``(N,)`` bool mask; pairs with ``False`` are drawn in grey, underneath.
        max_height: cap on the composite height (default 768).
        radius: marker radius in composite pixels (float, default ~height / 150).
        thickness: line thickness in composite pixels (int, default ~height / 400, >= 1).
        rejected_thickness: line thickness of the ``keep=False`` pairs (default ``thickness``);
            their markers are drawn at half the radius when it is thinner.

    Returns:
        uint8 ``(height, w1' + gap + w2', 3)`` RGB composite.
    """
    src = _as_rgb(src_image, "src_image")
    tgt = _as_rgb(tgt_image, "tgt_image")
    sp = _as_points(src_points, "src_points")
    tp = _as_points(tgt_points, "tgt_points")
    if len(sp) != len(tp):
        raise ValueError(f"src_points and tgt_points differ in length: {len(sp)} vs {len(tp)}")
    n = len(sp)
    kept = np.ones(n, bool) if keep is None else _as_vector(keep, n, "keep", bool)
    if scores is None:
        alpha = np.ones(n)
    else:
        s = _as_vector(scores, n, "scores", np.float64)
        if not np.isfinite(s).all():
            raise ValueError("scores contains NaN or Inf")
        # Quantise opacity to a few levels so each level is blended once.
        level = np.rint(np.clip(s, 0.0, 1.0) * (_ALPHA_LEVELS - 1)) / (_ALPHA_LEVELS - 1)
        alpha = _MIN_ALPHA + (1.0 - _MIN_ALPHA) * level

    lay = side_by_side_layout(src.shape, tgt.shape, max_height)
    canvas = np.full((lay.height, lay.width, 3), 255, np.uint8)
    canvas[:, : lay.src_width] = _resize(src, lay.height, lay.src_width)
    canvas[:, lay.tgt_offset :] = _resize(tgt, lay.height, lay.tgt_width)
    if n == 0:
        return canvas

    r = float(radius) if radius is not None else max(2.0, lay.height / 150)
    t = int(thickness) if thickness is not None else max(1, round(lay.height / 400))
    if not r > 0 or t < 1:
        raise ValueError(f"radius must be > 0 and thickness >= 1, got {radius}, {thickness}")
    t_rejected = t if rejected_thickness is None else int(rejected_thickness)
    if t_rejected < 1:
        raise ValueError(f"rejected_thickness must be >= 1, got {rejected_thickness}")
    r_rejected = r if t_rejected >= t else max(1.0, r / 2)

    a = lay.src_to_composite(sp)
    b = lay.tgt_to_composite(tp)
    colors = point_colors(sp, src.shape)
    fill = np.where(kept[:, None], colors, np.array(_REJECTED_RGB, np.uint8))
    outline = np.where(kept[:, None], np.array(_OUTLINE_RGB), np.array(_REJECTED_OUTLINE_RGB))

    # Rejected pairs first (underneath), opaque grey.
    rejected = np.flatnonzero(~kept)
    _draw_lines(canvas, a, b, fill, rejected, t_rejected)
    _draw_markers(canvas, (a, b), fill, outline, rejected, r_rejected)

    # Kept pairs: lines grouped by opacity level, from faint to opaque, then markers on top.
    accepted = np.flatnonzero(kept)
    for level_alpha in np.unique(alpha[accepted]):
        idx = accepted[alpha[accepted] == level_alpha]
        if level_alpha >= 1.0:
            _draw_lines(canvas, a, b, fill, idx, t)
        else:
            overlay = canvas.copy()
            _draw_lines(overlay, a, b, fill, idx, t)
            canvas = cv2.addWeighted(overlay, float(level_alpha), canvas, 1.0 - level_alpha, 0.0)
    order = accepted[np.argsort(alpha[accepted], kind="stable")]
    _draw_markers(canvas, (a, b), fill, outline, order, r)
    return canvas


# --------------------------------------------------------------------------------------------
# PCA of feature maps
# --------------------------------------------------------------------------------------------


def _flat_features(feature_map: FeatureMap, i: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A ``(C, h, w)`` map as a float32 CPU ``(C, h*w)`` tensor plus its ``(h, w)``."""
    if isinstance(feature_map, torch.Tensor):
        t = feature_map.detach().to("cpu", torch.float32)
    else:
        arr = np.asarray(feature_map)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"feature map {i} has non-numeric dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if t.ndim != 3 or min(t.shape) < 1:
        raise ValueError(f"feature map {i} must have shape (C, h, w), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"feature map {i} contains NaN or Inf")
    c, h, w = t.shape
    return t.reshape(c, h * w), (h, w)


def _pca_basis(flats: list[torch.Tensor], chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint PCA of ``(C, n_i)`` float32 blocks: the float64 mean ``(C,)`` and basis ``(C, 3)``.

    Eigendecomposition of the scatter matrix of the centred data (``C x C``, accumulated in
    chunks so memory stays bounded) or, with fewer pixels than channels, of the ``n x n`` Gram
    matrix. Each component's sign makes its largest-magnitude loading positive; components with
    (numerically) zero variance, or beyond the data's rank, are zero columns.
    """
    c = flats[0].shape[0]
    n = sum(f.shape[1] for f in flats)
    mean = sum(f.to(torch.float64).sum(dim=1) for f in flats) / n
    mean32 = mean.to(torch.float32)[:, None]

    if n < c:
        x = torch.cat(flats, dim=1).to(torch.float64) - mean[:, None]  # (C, n), small
        gram = x.T @ x
        # float32 eigh: much faster than float64 here and ample for a colour picture.
        _, u = torch.linalg.eigh(gram.to(torch.float32))
        vecs = x @ u.flip(1)[:, :3].to(torch.float64)  # (C, k), norms = singular values
        vecs = vecs / vecs.norm(dim=0).clamp_min(1e-300)
    else:
        scatter = torch.zeros(c, c, dtype=torch.float64)
        for f in flats:
            for start in range(0, f.shape[1], chunk):
                x = f[:, start : start + chunk] - mean32
                scatter += (x @ x.T).to(torch.float64)
        _, v = torch.linalg.eigh(scatter.to(torch.float32))
        vecs = v.flip(1)[:, :3].to(torch.float64)  # descending variance
        vecs = vecs / vecs.norm(dim=0).clamp_min(1e-300)

    # Variance along each direction, recomputed in float64 from the data.
    var = torch.zeros(vecs.shape[1], dtype=torch.float64)
    for f in flats:
        for start in range(0, f.shape[1], chunk):
            p = f[:, start : start + chunk].to(torch.float64).T @ vecs - mean @ vecs
            var += (p**2).sum(dim=0)

    basis = torch.zeros(c, 3, dtype=torch.float64)
    top = float(var.max()) if len(var) else 0.0
    for j in range(vecs.shape[1]):
        if top <= 0.0 or float(var[j]) <= 1e-6 * top:
            continue  # no meaningful variance along this direction
        v = vecs[:, j]
        basis[:, j] = -v if v[torch.argmax(v.abs())] < 0 else v
    return mean, basis


def _project(flat: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, chunk: int = 65536):
    """Project a ``(C, n)`` block onto the basis: float64 ``(n, 3)`` numpy array."""
    offset = mean @ basis
    parts = [
        flat[:, s : s + chunk].to(torch.float64).T @ basis - offset
        for s in range(0, flat.shape[1], chunk)
    ]
    return torch.cat(parts, dim=0).numpy()


@overload
def pca_rgb(
    feature_maps: FeatureMap,
    size: tuple[int, int] | None = None,
    *,
    interpolation: Interpolation = "nearest",
) -> np.ndarray: ...


@overload
def pca_rgb(
    feature_maps: Sequence[FeatureMap],
    size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    *,
    interpolation: Interpolation = "nearest",
) -> list[np.ndarray]: ...


def pca_rgb(
    feature_maps: FeatureMap | Sequence[FeatureMap],
    size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    *,
    interpolation: Interpolation = "nearest",
) -> np.ndarray | list[np.ndarray]:
    """Joint 3-component PCA of feature maps rendered as RGB pictures.

    The PCA is fitted on all pixels of all maps together, so the same feature vector gets the
    same colour in every map. Components 1-3 become R, G, B, each scaled to 0..255 between its
    1st and 99th percentiles computed over all pixels of all maps (values outside are clipped;
    a component without variance is 0; if those percentiles coincide, the min and max are used).
    The result is deterministic.

    Args:
        feature_maps: one ``(C, h, w)`` map, a sequence of maps with equal ``C`` (sizes may
            differ), or a ``(B, C, h, w)`` batch (treated as a sequence). Tensors or arrays.
        size: optional output ``(H, W)``, either one for all maps or one per map.
        interpolation: ``"nearest"`` (shows the feature grid) or ``"linear"`` for resizing.

    Returns:
        uint8 ``(h, w, 3)`` (or ``(H, W, 3)``) RGB picture for a single ``(C, h, w)`` map,
        otherwise a list of them in input order.
    """
    single = isinstance(feature_maps, (torch.Tensor, np.ndarray)) and feature_maps.ndim == 3
    maps = [feature_maps] if single else list(feature_maps)
    if not maps:
        raise ValueError("pca_rgb needs at least one feature map")
    flat = [_flat_features(m, i) for i, m in enumerate(maps)]
    flats, shapes = [f for f, _ in flat], [s for _, s in flat]
    channels = {f.shape[0] for f in flats}
    if len(channels) != 1:
        raise ValueError(f"feature maps differ in channel count: {sorted(channels)}")

    if size is None:
        sizes: list[tuple[int, int] | None] = [None] * len(maps)
    elif len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        sizes = [(int(size[0]), int(size[1]))] * len(maps)
    else:
        sizes = [(int(s[0]), int(s[1])) for s in size]
        if len(sizes) != len(maps):
            raise ValueError(f"got {len(sizes)} sizes for {len(maps)} feature maps")
    if any(s is not None and min(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive, got {size}")
    interp = _cv2_interpolation(interpolation)

    mean, basis = _pca_basis(flats)
    proj = [_project(f, mean, basis) for f in flats]  # (n_i, 3) each
    allp = np.concatenate(proj, axis=0)
    lo, hi = np.percentile(allp, [1.0, 99.0], axis=0)
    # A component concentrated on < 2 % of the pixels has lo == hi: fall back to min/max.
    tol = 1e-12 * np.maximum(np.abs(allp).max(axis=0), 1e-300)
    flat_range = hi - lo <= tol
    lo = np.where(flat_range, allp.min(axis=0), lo)
    hi = np.where(flat_range, allp.max(axis=0), hi)
    span = hi - lo
    valid = span > tol
    scale = np.where(valid, 255.0 / np.where(valid, span, 1.0), 0.0)

    out = []
    for p, (h, w), s in zip(proj, shapes, sizes, strict=True):
        rgb = np.clip((p - lo) * scale, 0.0, 255.0)
        img = np.rint(rgb).astype(np.uint8).reshape(h, w, 3)
        if s is not None and s != (h, w):
            img = cv2.resize(img, (s[1], s[0]), interpolation=interp)
        out.append(np.ascontiguousarray(img))
    return out[0] if single else out


def feature_panel(
    images: np.ndarray | Sequence[np.ndarray],
    feature_maps: FeatureMap | Sequence[FeatureMap],
    *,
    max_height: int | None = None,
    interpolation: Interpolation = "nearest",
) -> np.ndarray:
    """A row ``image_1 | pca_1 | image_2 | pca_2 | ...`` separated by thin white gaps.

    The PCA pictures come from one joint :func:`pca_rgb` fit (same colour = same feature across
    images) and are resized to their image's size. All tiles share the height
    ``min(max(heights), max_height or 768)``, keeping aspect ratios.

    Args:
        images: uint8 ``(H, W, 3)`` RGB image or a sequence of them.
        feature_maps: the matching ``(C, h, w)`` map(s), same count as ``images``.

    Returns:
        uint8 ``(height, total_width, 3)`` RGB panel.
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
        images = [images]
    single_map = isinstance(feature_maps, (torch.Tensor, np.ndarray)) and feature_maps.ndim == 3
    maps = [feature_maps] if single_map else list(feature_maps)
    imgs = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    if not imgs or len(imgs) != len(maps):
        raise ValueError(f"need equally many images and feature maps, got {len(imgs)}, {len(maps)}")

    height = _common_height([im.shape[0] for im in imgs], max_height)
    widths = [_scaled_width(im.shape[:2], height) for im in imgs]
    pcas = pca_rgb(maps, [(height, w) for w in widths], interpolation=interpolation)
    gap = np.full((height, _gap_width(height), 3), 255, np.uint8)

    tiles: list[np.ndarray] = []
    for im, w, pc in zip(imgs, widths, pcas, strict=True):
        if tiles:
            tiles.append(gap)
        tiles += [_resize(im, height, w), gap, pc]
    return np.concatenate(tiles, axis=1)


def feature_overlays(
    images: Sequence[np.ndarray],
    feature_maps: Sequence[FeatureMap],
    *,
    alpha: float = 0.6,
) -> list[np.ndarray]:
    """Each image with its joint-PCA feature picture upsampled (bilinear) and blended on top.

    One :func:`pca_rgb` fit over all maps (same colour = same feature in every image), each
    picture resized to its image's ``(H, W)`` and mixed as ``alpha · pca + (1 − alpha) · image``,
    so parts that correspond show the same colour at the same place of the photo.

    Returns:
        uint8 ``(H, W, 3)`` RGB per image, in input order.
    """
    imgs = [_as_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    maps = list(feature_maps)
    if not imgs or len(imgs) != len(maps):
        raise ValueError(f"need equally many images and feature maps, got {len(imgs)}, {len(maps)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pcas = pca_rgb(maps, [im.shape[:2] for im in imgs], interpolation="linear")
    return [cv2.addWeighted(pc, alpha, im, 1.0 - alpha, 0.0) for im, pc in zip(imgs, pcas)]


def add_caption(
    canvas: np.ndarray,
    lines: Sequence[str],
    swatches: Sequence[tuple[tuple[int, int, int], int] | None] | None = None,
    tab: float = 0.2,
) -> np.ndarray:
    """``canvas`` with a white strip below holding one text line per entry of ``lines``.

    Args:
        canvas: uint8 ``(H, W, 3)`` RGB.
        lines: the caption's text (ASCII; drawn with OpenCV's Hershey font); a tab character
            starts a column, columns every ``tab`` × the width after the first one's end.
        swatches: per line, None or ``(rgb, thickness)`` of a short line sample drawn before the
            text (a legend entry).

    Returns:
        uint8 ``(H + strip, W, 3)`` RGB.
    """
    image = _as_rgb(canvas, "canvas")
    width = image.shape[1]
    scale = float(np.clip(width / 1400, 0.4, 0.8))
    step = int(round(34 * scale)) + 6
    strip = np.full((step * len(lines) + step // 2, width, 3), 255, np.uint8)
    marks = list(swatches) if swatches is not None else [None] * len(lines)
    font, black = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0)
    for k, (text, mark) in enumerate(zip(lines, marks)):
        y = step * (k + 1)
        x = 10
        if mark is not None:
            colour, thick = mark
            cv2.line(strip, (x, y - step // 4), (x + 40, y - step // 4), _rgb_tuple(colour), thick)
            x += 52
        first, *rest = text.split("\t")
        cv2.putText(strip, first, (x, y), font, scale, black, 1, cv2.LINE_AA)
        for c, part in enumerate(rest):
            cx = int(width * (0.34 + tab * c))
            cv2.putText(strip, part, (cx, y), font, scale, black, 1, cv2.LINE_AA)
    return np.concatenate([image, strip], axis=0)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> pathlib.Path:
    """Write an image as PNG atomically, creating parent directories.

    The data goes to a temporary file in the target directory which then replaces ``path``
    (``os.replace``), so readers never see a partial file. Errors while writing are re-raised
    unchanged (the temporary file is removed); a directory that cannot be created raises an
    ``OSError`` of the same kind with a short message naming it.

    Args:
        path: destination file (written as PNG whatever its suffix).
        rgb: uint8 ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA or ``(H, W)`` grey image.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    out = pathlib.Path(path)
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(
            f"rgb must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3:
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        arr = cv2.cvtColor(np.ascontiguousarray(arr), code)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"could not encode a PNG of shape {arr.shape}")

    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):
            reason = "a file is in the way"  # mkdir's own message would be misleading
        code = exc.errno if exc.errno is not None else errno.EIO
        raise type(exc)(code, f"cannot create directory '{parent}': {reason}") from exc

    return write_bytes(out, buf.tobytes(), sync=True)
