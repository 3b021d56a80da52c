"""Start a distillation from released or earlier student weights (``--init-from`` /
``--resume-from FILE``).

Any student file ``cleandift_rt.models.read_student_file`` reads: CompVis' ``*_full`` (student
U-Net, learned timestep and heads, renamed to this project's head keys), this project's
``*_full`` checkpoints, or a ``*_unet`` file (U-Net and timestep only; the heads start fresh).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.models.checkpoint import read_student_file

from .objective import Student


def _fit(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Strict load with a one-line error naming the first key that does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (missing + unexpected + wrong)[0]
        detail = ""
        if first in wrong:
            detail = f": file {tuple(state[first].shape)}, model {tuple(own[first].shape)}"
        raise CleanDIFTError(
            f"'{path}' does not fit the student's {what}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped (first: {first}{detail})"
        )
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _recipe_revision(metadata: dict[str, str]) -> int:
    """The distillation recipe revision a project student file was written by (1: before the
    revision was recorded)."""
    try:
        return int(json.loads(metadata.get("recipe", "{}")).get("revision", 1))
    except (ValueError, TypeError, AttributeError):
        return 1


def init_student(student: Student, path: str | Path, log: Callable[[str], None]) -> None:
    """Load the student U-Net, learned timestep and (when the file has them) the heads of the
    distilled taps from the student file ``path`` into ``student`` (in place)."""
    path = Path(path)
    weights = read_student_file(path)
    _fit(student.unet, weights.unet_state, path, "U-Net")
    with torch.no_grad():
        student.timestep.fill_(weights.timestep)
    heads = weights.heads_state
    if not heads:
        log(f"initialised the student from {path} (t={weights.timestep:g}); no heads: fresh ones")
        return
    have = sorted({k.split(".")[1] for k in heads if k.startswith("heads.")})
    lacking = [tap for tap in student.taps if tap not in have]
    if lacking:
        raise CleanDIFTError(
            f"'{path}' has no head for tap {lacking[0]} (it has: {', '.join(have) or 'none'})"
        )
    wanted = {
        k: v
        for k, v in heads.items()
        if k.startswith("conditioner.") or k.split(".")[1] in student.taps
    }
    _fit(student.heads, wanted, path, "heads")
    if weights.layout == "student" and _recipe_revision(weights.metadata) < 2:
        log(
            f"warning: the heads in {path} were trained with recipe revision 1's GELU mapping "
            "gate; they now gate with SiLU (the reference's) and start from those weights"
        )
    log(
        f"initialised the student from {path} ({weights.layout}: U-Net, t={weights.timestep:g}, "
        f"heads of {len(student.taps)} taps)"
    )
