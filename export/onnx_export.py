"""FeatureNet → ONNX: one graph from uint8 NHWC images to named tap outputs.

The graph is correct as the exporter writes it: every output declares its own shape
(B, C, H/stride, W/stride), static but for a dynamic batch axis named ``batch``. Constant
folding with polygraphy (the `trt` extra) is an optional clean-up on top, limited to folded
tensors of at most ``FOLD_SIZE_LIMIT`` bytes so that it never bloats the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cleandift_rt.artifacts import INPUT_NAME
from cleandift_rt.models import FeatureNet

MIN_OPSET = 17
PROTOBUF_LIMIT = 2**31  # bytes: larger graphs keep their weights as ONNX external data
BATCH_AXIS = "batch"  # the symbolic name of the dynamic batch axis, inputs and outputs alike
FOLD_SIZE_LIMIT = 2**20  # bytes: polygraphy folds no tensor larger than this (1 MiB)


def output_shapes(
    net: FeatureNet, height: int, width: int, batch: tuple[int, int]
) -> dict[str, list[int | str]]:
    """{output: [B, C, height/stride, width/stride]} with B = ``BATCH_AXIS`` for a dynamic batch
    (batch[0] != batch[1]), else the fixed batch size."""
    b: int | str = BATCH_AXIS if batch[0] != batch[1] else batch[0]
    return {o.name: [b, o.channels, height // o.stride, width // o.stride] for o in net.outputs}


def declare_output_shapes(model, shapes: dict[str, list[int | str]]) -> None:
    """Overwrite the graph outputs' declared shapes in place (ints static, strings symbolic).
    The TorchScript exporter's own guesses are wrong for several taps with a dynamic batch
    (every tap's H named like the batch, one W symbol shared by all), and onnxruntime plans
    its buffers from them."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[output.name]:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def write_onnx(
    net: FeatureNet,
    path: Path,
    height: int,
    width: int,
    batch: tuple[int, int],
    opset: int = MIN_OPSET,
) -> list[Path]:
    """Export ``net`` for (B, height, width, 3) uint8 inputs; a dynamic batch axis when
    batch[0] != batch[1]. Declares each output's shape, folds constants (when polygraphy is
    installed), checks the graph; returns the files written.

    ``path`` must be in a directory of its own (the export's staging directory): files the
    exporter leaves there besides the returned ones are removed.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}")
    device = next(net.parameters()).device
    example = torch.zeros(batch[0], height, width, 3, dtype=torch.uint8, device=device)
    dynamic = batch[0] != batch[1]
    axes = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *net.taps)} if dynamic else None
    big = sum(p.numel() * p.element_size() for p in net.state_dict().values()) > PROTOBUF_LIMIT
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(net.taps),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path), load_external_data=True)
    shapes = output_shapes(net, height, width, batch)
    declare_output_shapes(model, shapes)
    model = fold_constants(model)
    declare_output_shapes(model, shapes)  # folding re-infers shapes; the declaration stands
    files = [path]
    if big:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)  # fmt: skip
        files.append(data)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=False)
    for stray in path.parent.iterdir():  # the exporter's own external-data shards, if any
        if stray not in files:
            stray.unlink()
    return files


def folding_available() -> bool:
    """True when polygraphy and onnx-graphsurgeon (which its folding needs) both import."""
    try:
        import onnx_graphsurgeon  # noqa: F401
        from polygraphy.backend.onnx import fold_constants  # noqa: F401
    except ImportError:
        return False
    return True


def fold_constants(model, size_limit: int = FOLD_SIZE_LIMIT):
    """Constant folding and graph clean-up with polygraphy when it and onnx-graphsurgeon are
    installed (the `trt` extra); otherwise the exporter's own folding stands. No folded tensor
    exceeds ``size_limit`` bytes: larger results (zero-filled scratch buffers, broadcasts) are
    computed at run time instead of stored in the file."""
    if not folding_available():
        return model
    import onnxruntime
    from polygraphy.backend.onnx import fold_constants as polygraphy_fold
    from polygraphy.logger import G_LOGGER

    # quiet: polygraphy logs progress on stdout (it would break `export --json`) and the
    # onnxruntime sessions it evaluates constants with warn on stderr for every node
    onnxruntime.set_default_logger_severity(3)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            return polygraphy_fold(model, num_passes=3, size_threshold=size_limit)
    finally:
        onnxruntime.set_default_logger_severity(2)  # onnxruntime's default: warnings


def write_artifact(net: FeatureNet, path: Path, options, meta) -> list[Path]:
    """The registry's writer of the ``onnx`` format: ``write_onnx`` with ExportOptions."""
    return write_onnx(net, path, options.height, options.width, options.batch_range, options.opset)
