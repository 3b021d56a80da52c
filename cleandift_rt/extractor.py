"""FeatureExtractor: images in, CleanDIFT features and point matches out, on any runner."""

from __future__ import annotations

import dataclasses
from collections.abc import ItemsView, Iterator, KeysView, Sequence, ValuesView
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import Runner, TorchRunner
from .dtypes import torch_dtype
from .errors import CleanDIFTError, ImageError, MatchError, TapError
from .imaging import ImageTransform, PreparedImage, load_image, pad_to, prepare_image
from .matching import PixelGrid, cosine_argmax, sample_descriptors
from .matching.refine import DEFAULT_TEMPERATURE, DEFAULT_WINDOW, check_refine


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
    return torch_dtype(dtype)


def as_image_list(images: Any) -> list[Any]:
    """One image or many → a list: lists/tuples as is, 4-D arrays (B, H, W, C) and 4-D tensors
    (B, C, H, W) split along the batch; anything else is one image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def pad_batch(batch: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    """(n, H, W, 3) → (size, H, W, 3): filled with copies of the last image (size >= n)."""
    extra = size - len(batch)
    if isinstance(batch, torch.Tensor):
        return torch.cat([batch, batch[-1:].expand(extra, *batch.shape[1:])])
    return np.concatenate([batch, np.repeat(batch[-1:], extra, axis=0)])


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

    def select(self, index: int) -> Features:
        """Image ``index`` alone, as a one-image Features (maps sliced, not copied)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        index %= len(self)
        maps = {t: m[index : index + 1] for t, m in self.maps.items()}
        return Features(maps, [self.transforms[index]], dict(self.strides))

    def grid(self, index: int, tap: str) -> PixelGrid:
        """The grid of image ``index``'s ORIGINAL pixels over the feature cells of ``tap``."""
        t = self.transforms[index]
        stride = self.strides[tap]
        return PixelGrid.from_input_transform(t.original_size, t.scale, t.offset, stride)


@dataclass
class MatchResult:
    """Correspondences in original pixel coordinates (x, y), pixel centres at integers.

    source_points (N, 2) float64; target_points (N, 2) float64 (integer-valued: the best target
    pixel, unless refined to sub-pixel positions); scores (N,) float32 cosine similarity in
    [-1, 1] at the best integer pixel. refine: the refinement used. flipped: with flip alignment,
    whether the horizontally flipped target matched better (target_points are in the
    unflipped target's pixels either way); None without flip alignment. pca_dim: D when the
    maps were reduced by a PCA fitted on the pair (``fuse="pca:D"``), else None.
    """

    source_points: np.ndarray
    target_points: np.ndarray
    scores: np.ndarray
    tap: str
    refine: str = "none"
    flipped: bool | None = None
    pca_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {} if self.flipped is None else {"flipped": self.flipped}
        if self.pca_dim is not None:
            extra["pca_dim"] = self.pca_dim
        return {
            "tap": self.tap,
            "refine": self.refine,
            **extra,
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
        resize_filter: "area" (OpenCV area when shrinking, cubic when enlarging) or
            "bicubic-pil" (PIL's bicubic, as DIFT resizes); see ``imaging.RESIZE_FILTERS``.
        hub_files: {repo, file, commit} of the hub files the weights came from.
        prompt_encoder: prompt → context (1, L, D); enables ``set_prompt`` on runners whose
            network holds its context (the PyTorch ones).
        fusion: what a fused output is made of (``FeatureNet.fusion_info``, an artifact
            sidecar's ``fusion``), {} for plain taps.
        pca_dim: reduce the maps of every matched pair to this many channels with a PCA fitted
            on the pair (``--fuse pca:D``; ``matching.pca``), or None.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        resolution: int | tuple[int, int] | None = None,
        policy: str = "square",
        model_name: str = "",
        description: str = "",
        resize_filter: str = "area",
        hub_files: Sequence[dict[str, str]] = (),
        prompt_encoder: Any = None,
        fusion: dict[str, Any] | None = None,
        pca_dim: int | None = None,
    ):
        from .imaging import check_resize_filter

        self.runner = runner
        self.size = runner.input_size or resolution
        if self.size is None:
            raise CleanDIFTError("a resolution is needed for a runner without a fixed input size")
        self.policy = policy
        self.model_name = model_name
        self.description = description
        self.resize_filter = check_resize_filter(resize_filter)
        self.hub_files = [dict(f) for f in hub_files]
        self.prompt_encoder = prompt_encoder
        self.prompt = ""
        self._contexts: dict[str, torch.Tensor] = {}
        self.fusion = dict(fusion or {})
        if pca_dim is not None and int(pca_dim) < 1:
            raise CleanDIFTError(f"pca_dim must be >= 1, got {pca_dim}")
        self.pca_dim = None if pca_dim is None else int(pca_dim)

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
        resize_filter: str = "area",
        fuse: str | None = None,
        tap_weights: str | Sequence[float] | None = None,
        fusion_alpha: float | None = None,
    ) -> FeatureExtractor:
        """Load ``model`` (preset, folder, hub id or safetensors file, optionally
        ``+<dinov2>``; see ``load_model``) and build its FeatureNet for ``taps``. ``base``: a
        local diffusers folder or hub id that replaces the base of a hub preset, or the base of
        a .safetensors file. ``compile``: a torch.compile mode for the PyTorch backend (see
        ``TorchRunner``). Exported artifacts load with ``load_runtime``.

        Fusion (one output ``fused``; see ``cleandift_rt.fusion``): ``fuse`` ``"concat"`` or
        ``"pca:D"`` fuses two or more taps with ``tap_weights`` (one per tap, default equal);
        an ``<sd>+<dinov2>`` model fuses the SD map with DINOv2's, the SD share being
        ``fusion_alpha`` (default 0.5). With ``pca:D``, ``match`` reduces each pair's maps to D
        channels with a PCA fitted on the pair."""
        from .backends import registry
        from .models import load_model

        if registry.get(backend).name != "torch":
            raise CleanDIFTError(
                f"backend '{backend}' runs exported artifacts: export the model, then load it "
                "with cleandift_rt.load_runtime(path)"
            )
        from .fusion import make_fusion, split_model_name
        from .validation import check_timestep, split_taps

        names = split_taps(taps, "taps")  # names only: the model checks it has them
        fusion = make_fusion(names, fuse=fuse, tap_weights=tap_weights, alpha=fusion_alpha,
                             dino=split_model_name(str(model))[1])  # fmt: skip
        timestep = check_timestep(timestep)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        loaded = load_model(model, base=base, timestep=timestep, prompt=prompt).to(dev, dt)
        net = loaded.feature_net(names, fusion)
        runner = TorchRunner(net, compile=compile)
        extractor = cls(
            runner,
            resolution=resolution if resolution is not None else loaded.resolution,
            policy=policy,
            model_name=loaded.name,
            description=loaded.description,
            resize_filter=resize_filter,
            hub_files=loaded.hub_files,
            prompt_encoder=loaded.prompt_encoder,
            fusion=net.fusion_info(),
            pca_dim=fusion.pca_dim if fusion is not None else None,
        )
        extractor.prompt = prompt
        return extractor

    def set_prompt(self, prompt: str) -> None:
        """Condition the network on ``prompt`` from now on (its embedding computed once).

        Needs the model's text encoder and a runner whose network holds its context (PyTorch
        and the DIFT baseline); an exported artifact bakes its prompt in."""
        if prompt == self.prompt:
            return
        net = getattr(self.runner, "net", None)
        net = getattr(self.runner, "dift", None) if net is None else net
        buffer = getattr(net, "context", None)
        if self.prompt_encoder is None or not isinstance(buffer, torch.Tensor):
            what = self.model_name or "this model"
            raise CleanDIFTError(
                f"cannot condition {what} on a prompt: it needs a PyTorch model with a text "
                "encoder (an exported artifact bakes its prompt; tiny and toy have none)"
            )
        if prompt not in self._contexts:
            self._contexts[prompt] = self.prompt_encoder(prompt)
        context = self._contexts[prompt]
        if context.shape[1:] != buffer.shape[1:]:
            raise CleanDIFTError(
                f"prompt embedding {tuple(context.shape)} does not fit the model's context "
                f"{tuple(buffer.shape)}"
            )
        with torch.no_grad():
            buffer.copy_(context.to(buffer.device, buffer.dtype))
        self.prompt = prompt

    @property
    def taps(self) -> tuple[str, ...]:
        return self.runner.taps

    @property
    def strides(self) -> dict[str, int]:
        return self.runner.strides

    @property
    def batch_range(self) -> tuple[int, int]:
        """(smallest, largest) batch the runner takes: an artifact's exported range, or any."""
        return tuple(self.runner.batch_range)

    def prepare(self, images: Any) -> list[PreparedImage]:
        """Decode and resize/pad images; fit-policy images are padded to one common size."""
        images = as_image_list(images)
        if not images:
            raise ImageError("no images given: pass an image or a non-empty list of images")
        prepared = [
            prepare_image(im, self.size, self.policy, resize_filter=self.resize_filter)
            for im in images
        ]
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
        batch = np.stack([p.array for p in prepared])
        transforms = [p.transform for p in prepared]
        return self.extract_prepared(batch, transforms, batch_size=batch_size, progress=progress)

    def extract_prepared(
        self,
        batch: np.ndarray | torch.Tensor,
        transforms: Sequence[ImageTransform] | None = None,
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> Features:
        """Features of images already prepared for the runner: the one batching path.

        ``batch``: uint8 (N, H, W, 3) at the runner's input size (numpy, or a torch tensor on
        any device). It runs in chunks of ``batch_size`` clamped to the runner's batch range; a
        chunk under the smallest batch (an artifact's) is padded with copies of its last image,
        whose outputs are dropped. ``transforms``: one per image (default: identity, the input
        is the original). Returns maps {tap: (N, C, h, w)} on the runner's device.
        """
        n_images = len(batch)
        if transforms is None:
            h, w = batch.shape[1:3]
            transforms = [ImageTransform((h, w), (h, w), (1.0, 1.0))] * n_images
        lo, hi = self.batch_range
        step = max(lo, min(batch_size, hi))
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in self.taps}
        starts = range(0, n_images, step)
        for start in tqdm(starts, desc="extract", unit="batch", disable=not progress):
            chunk = batch[start : start + step]
            n = len(chunk)
            if n < lo:
                chunk = pad_batch(chunk, lo)
            for tap, out in self.runner(chunk).items():
                chunks[tap].append(out[:n])
        maps = {t: torch.cat(c) if len(c) > 1 else c[0] for t, c in chunks.items()}
        return Features(maps, list(transforms), dict(self.strides))

    def match(
        self,
        source: Any,
        target: Any,
        points: Any,
        *,
        tap: str | None = None,
        refine: str = "none",
        refine_window: int = DEFAULT_WINDOW,
        refine_temperature: float = DEFAULT_TEMPERATURE,
        flip_align: bool = False,
    ) -> MatchResult:
        """For each source point (N, 2) (x, y) in original source pixels, the best target pixel
        in original target pixels: bilinear query sampling, then cosine argmax against the
        target map bilinearly upsampled to the target image size.

        ``refine`` (``"none"``, ``"softargmax"``, ``"quadratic"``), ``refine_window`` (px) and
        ``refine_temperature``: sub-pixel refinement, as in ``matching.cosine_argmax``.
        ``flip_align``: also extract the horizontally flipped target in the same batch, match
        against both and keep the one with the higher mean best-match cosine; coordinates found
        in the flip are mapped back (``x' = W - 1 - x``) and ``result.flipped`` says which won.
        """
        point_array(points)  # bad points answer before any extraction
        check_refine(refine, refine_window, refine_temperature)
        opts = dict(
            refine=refine, refine_window=refine_window, refine_temperature=refine_temperature
        )
        if not flip_align:
            return self.match_features(self([source, target]), points, tap=tap, **opts)
        tgt = load_image(target)
        feats = self([source, tgt, np.ascontiguousarray(tgt[:, ::-1])])
        return self.match_features(feats, points, flipped=2, tap=tap, **opts)

    def match_features(
        self,
        features: Features,
        points: Any,
        *,
        source: int = 0,
        target: int = 1,
        flipped: int | None = None,
        tap: str | None = None,
        refine: str = "none",
        refine_window: int = DEFAULT_WINDOW,
        refine_temperature: float = DEFAULT_TEMPERATURE,
    ) -> MatchResult:
        """``match`` on already extracted features (images ``source`` → ``target``);
        ``flipped``: the index of the target's horizontal mirror, for flip alignment."""
        return self.match_pair(
            features.select(source), features.select(target), points,
            flipped=None if flipped is None else features.select(flipped), tap=tap,
            refine=refine, refine_window=refine_window, refine_temperature=refine_temperature,
        )  # fmt: skip

    def match_pair(
        self,
        source: Features,
        target: Features,
        points: Any,
        *,
        flipped: Features | None = None,
        tap: str | None = None,
        refine: str = "none",
        refine_window: int = DEFAULT_WINDOW,
        refine_temperature: float = DEFAULT_TEMPERATURE,
    ) -> MatchResult:
        """``match`` between the first images of two Features extracted apart (the evaluators'
        per-image cache; ``Features.select`` picks an image of a batch).

        ``flipped``: the features of the target's horizontal mirror: flip alignment as in
        ``match(flip_align=True)``: the points are matched against both, the one with the
        higher mean best-match cosine is kept (the unflipped one on a tie), and coordinates
        found in the mirror are mapped back to the target's pixels (``x' = W - 1 - x``).
        """
        pts = point_array(points)
        tap = tap or self.taps[0]
        opts = dict(
            refine=refine, refine_window=refine_window, refine_temperature=refine_temperature
        )
        plain = self._match_one(source, target, pts, tap, **opts)
        if flipped is None:
            return plain
        width = target.transforms[0].original_size[1]
        if flipped.transforms[0].original_size != target.transforms[0].original_size:
            raise MatchError(
                f"the flipped target is {flipped.transforms[0].original_size} (H, W), the "
                f"target {target.transforms[0].original_size}: not its mirror"
            )
        flip = self._match_one(source, flipped, pts, tap, **opts)
        if float(np.mean(flip.scores)) <= float(np.mean(plain.scores)):
            return dataclasses.replace(plain, flipped=False)
        back = flip.target_points.copy()
        back[:, 0] = width - 1 - back[:, 0]
        return dataclasses.replace(flip, target_points=back, flipped=True)

    def _match_one(
        self,
        source: Features,
        target: Features,
        pts: np.ndarray,
        tap: str,
        *,
        refine: str,
        refine_window: int,
        refine_temperature: float,
    ) -> MatchResult:
        """Image 0 of ``source`` → image 0 of ``target``: the one matching path."""
        for feats in (source, target):
            if tap not in feats.maps:
                raise MatchError(f"tap '{tap}' was not extracted (have: {', '.join(feats.maps)})")
        src_map, tgt_map = self.pair_maps(source[tap][0], target[tap][0])
        queries = sample_descriptors(
            src_map, torch.as_tensor(pts, device=src_map.device), source.grid(0, tap)
        )
        coords, scores = cosine_argmax(
            queries, tgt_map, grid=target.grid(0, tap), refine=refine,
            refine_window=refine_window, refine_temperature=refine_temperature,
        )  # fmt: skip
        found = coords.cpu().numpy().astype(np.float64)
        return MatchResult(pts, found, scores.cpu().numpy(), tap, refine, pca_dim=self.pca_dim)

    def pair_maps(
        self, source: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps (C, h, w) of a pair as matched: as they are, or with ``pca_dim`` both
        projected on the PCA of their cells together (D, h, w)."""
        if self.pca_dim is None:
            return source, target
        from .matching.pca import pca_pair

        return pca_pair(source, target, self.pca_dim)
