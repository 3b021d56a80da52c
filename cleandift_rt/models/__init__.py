"""Torch side of the runtime: presets, configs, loading, FeatureNet and the DIFT baseline.

Names are imported on first use, so light modules (``presets``, ``taps``, ``hub``) can be read
by the CLI's argument checks without importing torch and diffusers (several seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "read_student_file": "checkpoint",
    "save_student_checkpoint": "checkpoint",
    "save_unet_file": "checkpoint",
    "DIFT_ENSEMBLE": "dift",
    "DIFT_TIMESTEP": "dift",
    "DIFTExtractor": "dift",
    "INPUT_MULTIPLE": "featurenet",
    "FeatureNet": "featurenet",
    "LatentEncoder": "featurenet",
    "build_feature_net": "featurenet",
    "LoadedModel": "loading",
    "load_model": "loading",
    "PRESETS": "presets",
    "Preset": "presets",
    "TapLayout": "taps",
    "TapSpec": "taps",
    "TruncatedUNet": "unet",
}
__all__ = [
    "DIFT_ENSEMBLE",
    "DIFT_TIMESTEP",
    "INPUT_MULTIPLE",
    "PRESETS",
    "DIFTExtractor",
    "FeatureNet",
    "LatentEncoder",
    "LoadedModel",
    "Preset",
    "TapLayout",
    "TapSpec",
    "TruncatedUNet",
    "build_feature_net",
    "load_model",
    "read_student_file",
    "save_student_checkpoint",
    "save_unet_file",
]

if TYPE_CHECKING:
    from .checkpoint import read_student_file, save_student_checkpoint, save_unet_file
    from .dift import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFTExtractor
    from .featurenet import INPUT_MULTIPLE, FeatureNet, LatentEncoder, build_feature_net
    from .loading import LoadedModel, load_model
    from .presets import PRESETS, Preset
    from .taps import TapLayout, TapSpec
    from .unet import TruncatedUNet


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
