"""The photos the `toy` model learns from: scikit-image's bundled images, minus the held-out ones.

Held out (never trained on): the homography evaluation's photos ``astronaut``, ``chelsea``
(= ``cat``), ``coffee`` and ``rocket``, so `cleandift-rt eval homography` measures the toy
models on photos they have not seen; an ``--images`` folder holding one of OpenCV's held-out
matching pairs (training/toy_sources.py) is refused. Grey images are replicated to RGB, RGBA
is composited on white; photos larger than ``MAX_SIDE`` are downscaled once (INTER_AREA).

``random_crops`` draws square crops at random scales with random horizontal flips from a NumPy
generator, so a training step's batch is a function of (seed, step) only.

``python -m training.toy_photos DIR [--crops N]`` writes the training set (or N seeded crops
of each photo) as PNG files, the image folder that ``training.distill --data`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
import cv2
import numpy as np

from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.evaluation.homography import DEFAULT_PHOTOS, load_photos

from .toy_sources import is_held_out

HELD_OUT = (*DEFAULT_PHOTOS, "cat")  # chelsea and cat are the same photo
TRAIN_PHOTOS = (
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "clock",
    "cell",
    "page",
    "text",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
    "motorcycle_left",
    "motorcycle_right",
)
MAX_SIDE = 768  # px: longer side after the one-time downscale


def _skimage_photo(name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a bundled scikit-image photo (the stereo pair by side)."""
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(data, name)()
    if image.ndim == 2:
        image = np.dstack([image] * 3)
    if image.shape[2] == 4:  # composite RGBA on white
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1.0 - alpha)).round()
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _fit(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return image
    size = (round(w * scale), round(h * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def training_photos(folder: str | None = None) -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 (H, W, 3))]: the bundled training photos, then every image of ``folder``."""
    try:
        photos = [(name, _fit(_skimage_photo(name))) for name in TRAIN_PHOTOS]
    except ImportError:
        raise CleanDIFTError(
            "the toy photos come with scikit-image: pip install scikit-image"
        ) from None
    if folder is not None:
        extra = load_photos(folder=folder)
        held = [name for name, _ in extra if is_held_out(name)]
        if held:
            raise CleanDIFTError(
                f"'{folder}' holds {held[0]}, an evaluation photo held out from training "
                "(training/toy_sources.py HELD_OUT_PATTERNS)"
            )
        photos += [(name, _fit(image)) for name, image in extra]
    return photos


def random_crops(
    photos: Sequence[tuple[str, np.ndarray]],
    count: int,
    size: int,
    rng: np.random.Generator,
    min_scale: float = 0.25,
    max_scale: float = 1.0,
) -> np.ndarray:
    """``count`` crops, uint8 (count, size, size, 3): a uniformly drawn photo, resized by a
    log-uniform factor in [min_scale, max_scale] (at least to ``size`` on its shorter side),
    a uniform crop position and a horizontal flip with probability 1/2."""
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        image = photos[int(rng.integers(len(photos)))][1]
        h, w = image.shape[:2]
        scale = float(np.exp(rng.uniform(np.log(min_scale), np.log(max_scale))))
        scale = max(scale, size / min(h, w))
        rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
        y, x = int(rng.integers(rh - size + 1)), int(rng.integers(rw - size + 1))
        crop = resized[y : y + size, x : x + size]
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--crops", type=click.IntRange(0), default=0, help="Seeded crops per photo (0: whole photos)."
)
@click.option("--size", type=click.IntRange(64), default=256, help="Crop side (px).")
@click.option("--seed", type=int, default=0)
@click.option("--images", default=None, help="Extra image folder to include.")
def cli(out: str, crops: int, size: int, seed: int, images: str | None) -> None:
    """Write the toy training photos (or seeded crops of them) as PNG files into OUT."""
    photos = training_photos(images)  # bad input fails before anything is written
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = 0
    for name, image in photos:
        stem = Path(name).stem
        items = [image] if crops == 0 else list(random_crops([(name, image)], crops, size, rng))
        for i, item in enumerate(items):
            suffix = "" if crops == 0 else f"-{i:03d}"
            cv2.imwrite(str(folder / f"{stem}{suffix}.png"), cv2.cvtColor(item, cv2.COLOR_RGB2BGR))
            written += 1
    click.echo(f"wrote {written} images to {folder}")


def main(argv: list[str] | None = None) -> None:
    from cleandift_rt.console import run_console

    run_console(cli, argv, "python -m training.toy_photos")


if __name__ == "__main__":
    main()
