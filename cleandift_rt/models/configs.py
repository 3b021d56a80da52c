"""Stable Diffusion architecture configs (diffusers names) and the scaled-down `tiny` variants.

The full-size configs let benchmarks build the SD 1.5 / SD 2.1 architectures with random
weights (the cost is the same as with real ones); `scaled_*` shrinks the channel widths while
keeping every structural choice (block types, layers per block, attention layout), so tests
exercise the same code paths as the real models in milliseconds.
"""

from __future__ import annotations

from typing import Any

SCALING_FACTOR = 0.18215  # SD 1.x / 2.x latent scaling factor

_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

SD21_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": _DOWN,
    "up_block_types": _UP,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

SD15_UNET: dict[str, Any] = {
    **SD21_UNET,
    "sample_size": 64,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "use_linear_projection": False,
    "upcast_attention": False,
}

SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": SCALING_FACTOR,
}

UNET_CONFIGS = {"sd21": SD21_UNET, "sd15": SD15_UNET}
CONTEXT_TOKENS = 77  # CLIP text context length


def scaled_unet_config(kind: str = "sd21", width: int = 32, cross_dim: int = 32) -> dict[str, Any]:
    """An SD-shaped U-Net config with block widths (w, 2w, 2w, 2w) and 8 GroupNorm groups.

    Keeps the block types, layers per block, linear-projection and upcast choices of `kind`
    ("sd21" or "sd15"); attention heads of 8 channels.
    """
    widths = (width, 2 * width, 2 * width, 2 * width)
    return {
        **UNET_CONFIGS[kind],
        "sample_size": 32,
        "block_out_channels": widths,
        "attention_head_dim": tuple(w // 8 for w in widths),
        "cross_attention_dim": cross_dim,
        "norm_num_groups": 8,
    }


def scaled_vae_config(width: int = 16) -> dict[str, Any]:
    """An SD-shaped VAE config (4 levels, 8× downsampling) with widths (w, 2w, 2w, 2w)."""
    return {
        **SD_VAE,
        "block_out_channels": (width, 2 * width, 2 * width, 2 * width),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 256,
    }
