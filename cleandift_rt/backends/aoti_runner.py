"""AOTInductor runner of an exported FeatureNet package (``.pt2``, see export/aoti_export.py).

The package is checked before it is handed to torch's loader (which would load a corrupt
library or crash on a foreign CPU ISA): zip structure and CRCs, the device it was compiled
for, platform, CPU ISA and CUDA compute capability.

Thread safety: a runner may be called from several threads without a lock of ours. Torch's
model container (loaded in its thread-aware mode, not ``run_single_threaded``) hands each call
a model instance from a mutex-guarded pool and makes a caller wait while none is free; and the
Python binding of ``AOTIModelPackageLoader.run`` holds the GIL for the whole run (measured with
torch 2.13), so calls from Python threads are serialised anyway. The cost: while a CPU package
runs, other Python threads of the process do not run (kernel launches only on CUDA).
"""

from __future__ import annotations

import platform
import sys
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..artifacts import ArtifactError, ArtifactMetadata
from ..errors import one_line
from .base import check_artifact_batch, describe_artifact

MODEL_NAME = "model"  # AOTInductor's name of the (only) model in a package


def host_cpu_isas() -> set[str]:
    """Vector ISAs the CPU of this machine runs (AOTInductor names, e.g. {"AVX2", "AVX512"})."""
    from torch._inductor import cpu_vec_isa

    return {str(isa).upper() for isa in cpu_vec_isa.valid_vec_isa_list()}


def cpu_isa_supported(isa: str) -> bool:
    """Whether this CPU runs kernels compiled for ``isa`` ("" / INVALID_VEC_ISA: scalar code)."""
    return isa in ("", "INVALID_VEC_ISA") or isa in host_cpu_isas()


def verify_package(path: Path, device: torch.device, rebuild: str = "") -> dict[str, str]:
    """Check that the package at ``path`` is intact and runs on ``device``; its metadata.

    Raises:
        ArtifactError (one line): not a zip / truncated, a CRC mismatch, no AOTInductor model,
        or compiled for another device type, platform, CPU ISA or GPU architecture.
    """
    fix = f"; rebuild: {rebuild}" if rebuild else ""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # CRC of every member: a flipped byte → wrong weights
        if bad is not None:
            raise ValueError(f"CRC mismatch in '{bad}'")
        meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(
            str(path), MODEL_NAME
        )
    except Exception as exc:  # BadZipFile, truncated member, no model in the package
        raise ArtifactError(f"corrupt AOTInductor package '{path}': {one_line(exc)}{fix}") from None

    built_for = meta.get("AOTI_DEVICE_KEY", "?")
    if built_for != device.type:
        raise ArtifactError(f"'{path.name}' was compiled for {built_for}, not {device.type}{fix}")
    host = {"AOTI_PLATFORM": sys.platform, "AOTI_MACHINE": platform.machine()}
    for key, value in host.items():
        if meta.get(key, value) != value:
            raise ArtifactError(
                f"'{path.name}' was compiled for {meta[key]}, this machine is {value}{fix}"
            )
    isa = meta.get("AOTI_CPU_ISA", "")
    if device.type == "cpu" and not cpu_isa_supported(isa):
        raise ArtifactError(f"'{path.name}' needs a CPU with {isa}, which this one lacks{fix}")
    capability = meta.get("AOTI_COMPUTE_CAPABILITY", "")
    if device.type == "cuda" and capability:
        major, minor = torch.cuda.get_device_capability(device)
        if capability != f"{major}{minor}":
            raise ArtifactError(
                f"'{path.name}' was compiled for compute capability {capability}, "
                f"this GPU is {major}{minor}{fix}"
            )
    return meta


PACKAGE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def check_package_metadata(package: dict[str, str], meta: ArtifactMetadata, name: str) -> None:
    """ArtifactError (one line, with the rebuild command) when the metadata compiled into the
    package (``cleandift_rt.*`` keys, see export/aoti_export.py) disagrees with the sidecar:
    taps, channels, strides, input size, batch range or dtype. Keys a package lacks are not
    compared."""
    expected = {
        "cleandift_rt.taps": ",".join(t.name for t in meta.taps),
        "cleandift_rt.channels": ",".join(str(t.channels) for t in meta.taps),
        "cleandift_rt.strides": ",".join(str(t.stride) for t in meta.taps),
        "cleandift_rt.input": f"uint8 NHWC {meta.height}x{meta.width}",
        "cleandift_rt.batch_min": str(meta.batch[0]),
        "cleandift_rt.batch_max": str(meta.batch[1]),
        "cleandift_rt.dtype": PACKAGE_DTYPES.get(meta.precision, meta.precision),
    }
    for key, want in expected.items():
        got = package.get(key)
        if got is not None and got != want:
            what = key.removeprefix("cleandift_rt.")
            fix = f"; rebuild: {meta.rebuild}" if meta.rebuild else "; re-export it"
            raise ArtifactError(
                f"AOTInductor package '{name}' does not match {name}.json: {what} is '{got}' "
                f"in the package, '{want}' in the sidecar{fix}"
            )


class AOTIRunner:
    """Runs an AOTInductor FeatureNet package on the device it was compiled for.

    Thread-safe; concurrent calls run one at a time (see the module docstring).

    Args:
        path: the ``.pt2`` package.
        meta: its sidecar metadata.
        device: cpu, or the CUDA device to load a CUDA package on.
    """

    name = "aoti"

    def __init__(self, path: str | Path, meta: ArtifactMetadata, device: torch.device):
        path = Path(path)
        built_with = meta.producer.get("torch")
        if built_with and built_with != torch.__version__:  # the library links this torch's ABI
            raise ArtifactError(
                f"AOTInductor package '{path.name}' was compiled with torch {built_with}, this is "
                f"torch {torch.__version__}; rebuild: {meta.rebuild}"
            )
        self.package_metadata = verify_package(path, device, meta.rebuild)
        check_package_metadata(self.package_metadata, meta, path.name)
        index = device.index if device.type == "cuda" and device.index is not None else -1
        if device.type == "cuda" and index < 0:
            index = torch.cuda.current_device()
        try:
            # thread-aware container (run_single_threaded=False) with one model instance
            self.loader = torch._C._aoti.AOTIModelPackageLoader(
                str(path), MODEL_NAME, False, 1, index
            )
        except Exception as exc:  # a library that does not load (missing symbols, ABI)
            raise ArtifactError(
                f"cannot load AOTInductor package '{path}': {one_line(exc)}"
                + (f"; rebuild: {meta.rebuild}" if meta.rebuild else "")
            ) from None
        describe_artifact(
            self, meta, torch.device("cuda", index) if device.type == "cuda" else device
        )

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3), B in the artifact's batch range → {tap: (B, C, h, w)} of the
        artifact's dtype on its device."""
        check_artifact_batch(images, self.meta)
        x = torch.as_tensor(images)
        if self.device.type == "cuda" and not x.is_cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)  # uint8 upload, async
        x = x.to(self.device).contiguous()
        with torch.inference_mode(), self._on_device():
            outs = self.loader.run([x])  # CUDA: on the current stream, after the upload
        if len(outs) != len(self.taps):
            raise ArtifactError(
                f"package returned {len(outs)} outputs for {len(self.taps)} taps "
                f"({', '.join(self.taps)}); rebuild: {self.meta.rebuild}"
            )
        return {t: o.to(self.dtype) for t, o in zip(self.taps, outs)}

    def _on_device(self):
        """Make the runner's GPU current (the loader runs on the current device's stream)."""
        if self.device.type == "cuda":
            return torch.cuda.device(self.device)
        return nullcontext()
