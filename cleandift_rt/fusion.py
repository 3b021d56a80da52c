"""What a fused feature map is made of: multi-tap fusion, SD + DINOv2 fusion and PCA, as
options (standard library only, so the CLI checks them before torch is imported).

A FeatureNet with fusion has ONE output, ``fused`` (``FUSED``):

* multi-tap (``fuse="concat"``, two or more SD taps): every tap resampled bilinearly
  (``align_corners=False``) to the finest tap's grid, L2-normalised over channels, multiplied by
  its weight, concatenated on channels;
* SD + DINOv2 (a ``<sd>+<dinov2>`` model name): ``concat(α · normalize(F_sd),
  (1 − α) · normalize(F_dino))`` on the SD map's grid, where F_sd is the one SD tap or the
  multi-tap map above;
* ``fuse="pca:D"``: the concat map, reduced to D channels by a PCA that is NOT in the graph:
  fitted on the features being matched (the pair) or stored with a feature store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import CleanDIFTError

FUSED = "fused"  # the name of a fusing FeatureNet's one output
FUSE_MODES = ("concat", "pca:D")
DEFAULT_ALPHA = 0.5
DINO_SEPARATOR = "+"  # "sd21+dinov2-b": an SD model and a DINOv2 model in one FeatureNet


@dataclass(frozen=True)
class Fusion:
    """How a FeatureNet fuses its features and what matching does with them.

    taps: the SD taps, in the caller's order; weights: one per tap (>= 0, not all 0);
    alpha: the SD share with a DINOv2 branch (in [0, 1]); dino: the DINOv2 model (a name from
    ``models.presets.DINO_PRESETS``, a folder or a hub id) or None; pca_dim: D of ``pca:D``
    (applied after the graph) or None.
    """

    taps: tuple[str, ...]
    weights: tuple[float, ...]
    alpha: float = DEFAULT_ALPHA
    dino: str | None = None
    pca_dim: int | None = None

    @property
    def fuses_taps(self) -> bool:
        """Whether the SD taps are fused with each other (two or more taps)."""
        return len(self.taps) > 1

    @property
    def mode(self) -> str:
        """The ``--fuse`` value it stands for: ``concat`` or ``pca:D``."""
        return "concat" if self.pca_dim is None else f"pca:{self.pca_dim}"


def split_model_name(model: str) -> tuple[str, str | None]:
    """``"sd21+dinov2-b"`` → ``("sd21", "dinov2-b")``; a name without ``+`` → ``(model, None)``.

    Splits at the first ``+``; a name that is an existing path is never split."""
    from pathlib import Path

    if DINO_SEPARATOR not in model or Path(model).expanduser().exists():
        return model, None
    sd, dino = model.split(DINO_SEPARATOR, 1)
    return sd, dino


def parse_fuse(fuse: str | None) -> tuple[bool, int | None]:
    """``--fuse`` → (fuse taps, PCA dimension or None); CleanDIFTError on an unknown mode or a
    PCA dimension that is not an integer >= 1."""
    if fuse is None:
        return False, None
    text = fuse.strip().lower()
    if text == "concat":
        return True, None
    m = re.fullmatch(r"pca:(.*)", text)
    if m is None:
        raise CleanDIFTError(f"unknown --fuse mode '{fuse}' (concat or pca:D, e.g. pca:64)")
    try:
        dim = int(m.group(1))
    except ValueError:
        dim = 0
    if dim < 1:
        raise CleanDIFTError(
            f"--fuse {fuse}: the PCA dimension D of pca:D must be an integer >= 1, e.g. pca:64"
        )
    return True, dim


def parse_weights(text: str | None, taps: tuple[str, ...]) -> tuple[float, ...]:
    """``--tap-weights "1,1,0.5"`` → one finite weight >= 0 per tap (not all 0); default 1 each."""
    if text is None:
        return tuple(1.0 for _ in taps)
    try:
        weights = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CleanDIFTError(
            f"--tap-weights must be comma-separated numbers, got '{text}'"
        ) from None
    if len(weights) != len(taps):
        raise CleanDIFTError(
            f"--tap-weights has {len(weights)} weight(s) for {len(taps)} tap(s) "
            f"({', '.join(taps)}): give one per tap"
        )
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise CleanDIFTError(f"--tap-weights must be finite and >= 0, got {w:g} in '{text}'")
    if not any(weights):
        raise CleanDIFTError(f"--tap-weights are all 0 in '{text}': at least one must be > 0")
    return weights


def check_alpha(alpha: float | str | None) -> float:
    """``--fusion-alpha`` as a float in [0, 1] (None → 0.5)."""
    if alpha is None:
        return DEFAULT_ALPHA
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise CleanDIFTError(f"--fusion-alpha must be a number in [0, 1], got {alpha}")
    return value


def make_fusion(
    taps: tuple[str, ...],
    *,
    fuse: str | None = None,
    tap_weights: str | tuple[float, ...] | list[float] | None = None,
    alpha: float | str | None = None,
    dino: str | None = None,
) -> Fusion | None:
    """The Fusion of these options (None: plain taps, one output per tap); CleanDIFTError (one
    line, naming the option) on options that do not fit together. ``taps``: the SD taps
    (names checked by the caller); ``dino``: the DINOv2 part of a ``+`` model name."""
    fuse_taps, pca_dim = parse_fuse(fuse)
    value = check_alpha(alpha)
    if not fuse_taps and dino is None:
        if tap_weights is not None:
            raise CleanDIFTError("--tap-weights applies to fused taps: add --fuse concat")
        if alpha is not None:
            raise CleanDIFTError(
                "--fusion-alpha applies to an SD + DINOv2 model (e.g. --model sd21+dinov2-b)"
            )
        return None
    if fuse_taps and len(taps) < 2 and dino is None:
        raise CleanDIFTError(
            f"--fuse {fuse} needs two or more taps (e.g. --taps us3,us6,us9) or an SD + DINOv2 "
            f"model (e.g. sd21+dinov2-b), got the one tap {taps[0]}"
        )
    if dino is not None and len(taps) > 1 and not fuse_taps:
        raise CleanDIFTError(
            f"an SD + DINOv2 model fuses one SD map: give one tap, or fuse the taps "
            f"{', '.join(taps)} first with --fuse concat"
        )
    if isinstance(tap_weights, (tuple, list)):
        weights = parse_weights(",".join(map(repr, tap_weights)), taps)
    else:
        weights = parse_weights(tap_weights, taps)
    return Fusion(tuple(taps), weights, value, dino, pca_dim)


def fusion_for(
    model: str | None,
    taps: tuple[str, ...],
    *,
    fuse: str | None = None,
    tap_weights: str | None = None,
    fusion_alpha: float | str | None = None,
) -> Fusion | None:
    """The Fusion of command-line options for ``model`` and ``taps`` (None: plain taps);
    CleanDIFTError (one line) when they do not fit. ``model`` None: an exported artifact, whose
    fusion is baked in: only ``--fuse`` applies (``pca:D`` after its graph)."""
    if model is None:
        parse_fuse(fuse)
        if tap_weights is not None or fusion_alpha is not None:
            check_alpha(fusion_alpha)
            raise CleanDIFTError(
                "--tap-weights and --fusion-alpha are baked into an exported artifact: "
                "re-export it with them"
            )
        return None
    return make_fusion(tuple(taps), fuse=fuse, tap_weights=tap_weights, alpha=fusion_alpha,
                       dino=split_model_name(model)[1])  # fmt: skip
