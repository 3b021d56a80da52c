"""`cleandift-rt export`: load a model, build its FeatureNet, write an artifact, validate it.

Stages: load → reference (fp32 PyTorch on real photos) → precision policy → write artifact →
validate (the artifact through its runtime loader vs the reference) → publish. Everything is
built in a staging directory inside ``--out``; only a validated artifact and its sidecar are
moved into place, so a failed or interrupted export leaves no artifact behind.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cleandift_rt import __version__
from cleandift_rt.artifacts import ArtifactMetadata, TapOutput, weights_sha256, write_sidecar
from cleandift_rt.backends import registry
from cleandift_rt.dtypes import PRECISIONS, torch_dtype
from cleandift_rt.errors import CleanDIFTError, one_line
from cleandift_rt.extractor import resolve_device
from cleandift_rt.models import INPUT_MULTIPLE, load_model

from .errors import ExportError
from .precision import apply_precision_policy
from .validate import compare, failures, validation_images

DEFAULT_OPSET = 17
DEFAULT_OPT_LEVEL = 3  # TensorRT builder optimisation level
# the format-specific options (None: not given) and their defaults where the format takes them
FORMAT_DEFAULTS = {"opset": DEFAULT_OPSET, "workspace_gib": None, "opt_level": DEFAULT_OPT_LEVEL,
                   "timing_cache": None}  # fmt: skip


@dataclass
class ExportOptions:
    """What to export. batch: smallest batch; max_batch: largest (None → a fixed batch)."""

    model: str = "tiny"
    taps: tuple[str, ...] = ("us6",)
    height: int = 256
    width: int = 256
    batch: int = 1
    max_batch: int | None = None
    precision: str = "fp16"
    format: str = "onnx"
    out: str = "artifacts"
    base: str | None = None
    device: str = "auto"
    # format-specific (see the backend registry); None: not given, the format's default
    opset: int | None = None  # ONNX opset (onnx, engine; default 17)
    workspace_gib: float | None = None  # TensorRT builder workspace limit
    opt_level: int | None = None  # TensorRT builder optimisation level (0-5, default 3)
    timing_cache: str | None = None  # TensorRT timing cache file (read and updated)
    validate: bool = True
    # fusion in the graph (cleandift_rt.fusion): "concat" fuses the taps into one output
    fuse: str | None = None
    tap_weights: tuple[float, ...] | None = None  # one per tap; None: equal
    fusion_alpha: float | None = None  # SD share of an <sd>+<dinov2> model; None: 0.5

    @property
    def batch_range(self) -> tuple[int, int]:
        return (self.batch, self.max_batch or self.batch)

    def check(self) -> None:
        """ExportError (one line) on options no export could satisfy; resolves the format's
        alias (``trt`` → ``engine``) and fills the defaults of the options it takes."""
        try:
            spec = registry.get(self.format, exportable=True)
            registry.check_options(spec, {k: getattr(self, k) for k in FORMAT_DEFAULTS})
        except registry.BackendError as exc:
            raise ExportError(str(exc)) from None
        self.format = spec.name
        for option, default in FORMAT_DEFAULTS.items():
            if option in spec.export_options and getattr(self, option) is None:
                setattr(self, option, default)
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision '{self.precision}' (fp32, fp16, bf16)")
        for side in (self.height, self.width):
            if side <= 0 or side % INPUT_MULTIPLE:
                raise ExportError(f"height and width must be positive multiples of "
                                  f"{INPUT_MULTIPLE}, got {self.height}x{self.width}")  # fmt: skip
        if self.batch < 1 or (self.max_batch is not None and self.max_batch < self.batch):
            raise ExportError(f"need 1 <= batch <= max-batch, got {self.batch}, {self.max_batch}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise ExportError(f"--opt-level must be 0..5, got {self.opt_level}")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise ExportError(f"--workspace must be positive (GiB), got {self.workspace_gib}")
        self.fusion()  # options that do not fit together

    def fusion(self):
        """The graph's ``Fusion`` (None for plain taps); ExportError (one line) for ``pca:D``,
        which is applied after the graph, and for options that do not fit together."""
        from cleandift_rt.fusion import make_fusion, parse_fuse, split_model_name

        try:
            if parse_fuse(self.fuse)[1] is not None:
                raise CleanDIFTError(
                    f"--fuse {self.fuse} is applied after the graph: export with --fuse concat "
                    f"and match the artifact with --fuse {self.fuse}"
                )
            dino = split_model_name(self.model)[1]
            return make_fusion(tuple(self.taps), fuse=self.fuse, tap_weights=self.tap_weights,
                               alpha=self.fusion_alpha, dino=dino)  # fmt: skip
        except CleanDIFTError as exc:
            raise ExportError(str(exc)) from None

    def file_name(self, model_name: str) -> str:
        lo, hi = self.batch_range
        batch = f"b{lo}" if lo == hi else f"b{lo}-{hi}"
        fused = "-fused" if self.fusion() is not None else ""
        stem = f"{Path(model_name).stem}-{'-'.join(self.taps)}{fused}-{self.height}x{self.width}"
        stem = f"{stem}-{batch}"
        return f"{stem}-{self.precision}{registry.get(self.format).suffix}"

    def command(self) -> str:
        """The CLI command that rebuilds this artifact."""
        args = ["cleandift-rt", "export", "--model", self.model, "--taps", ",".join(self.taps),
                "--height", str(self.height), "--width", str(self.width), "--batch",
                str(self.batch), "--precision", self.precision, "--format", self.format,
                "--out", self.out]  # fmt: skip
        if self.max_batch:
            args += ["--max-batch", str(self.max_batch)]
        if self.base:
            args += ["--base", self.base]
        if self.fuse:
            args += ["--fuse", self.fuse]
        if self.tap_weights is not None:
            args += ["--tap-weights", ",".join(f"{w:g}" for w in self.tap_weights)]
        if self.fusion_alpha is not None:
            args += ["--fusion-alpha", f"{self.fusion_alpha:g}"]
        for option in registry.get(self.format).export_options:
            value = getattr(self, option)
            if value is not None:
                args += [registry.OPTION_FLAGS[option], str(value)]
        return shlex.join(args)


@contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Any failure inside (an exporter, a runtime refusing the graph) → ExportError, one line."""
    try:
        yield
    except CleanDIFTError:
        raise
    except Exception as exc:
        raise ExportError(f"{what}: {one_line(exc)}") from None


def export_model(
    options: ExportOptions, log: Callable[[str], None] = print
) -> tuple[Path, ArtifactMetadata]:
    """Export, validate and publish an artifact; returns its path and metadata."""
    from cleandift_rt.runtime import load_runtime

    options.check()
    stages = 5 if options.validate else 4
    clock = {"step": 0}

    def stage(text: str, start: float) -> None:
        clock["step"] += 1
        log(f"[{clock['step']}/{stages}] {text} ({time.perf_counter() - start:.1f} s)")

    spec = registry.get(options.format)
    device = resolve_device(options.device)
    try:
        spec.check_device(device.type)
    except registry.BackendError as exc:
        raise ExportError(str(exc)) from None

    t = time.perf_counter()
    loaded = load_model(options.model, base=options.base).to(device, torch.float32)
    net = loaded.feature_net(options.taps, options.fusion())
    options.taps = net.sd_taps
    fused = f" fused into {net.taps[0]}" if net.fusion is not None else ""
    stage(f"loaded {loaded.name}: taps {', '.join(net.sd_taps)}{fused}", t)

    t = time.perf_counter()
    images = validation_images(options.height, options.width, count=max(2, options.batch))
    with torch.inference_mode():
        reference = dict(zip(net.taps, net(torch.from_numpy(images).to(device))))
    stage(f"PyTorch fp32 reference on {len(images)} photos", t)

    apply_precision_policy(net, torch_dtype(options.precision))
    meta = ArtifactMetadata(
        format=options.format,
        artifact=options.file_name(loaded.name),
        model=loaded.name,
        weights_sha256=weights_sha256(net),
        timestep=float(net.timestep),
        taps=[TapOutput(o.name, o.channels, o.stride) for o in net.outputs],
        height=options.height,
        width=options.width,
        batch=options.batch_range,
        precision=options.precision,
        producer={"cleandift_rt": __version__, "torch": torch.__version__},
        build={"opset": options.opset, "device": str(device)},
        rebuild=options.command(),
        hub_files=loaded.hub_files,
        fusion=net.fusion_info(options.height, options.width),
    )

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        t = time.perf_counter()
        artifact = staging / meta.artifact
        with _one_line_errors(f"writing the {options.format} artifact failed"):
            files = registry.resolve(spec.writer, __package__)(net, artifact, options, meta)
        write_sidecar(artifact, meta)
        size = sum(f.stat().st_size for f in files) / 2**20
        stage(f"wrote {options.format} ({size:.1f} MiB)", t)

        if options.validate:
            t = time.perf_counter()
            with _one_line_errors(f"the exported {options.format} artifact does not run"):
                runtime = load_runtime(artifact, device=device)
                outputs = runtime.extract_prepared(images, batch_size=options.batch_range[1]).maps
            meta.validation = compare(reference, outputs)
            bad = failures(meta.validation, options.precision)
            worst = min(r["cosine"] for r in meta.validation.values())
            stage(f"validated against PyTorch fp32: min cosine {worst:.6f}", t)
            if bad:
                raise ExportError("artifact failed validation: " + "; ".join(bad))
            write_sidecar(artifact, meta)

        t = time.perf_counter()
        final = out / meta.artifact
        for f in [*files, artifact.with_name(artifact.name + ".json")]:
            f.replace(out / f.name)
        stage(f"published {final}", t)
        return final, meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)
