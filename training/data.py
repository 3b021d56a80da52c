"""Training images: a recursive image folder, captions beside the images, a resumable sampler.

* ``ImageFolder``: every ``*.jpg|*.jpeg|*.png|*.webp`` under a folder (nested or flat). The scan
  reads only headers: unreadable files and images smaller than ``min_size`` on a side are
  skipped and counted. A file that passes the scan but fails to decode later is replaced by the
  next usable image and counted in the sample (a run never crashes on a bad file).
* Captions: ``name.json`` with ``{"caption": "..."}`` beside ``name.jpg``; else "".
* ``StepBatchSampler``: the sample stream is the concatenation of per-epoch permutations drawn
  from ``seed + epoch``; step s of rank r takes stream positions
  ``[s·B·W + r·B, s·B·W + (r+1)·B)``. The data order is a function of (seed, step) only, so a
  resumed run sees exactly the batches an uninterrupted run would, and ranks never overlap.
"""

from __future__ import annotations

import json
import signal
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cleandift_rt.errors import CleanDIFTError, ImageError
from cleandift_rt.imaging import prepare_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MIN_SIZE = 64  # px: images with a shorter side are skipped


@dataclass(frozen=True)
class ScanReport:
    """What a folder scan found: usable images and the skipped files per reason."""

    usable: int
    unreadable: list[str]
    too_small: list[str]

    @property
    def skipped(self) -> int:
        return len(self.unreadable) + len(self.too_small)


def read_caption(image_path: Path) -> str:
    """Caption from ``<stem>.json`` (``{"caption": str}``) beside the image, else ""."""
    sidecar = image_path.with_suffix(".json")
    if not sidecar.is_file():
        return ""
    try:
        caption = json.loads(sidecar.read_text(encoding="utf-8")).get("caption", "")
    except (OSError, ValueError, AttributeError):
        warnings.warn(f"ignoring unreadable caption file '{sidecar}'", stacklevel=2)
        return ""
    return caption if isinstance(caption, str) else ""


def scan_images(folder: Path, min_size: int) -> tuple[list[Path], ScanReport]:
    """Usable image paths under ``folder`` (sorted) and what was skipped (header reads only)."""
    if not folder.is_dir():
        raise CleanDIFTError(f"data folder '{folder}' does not exist or is not a folder")
    candidates = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    usable, unreadable, too_small = [], [], []
    for path in candidates:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except Exception:  # Pillow raises many types on bad data
            unreadable.append(str(path))
            continue
        (too_small if min(width, height) < min_size else usable).append(path)
    report = ScanReport(len(usable), unreadable, too_small)
    if not usable:
        raise CleanDIFTError(
            f"no usable image in '{folder}' ({len(candidates)} jpg/png/webp files found, "
            f"{len(unreadable)} unreadable, {len(too_small)} smaller than {min_size} px)"
        )
    return usable, report


class ImageFolder(torch.utils.data.Dataset):
    """Square-resized uint8 images with captions.

    Item i → {"image": uint8 (R, R, 3), "caption": str, "index": int, "skipped": int}
    where "skipped" counts files that failed to decode and were replaced by the next one.
    """

    def __init__(self, paths: Sequence[Path], resolution: int):
        self.paths = list(paths)
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            try:
                image = prepare_image(self.paths[i], self.resolution, "square").array
            except ImageError:
                continue
            return {
                "image": torch.from_numpy(image),
                "caption": read_caption(self.paths[i]),
                "index": i,
                "skipped": offset,
            }
        raise CleanDIFTError("no image of the data folder could be decoded")


def collate(samples: list[dict]) -> dict:
    """Stack a list of items: image (B, R, R, 3) uint8, captions list[str], skipped int."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "skipped": sum(s["skipped"] for s in samples),
    }


def split_holdout(paths: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, validation) paths: ``count`` images held out by a seeded draw (never all)."""
    count = min(count, len(paths) - 1)
    if count <= 0:
        return list(paths), []
    order = np.random.default_rng(seed).permutation(len(paths))
    held = set(order[:count].tolist())
    train = [p for i, p in enumerate(paths) if i not in held]
    return train, [paths[i] for i in sorted(held)]


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices for steps ``start_step … end_step-1`` of one rank.

    Args:
        size: dataset length; batch_size: per-rank batch B; seed: data-order seed;
        rank, world: this process and the number of processes (W).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world = rank, world
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perm

    def indices(self, step: int) -> list[int]:
        """Dataset indices of this rank's batch at ``step``."""
        first = (step * self.world + self.rank) * self.batch_size
        out = []
        for pos in range(first, first + self.batch_size):
            epoch, offset = divmod(pos, self.size)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            yield self.indices(step)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which stops the run
    cleanly (a worker killed by Ctrl-C would crash the next fetch); orphaned workers exit on
    their own when the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: ImageFolder,
    sampler: StepBatchSampler,
    workers: int,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """DataLoader over ``sampler``'s batches (workers > 0: decoding in parallel processes)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
