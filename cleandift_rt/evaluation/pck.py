"""PCK (percentage of correct keypoints) and end-point errors, per image, per point, per group.

A prediction is correct at ``alpha`` when its distance to the ground truth is at most
``alpha × scale``, the scale being, e.g., max(bbox h, bbox w) or max(image h, image w) in
pixels. Two averages are reported, as in DIFT's evaluation: *per point* (all points of a group
pooled) and *per image* (the mean over pairs of each pair's PCK).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


def end_point_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distances (N,) float64 in pixels between (N, 2) predicted and true points."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    if predicted.shape != truth.shape:
        raise ValueError(f"{predicted.shape} predictions for {truth.shape} ground-truth points")
    return np.linalg.norm(predicted - truth, axis=1)


def prediction(value) -> tuple[np.ndarray, bool | None]:
    """A predictor's answer as ``(points, flipped)``: (N, 2) points as they are (``flipped``
    None), or an object with ``target_points`` and ``flipped`` (a ``MatchResult``, as
    ``ExtractorPredictor.match`` returns)."""
    if hasattr(value, "target_points"):
        return np.asarray(value.target_points), getattr(value, "flipped", None)
    return np.asarray(value), None


def metric_name(scale: str, alpha: float) -> str:
    """'bbox@0.1' style key of one PCK variant."""
    return f"{scale}@{alpha:g}"


@dataclass
class _Pair:
    group: str
    errors: np.ndarray  # (N,) px
    scales: dict[str, float]  # scale name → px
    flipped: bool | None = None  # flip alignment: the mirrored target was used (None: off)


def _flips(pairs: list[_Pair]) -> dict[str, int]:
    """{"flipped_pairs": K} when any pair recorded its flip alignment, else {}."""
    if all(p.flipped is None for p in pairs):
        return {}
    return {"flipped_pairs": sum(bool(p.flipped) for p in pairs)}


@dataclass
class PCKTally:
    """Accumulates pairs' end-point errors; summarises PCK per group and overall.

    Args:
        alphas: thresholds as fractions of each scale (e.g. (0.1,) or (0.01, 0.05, 0.1)).
    """

    alphas: tuple[float, ...] = (0.1,)
    pairs: list[_Pair] = field(default_factory=list)

    def add(
        self,
        group: str,
        errors: np.ndarray,
        scales: dict[str, float],
        flipped: bool | None = None,
    ) -> None:
        """One pair: its (N,) end-point errors (px), the scales (px) thresholds refer to and,
        with flip alignment, whether the pair was matched against the mirrored target."""
        errors = np.asarray(errors, dtype=np.float64).reshape(-1)
        if len(errors):  # a pair without points has no PCK (and would divide by zero)
            scales = {k: float(v) for k, v in scales.items()}
            self.pairs.append(_Pair(group, errors, scales, flipped))

    @staticmethod
    def _summary(pairs: list[_Pair], alphas: tuple[float, ...]) -> dict:
        per_point: dict[str, float] = {}
        per_image: dict[str, float] = {}
        for scale in pairs[0].scales:
            for alpha in alphas:
                correct = [p.errors <= alpha * p.scales[scale] for p in pairs]
                key = metric_name(scale, alpha)
                per_point[key] = float(np.concatenate(correct).mean())
                per_image[key] = float(np.mean([c.mean() for c in correct]))
        all_errors = np.concatenate([p.errors for p in pairs])
        return {
            "pairs": len(pairs),
            "points": int(all_errors.size),
            "per_point": per_point,
            "per_image": per_image,
            "mean_epe_px": float(all_errors.mean()),
            **_flips(pairs),
        }

    def summary(self) -> dict:
        """{"overall": S, "groups": {group: S}, "group_mean": {"per_point": ..., "per_image":
        ...}} with S = {pairs, points, per_point {metric: PCK}, per_image {metric: PCK},
        mean_epe_px} and, when pairs said whether they were flipped, ``flipped_pairs`` (how many
        were matched against the mirrored target); PCK values are fractions in [0, 1]. Empty
        tally → ValueError."""
        if not self.pairs:
            raise ValueError("no pairs with points were evaluated")
        by_group: dict[str, list[_Pair]] = defaultdict(list)
        for p in self.pairs:
            by_group[p.group].append(p)
        groups = {g: self._summary(ps, self.alphas) for g, ps in sorted(by_group.items())}
        group_mean = {
            avg: {k: float(np.mean([s[avg][k] for s in groups.values()])) for k in metrics}
            for avg, metrics in (
                ("per_point", next(iter(groups.values()))["per_point"]),
                ("per_image", next(iter(groups.values()))["per_image"]),
            )
        }
        return {
            "overall": self._summary(self.pairs, self.alphas),
            "groups": groups,
            "group_mean": group_mean,
        }


def format_summary(summary: dict, group_title: str = "group") -> str:
    """A terminal table of a ``PCKTally.summary()``: one line per group, then the group mean
    and the overall line; PCK in percent (per point / per image); with flip alignment, how
    many pairs used the mirrored target."""
    metrics = list(summary["overall"]["per_point"])
    flips = "flipped_pairs" in summary["overall"]
    cols = "".join(f"{m + ' pt/img':>22s}" for m in metrics)
    lines = [f"{group_title:16s}{'pairs':>7s}{'points':>8s}{cols}{'EPE px':>9s}"]
    lines[0] += f"{'flipped':>9s}" if flips else ""

    def line(name: str, s: dict) -> str:
        pcks = "".join(
            f"{100 * s['per_point'][m]:>13.2f} /{100 * s['per_image'][m]:>6.2f}" for m in metrics
        )
        pairs = f"{s['pairs']:>7d}{s['points']:>8d}" if "pairs" in s else " " * 15
        epe = f"{s['mean_epe_px']:>9.1f}" if "mean_epe_px" in s else ""
        flipped = f"{s['flipped_pairs']:>9d}" if flips and "flipped_pairs" in s else ""
        return f"{name[:16]:16s}{pairs}{pcks}{epe}{flipped}"

    lines += [line(g, s) for g, s in summary["groups"].items()]
    lines.append(line(f"{group_title} mean", summary["group_mean"]))
    lines.append(line("all", summary["overall"]))
    return "\n".join(lines)
