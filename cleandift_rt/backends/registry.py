"""The one registry of backends and artifact formats.

Every engine that runs a FeatureNet is one :class:`BackendSpec`: its name (also the ``format``
field of an artifact's sidecar), the aliases users may type (``trt`` = ``tensorrt`` =
``engine``), the artifact suffix, a lazy writer (``"module:function"`` inside the ``export``
package, which the runtime never imports), a lazy runner (``"module:Class"``), the pip extra it
needs, the devices it runs on and the export / runtime options it takes. ``export``,
``load_runtime``, ``bench``, the CLI choices, ``info`` and the docs all read this table.

Adding a backend = one entry here + one runner module (and, for an artifact format, one writer
function in ``export/``); see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from ..errors import CleanDIFTError

#: export options every format takes (ExportOptions fields)
COMMON_EXPORT_OPTIONS = (
    "model", "base", "taps", "height", "width", "batch", "max_batch", "precision", "out",
    "device", "validate",
)  # fmt: skip
#: ExportOptions field → the CLI flag that sets it (for one-line errors)
OPTION_FLAGS = {
    "opset": "--opset",
    "workspace_gib": "--workspace",
    "opt_level": "--opt-level",
    "timing_cache": "--timing-cache",
    "provider": "--provider",
}


class BackendError(CleanDIFTError):
    """An unknown backend/format name, or an option or device the backend does not take."""


@dataclass(frozen=True)
class BackendSpec:
    """One backend (and, when ``suffix`` is set, the artifact format it runs).

    name: canonical name (the sidecar's ``format``); aliases: other accepted names;
    suffix: artifact file suffix (None: runs a model in-process, nothing to export);
    writer: ``"module:function"`` in the export package, called as
    ``writer(net, path, options, meta) -> list[Path]``; runner: ``"module:Class"`` in
    ``cleandift_rt.backends``, constructed as ``Class(path, meta, device, **runtime_options)``
    for artifacts; extra: the pip extra to install; packages: import names it needs;
    devices: device types it runs on; export_options: ExportOptions fields it takes beyond
    the common ones; runtime_options: keyword arguments its runner takes.
    """

    name: str
    description: str
    runner: str
    aliases: tuple[str, ...] = ()
    suffix: str | None = None
    writer: str | None = None
    extra: str | None = None
    packages: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    export_options: tuple[str, ...] = ()
    runtime_options: tuple[str, ...] = ()

    @property
    def exportable(self) -> bool:
        return self.writer is not None

    def available(self) -> bool:
        """Whether the packages it needs are importable here (not whether a GPU is present)."""
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def install_hint(self) -> str:
        return f"pip install 'cleandift-rt[{self.extra}]'" if self.extra else ""

    def runner_class(self) -> type:
        """The runner class, imported now (its heavy dependencies are imported by the class)."""
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def check_device(self, device_type: str) -> None:
        if device_type not in self.devices:
            raise BackendError(
                f"the {self.name} backend runs on {' or '.join(self.devices)} only, not "
                f"{device_type} (use --device {self.devices[0]})"
            )


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="torch",
        description="PyTorch eager (fp32/fp16/bf16, channels-last, optional torch.compile)",
        runner="torch_runner:TorchRunner",
        aliases=("pytorch", "eager"),
        packages=("torch",),
    ),
    BackendSpec(
        name="onnx",
        description="ONNX graph on onnxruntime (CPU, CUDA with IO binding, TensorRT EP)",
        runner="onnxruntime_runner:OnnxRuntimeRunner",
        aliases=("onnxruntime", "ort"),
        suffix=".onnx",
        writer="onnx_export:write_artifact",
        extra="onnx",
        packages=("onnx", "onnxruntime"),
        export_options=("opset",),
        runtime_options=("provider",),
    ),
    BackendSpec(
        name="engine",
        description="TensorRT engine (per-stream contexts, preallocated buffers, CUDA graphs)",
        runner="tensorrt_runner:TensorRTRunner",
        aliases=("trt", "tensorrt"),
        suffix=".engine",
        writer="tensorrt_build:write_engine",
        extra="trt",
        packages=("tensorrt", "onnx"),
        devices=("cuda",),
        export_options=("opset", "workspace_gib", "opt_level", "timing_cache"),
    ),
    BackendSpec(
        name="aoti",
        description="AOTInductor package (.pt2): compiled kernels, weights inside, C++ loadable",
        runner="aoti_runner:AOTIRunner",
        aliases=("pt2", "aotinductor"),
        suffix=".pt2",
        writer="aoti_export:write_artifact",
        packages=("torch",),
    ),
)

_BY_NAME: dict[str, BackendSpec] = {
    key: spec for spec in BACKENDS for key in (spec.name, *spec.aliases)
}


def names(*, exportable: bool = False) -> tuple[str, ...]:
    """Canonical names (only formats that export writes, with ``exportable``)."""
    return tuple(s.name for s in BACKENDS if s.exportable or not exportable)


def accepted_names(*, exportable: bool = False) -> tuple[str, ...]:
    """Every name and alias (what the CLI's choices accept)."""
    chosen = [s for s in BACKENDS if s.exportable or not exportable]
    return tuple(n for s in chosen for n in (s.name, *s.aliases))


def get(name: str, *, exportable: bool = False) -> BackendSpec:
    """The entry called ``name`` (any alias, any case); BackendError suggesting the nearest."""
    spec = _BY_NAME.get(str(name).strip().lower())
    if spec is None or (exportable and not spec.exportable):
        known = accepted_names(exportable=exportable)
        near = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        what = "format" if exportable else "backend"
        raise BackendError(
            f"unknown {what} '{name}' (choose from {', '.join(names(exportable=exportable))})"
            + hint
        )
    return spec


def check_options(spec: BackendSpec, given: dict[str, Any], kind: str = "export") -> None:
    """BackendError (one line) when an option that ``spec`` does not take is set (not None).

    ``given``: option name → value for the backend-specific options only."""
    takes = spec.export_options if kind == "export" else spec.runtime_options
    for option, value in given.items():
        if value is not None and option not in takes:
            flag = OPTION_FLAGS.get(option, option)
            users = [s.name for s in BACKENDS if option in getattr(s, f"{kind}_options")]
            raise BackendError(
                f"{flag} does not apply to the {spec.name} backend (only to {', '.join(users)})"
            )


def from_suffix(path: str) -> BackendSpec | None:
    """The format whose suffix ``path`` has, or None."""
    lower = str(path).lower()
    return next((s for s in BACKENDS if s.suffix and lower.endswith(s.suffix)), None)


def resolve(reference: str, package: str) -> Any:
    """Import ``"module:attr"`` relative to ``package`` (e.g. a writer inside ``export``)."""
    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(f".{module}", package), attr)
