"""Checks of user input that need no model: names, numbers, output paths and installed extras.

Everything here uses the standard library only (no numpy or diffusers; torch only to ask
whether CUDA exists for ``--device auto``), so the CLI can answer a bad argument in a fraction
of a second, before it imports anything heavy or loads a model. Each check raises a
:class:`CleanDIFTError` with one line naming the option, the value and what would be accepted;
the Python API runs the same checks (``check_timestep``, ``split_taps``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CleanDIFTError

INPUT_MULTIPLE = 64  # px: the network input is a multiple of this (= models.featurenet's)
MAX_TIMESTEP = 999  # the last step of SD's 1000-step DDPM schedule
TAP_NAMES = ("mid", *(f"us{i}" for i in range(1, 13)), *(f"up{k}" for k in range(4)))
RANDOM_ARCHITECTURES = ("random:sd21", "random:sd15")  # full SD architectures, random weights
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")

#: extra → (modules it provides, what it is for)
EXTRAS = {
    "onnx": (("onnx", "onnxruntime"), "ONNX export and the onnxruntime backend"),
    "trt": (("tensorrt",), "TensorRT engines"),
    "demo": (("skimage",), "scikit-image's sample photos"),
    "dino": (("transformers",), "DINOv2 fusion (an <sd>+<dinov2> model)"),
}


def _preset_names() -> tuple[str, ...]:
    from .models.presets import PRESETS  # a plain table: no torch

    return tuple(PRESETS)


# ---------------------------------------------------------------------------------- numbers


def check_timestep(timestep: float | None, what: str = "timestep") -> float | None:
    """``timestep`` as a float, or None; CleanDIFTError unless finite and in [0, 999]."""
    if timestep is None:
        return None
    try:
        value = float(timestep)
    except (TypeError, ValueError):
        raise CleanDIFTError(
            f"{what} must be a number in [0, {MAX_TIMESTEP}], got {timestep!r}"
        ) from None
    if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTEP):
        raise CleanDIFTError(
            f"{what} must be a finite number in [0, {MAX_TIMESTEP}] (SD's DDPM steps), "
            f"got {timestep}"
        )
    return value


def check_resolution(resolution: int | None, policy: str = "square") -> None:
    """--resolution: positive; with the square policy a multiple of 64 px."""
    if resolution is None:
        return
    if resolution <= 0:
        raise CleanDIFTError(f"--resolution must be positive, got {resolution}")
    if policy == "square" and resolution % INPUT_MULTIPLE:
        low = max(INPUT_MULTIPLE, resolution // INPUT_MULTIPLE * INPUT_MULTIPLE)
        raise CleanDIFTError(
            f"--resolution {resolution} is not a multiple of {INPUT_MULTIPLE} px "
            f"(try {low} or {low + INPUT_MULTIPLE}, or --policy fit)"
        )


def check_input_size(height: int, width: int) -> None:
    """An exported input size: positive multiples of 64 px."""
    if height <= 0 or width <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise CleanDIFTError(
            f"height and width must be positive multiples of {INPUT_MULTIPLE} px, "
            f"got {height}x{width} (H x W)"
        )


# ------------------------------------------------------------------------------------ names


def split_taps(taps: str | Iterable[str], option: str = "--taps") -> tuple[str, ...]:
    """Tap names of a comma-separated list (or an iterable), each one a known name; the model
    itself checks later that it has them."""
    names = [t.strip() for t in (taps.split(",") if isinstance(taps, str) else taps)]
    names = [t for t in names if t]
    if not names:
        raise CleanDIFTError(f"{option} is empty: give a tap such as us6")
    for name in names:
        if name.lower() not in TAP_NAMES:
            raise CleanDIFTError(
                f"unknown tap '{name}' in {option} (valid: mid, us1..us12, up0..up3)"
            )
    return tuple(names)


def check_single_tap(tap: str, option: str = "--tap") -> str:
    """A command that matches with one tap: exactly one name."""
    names = split_taps(tap, option)
    if len(names) > 1:
        raise CleanDIFTError(
            f"{option} takes one tap, got '{tap}': pick one (e.g. {option} {names[0]}); "
            "`extract --taps` writes several"
        )
    return names[0]


def check_device(device: str | None) -> None:
    """The syntax of --device (auto, cpu, cuda, cuda:N); availability is checked on use."""
    if device is not None and not DEVICE.fullmatch(str(device)):
        raise CleanDIFTError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)")


def check_model_name(model: str, option: str = "--model") -> None:
    """A model the loaders can take: a preset, random:sd21/sd15, an existing folder or
    .safetensors file, or a hub id ``org/name``; or ``<that>+<dinov2>`` (SD + DINOv2 fusion:
    a DINOv2 preset, folder or hub id, and transformers installed). Anything else is refused
    before loading."""
    from .fusion import split_model_name

    sd, dino = split_model_name(model)
    if dino is not None:
        check_model_name(sd, option)
        check_dino_name(dino, option)
        require_extra("dino", f"{option} '{model}' (DINOv2 fusion)")
        return
    if model in _preset_names() or model in RANDOM_ARCHITECTURES:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise CleanDIFTError(
                f"{option} '{model}': only .safetensors weight files are read (no pickles)"
            )
        return
    if path.exists():
        raise CleanDIFTError(f"{option} '{model}' is neither a folder nor a regular file")
    if model.startswith("random:"):
        raise CleanDIFTError(
            f"unknown architecture in {option} '{model}' (random:sd21, random:sd15)"
        )
    if HUB_ID.fullmatch(model) and not model.lower().endswith(".safetensors"):
        return  # the hub answers (or the offline error names it) when the model loads
    presets = ", ".join(_preset_names())
    if model.lower().endswith(".safetensors") or os.sep in model or model.startswith("."):
        raise CleanDIFTError(f"{option} '{model}' does not exist")
    raise CleanDIFTError(
        f"unknown {option} '{model}': not a preset ({presets}), an existing folder or "
        ".safetensors file, or a hub id org/name"
    )


def check_dino_name(dino: str, option: str = "--model") -> None:
    """The DINOv2 part of ``<sd>+<dinov2>``: a preset (dinov2-s/b/l/g, dinov2-tiny), an existing
    folder (config.json, model.safetensors) or a hub id ``org/name``."""
    from .models.presets import DINO_PRESETS  # a plain table: no torch

    if dino in DINO_PRESETS or HUB_ID.fullmatch(dino):
        return
    path = Path(dino).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CleanDIFTError(f"{option}: DINOv2 folder '{dino}' has no config.json")
        return
    raise CleanDIFTError(
        f"unknown DINOv2 model '{dino}' in {option} (valid: {', '.join(DINO_PRESETS)}, a folder "
        "or a hub id such as facebook/dinov2-base)"
    )


def check_base_name(base: str | None) -> None:
    """--base: a preset, an existing diffusers folder, or a hub id ``org/name``."""
    if base is None:
        return
    path = Path(base).expanduser()
    if path.exists() and not path.is_dir():
        raise CleanDIFTError(
            f"--base '{base}' is not a diffusers Stable Diffusion folder (unet/, vae/)"
        )
    check_model_name(base, "--base")


# ------------------------------------------------------------------------------------ paths


def _first_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: writing through it would fail
            break
        probe = probe.parent
    return probe


def _check_folder_writable(folder: Path, option: str, shown: str) -> None:
    """``folder`` (which may not exist yet) can be created and written into."""
    base = _first_existing(folder)
    if not base.is_dir():
        raise CleanDIFTError(f"cannot write {option} '{shown}': '{base}' is a file, not a folder")
    try:  # the real test (os.access is wrong for root, ACLs and read-only mounts)
        with tempfile.TemporaryFile(dir=base, prefix=".cleandift-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CleanDIFTError(f"cannot write {option} '{shown}': '{base}': {reason}") from None


def check_output_file(
    path: str | os.PathLike[str] | None, option: str = "--out", suffixes: tuple[str, ...] = ()
) -> Path | None:
    """An output file that can be written: the right suffix, not a folder, its folder (which
    may be created) writable. Nothing is created here."""
    if path is None:
        return None
    out = Path(path).expanduser()
    shown = os.fspath(path)
    if suffixes and not out.name.lower().endswith(suffixes):
        kind = f"be a {suffixes[0]} file" if len(suffixes) == 1 else f"end in {', '.join(suffixes)}"
        raise CleanDIFTError(f"{option} must {kind}, got '{shown}'")
    if out.is_dir():
        raise CleanDIFTError(f"cannot write {option} '{shown}': it is a folder")
    if out.exists() and not out.is_file():
        raise CleanDIFTError(f"cannot write {option} '{shown}': not a regular file")
    _check_folder_writable(out.parent, option, shown)
    return out


def check_output_folder(path: str | os.PathLike[str] | None, option: str = "--out") -> Path | None:
    """An output folder that exists or can be created, and can be written into."""
    if path is None:
        return None
    out = Path(path).expanduser()
    shown = os.fspath(path)
    if out.exists() and not out.is_dir():
        raise CleanDIFTError(f"cannot use {option} '{shown}' as a folder: it is a file")
    _check_folder_writable(out, option, shown)
    return out


def make_folder(folder: str | os.PathLike[str], log: Callable[[str], None]) -> list[Path]:
    """Create ``folder`` and its missing parents, saying so in one line; the folders created
    (outermost first), for :func:`remove_empty`."""
    folder = Path(folder).expanduser()
    created = []
    probe = folder.absolute()
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    if not created:
        return []
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CleanDIFTError(f"cannot create folder '{folder}': {exc.strerror or exc}") from None
    log(f"created folder {folder}")
    return created[::-1]


def remove_empty(created: list[Path]) -> None:
    """Remove the folders ``make_folder`` created, innermost first, where still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


# ----------------------------------------------------------------------------------- extras


def module_available(name: str) -> bool:
    """Whether ``import name`` would find the module (without importing it)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_extra(extra: str, needed_for: str, modules: Iterable[str] | None = None) -> None:
    """CleanDIFTError naming ``pip install "cleandift-rt[extra]"`` when a module is missing."""
    names = tuple(modules) if modules is not None else EXTRAS[extra][0]
    missing = [m for m in names if not module_available(m)]
    if missing:
        pkgs = " and ".join("scikit-image" if m == "skimage" else m for m in missing)
        raise CleanDIFTError(
            f"{needed_for} needs {pkgs}, which {'is' if len(missing) == 1 else 'are'} not "
            f'installed: pip install "cleandift-rt[{extra}]"'
        )


def device_is_cuda(device: str) -> bool:
    """Whether --device names a CUDA device (auto: whether this machine has one)."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def check_onnx_runs_here(precision: str, device: str, needed_for: str, hint: str = "") -> None:
    """An ONNX graph is about to run on ``device`` (export validation, bench): onnxruntime is
    installed, and a bf16 graph is not meant for the CPU provider."""
    require_extra("onnx", needed_for, ["onnxruntime"])
    if precision == "bf16" and not device_is_cuda(device):
        raise CleanDIFTError(
            "a bf16 ONNX graph cannot run on the CPU (onnxruntime's CPU provider has no bf16 "
            "kernels for these ops): use fp32 or fp16 on the CPU, or bf16 with --device cuda" + hint
        )


def check_export_needs(fmt: str, precision: str, device: str, validate: bool) -> None:
    """The packages and device an export needs, checked before any model loads: one line
    naming what is missing and how to install it."""
    if fmt == "onnx":
        require_extra("onnx", "ONNX export", ["onnx"])
        if validate:
            check_onnx_runs_here(
                precision,
                device,
                "validating the ONNX export (--no-validate skips it)",
                ", or add --no-validate to build it for a GPU elsewhere",
            )
    elif fmt == "engine":
        missing = []
        if not module_available("tensorrt"):
            missing.append('TensorRT, which is not installed (pip install "cleandift-rt[trt]")')
        if not device_is_cuda(device):
            where = "--device cpu" if device == "cpu" else "this machine has no CUDA GPU"
            missing.append(f"a CUDA GPU ({where}; use --device cuda)")
        if missing:
            raise CleanDIFTError("TensorRT engines need " + " and ".join(missing))
