"""The one table of precision names: ``--precision`` (export, bench) and ``--dtype``
(everything that runs a model) both read it."""

from __future__ import annotations

import torch

from .errors import CleanDIFTError

#: canonical precision names, in the order the CLI lists them
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: every accepted spelling → dtype (canonical names first)
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "float32": torch.float32, "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16,
}  # fmt: skip
#: dtype → canonical name
DTYPE_NAMES: dict[torch.dtype, str] = {DTYPES[name]: name for name in PRECISIONS}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp16"`` (or a long form, or a dtype) → ``torch.float16``; CleanDIFTError otherwise."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower()
    if key not in DTYPES:
        raise CleanDIFTError(f"unknown dtype '{name}' (use {', '.join(PRECISIONS)})")
    return DTYPES[key]
