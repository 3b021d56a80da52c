"""Export a FeatureNet (uint8 NHWC images → named taps) to ONNX, TensorRT engines or
AOTInductor packages, with a metadata sidecar and validation against PyTorch fp32.

Imports ``cleandift_rt``; the runtime never imports this package (the CLI loads it lazily).
"""

from .build import ExportOptions, export_model
from .errors import ExportError

__all__ = ["ExportError", "ExportOptions", "export_model"]
