"""The one table of precision names: ``--precision`` (export, bench) and ``--dtype``
(everything that runs a model) both read it. Importing it does not import torch (the CLI's
choices come from here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CleanDIFTError

if TYPE_CHECKING:
    import torch

#: canonical precision names, in the order the CLI lists them
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: every accepted spelling → canonical name
SPELLINGS: dict[str, str] = {
    "fp32": "fp32", "float32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}  # fmt: skip
_TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp16"`` (or a long form, or a dtype) → ``torch.float16``; CleanDIFTError otherwise."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower()
    if key not in SPELLINGS:
        raise CleanDIFTError(f"unknown dtype '{name}' (use {', '.join(PRECISIONS)})")
    return getattr(torch, _TORCH_NAMES[SPELLINGS[key]])


def __getattr__(name: str) -> Any:
    """``DTYPES`` (spelling → dtype) and ``DTYPE_NAMES`` (dtype → canonical name), built on
    first use."""
    if name == "DTYPES":
        return {spelling: torch_dtype(spelling) for spelling in SPELLINGS}
    if name == "DTYPE_NAMES":
        return {torch_dtype(p): p for p in PRECISIONS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
