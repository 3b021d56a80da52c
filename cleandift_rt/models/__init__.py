"""Torch side of the runtime: presets, configs, loading, FeatureNet and the DIFT baseline."""

from .checkpoint import read_student_file, save_student_checkpoint, save_unet_file
from .dift import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFTExtractor
from .featurenet import INPUT_MULTIPLE, FeatureNet, LatentEncoder, build_feature_net
from .loading import LoadedModel, load_model
from .presets import PRESETS, Preset
from .taps import TapLayout, TapSpec
from .unet import TruncatedUNet

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
