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
from ..fusion import Fusion, make_fusion, split_model_name
from .bundled import bundled_path
from .checkpoint import read_student_file
from .dift import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFTExtractor
from .dino import LoadedDino
from .featurenet import FeatureNet, build_feature_net
from .fusion_layers import DinoBranch
from .hub import (
    PIPELINE_PATTERNS,
    WEIGHT_PATTERNS,
    HubSnapshot,
    hub_file,
    looks_like_repo_id,
    snapshot,
)
from .presets import DEFAULT_TIMESTEP, PRESETS, Preset
from .prompt import cached_embedding, compute_embedding, stored_embedding
from .tiny import build_random_sd, build_tiny

RANDOM_PREFIX = "random:"  # random:sd21, random:sd15 — full architectures, random weights


@dataclass
class LoadedModel:
    """A model ready to build feature networks from.

    context: prompt embedding (1, L, D) float32; timestep: U-Net timestep for clean features;
    resolution: native square input size (px); sources: files the weights came from;
    hub_files: {repo, file, commit} of every hub file used (commit: the resolved 40-hex sha);
    prompt_encoder: prompt → context (1, L, D) float32, None for models without a text encoder;
    dino: the DINOv2 backbone of an ``<sd>+<dinov2>`` model (SD + DINOv2 fusion), else None.
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
    hub_files: list[dict[str, str]] = field(default_factory=list)
    prompt_encoder: Callable[[str], torch.Tensor] | None = None
    dino: LoadedDino | None = None

    def embed(self, prompt: str) -> torch.Tensor:
        """Context (1, L, D) float32 of ``prompt`` from the model's text encoder (cached)."""
        if self.prompt_encoder is not None:
            return self.prompt_encoder(prompt)
        if not prompt:
            return self.context
        raise ModelError(
            f"the {self.name} model has no text encoder: it takes the empty prompt only"
        )

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
        """Move the U-Net, VAE and DINOv2 backbone (in place); the context is cast when a net
        is built."""
        modules = [self.unet, self.vae] + ([self.dino.model] if self.dino else [])
        for module in modules:  # nn.Module.to: skips diffusers' dtype warning
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    def feature_net(self, taps: str | Sequence[str], fusion: Fusion | None = None) -> FeatureNet:
        """The FeatureNet for ``taps`` in the model's device and dtype (modules shared).

        ``fusion``: fuse the taps (and, for an ``<sd>+<dinov2>`` model, the DINOv2 map) into
        one output ``fused``; an SD + DINOv2 model without one fuses with the defaults
        (α = 0.5). Raises ModelError for fusion options that do not fit the model."""
        param = next(self.unet.parameters())
        context = self.context.to(param.device, param.dtype)
        names = tuple(t.strip() for t in taps.split(",")) if isinstance(taps, str) else tuple(taps)
        if fusion is None and self.dino is not None:
            fusion = make_fusion(names, dino=self.dino.name)
        dino = None
        if fusion is not None and fusion.dino is not None:
            if self.dino is None:
                raise ModelError(f"fusion with DINOv2 '{fusion.dino}' but {self.name} has no "
                                 "DINOv2 branch: name it as <sd>+<dinov2>")  # fmt: skip
            dino = DinoBranch(self.dino.model, self.dino.name).to(param.device, param.dtype)
        elif self.dino is not None:
            raise ModelError(f"{self.name} has a DINOv2 branch: its fusion must name it")
        net = build_feature_net(self.vae, self.unet, context, self.timestep, names, fusion, dino)
        return net.eval()

    def dift(
        self,
        taps: str | Sequence[str],
        t: int = DIFT_TIMESTEP,
        ensemble: int = DIFT_ENSEMBLE,
        **kwargs,
    ) -> DIFTExtractor:
        """The DIFT baseline extractor (noisy ensemble) over this model's U-Net."""
        if self.dino is not None:
            raise ModelError(f"the DIFT baseline has no DINOv2 fusion: drop the +{self.dino.name}")
        return DIFTExtractor.from_feature_net(
            self.feature_net(taps), t=t, ensemble=ensemble, **kwargs
        ).eval()


HUB_PRESETS = tuple(name for name, p in PRESETS.items() if p.base is not None)


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
    ``.safetensors`` file (``*_unet``, a full student checkpoint, or CompVis' ``*_full``);
    any of these followed by ``+<dinov2>`` (``sd21+dinov2-b``: a DINOv2 preset, folder or hub
    id, see ``models.dino``) adds a DINOv2 backbone for SD + DINOv2 fusion.

    ``base`` replaces the base pipeline (VAE, configs, text encoder) of every hub preset with
    a local diffusers folder or a hub id, and names the base of a ``.safetensors`` file that
    does not (a preset, folder or hub id). ``timestep`` overrides the U-Net timestep;
    ``prompt`` selects the conditioning text. Returns the model on the CPU in float32. Raises
    ModelError (one line) on any failure, a bad ``base`` before anything loads.
    """
    from ..validation import check_timestep

    timestep = check_timestep(timestep)
    check_base(base)  # a name no loader takes is refused before anything loads
    sd, dino = split_model_name(str(model))
    backbone = None
    if dino is not None:  # first: a DINOv2 the hub cannot give fails before SD loads
        from ..validation import check_dino_name
        from .dino import load_dino

        check_dino_name(dino)
        backbone = load_dino(dino)
    loaded = _load(sd, base, prompt, unet_weights=True)
    if timestep is not None:
        loaded.timestep = float(timestep)
    if backbone is not None:
        loaded.dino = backbone
        loaded.name = f"{loaded.name}+{dino}"
        loaded.description += f", fused with DINOv2 {dino}"
        loaded.hub_files += loaded.dino.hub_files
        loaded.sources += loaded.dino.sources
    return loaded


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file() and (folder / "vae").is_dir()


def check_base(base: str | None) -> None:
    """ModelError (one line) unless ``base`` is None, a diffusers SD folder, a preset, a
    ``random:`` architecture or a plausible hub id (whether the hub has it is checked when
    it loads)."""
    if base is None:
        return
    path = Path(base).expanduser()
    if path.exists():
        if not path.is_dir() or not _is_diffusers_folder(path):
            raise ModelError(
                f"--base '{base}' is not a diffusers Stable Diffusion folder (unet/, vae/)"
            )
        return
    if base in PRESETS or base.startswith(RANDOM_PREFIX) or looks_like_repo_id(base):
        return
    raise ModelError(
        f"--base '{base}' does not exist: not a folder, a preset ({', '.join(PRESETS)}) "
        "or a hub id (org/name)"
    )


def _reject_base(base: str | None, name: str) -> None:
    if base is not None:
        raise ModelError(
            f"--base does not apply to '{name}', a complete model: it replaces the base of the "
            f"hub presets ({', '.join(HUB_PRESETS)}) and names the base of a .safetensors file"
        )


def _load(name: str, base: str | None, prompt: str, unet_weights: bool) -> LoadedModel:
    if name.startswith(RANDOM_PREFIX):
        _reject_base(base, name)
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
        return _load_preset(PRESETS[name], base, prompt, unet_weights)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelError(f"'{path}': only .safetensors weight files are read (no pickles)")
        return _load_student_file(path, base, prompt)
    if path.is_dir():
        _reject_base(base, name)
        return _load_folder(path, prompt, unet_weights, key=str(path.resolve()))
    if looks_like_repo_id(name):
        _reject_base(base, name)
        return _load_hub(name, prompt, unet_weights)
    presets = ", ".join(PRESETS)
    raise ModelError(
        f"unknown model '{name}': not a preset ({presets}), a local folder, "
        "a .safetensors file or a hub id"
    )


def _load_preset(preset: Preset, base: str | None, prompt: str, unet_weights: bool) -> LoadedModel:
    if preset.name == "tiny":
        _reject_base(base, preset.name)
        if prompt:
            raise ModelError("the tiny model has no text encoder: it takes the empty prompt only")
        unet, vae, context = build_tiny()
        return LoadedModel(
            "tiny", unet, vae, context, preset.timestep, preset.resolution, preset.description
        )
    if preset.bundled is not None:
        return _load_bundled(preset, base, prompt, unet_weights)
    source = preset.base
    if base is not None:
        if base in PRESETS or base.startswith(RANDOM_PREFIX):
            raise ModelError(
                f"--base of preset '{preset.name}' must be a local diffusers folder or a hub "
                f"id, not the preset '{base}'"
            )
        source = base
    role = f"base of preset '{preset.name}'"
    model = _load_base(source, prompt, unet_weights and preset.unet_file is None, role)
    if preset.unet_file is not None and unet_weights:
        repo, filename = preset.unet_file
        snap = hub_file(
            repo,
            filename,
            role=f"CleanDIFT U-Net of preset '{preset.name}'",
            hint=f"or pass the downloaded file: --model {filename} --base DIR",
        )
        path = snap.folder / filename
        _load_state(model.unet, read_student_file(path).unet_state, path, source, "U-Net")
        model.sources.append(str(path))
        model.hub_files += snap.files([filename])
        model.base = source
    model.name = preset.name
    if base is None:
        model.description, model.resolution = preset.description, preset.resolution
    else:  # the base's own native size (768 for an SD 2.1 copy, 512 for SD 1.5)
        model.description = f"{preset.description}, base {base}"
    model.timestep = preset.timestep
    return model


def _load_base(source: str, prompt: str, unet_weights: bool, role: str) -> LoadedModel:
    """A base pipeline: a local diffusers folder, else a hub id."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        model = _load_folder(folder, prompt, unet_weights, key=str(folder.resolve()))
        model.name = source
        return model
    return _load_hub(source, prompt, unet_weights, role)


def _load_bundled(preset: Preset, base: str | None, prompt: str, unet_weights: bool) -> LoadedModel:
    """A model shipped in the package: a diffusers folder, or a student over its base preset."""
    if prompt and base is None:
        raise ModelError(
            f"the {preset.name} model has no text encoder: it takes the empty prompt only"
        )
    path = bundled_path(preset.bundled)
    if path.is_dir():
        _reject_base(base, preset.name)
        model = _load_folder(path, prompt, unet_weights, key=f"bundled:{preset.name}")
        model.timestep = preset.timestep
    else:
        model = _load_student_file(path, base, prompt)  # the file's timestep is the learned one
    model.name, model.description, model.resolution = (
        preset.name,
        preset.description,
        preset.resolution,
    )
    return model


def _load_hub(repo: str, prompt: str, unet_weights: bool, role: str = "") -> LoadedModel:
    patterns = PIPELINE_PATTERNS + WEIGHT_PATTERNS["vae"]
    if unet_weights:
        patterns += WEIGHT_PATTERNS["unet"]
    snap = snapshot(repo, patterns, role=role)

    def text_snapshot() -> HubSnapshot:  # the text encoder of the same commit
        text_role = f"text encoder of {role}" if role else "text encoder"
        return snapshot(repo, WEIGHT_PATTERNS["text"], revision=snap.commit, role=text_role)

    key = f"{repo}@{snap.commit}"
    model = _load_folder(snap.folder, prompt, unet_weights, key, lambda: text_snapshot().folder)
    model.name = repo
    model.hub_files = snap.files(patterns)
    if stored_embedding(snap.folder, prompt) is None:  # the context came from its text encoder
        model.hub_files.append(
            {"repo": repo, "file": "text_encoder/model.safetensors", "commit": snap.commit}
        )
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
    if not _is_diffusers_folder(folder):
        raise ModelError(f"'{folder}' is not a diffusers Stable Diffusion folder (unet/, vae/)")
    if unet_weights:
        unet = _from_pretrained(UNet2DConditionModel, folder, "unet")
    else:
        with torch.device("meta"):  # weights come later from a student file
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")
            )
    vae = _from_pretrained(AutoencoderKL, folder, "vae")

    def encode(text: str) -> torch.Tensor:
        stored = stored_embedding(folder, text)
        if stored is not None:
            return stored
        return cached_embedding(
            key, text, lambda: compute_embedding(text_folder() if text_folder else folder, text)
        )

    context = encode(prompt)
    has_text_encoder = text_folder is not None or (folder / "text_encoder").is_dir()
    resolution = 8 * int(unet.config.sample_size)
    return LoadedModel(
        folder.name,
        unet,
        vae,
        context,
        DEFAULT_TIMESTEP,
        resolution,
        f"diffusers model at {folder}",
        sources=[str(folder)],
        prompt_encoder=encode if has_text_encoder else None,
    )


def _load_state(module: torch.nn.Module, state: dict, path: Path, base: str | None, what: str):
    """Strictly load ``state`` into ``module`` (which may live on the meta device)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (missing + unexpected + wrong)[0]
        raise ModelError(
            f"'{path}' does not fit the {what} of base '{base}': {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys (first: {first})"
        )
    module.load_state_dict(state, strict=True, assign=True)
    module.float()


def _load_student_file(path: Path, base: str | None, prompt: str) -> LoadedModel:
    weights = read_student_file(path)
    base = base or weights.base
    if base is None:
        raise ModelError(
            f"cannot tell the base model of '{path}': pass --base "
            "(sd21-base, sd15-base, toy-base, tiny, a diffusers folder or a hub id)"
        )
    model = _load(base, None, prompt, unet_weights=False)
    _load_state(model.unet, weights.unet_state, path, base, "U-Net")
    if weights.vae_state:  # CompVis' *_full files carry their VAE
        _load_state(model.vae, weights.vae_state, path, base, "VAE")
    if weights.context is not None and not prompt:
        model.context = weights.context.float()
    model.timestep = weights.timestep
    model.name, model.base = path.stem, base
    model.description = f"CleanDIFT student {path.name} (base {base}, t={weights.timestep:g})"
    model.sources.append(str(path))
    return model
