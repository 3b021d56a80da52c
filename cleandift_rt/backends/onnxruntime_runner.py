"""onnxruntime runner of an exported FeatureNet (CPU, CUDA or TensorRT execution providers).

On CUDA the input and outputs stay on the device through IO binding (outputs are written into
torch tensors that the caller receives); on the CPU outputs are wrapped without a copy.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from ..artifacts import ArtifactError, ArtifactMetadata
from ..errors import CleanDIFTError, CleanDIFTWarning, one_line
from .base import check_artifact_batch, describe_artifact

ONNX_TYPES = {"fp32": "tensor(float)", "fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
NHWC = ("batch", "height", "width", "channels")
NCHW = ("batch", "channels", "height", "width")
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _rebuild(meta: ArtifactMetadata) -> str:
    return f"; rebuild: {meta.rebuild}" if meta.rebuild else "; re-export it"


def check_graph(session, meta: ArtifactMetadata, path: str | Path) -> None:
    """ArtifactError (one line, naming the first mismatch and the rebuild command) unless the
    graph's input and outputs have the names, dtypes and shapes its sidecar promises: uint8
    (B, H, W, 3) in, {tap: (B, C, H / stride, W / stride)} of the sidecar's precision out.
    Symbolic dimensions (a dynamic batch) are not compared."""
    name = Path(path).name
    side = f"{name}.json"

    def fail(what: str) -> None:
        raise ArtifactError(f"ONNX artifact '{name}' does not match {side}: {what}{_rebuild(meta)}")

    def compare(label: str, graph_shape, expected: list, axes: tuple[str, ...]) -> None:
        if len(graph_shape) != len(expected):
            fail(f"{label} has {len(graph_shape)} dimensions, the sidecar says {len(expected)}")
        for axis, got, want in zip(axes, graph_shape, expected):
            if isinstance(got, int) and isinstance(want, int) and got != want:
                fail(f"{label} {axis} is {got} in the graph, {want} in the sidecar")

    inputs = session.get_inputs()
    if [i.name for i in inputs] != [meta.input_name]:
        fail(f"graph inputs {[i.name for i in inputs]}, sidecar input '{meta.input_name}'")
    x = inputs[0]
    if x.type != "tensor(uint8)":
        fail(f"input type {x.type}, the sidecar says uint8")
    lo, hi = meta.batch
    batch = lo if lo == hi else None
    compare("input", list(x.shape), [batch, meta.height, meta.width, 3], NHWC)
    outputs = {o.name: o for o in session.get_outputs()}
    taps = [t.name for t in meta.taps]
    if sorted(outputs) != sorted(taps):
        fail(f"graph outputs {', '.join(outputs)}, sidecar taps {', '.join(taps)}")
    want_type = ONNX_TYPES.get(meta.precision)
    for tap, shape in meta.output_shape(batch).items():
        out = outputs[tap]
        if want_type and out.type != want_type:
            fail(f"output {tap} is {out.type}, the sidecar says {meta.precision}")
        compare(f"output {tap}", list(out.shape), shape, NCHW)


def warn_other_producers(meta: ArtifactMetadata, path: str | Path) -> None:
    """A CleanDIFTWarning when the sidecar names producer versions other than the installed
    ones: an ONNX graph is portable, so it still runs, but results may differ."""
    other, here = [], []
    for package, built in sorted(meta.producer.items()):
        try:
            installed = version(package.replace("_", "-"))
        except PackageNotFoundError:
            continue
        if built and str(built) != installed:
            other.append(f"{package} {built}")
            here.append(f"{package} {installed}")
    if other:
        warnings.warn(
            f"'{Path(path).name}' was exported by {', '.join(other)} (here: {', '.join(here)}); "
            f"ONNX graphs are portable, so it runs: re-export if results differ{_rebuild(meta)}",
            CleanDIFTWarning,
            stacklevel=3,
        )


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
        if provider == "cpu" and meta.precision == "bf16":
            raise ArtifactError(
                f"'{Path(path).name}' is a bf16 graph, which onnxruntime's CPU provider cannot "
                f"run (no bf16 kernels for these ops): load it on CUDA or export fp32 / fp16 "
                "for the CPU"
            )
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
        check_graph(self.session, meta, path)
        warn_other_producers(meta, path)
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
