"""TensorRT runner of an exported FeatureNet engine (``.engine`` + sidecar).

Engines are tied to the TensorRT version and the GPU they were built for: the runner checks the
sidecar against the running TensorRT and GPU before it deserialises anything, and refuses a
mismatch with one line naming both sides and the command that rebuilds the engine.

Execution (TensorRT 10 name-based API): one ``IExecutionContext`` per CUDA stream (the caller's
current torch stream), created lazily under a lock, so concurrent callers on different streams
never share a context; input and outputs live in device tensors preallocated per (stream, batch
size) and bound with ``set_tensor_address``; ``execute_async_v3`` enqueues on that stream.
Nothing here synchronises the host: results are ordered on the caller's stream like any torch op.

``tensorrt`` is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import ArtifactError, ArtifactMetadata
from ..errors import CleanDIFTError, InputSizeError, one_line
from .base import check_artifact_batch, describe_artifact

log = logging.getLogger("cleandift_rt.tensorrt")


# ---------------------------------------------------------------- pure helpers (no TensorRT)


def parse_version(version: str) -> tuple[int, ...]:
    """Leading numeric components of a version: '10.12.0.36' → (10, 12, 0, 36),
    '10.13.0rc1' → (10, 13, 0); stops at the first component without leading digits."""
    parts: list[int] = []
    for piece in str(version).strip().split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):  # '0rc1': the number ends here
            break
    return tuple(parts)


def _capability(value: Any) -> str:
    """'9.0', (9, 0) or '90' → '9.0'; anything else → its string form."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip()
    if text.isdigit() and len(text) >= 2:
        return f"{text[:-1]}.{text[-1]}"
    return text


def _sm(capability: str) -> str:
    """'9.0' → 'sm_90'."""
    return "sm_" + capability.replace(".", "") if capability else "sm_?"


def mismatch_reason(
    meta: ArtifactMetadata, trt_version: str, gpu_name: str, capability: Any
) -> str | None:
    """Why the engine described by ``meta`` cannot run under TensorRT ``trt_version`` on GPU
    ``gpu_name`` with compute ``capability`` ('9.0' or (9, 0)), or None when it can.

    Engines are only compatible with the TensorRT release that built them (major.minor.patch)
    and the GPU they were tuned on; both the GPU name and its compute capability must match.
    The reason is one line ending with the rebuild command.
    """
    built_trt = str(meta.producer.get("tensorrt") or "")
    built_gpu = str(meta.target.get("gpu") or "")
    built_cc = _capability(meta.target.get("compute_capability") or "")
    here_cc = _capability(capability)
    same_trt = bool(built_trt) and parse_version(built_trt)[:3] == parse_version(trt_version)[:3]
    same_gpu = built_gpu.strip().lower() == str(gpu_name).strip().lower() and built_cc == here_cc
    if same_trt and same_gpu:
        return None
    rebuild = meta.rebuild or "re-export the engine on this machine"
    return (
        f"engine built with TensorRT {built_trt or 'unknown'} for GPU {built_gpu or 'unknown'} "
        f"({_sm(built_cc)}), this is TensorRT {trt_version} on {gpu_name} ({_sm(here_cc)}); "
        f"rebuild: {rebuild}"
    )


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(name, compute capability 'major.minor') of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


# ---------------------------------------------------------------- TensorRT plumbing


def import_tensorrt():
    """The ``tensorrt`` module, or CleanDIFTError with the install hint."""
    try:
        import tensorrt
    except ImportError:
        raise CleanDIFTError(
            "the TensorRT backend needs the tensorrt package and a CUDA GPU: "
            "pip install 'cleandift-rt[trt]'"
        ) from None
    return tensorrt


_LOGGER = None
_LOGGER_LOCK = threading.Lock()


def tensorrt_logger():
    """The process-wide TensorRT logger (TensorRT wants one logger for all builders and
    runtimes): warnings and errors go to Python logging; the last errors are kept so failures
    can be reported in one line (``last_error()``)."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            trt = import_tensorrt()
            severity = trt.ILogger.Severity
            errors = (severity.INTERNAL_ERROR, severity.ERROR)

            class _Logger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)  # required by the Python binding
                    self._errors: collections.deque[str] = collections.deque(maxlen=16)
                    self._lock = threading.Lock()

                def log(self, level, msg):  # called from TensorRT's threads; keep it cheap
                    if level in errors:
                        with self._lock:
                            self._errors.append(str(msg))
                        log.error("TensorRT: %s", msg)
                    elif level == severity.WARNING:
                        log.warning("TensorRT: %s", msg)

                def last_error(self, default: str = "see the TensorRT log") -> str:
                    with self._lock:
                        return one_line(RuntimeError(self._errors[-1])) if self._errors else default

            _LOGGER = _Logger()
    return _LOGGER


def torch_dtype(trt, dtype) -> torch.dtype:
    """torch dtype of a TensorRT DataType (TypeError for types torch cannot hold)."""
    table = {}
    for trt_name, torch_type in (
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("int8", torch.int8),
        ("uint8", torch.uint8),
        ("int32", torch.int32),
        ("int64", torch.int64),
        ("bool", torch.bool),
    ):
        if hasattr(trt, trt_name):  # bfloat16 / int64 only exist in newer releases
            table[getattr(trt, trt_name)] = torch_type
    if dtype not in table:
        raise TypeError(f"TensorRT type {dtype} has no torch equivalent")
    return table[dtype]


# ---------------------------------------------------------------- runner


@dataclass
class _Buffers:
    """Preallocated device tensors of one (stream, batch size), and its CUDA graph."""

    input: torch.Tensor
    outputs: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None = None
    graph_failed: bool = False


@dataclass
class _Slot:
    """An execution context and the buffers it runs on; its lock serialises its users."""

    context: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    buffers: dict[int, _Buffers] = field(default_factory=dict)


class TensorRTRunner:
    """Runs a TensorRT engine artifact on a CUDA device; thread-safe.

    Each execution context holds its own activation memory (the engine's device memory
    size), so every stream that calls the runner costs one such allocation, kept for the
    runner's lifetime: call it from a bounded set of streams (e.g. a stream pool).

    Args:
        path: the ``.engine`` file (its sidecar already read into ``meta``).
        meta: the sidecar metadata.
        device: the CUDA device the engine runs on.
        cuda_graph: capture each (stream, batch size) in a CUDA graph after one warm-up run
            and replay it afterwards (removes per-kernel launch overhead; worth it for small
            batches). Each captured graph gets its own execution context, since a graph fixes
            shapes, tensor addresses and context. Engines that cannot be captured fall back
            to plain execution with a warning. Off by default.
        reuse_outputs: return the preallocated output tensors themselves instead of clones.
            Faster, but they are overwritten by the next call with the same batch size on
            the same stream: copy them first if you keep them. Off by default.
    """

    name = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        meta: ArtifactMetadata,
        device: torch.device,
        *,
        cuda_graph: bool = False,
        reuse_outputs: bool = False,
    ):
        device = torch.device(device)
        if device.type != "cuda":
            raise CleanDIFTError(f"TensorRT engines run on a CUDA GPU, not on '{device}'")
        trt = import_tensorrt()
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gpu_name, capability = gpu_identity(device)
        reason = mismatch_reason(meta, trt.__version__, gpu_name, capability)
        if reason:
            raise ArtifactError(reason)

        self.trt = trt
        describe_artifact(self, meta, device)
        self.path = Path(path)
        self.input_name = meta.input_name
        self.cuda_graph = cuda_graph
        self.reuse_outputs = reuse_outputs
        self.tensorrt_version = trt.__version__

        with torch.cuda.device(device):
            self.runtime = trt.Runtime(tensorrt_logger())
            self.engine = self._deserialize()
        self.output_dtypes = self._check_io()
        self.dtype = self.output_dtypes[self.taps[0]]
        self._slots: dict[tuple[int, int | None], _Slot] = {}
        self._lock = threading.Lock()  # guards _slots
        self._capture_lock = threading.Lock()  # one CUDA graph capture at a time

    # -- loading

    def _fail(self, what: str) -> ArtifactError:
        rebuild = f"; rebuild: {self.meta.rebuild}" if self.meta.rebuild else ""
        return ArtifactError(f"TensorRT engine '{self.path.name}': {what}{rebuild}")

    def _deserialize(self):
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise self._fail(f"cannot read it ({one_line(exc)})") from None
        try:
            engine = self.runtime.deserialize_cuda_engine(data) if data else None
        except Exception as exc:  # some releases raise instead of returning None
            raise self._fail(f"cannot deserialise it ({one_line(exc)})") from None
        if engine is None:
            reason = tensorrt_logger().last_error("corrupt or truncated file")
            raise self._fail(f"cannot deserialise it ({reason})")
        return engine

    def _check_io(self) -> dict[str, torch.dtype]:
        """Check the engine's I/O tensors against the sidecar; output torch dtypes."""
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [self.input_name]:
            raise self._fail(f"inputs {inputs} but the sidecar says ['{self.input_name}']")
        if engine.get_tensor_dtype(self.input_name) != trt.uint8:
            raise self._fail(f"input type {engine.get_tensor_dtype(self.input_name)}, not uint8")
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if len(shape) != 4 or shape[1:] != (self.meta.height, self.meta.width, 3):
            raise self._fail(f"input shape {shape}, sidecar says (B, {self.meta.height}, "
                             f"{self.meta.width}, 3)")  # fmt: skip
        if shape[0] == -1:  # dynamic batch: the profile must cover the sidecar's range
            lo, _, hi = (d[0] for d in engine.get_tensor_profile_shape(self.input_name, 0))
            if not lo <= self.meta.batch[0] <= self.meta.batch[1] <= hi:
                raise self._fail(f"batch profile {lo}..{hi}, sidecar says "
                                 f"{self.meta.batch[0]}..{self.meta.batch[1]}")  # fmt: skip
        elif not shape[0] == self.meta.batch[0] == self.meta.batch[1]:
            raise self._fail(f"fixed batch {shape[0]}, sidecar says {self.meta.batch}")
        missing = [t for t in self.taps if t not in outputs]
        if missing:
            raise self._fail(f"no output for tap(s) {', '.join(missing)}")
        try:
            return {t: torch_dtype(trt, engine.get_tensor_dtype(t)) for t in outputs}
        except TypeError as exc:
            raise self._fail(str(exc)) from None

    # -- execution

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) (host or device) → {tap: (B, C, H/stride, W/stride)} on the
        device, ordered on the caller's current CUDA stream."""
        check_artifact_batch(images, self.meta)
        batch = len(images)
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            slot = self._slot(stream, batch)
            with slot.lock:
                buffers = slot.buffers.get(batch) or self._allocate(slot, batch)
                buffers.input.copy_(torch.as_tensor(images), non_blocking=True)
                self._run(slot, buffers, stream)
                outs = buffers.outputs
                if not self.reuse_outputs:  # clone on this stream, before the next run
                    outs = {t: o.clone() for t, o in outs.items()}
        return {t: outs[t] for t in self.taps}

    def _slot(self, stream: torch.cuda.Stream, batch: int) -> _Slot:
        """The context of this stream (and batch size, when graphs are captured)."""
        key = (stream.cuda_stream, batch if self.cuda_graph else None)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                context = self.engine.create_execution_context()
                if context is None:
                    raise RuntimeError(
                        "TensorRT could not create an execution context: "
                        + tensorrt_logger().last_error("out of GPU memory?")
                    )
                slot = self._slots[key] = _Slot(context)
        return slot

    def _allocate(self, slot: _Slot, batch: int) -> _Buffers:
        """Device tensors for ``batch`` images, shapes from the context (checked vs sidecar)."""
        ctx = slot.context
        shape = (batch, self.meta.height, self.meta.width, 3)
        if not ctx.set_input_shape(self.input_name, shape):
            raise InputSizeError(f"the engine rejects input shape {shape}; rebuild: "
                                 f"{self.meta.rebuild}")  # fmt: skip
        expected = self.meta.output_shape(batch)
        outputs = {}
        for name, dtype in self.output_dtypes.items():
            out_shape = tuple(ctx.get_tensor_shape(name))
            if name in expected and list(out_shape) != expected[name]:
                raise self._fail(f"output {name} is {out_shape}, sidecar says {expected[name]}")
            outputs[name] = torch.empty(out_shape, dtype=dtype, device=self.device)
        buffers = _Buffers(torch.empty(shape, dtype=torch.uint8, device=self.device), outputs)
        slot.buffers[batch] = buffers
        return buffers

    def _enqueue(self, ctx, buffers: _Buffers, stream_handle: int) -> None:
        """Bind shapes and addresses (cheap; the context may have run another batch size
        since) and enqueue on ``stream_handle``."""
        if not ctx.set_input_shape(self.input_name, tuple(buffers.input.shape)):
            raise RuntimeError(f"TensorRT rejected input shape {tuple(buffers.input.shape)}")
        ctx.set_tensor_address(self.input_name, buffers.input.data_ptr())
        for name, out in buffers.outputs.items():
            ctx.set_tensor_address(name, out.data_ptr())
        if not ctx.execute_async_v3(stream_handle):
            raise RuntimeError("TensorRT execution failed: " + tensorrt_logger().last_error())

    def _run(self, slot: _Slot, buffers: _Buffers, stream: torch.cuda.Stream) -> None:
        if not self.cuda_graph or buffers.graph_failed:
            self._enqueue(slot.context, buffers, stream.cuda_stream)
        elif buffers.graph is not None:
            buffers.graph.replay()  # on the current (caller's) stream
        else:
            # warm-up run (TensorRT does deferred shape-dependent setup on the first enqueue
            # after a shape change); its outputs are this call's results, then capture
            self._enqueue(slot.context, buffers, stream.cuda_stream)
            self._capture(slot, buffers, stream)

    def _capture(self, slot: _Slot, buffers: _Buffers, stream: torch.cuda.Stream) -> None:
        """Capture one enqueue of ``slot``'s context into a CUDA graph on a side stream."""
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(self.device)
        try:
            with self._capture_lock:
                stream.synchronize()  # warm-up finished before capture begins
                with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                    self._enqueue(slot.context, buffers, side.cuda_stream)
        except Exception as exc:  # engine not capturable: run without graphs
            buffers.graph_failed = True
            log.warning("CUDA graph capture of the TensorRT engine failed, running without: %s",
                        one_line(exc))  # fmt: skip
            return
        buffers.graph = graph
