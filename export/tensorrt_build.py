"""FeatureNet → TensorRT engine, built with the TensorRT Python API from the net's ONNX graph.

The ONNX graph is written to a private folder inside the export's staging directory, parsed,
built and deleted; only the ``.engine`` file is returned (the sidecar is written by the caller).

Precision depends on the TensorRT release (``uses_strongly_typed``):

- TensorRT >= 10.12 (and 11, which is always strongly typed): a strongly typed network from the
  reduced-precision ONNX graph. ``apply_precision_policy`` has already cast the net, so the
  graph's tensors carry fp16/bf16 types with explicit fp32 islands (attention scores and
  softmax, normalisation statistics); TensorRT follows those types exactly and no precision
  builder flag is set (10.12 deprecates them, 11 removes them).
- TensorRT < 10.12: a weakly typed network from an **fp32** ONNX graph (an fp32 copy of the
  net) plus the FP16 / BF16 builder flag. In a weakly typed network the ONNX tensor types are
  not precision instructions: TensorRT picks each layer's precision itself, so an fp16 graph
  would neither guarantee the fp32 islands nor let TensorRT keep a layer in fp32 at full
  weight precision. Instead the islands are pinned on the parsed network: normalisation and
  softmax layers, and the layers computing the attention scores that feed a softmax, get fp32
  precision and fp32 outputs (``PREFER_PRECISION_CONSTRAINTS``), and the network outputs are
  typed fp16/bf16 so the engine returns what the sidecar's precision says.

fp32 artifacts clear TF32 so that they stay fp32. The optimisation profile covers the batch
range (min = smallest, opt = max = largest batch). ``tensorrt`` is imported lazily.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from cleandift_rt.artifacts import INPUT_NAME, ArtifactMetadata
from cleandift_rt.backends.tensorrt_runner import (
    gpu_identity,
    import_tensorrt,
    parse_version,
    tensorrt_logger,
)
from cleandift_rt.errors import one_line
from cleandift_rt.files import write_bytes
from cleandift_rt.models import FeatureNet

from .errors import ExportError

log = logging.getLogger("cleandift_rt.tensorrt")

STRONGLY_TYPED_SINCE = (10, 12)  # FP16/BF16 builder flags deprecated from here on
OPT_LEVELS = range(0, 6)  # builder_optimization_level: 0 (fast build) .. 5 (slowest, best)
# layers walked from a softmax back to the matmul computing attention scores
_SCORE_PATH = ("ELEMENTWISE", "SCALE", "SHUFFLE", "CAST", "UNARY", "IDENTITY")
_SCORE_DEPTH = 4


class TensorRTBuildError(ExportError, RuntimeError):
    """TensorRT could not parse the ONNX graph or build the engine (one line)."""


def uses_strongly_typed(version: str) -> bool:
    """Whether TensorRT ``version`` builds fp16/bf16 engines from a strongly typed network
    (>= 10.12) rather than from builder precision flags."""
    return parse_version(version)[:2] >= STRONGLY_TYPED_SINCE


def cast_uint8_input(model: Any, input_name: str = INPUT_NAME) -> bool:
    """Make a uint8 graph input TensorRT-legal, in place on an ``onnx.ModelProto``.

    TensorRT only converts uint8 network inputs to fp32/fp16 and runs no other layer on them,
    but the FeatureNet graph transposes the uint8 NHWC images before casting them (and a bf16
    net casts uint8 straight to bf16). This inserts ``Cast(uint8 → float32)`` (exact for
    0..255) right after the input and feeds it to the input's consumers, which must all be
    Transpose or Cast nodes. Returns whether the graph changed (False when the input only
    feeds casts to fp32/fp16 already, or has consumers this cannot handle).
    """
    from onnx import TensorProto, helper

    graph = model.graph
    source = next((i for i in graph.input if i.name == input_name), None)
    if source is None or source.type.tensor_type.elem_type != TensorProto.UINT8:
        return False
    consumers = [n for n in graph.node if input_name in n.input]
    if not consumers or any(n.op_type not in ("Transpose", "Cast") for n in consumers):
        return False
    legal = (TensorProto.FLOAT, TensorProto.FLOAT16)
    if all(n.op_type == "Cast" and _cast_target(n) in legal for n in consumers):
        return False  # already converted straight to fp32/fp16
    as_float = f"{input_name}_float32"
    for node in consumers:
        for k, name in enumerate(node.input):
            if name == input_name:
                node.input[k] = as_float
    # a transposed copy of the input is now float32: fix recorded intermediate types
    moved = {o for n in consumers if n.op_type == "Transpose" for o in n.output}
    for info in graph.value_info:
        if info.name in moved:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    cast = helper.make_node(
        "Cast", [input_name], [as_float], name=f"{input_name}_to_float32", to=TensorProto.FLOAT
    )
    graph.node.insert(0, cast)  # depends on the graph input only: stays topologically sorted
    return True


def _cast_target(node: Any) -> int | None:
    """The ``to`` attribute of an ONNX Cast node."""
    return next((a.i for a in node.attribute if a.name == "to"), None)


def write_engine(net: FeatureNet, path: Path, options: Any, meta: ArtifactMetadata) -> list[Path]:
    """Build the TensorRT engine of ``net`` at ``path``; fill ``meta`` (producer, target,
    build). ``options``: ExportOptions (height, width, batch_range, precision, opset,
    workspace_gib, opt_level, timing_cache). Returns [path]."""
    from .onnx_export import write_onnx

    trt = import_tensorrt()
    path = Path(path)
    if options.opt_level not in OPT_LEVELS:
        raise ExportError(f"TensorRT optimisation level must be 0..5, got {options.opt_level}")
    if options.workspace_gib is not None and options.workspace_gib <= 0:
        raise ExportError(f"workspace must be > 0 GiB, got {options.workspace_gib}")
    device = next(net.parameters()).device
    if device.type != "cuda":
        raise ExportError("TensorRT engines are built on a CUDA GPU (use --device cuda)")

    strongly_typed = uses_strongly_typed(trt.__version__)
    fp32_graph = not strongly_typed and options.precision != "fp32"
    work = Path(tempfile.mkdtemp(prefix=".tensorrt-onnx-", dir=path.parent))
    try:
        onnx_path = work / f"{path.stem}.onnx"
        source = _fp32_copy(net) if fp32_graph else net
        write_onnx(source, onnx_path, options.height, options.width, options.batch_range,
                   options.opset)  # fmt: skip
        del source
        if fp32_graph:
            torch.cuda.empty_cache()  # the fp32 copy's memory goes back to the builder
        _make_tensorrt_legal(onnx_path)
        with torch.cuda.device(device):
            engine, info = build_engine(trt, onnx_path, options, strongly_typed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(path, "wb") as f:
        f.write(engine)

    gpu, capability = gpu_identity(device)
    meta.producer["tensorrt"] = trt.__version__
    meta.target = {"gpu": gpu, "compute_capability": capability}
    meta.build.update(
        {
            "workspace_gib": options.workspace_gib,
            "opt_level": options.opt_level,
            "strongly_typed": strongly_typed,
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            **info,
        }
    )
    return [path]


def build_engine(
    trt: Any, onnx_path: Path, options: Any, strongly_typed: bool
) -> tuple[bytes | Any, dict[str, Any]]:
    """Parse ``onnx_path`` and build a serialised engine; returns it (a buffer) and extra
    build facts for the sidecar (precision flag, pinned fp32 layers)."""
    logger = tensorrt_logger()
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)  # owns the weights: alive until the build ends
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        first = _parser_error(parser.get_error(0)) if parser.num_errors else logger.last_error()
        raise TensorRTBuildError(
            f"TensorRT {trt.__version__} cannot parse the ONNX graph "
            f"({parser.num_errors} error(s)); first: {first}"
        )

    config = builder.create_builder_config()
    if options.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                     int(options.workspace_gib * 2**30))  # fmt: skip
    config.builder_optimization_level = int(options.opt_level)
    lo, hi = options.batch_range
    if lo != hi:  # dynamic batch axis: one profile over the range, tuned for the largest
        profile = builder.create_optimization_profile()
        dims = [(b, options.height, options.width, 3) for b in (lo, hi, hi)]
        profile.set_shape(INPUT_NAME, *dims)
        config.add_optimization_profile(profile)

    info: dict[str, Any] = {"precision_flag": None}
    if options.precision == "fp32":
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default
    elif not strongly_typed:
        half = options.precision == "fp16"
        config.set_flag(trt.BuilderFlag.FP16 if half else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        info["precision_flag"] = "FP16" if half else "BF16"
        info["fp32_layers"] = pin_fp32_islands(trt, network)
        out_type = trt.float16 if half else trt.bfloat16
        for i in range(network.num_outputs):  # I/O types may be set in weakly typed networks
            network.get_output(i).dtype = out_type

    cache = _attach_timing_cache(config, options.timing_cache)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise TensorRTBuildError(f"TensorRT engine build failed: {logger.last_error()}")
    if cache is not None:
        _save_timing_cache(cache, Path(options.timing_cache))
    return engine, info


def pin_fp32_islands(trt: Any, network: Any) -> int:
    """Weakly typed networks: run normalisation and softmax layers, and the attention-score
    layers feeding each softmax (back to and including its matmul), in fp32 with fp32
    outputs. Returns the number of layers pinned."""
    kinds = trt.LayerType
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {}
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    path_kinds = tuple(getattr(kinds, k) for k in _SCORE_PATH if hasattr(kinds, k))

    pinned: dict[int, Any] = {}
    for layer in layers:
        if layer.type in (kinds.NORMALIZATION, kinds.SOFTMAX):
            pinned[id(layer)] = layer
        if layer.type != kinds.SOFTMAX:
            continue
        frontier, depth = [layer], 0
        while frontier and depth < _SCORE_DEPTH:  # walk back towards the q·k matmul
            upstream = []
            for node in frontier:
                for k in range(node.num_inputs):
                    tensor = node.get_input(k)
                    up = producer.get(tensor.name) if tensor is not None else None
                    if up is None:
                        continue
                    if up.type == kinds.MATRIX_MULTIPLY:
                        pinned[id(up)] = up
                    elif up.type in path_kinds:
                        pinned[id(up)] = up
                        upstream.append(up)
            frontier, depth = upstream, depth + 1
    for layer in pinned.values():
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return len(pinned)


def _fp32_copy(net: FeatureNet) -> FeatureNet:
    """An fp32 copy of a reduced-precision net (exact: fp16/bf16 values widen losslessly);
    its precision-policy modules are no-ops in fp32."""
    return copy.deepcopy(net).float().eval()


def _make_tensorrt_legal(onnx_path: Path) -> None:
    """Apply ``cast_uint8_input`` to the ONNX file; weights stay where they are (external
    data files are referenced, not loaded)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if cast_uint8_input(model):
        onnx.save_model(model, str(onnx_path))


def _parser_error(error: Any) -> str:
    """One line from an ONNX parser error: node (name, operator) and description."""
    where = []
    for attr in ("node_name", "node_operator"):  # TensorRT >= 10; node() index before
        value = getattr(error, attr, None)
        text = value() if callable(value) else ""
        if text:
            where.append(str(text))
    if not where and error.node() >= 0:
        where.append(f"#{error.node()}")
    desc = one_line(RuntimeError(error.desc()))
    return f"node {' '.join(where)}: {desc}" if where else desc


def _attach_timing_cache(config: Any, file: str | Path | None) -> Any:
    """Attach the timing cache stored in ``file`` (a fresh one when it is missing or from
    another TensorRT/GPU) to ``config``; None when no file is given."""
    if not file:
        return None
    file = Path(file)
    blob = file.read_bytes() if file.is_file() else b""
    cache = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception as exc:  # unreadable: start afresh
            log.warning("ignoring timing cache %s: %s", file, one_line(exc))
        if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s is from another GPU or TensorRT: starting afresh", file)
            cache = None
    if cache is None:
        cache = config.create_timing_cache(b"")  # size 0: a new, empty cache
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(cache: Any, file: Path) -> None:
    """Write the (updated) timing cache atomically."""
    write_bytes(file, bytes(cache.serialize()))
