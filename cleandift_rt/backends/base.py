"""The runner interface every backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import InputSizeError
from ..models.featurenet import INPUT_MULTIPLE

#: the batch range of a runner that takes any batch size
ANY_BATCH = (1, 2**31 - 1)


@runtime_checkable
class Runner(Protocol):
    """Executes one FeatureNet function.

    name: its registry name (or alias); taps: output names in order; strides / channels: per
    tap; input_size: (H, W) the runner accepts, or None for any multiple of 64; batch_range:
    (smallest, largest) batch it takes (``ANY_BATCH`` when unbounded; callers pad a smaller
    batch, see ``FeatureExtractor.extract_prepared``); device: where outputs live.
    """

    name: str
    taps: tuple[str, ...]
    strides: dict[str, int]
    channels: dict[str, int]
    input_size: tuple[int, int] | None
    batch_range: tuple[int, int]
    device: torch.device

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) → {tap: (B, C, H / stride, W / stride)}."""
        ...


def check_batch(images: np.ndarray | torch.Tensor, input_size: tuple[int, int] | None) -> None:
    """Raise InputSizeError unless ``images`` is a uint8 (B, H, W, 3) batch the runner takes."""
    shape, dtype = tuple(images.shape), images.dtype
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise InputSizeError(f"expected a uint8 batch (B, H, W, 3), got shape {shape}")
    if dtype not in (np.uint8, torch.uint8):
        raise InputSizeError(f"expected uint8 images, got {dtype}")
    h, w = shape[1:3]
    if input_size is not None and (h, w) != tuple(input_size):
        raise InputSizeError(
            f"input is {h}x{w} but this model takes {input_size[0]}x{input_size[1]} (H x W)"
        )
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
        raise InputSizeError(f"input {h}x{w} is not a multiple of {INPUT_MULTIPLE} px")


def describe_artifact(runner: object, meta, device: torch.device) -> None:
    """Set the Runner attributes of an artifact's runner from its sidecar ``meta``: meta,
    device, dtype (of the outputs), taps, strides, channels, input_size, batch_range."""
    from ..dtypes import DTYPES

    runner.meta, runner.device, runner.dtype = meta, device, DTYPES[meta.precision]
    runner.taps = tuple(t.name for t in meta.taps)
    runner.strides = {t.name: t.stride for t in meta.taps}
    runner.channels = {t.name: t.channels for t in meta.taps}
    runner.input_size = (meta.height, meta.width)
    runner.batch_range = tuple(meta.batch)


def check_artifact_batch(images: np.ndarray | torch.Tensor, meta) -> None:
    """check_batch for an artifact: its fixed input size and exported batch range (the error
    names the command that rebuilds it)."""
    check_batch(images, (meta.height, meta.width))
    lo, hi = meta.batch
    if not lo <= len(images) <= hi:
        raise InputSizeError(
            f"batch of {len(images)} but this artifact takes {lo}..{hi}; rebuild: {meta.rebuild}"
        )
