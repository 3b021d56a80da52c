"""SPair-71k semantic correspondence with DIFT's protocol.

Layout read (the dataset as distributed, https://cvlab.postech.ac.kr/research/SPair-71k/)::

    ROOT/PairAnnotation/{trn,val,test}/<pair>.json   src_imname, trg_imname, category,
                                                     src_kps, trg_kps ([[x, y], ...] px),
                                                     src_bndbox, trg_bndbox ([x1, y1, x2, y2]),
                                                     src_imsize, trg_imsize ([W, H, C])
    ROOT/JPEGImages/<category>/<imname>              the photos
    ROOT/ImageAnnotation/<category>/*.json           per-image annotations (not needed here)

Protocol (DIFT, FACTS.md): features of both images upsampled to each image's original size,
the source keypoint's feature against every target pixel, cosine argmax; a keypoint is correct
when within 0.1 × max(target bbox h, w) (PCK@0.1 bbox) or 0.1 × max(target image h, w)
(PCK@0.1 img). ``FeatureExtractor.match`` with policy ``square`` is exactly that pipeline.
DIFT also conditions each image on the prompt "a photo of a {category}" (``DIFT_PROMPT``,
``prompt_template``) and resizes with PIL's bicubic filter (``resize_filter="bicubic-pil"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CleanDIFTError, one_line
from ..imaging import load_image
from .pck import PCKTally, end_point_errors, prediction

SPLITS = {"trn": "trn", "train": "trn", "val": "val", "test": "test"}
DIFT_PROMPT = "a photo of a {category}"  # DIFT's eval_spair.py, per image
DIFT_RESIZE = "bicubic-pil"  # DIFT resizes with PIL's Image.resize (bicubic)

#: predict(source, target, points, source_key=..., target_key=...) → (N, 2) target points, or a
#: MatchResult (``ExtractorPredictor.match``: its flip alignment is then counted)
SPairPredictor = Callable[..., np.ndarray]


@dataclass(frozen=True)
class SPairPair:
    """One annotated pair. Points (N, 2) float64 (x, y) in original pixels; target_bbox
    (x1, y1, x2, y2) px; sizes (H, W)."""

    name: str
    category: str
    source_image: str
    target_image: str
    source_points: np.ndarray
    target_points: np.ndarray
    target_bbox: tuple[float, float, float, float]
    source_size: tuple[int, int]
    target_size: tuple[int, int]

    @property
    def bbox_scale(self) -> float:
        """max(bbox h, bbox w) in pixels, DIFT's PCK-bbox reference length."""
        x1, y1, x2, y2 = self.target_bbox
        return float(max(y2 - y1, x2 - x1))

    @property
    def image_scale(self) -> float:
        """max(image h, image w) in pixels, the PCK-img reference length."""
        return float(max(self.target_size))


def _points(value, what: str, path: Path) -> np.ndarray:
    pts = np.asarray(value, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise CleanDIFTError(f"'{path}': {what} must be [[x, y], ...], got shape {pts.shape}")
    return pts


def parse_pair(path: Path) -> SPairPair:
    """Read one PairAnnotation json; CleanDIFTError naming the file on any malformed field."""
    try:
        data = json.loads(path.read_text())
        category = str(data["category"])
        src, tgt = (
            _points(data["src_kps"], "src_kps", path),
            _points(data["trg_kps"], "trg_kps", path),
        )
        bbox = tuple(float(v) for v in data["trg_bndbox"])
        src_size = (int(data["src_imsize"][1]), int(data["src_imsize"][0]))
        tgt_size = (int(data["trg_imsize"][1]), int(data["trg_imsize"][0]))
        pair = SPairPair(
            path.stem,
            category,
            str(data["src_imname"]),
            str(data["trg_imname"]),
            src,
            tgt,
            bbox,
            src_size,
            tgt_size,
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise CleanDIFTError(f"bad SPair annotation '{path}': {detail}") from None
    if len(bbox) != 4 or pair.bbox_scale <= 0:
        raise CleanDIFTError(f"bad SPair annotation '{path}': trg_bndbox must be [x1, y1, x2, y2]")
    if len(src) != len(tgt):
        raise CleanDIFTError(f"'{path}': {len(src)} source but {len(tgt)} target keypoints")
    return pair


def read_pairs(
    root: str | Path,
    split: str = "test",
    categories: Sequence[str] | None = None,
    max_pairs_per_category: int | None = None,
) -> list[SPairPair]:
    """The pairs of ``split`` (trn/train, val, test), sorted by file name, optionally only
    ``categories`` and the first ``max_pairs_per_category`` of each."""
    root = Path(root)
    if split not in SPLITS:
        raise CleanDIFTError(f"unknown SPair split '{split}' (trn, val, test)")
    folder = root / "PairAnnotation" / SPLITS[split]
    if not folder.is_dir():
        raise CleanDIFTError(
            f"'{folder}' not found: --root must be the SPair-71k folder holding PairAnnotation/, "
            "ImageAnnotation/ and JPEGImages/"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise CleanDIFTError(f"no pair annotations (*.json) in '{folder}'")
    wanted = set(categories) if categories else None
    pairs: list[SPairPair] = []
    count: dict[str, int] = {}
    for path in files:
        pair = parse_pair(path)
        if wanted is not None and pair.category not in wanted:
            continue
        if (
            max_pairs_per_category is not None
            and count.get(pair.category, 0) >= max_pairs_per_category
        ):
            continue
        count[pair.category] = count.get(pair.category, 0) + 1
        pairs.append(pair)
    if wanted is not None and (missing := sorted(wanted - set(count))):
        raise CleanDIFTError(f"no {split} pairs of categories: {', '.join(missing)}")
    return pairs


def _image(root: Path, pair: SPairPair, which: str) -> np.ndarray:
    name = pair.source_image if which == "source" else pair.target_image
    size = pair.source_size if which == "source" else pair.target_size
    image = load_image(root / "JPEGImages" / pair.category / name)
    if image.shape[:2] != size:
        raise CleanDIFTError(
            f"'{name}' is {image.shape[1]}x{image.shape[0]} but pair {pair.name} says "
            f"{size[1]}x{size[0]} (W x H): images and annotations do not belong together"
        )
    return image


def prompt_for(template: str, category: str) -> str:
    """``template`` with ``{category}`` filled in; CleanDIFTError (one line) on a bad template."""
    try:
        return template.format(category=category)
    except (KeyError, IndexError, ValueError) as exc:
        raise CleanDIFTError(
            f"bad prompt template {template!r}: only {{category}} may be filled in "
            f"({one_line(exc)})"
        ) from None


def evaluate_spair(
    root: str | Path,
    predict: SPairPredictor,
    split: str = "test",
    categories: Sequence[str] | None = None,
    max_pairs_per_category: int | None = None,
    alphas: tuple[float, ...] = (0.1,),
    progress: bool = False,
    prompt_template: str | None = None,
) -> dict:
    """PCK of ``predict`` on SPair-71k: per category, overall, per point and per image.

    ``prompt_template`` (e.g. ``DIFT_PROMPT``): each pair's images are conditioned on it with
    the pair's category filled in (passed to ``predict`` as ``prompt=``); None: the
    predictor's own fixed prompt. Returns PCKTally.summary() (groups = categories; metrics
    ``bbox@α`` and ``img@α``, fractions in [0, 1]; ``flipped_pairs`` when ``predict`` returns
    MatchResults with flip alignment) plus ``split`` and ``prompt_template``.
    """
    if prompt_template is not None:
        prompt_for(prompt_template, "category")  # a bad template fails before any work
    root = Path(root)
    pairs = read_pairs(root, split, categories, max_pairs_per_category)
    for pair in pairs:  # every file is there before the first (slow) prediction
        for name in (pair.source_image, pair.target_image):
            if not (root / "JPEGImages" / pair.category / name).is_file():
                raise CleanDIFTError(
                    f"image '{name}' of pair {pair.name} not in {root}/JPEGImages/"
                )
    tally = PCKTally(alphas)
    for pair in tqdm(pairs, desc=f"spair {split}", unit="pair", disable=not progress):
        if not len(pair.source_points):
            continue
        source, target = _image(root, pair, "source"), _image(root, pair, "target")
        keys = (f"{pair.category}/{pair.source_image}", f"{pair.category}/{pair.target_image}")
        extra = {}
        if prompt_template is not None:
            extra["prompt"] = prompt_for(prompt_template, pair.category)
        predicted, flipped = prediction(
            predict(
                source, target, pair.source_points, source_key=keys[0], target_key=keys[1],
                **extra,
            )
        )  # fmt: skip
        # In the target's own pixels, also when flip alignment matched against its mirror.
        errors = end_point_errors(predicted, pair.target_points)
        scales = {"bbox": pair.bbox_scale, "img": pair.image_scale}
        tally.add(pair.category, errors, scales, flipped)
    summary = tally.summary()
    summary["split"] = SPLITS[split]
    summary["prompt_template"] = prompt_template
    return summary
