"""CleanDIFT distillation: ``python -m training.distill`` (see training/distill.py).

Imports ``cleandift_rt``; the runtime never imports this package. ``train`` and its config are
loaded lazily so ``python -m training.distill`` does not import the module twice.
"""

from __future__ import annotations

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import distill

        return getattr(distill, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
