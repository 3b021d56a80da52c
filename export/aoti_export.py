"""FeatureNet → AOTInductor package (``.pt2``): one compiled shared library, weights inside.

``torch.export`` captures the FeatureNet graph (uint8 NHWC images → tap tuple) with a dynamic
batch axis, and AOTInductor compiles it ahead of time for the net's device (C++/OpenMP kernels
on the CPU, Triton kernels on CUDA) into a zip package holding ``<hash>.wrapper.so``, with the
weights embedded in the library. No Python is needed to run it.

Loading the package:

* Python: ``cleandift_rt.backends.aoti_runner.AOTIRunner`` (through ``load_runtime``), or
  ``torch._inductor.aoti_load_package(path)``.
* C++ (libtorch): ``#include <torch/csrc/inductor/aoti_package/model_package_loader.h>``;
  ``torch::inductor::AOTIModelPackageLoader loader(path, "model", false, 1, device_index);``
  ``std::vector<at::Tensor> taps = loader.run({images});`` where ``images`` is a contiguous
  uint8 (B, H, W, 3) tensor on the package's device and ``taps`` come in the order of
  ``loader.get_metadata()["cleandift_rt.taps"]``. The C++ side needs libtorch of the same
  version as the exporting torch (the library links against it), built with CUDA for CUDA
  packages; a machine with the exporter's CPU ISA (metadata ``AOTI_CPU_ISA``) or GPU compute
  capability (``AOTI_COMPUTE_CAPABILITY``); a writable temporary directory (the loader
  extracts the library there). The loader checks input shapes only when the environment has
  ``AOTI_RUNTIME_CHECK_INPUTS=1``; otherwise the caller must keep B within
  ``cleandift_rt.batch_min``..``cleandift_rt.batch_max`` (an out-of-range B runs unchecked).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cleandift_rt.errors import one_line
from cleandift_rt.models import FeatureNet

from .errors import ExportError

# Loggers that report compile progress, fallbacks and recompilation hints as warnings.
_NOISY_LOGGERS = (
    "torch._inductor",
    "torch._export",
    "torch.export",
    "torch._dynamo",
    "torch._functorch",
    "torch.fx.experimental.symbolic_shapes",
)


@contextmanager
def quiet_compile() -> Iterator[None]:
    """Silence Python warnings and torch's compile loggers below ERROR; errors still raise."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def package_metadata(
    net: FeatureNet, height: int, width: int, batch: tuple[int, int]
) -> dict[str, str]:
    """String metadata stored in the package (``loader.get_metadata()`` in Python and C++)."""
    return {
        "cleandift_rt.taps": ",".join(net.taps),
        "cleandift_rt.channels": ",".join(str(net.channels[t]) for t in net.taps),
        "cleandift_rt.strides": ",".join(str(net.strides[t]) for t in net.taps),
        "cleandift_rt.input": f"uint8 NHWC {height}x{width}",
        "cleandift_rt.batch_min": str(batch[0]),
        "cleandift_rt.batch_max": str(batch[1]),
        "cleandift_rt.dtype": str(net.context.dtype).removeprefix("torch."),
    }


def export_program(
    net: FeatureNet, height: int, width: int, batch: tuple[int, int]
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net`` for uint8 (B, height, width, 3) inputs on its device.

    A dynamic batch axis in [batch[0], batch[1]] when they differ. torch.export specialises a
    dimension whose example size is 0 or 1, so the example batch is at least 2 (the range
    itself may still start at 1: the graph is traced symbolically over the whole range).
    """
    lo, hi = batch
    device = next(net.parameters()).device
    dynamic = lo != hi
    example_batch = max(lo, 2) if dynamic else lo
    example = torch.zeros(example_batch, height, width, 3, dtype=torch.uint8, device=device)
    shapes = ({0: torch.export.Dim("batch", min=lo, max=hi)},) if dynamic else None
    with torch.no_grad():
        return torch.export.export(net.eval(), (example,), dynamic_shapes=shapes)


def write_aoti(
    net: FeatureNet, path: Path, height: int, width: int, batch: tuple[int, int]
) -> list[Path]:
    """Compile ``net`` into the AOTInductor package ``path`` (``.pt2``) for its device.

    Args:
        net: FeatureNet in its final dtype (precision policy applied), on the target device.
        path: the package to write.
        height, width: the fixed input size (px).
        batch: (min, max) batch size; a dynamic batch axis when they differ.

    Returns:
        [path] (the package is a single file).

    Raises:
        ExportError: torch.export or AOTInductor failed (one line; the cause is chained).
    """
    with quiet_compile():
        try:
            program = export_program(net, height, width, batch)
        except Exception as exc:
            raise ExportError(f"torch.export of the FeatureNet failed: {one_line(exc)}") from exc
        configs = {"aot_inductor.metadata": package_metadata(net, height, width, batch)}
        try:
            written = torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs=configs
            )
        except Exception as exc:
            raise ExportError(f"AOTInductor compile failed: {one_line(exc)}") from exc
    return [Path(written)]


def write_artifact(net: FeatureNet, path: Path, options, meta) -> list[Path]:
    """The registry's writer of the ``aoti`` format: ``write_aoti`` with ExportOptions."""
    return write_aoti(net, path, options.height, options.width, options.batch_range)
