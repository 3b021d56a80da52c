"""FeatureExtractor: images in, CleanDIFT features and point matches out, on any runner."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Sequence, ValuesView
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import Runner, TorchRunner
from .errors import CleanDIFTError, ImageError, MatchError, TapError
from .imaging import ImageTransform, PreparedImage, pad_to, prepare_image
from .matching import PixelGrid, cosine_argmax_fast, sample_descriptors

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/"auto" → CUDA when available, else CPU; unavailable CUDA → CleanDIFTError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CleanDIFTError(f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CleanDIFTError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None → fp16 on CUDA, fp32 elsewhere; names fp32/fp16/bf16 (and long forms)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise CleanDIFTError(f"unknown dtype '{dtype}' (use fp32, fp16 or bf16)")
    return DTYPES[str(dtype).lower()]


def as_image_list(images: Any) -> list[Any]:
    """One image or many → a list: lists/tuples as is, 4-D arrays (B, H, W, C) and 4-D tensors
    (B, C, H, W) split along the batch; anything else is one image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def point_array(points: Any) -> np.ndarray:
    """Points as an (N, 2) float64 array (x, y); MatchError (one line) for anything else."""
    if isinstance(points, (str, bytes)):
        raise MatchError(
            f"points must be (N, 2) numbers (x, y), e.g. [(120, 80)], not the string "
            f"{points!r} (the CLI's --points 'x,y;x,y' syntax)"
        )
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise MatchError(
            f"points must be (N, 2) numbers (x, y), got {type(points).__name__}"
        ) from None
    if pts.size == 0:
        raise MatchError("no points to match")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise MatchError(f"points must be (N, 2) pixel coordinates (x, y), got {pts.shape}")
    return pts


@dataclass
class Features:
    """Features of a batch of images.

    maps: {tap: (B, C, h, w)} on the runner's device; transforms: original → network input
    coordinates per image; strides: network-input pixels per feature cell per tap.
    """

    maps: dict[str, torch.Tensor]
    transforms: list[ImageTransform]
    strides: dict[str, int]

    def __getitem__(self, tap: str) -> torch.Tensor:
        if tap not in self.maps:
            raise TapError(f"tap '{tap}' was not extracted (have: {', '.join(self.maps)})")
        return self.maps[tap]

    def __len__(self) -> int:
        """The number of images (not of taps: iterate or use ``keys()`` for those)."""
        return len(self.transforms)

    def __iter__(self) -> Iterator[str]:
        """The tap names, like a mapping's keys."""
        return iter(self.maps)

    def __contains__(self, tap: object) -> bool:
        return tap in self.maps

    def keys(self) -> KeysView[str]:
        return self.maps.keys()

    def values(self) -> ValuesView[torch.Tensor]:
        return self.maps.values()

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self.maps.items()

    def __repr__(self) -> str:
        maps = ", ".join(
            f"{t}: ({', '.join(map(str, m.shape))}) {str(m.dtype).removeprefix('torch.')}"
            for t, m in self.maps.items()
        )
        device = next(iter(self.maps.values())).device if self.maps else "-"
        return f"Features({len(self)} image(s) on {device}; {maps})"

    def grid(self, index: int, tap: str) -> PixelGrid:
        """The grid of image ``index``'s ORIGINAL pixels over the feature cells of ``tap``."""
        t = self.transforms[index]
        stride = self.strides[tap]
        return PixelGrid.from_input_transform(t.original_size, t.scale, t.offset, stride)


@dataclass
class MatchResult:
    """Correspondences in original pixel coordinates (x, y), pixel centres at integers.

    source_points (N, 2) float64; target_points (N, 2) float64 (integer-valued: the best target
    pixel); scores (N,) float32 cosine similarity in [-1, 1].
    """

    source_points: np.ndarray
    target_points: np.ndarray
    scores: np.ndarray
    tap: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tap": self.tap,
            "matches": [
                {"source": [float(a), float(b)], "target": [float(c), float(d)], "score": float(s)}
                for (a, b), (c, d), s in zip(self.source_points, self.target_points, self.scores)
            ],
        }


class FeatureExtractor:
    """Extracts features with a runner and matches points between images.

    Args:
        runner: any backend runner (``TorchRunner``, or one loaded from an exported artifact).
        resolution: network input size for runners without a fixed one (square side for
            policy "square", longer side for "fit").
        policy: "square" (DIFT's resize, aspect not kept) or "fit" (keep aspect, pad).
    """

    def __init__(
        self,
        runner: Runner,
        *,
        resolution: int | tuple[int, int] | None = None,
        policy: str = "square",
        model_name: str = "",
        description: str = "",
    ):
        self.runner = runner
        self.size = runner.input_size or resolution
        if self.size is None:
            raise CleanDIFTError("a resolution is needed for a runner without a fixed input size")
        self.policy = policy
        self.model_name = model_name
        self.description = description

    @classmethod
    def from_pretrained(
        cls,
        model: str = "toy",
        taps: str | Sequence[str] = ("us6",),
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        backend: str = "torch",
        resolution: int | tuple[int, int] | None = None,
        policy: str = "square",
        base: str | None = None,
        timestep: float | None = None,
        prompt: str = "",
        compile: str | None = None,
    ) -> FeatureExtractor:
        """Load ``model`` (preset, folder, hub id or safetensors file; see ``load_model``) and
        build its FeatureNet for ``taps``. ``compile``: a torch.compile mode for the PyTorch
        backend (see ``TorchRunner``). Exported artifacts load with ``load_runtime``."""
        from .models import load_model

        if backend != "torch":
            raise CleanDIFTError(
                f"backend '{backend}' runs exported artifacts: export the model, then load it "
                "with cleandift_rt.load_runtime(path)"
            )
        from .validation import check_timestep, split_taps

        split_taps(taps, "taps")  # names only: the model checks it has them
        timestep = check_timestep(timestep)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        loaded = load_model(model, base=base, timestep=timestep, prompt=prompt).to(dev, dt)
        runner = TorchRunner(loaded.feature_net(taps), compile=compile)
        return cls(
            runner,
            resolution=resolution if resolution is not None else loaded.resolution,
            policy=policy,
            model_name=loaded.name,
            description=loaded.description,
        )

    @property
    def taps(self) -> tuple[str, ...]:
        return self.runner.taps

    @property
    def strides(self) -> dict[str, int]:
        return self.runner.strides

    @property
    def batch_range(self) -> tuple[int, int]:
        """(smallest, largest) batch the runner takes: an artifact's exported range, or any."""
        meta = getattr(self.runner, "meta", None)
        return tuple(meta.batch) if meta is not None else (1, 2**31 - 1)

    def prepare(self, images: Any) -> list[PreparedImage]:
        """Decode and resize/pad images; fit-policy images are padded to one common size."""
        images = as_image_list(images)
        if not images:
            raise ImageError("no images given: pass an image or a non-empty list of images")
        prepared = [prepare_image(im, self.size, self.policy) for im in images]
        sizes = {p.array.shape[:2] for p in prepared}
        if len(sizes) > 1:
            common = (max(s[0] for s in sizes), max(s[1] for s in sizes))
            prepared = [pad_to(p, common) for p in prepared]
        return prepared

    def __call__(self, images: Any, *, batch_size: int = 8, progress: bool = False) -> Features:
        """Features of one image or many (paths, HWC arrays, CHW tensors, PIL images).

        Returns maps {tap: (N, C, h, w)} in the runner's dtype on its device.
        """
        prepared = self.prepare(images)
        lo, hi = self.batch_range
        batch_size = max(lo, min(batch_size, hi))
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in self.taps}
        starts = range(0, len(prepared), batch_size)
        for start in tqdm(starts, desc="extract", unit="batch", disable=not progress):
            batch = np.stack([p.array for p in prepared[start : start + batch_size]])
            n = len(batch)
            if n < lo:  # an artifact's smallest batch: pad with copies, drop their outputs
                batch = np.concatenate([batch, np.repeat(batch[-1:], lo - n, axis=0)])
            for tap, out in self.runner(batch).items():
                chunks[tap].append(out[:n])
        maps = {t: torch.cat(c) if len(c) > 1 else c[0] for t, c in chunks.items()}
        return Features(maps, [p.transform for p in prepared], dict(self.strides))

    def match(
        self, source: Any, target: Any, points: Any, *, tap: str | None = None
    ) -> MatchResult:
        """For each source point (N, 2) (x, y) in original source pixels, the best target pixel
        in original target pixels: bilinear query sampling, then cosine argmax against the
        target map bilinearly upsampled to the target image size."""
        point_array(points)  # bad points answer before any extraction
        return self.match_features(self([source, target]), points, tap=tap)

    def match_features(
        self,
        features: Features,
        points: Any,
        *,
        source: int = 0,
        target: int = 1,
        tap: str | None = None,
    ) -> MatchResult:
        """``match`` on already extracted features (images ``source`` → ``target``)."""
        pts = point_array(points)
        tap = tap or self.taps[0]
        if tap not in features.maps:
            raise MatchError(f"tap '{tap}' was not extracted (have: {', '.join(features.maps)})")
        fmap = features[tap]
        queries = sample_descriptors(
            fmap[source], torch.as_tensor(pts, device=fmap.device), features.grid(source, tap)
        )
        coords, scores = cosine_argmax_fast(queries, fmap[target], grid=features.grid(target, tap))
        return MatchResult(pts, coords.cpu().numpy().astype(np.float64), scores.cpu().numpy(), tap)
