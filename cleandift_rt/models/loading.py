"""Load a model by preset name, local diffusers folder, hub id or CleanDIFT safetensors file.

Every path ends in a ``LoadedModel``: the diffusers U-Net and VAE, the prompt embedding and the
U-Net timestep to run at. Weights are read from safetensors only (nothing is unpickled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import ModelError, one_line
from .bundled import bundled_path
from .checkpoint import read_student_file
from .dift import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFTExtractor
from .featurenet import FeatureNet, build_feature_net
from .hub import PIPELINE_PATTERNS, WEIGHT_PATTERNS, hub_file, looks_like_repo_id, snapshot
from .presets import DEFAULT_TIMESTEP, PRESETS, Preset
from .prompt import cached_embedding, compute_embedding, stored_embedding
from .tiny import build_random_sd, build_tiny

RANDOM_PREFIX = "random:"  # random:sd21, random:sd15 — full architectures, random weights


@dataclass
class LoadedModel:
    """A model ready to build feature networks from.

    context: prompt embedding (1, L, D) float32; timestep: U-Net timestep for clean features;
    resolution: native square input size (px); sources: files the weights came from.
    """

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    context: torch.Tensor
    timestep: float
    resolution: int
    description: str = ""
    base: str | None = None
    sources: list[str] = field(default_factory=list)

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
        """Move the U-Net and VAE (in place); the context is cast when a net is built."""
        for module in (self.unet, self.vae):  # nn.Module.to: skips diffusers' dtype warning
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    def feature_net(self, taps: str | Sequence[str]) -> FeatureNet:
        """The FeatureNet for ``taps`` in the model's device and dtype (modules shared)."""
        param = next(self.unet.parameters())
        context = self.context.to(param.device, param.dtype)
        return build_feature_net(self.vae, self.unet, context, self.timestep, taps).eval()

    def dift(
        self,
        taps: str | Sequence[str],
        t: int = DIFT_TIMESTEP,
        ensemble: int = DIFT_ENSEMBLE,
        **kwargs,
    ) -> DIFTExtractor:
        """The DIFT baseline extractor (noisy ensemble) over this model's U-Net."""
        return DIFTExtractor.from_feature_net(
            self.feature_net(taps), t=t, ensemble=ensemble, **kwargs
        ).eval()


def load_model(
    model: str | Path,
    *,
    base: str | None = None,
    timestep: float | None = None,
    prompt: str = "",
) -> LoadedModel:
    """Load ``model``: a preset name (``sd21``, ``sd15``, ``sd21-base``, ``sd15-base``,
    ``toy``, ``toy-base``, ``tiny``), ``random:sd21`` / ``random:sd15`` (full architecture,
    random weights, for benchmarks), a local diffusers SD folder, a hub id, or a CleanDIFT
    ``.safetensors`` file (``*_unet`` or a full student checkpoint; ``base`` names its base
    model when the file does not). ``timestep`` overrides the U-Net timestep; ``prompt``
    selects the conditioning text. Returns the model on the CPU in float32. Raises ModelError
    (one line) on any failure.
    """
    from ..validation import check_model_name, check_timestep

    timestep = check_timestep(timestep)
    if base is not None:  # a name no loader takes is refused before anything loads
        check_model_name(str(base), "base")
    loaded = _load(str(model), base, prompt, unet_weights=True)
    if timestep is not None:
        loaded.timestep = float(timestep)
    return loaded


def _load(name: str, base: str | None, prompt: str, unet_weights: bool) -> LoadedModel:
    if name.startswith(RANDOM_PREFIX):
        arch = name[len(RANDOM_PREFIX) :]
        if arch not in ("sd21", "sd15"):
            raise ModelError(f"unknown architecture in '{name}' (random:sd21, random:sd15)")
        unet, vae, context = build_random_sd(arch)
        resolution = 8 * int(unet.config.sample_size)
        return LoadedModel(
            name,
            unet,
            vae,
            context,
            DEFAULT_TIMESTEP,
            resolution,
            f"SD {arch[2]}.{arch[3]} architecture, random weights (benchmarks)",
        )
    if name in PRESETS:
        return _load_preset(PRESETS[name], prompt, unet_weights)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelError(f"'{path}': only .safetensors weight files are read (no pickles)")
        return _load_student_file(path, base, prompt)
    if path.is_dir():
        return _load_folder(path, prompt, unet_weights, key=str(path.resolve()))
    if looks_like_repo_id(name):
        return _load_hub(name, prompt, unet_weights)
    presets = ", ".join(PRESETS)
    raise ModelError(
        f"unknown model '{name}': not a preset ({presets}), a local folder, "
        "a .safetensors file or a hub id"
    )


def _load_preset(preset: Preset, prompt: str, unet_weights: bool) -> LoadedModel:
    if preset.name == "tiny":
        if prompt:
            raise ModelError("the tiny model has no text encoder: it takes the empty prompt only")
        unet, vae, context = build_tiny()
        return LoadedModel(
            "tiny", unet, vae, context, preset.timestep, preset.resolution, preset.description
        )
    if preset.bundled is not None:
        return _load_bundled(preset, prompt, unet_weights)
    model = _load_hub(preset.base, prompt, unet_weights and preset.unet_file is None)
    if preset.unet_file is not None and unet_weights:
        path = hub_file(*preset.unet_file)
        _load_unet_state(model.unet, read_student_file(path).unet_state, path, preset.base)
        model.sources.append(str(path))
        model.base = preset.base
    model.name, model.description, model.resolution = (
        preset.name,
        preset.description,
        preset.resolution,
    )
    model.timestep = preset.timestep
    return model


def _load_bundled(preset: Preset, prompt: str, unet_weights: bool) -> LoadedModel:
    """A model shipped in the package: a diffusers folder, or a student over its base preset."""
    if prompt:
        raise ModelError(
            f"the {preset.name} model has no text encoder: it takes the empty prompt only"
        )
    path = bundled_path(preset.bundled)
    if path.is_dir():
        model = _load_folder(path, prompt, unet_weights, key=f"bundled:{preset.name}")
        model.timestep = preset.timestep
    else:
        model = _load_student_file(path, None, prompt)  # the file's timestep is the learned one
    model.name, model.description, model.resolution = (
        preset.name,
        preset.description,
        preset.resolution,
    )
    return model


def _load_hub(repo: str, prompt: str, unet_weights: bool) -> LoadedModel:
    patterns = PIPELINE_PATTERNS + WEIGHT_PATTERNS["vae"]
    if unet_weights:
        patterns += WEIGHT_PATTERNS["unet"]
    folder = snapshot(repo, patterns)

    def text_folder() -> Path:
        return snapshot(repo, WEIGHT_PATTERNS["text"])

    key = f"{repo}@{folder.name}"  # snapshot folders are named by commit hash
    model = _load_folder(folder, prompt, unet_weights, key, text_folder)
    model.name = repo
    return model


def _from_pretrained(cls, folder: Path, subfolder: str):
    try:
        return cls.from_pretrained(
            folder, subfolder=subfolder, use_safetensors=True, low_cpu_mem_usage=False
        ).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load {subfolder}/ of '{folder}': {one_line(exc)}") from None


def _load_folder(
    folder: Path,
    prompt: str,
    unet_weights: bool,
    key: str,
    text_folder: Callable[[], Path] | None = None,
) -> LoadedModel:
    if not (folder / "unet" / "config.json").is_file() or not (folder / "vae").is_dir():
        raise ModelError(f"'{folder}' is not a diffusers Stable Diffusion folder (unet/, vae/)")
    if unet_weights:
        unet = _from_pretrained(UNet2DConditionModel, folder, "unet")
    else:
        with torch.device("meta"):  # weights come later from a student file
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")
            )
    vae = _from_pretrained(AutoencoderKL, folder, "vae")
    context = stored_embedding(folder, prompt)
    if context is None:
        context = cached_embedding(
            key, prompt, lambda: compute_embedding(text_folder() if text_folder else folder, prompt)
        )
    resolution = 8 * int(unet.config.sample_size)
    sources = [str(folder)]
    return LoadedModel(
        folder.name,
        unet,
        vae,
        context,
        DEFAULT_TIMESTEP,
        resolution,
        f"diffusers model at {folder}",
        sources=sources,
    )


def _load_unet_state(unet: UNet2DConditionModel, state: dict, path: Path, base: str | None):
    """Strictly load ``state`` into ``unet`` (which may live on the meta device)."""
    own = unet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (missing + unexpected + wrong)[0]
        raise ModelError(
            f"'{path}' does not fit the U-Net of base '{base}': {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys (first: {first})"
        )
    unet.load_state_dict(state, strict=True, assign=True)
    unet.float()


def _load_student_file(path: Path, base: str | None, prompt: str) -> LoadedModel:
    weights = read_student_file(path)
    base = base or weights.base
    if base is None:
        raise ModelError(
            f"cannot tell the base model of '{path}': pass --base "
            "(sd21-base, sd15-base, toy-base, tiny, a diffusers folder or a hub id)"
        )
    model = _load(base, None, prompt, unet_weights=False)
    _load_unet_state(model.unet, weights.unet_state, path, base)
    if weights.context is not None and not prompt:
        model.context = weights.context.float()
    model.timestep = weights.timestep
    model.name, model.base = path.stem, base
    model.description = f"CleanDIFT student {path.name} (base {base}, t={weights.timestep:g})"
    model.sources.append(str(path))
    return model
