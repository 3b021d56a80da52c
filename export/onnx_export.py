"""FeatureNet → ONNX: one graph from uint8 NHWC images to named tap outputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from cleandift_rt.artifacts import INPUT_NAME
from cleandift_rt.models import FeatureNet

MIN_OPSET = 17
PROTOBUF_LIMIT = 2**31  # bytes: larger graphs keep their weights as ONNX external data


def write_onnx(
    net: FeatureNet,
    path: Path,
    height: int,
    width: int,
    batch: tuple[int, int],
    opset: int = MIN_OPSET,
) -> list[Path]:
    """Export ``net`` for (B, height, width, 3) uint8 inputs; a dynamic batch axis when
    batch[0] != batch[1]. Folds constants, checks the graph; returns the files written.

    ``path`` must be in a directory of its own (the export's staging directory): files the
    exporter leaves there besides the returned ones are removed.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}")
    device = next(net.parameters()).device
    example = torch.zeros(batch[0], height, width, 3, dtype=torch.uint8, device=device)
    dynamic = batch[0] != batch[1]
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *net.taps)} if dynamic else None
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
    model = fold_constants(model)
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


def fold_constants(model):
    """Constant folding and graph clean-up with polygraphy when it is installed (the `trt`
    extra); otherwise the exporter's own folding stands."""
    try:
        from polygraphy.backend.onnx import fold_constants as polygraphy_fold
    except ImportError:
        return model
    return polygraphy_fold(model, num_passes=3)


def write_artifact(net: FeatureNet, path: Path, options, meta) -> list[Path]:
    """The registry's writer of the ``onnx`` format: ``write_onnx`` with ExportOptions."""
    return write_onnx(net, path, options.height, options.width, options.batch_range, options.opset)
