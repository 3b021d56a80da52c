"""onnxruntime runner of an exported FeatureNet (CPU, CUDA or TensorRT execution providers).

On CUDA the input and outputs stay on the device through IO binding (outputs are written into
torch tensors that the caller receives); on the CPU outputs are wrapped without a copy.
"""

from __future__ import annotations

import numpy as np
import torch

from ..artifacts import ArtifactError, ArtifactMetadata
from ..errors import CleanDIFTError, one_line
from .base import check_artifact_batch, describe_artifact

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CleanDIFTError(
            "the onnxruntime backend needs onnxruntime: pip install 'cleandift-rt[onnx]' "
            "(or '[gpu]' for CUDA)"
        ) from None
    return onnxruntime


class OnnxRuntimeRunner:
    """Runs an ONNX FeatureNet artifact; thread-safe (one session, per-call IO bindings)."""

    name = "onnxruntime"

    def __init__(
        self, path, meta: ArtifactMetadata, device: torch.device, provider: str | None = None
    ):
        ort = import_onnxruntime()
        provider = provider or ("cuda" if device.type == "cuda" else "cpu")
        available = set(ort.get_available_providers())
        wanted = PROVIDERS[provider]
        if wanted[0] not in available:
            raise CleanDIFTError(
                f"onnxruntime here has no {wanted[0]} (available: {', '.join(sorted(available))})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: fp16 constant-folding notes are noise
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # corrupt / truncated graph, missing external data
            raise ArtifactError(f"cannot load ONNX artifact '{path}': {one_line(exc)}") from None
        describe_artifact(self, meta, device)
        self.provider = provider

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        check_artifact_batch(images, self.meta)
        if self.device.type == "cuda":
            return self._run_bound(torch.as_tensor(images))
        feed = {self.meta.input_name: np.ascontiguousarray(torch.as_tensor(images).numpy())}
        outs = self.session.run(list(self.taps), feed)
        return {t: torch.from_numpy(o) for t, o in zip(self.taps, outs)}

    def _run_bound(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """IO binding: uint8 input and preallocated outputs as device tensors."""
        x = images.to(self.device, non_blocking=True).contiguous()
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.meta.input_name, "cuda", index, np.uint8, tuple(x.shape),
                           x.data_ptr())  # fmt: skip
        shapes = self.meta.output_shape(len(x))
        outs = {t: torch.empty(shapes[t], dtype=self.dtype, device=self.device) for t in self.taps}
        np_dtype = {torch.float32: np.float32, torch.float16: np.float16}[self.dtype]
        for tap, out in outs.items():
            binding.bind_output(tap, "cuda", index, np_dtype, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # input copy done before ORT runs
        self.session.run_with_iobinding(binding)
        return outs
