"""Validation at export: the artifact against PyTorch fp32 on real photos."""

from __future__ import annotations

import numpy as np
import torch

from cleandift_rt.imaging import prepare_image

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.999}


def validation_images(height: int, width: int, count: int = 2) -> np.ndarray:
    """uint8 (count, H, W, 3): the bundled sample photos (astronaut, chelsea, coffee), resized."""
    from cleandift_rt.photos import sample_photo

    photos = [sample_photo(name) for name in ("astronaut", "chelsea", "coffee")]
    chosen = [photos[i % len(photos)] for i in range(count)]
    return np.stack([prepare_image(p, (height, width)).array for p in chosen])


def compare(reference: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict:
    """Per tap: min cosine over images (flattened maps), max |error|, and finiteness."""
    report = {}
    for tap, ref in reference.items():
        out = outputs[tap].detach().float().cpu()
        ref = ref.float().cpu()
        cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1), dim=1)
        report[tap] = {
            "cosine": float(cos.min()),
            "max_abs_error": float((out - ref).abs().max()),
            "max_rel_error": float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)),
            "finite": bool(torch.isfinite(out).all()),
        }
    return report


def failures(report: dict, precision: str) -> list[str]:
    """Reasons the artifact is not acceptable (NaN/Inf anywhere, cosine under the bound)."""
    bound = MIN_COSINE[precision]
    bad = []
    for tap, r in report.items():
        if not r["finite"]:
            bad.append(f"{tap} has NaN/Inf")
        elif r["cosine"] < bound:
            bad.append(f"{tap} cosine {r['cosine']:.5f} < {bound}")
    return bad
