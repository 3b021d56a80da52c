"""Hugging Face Hub access (through huggingface_hub, cached) with one-line offline errors."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError, one_line

# Files a diffusers SD pipeline needs for feature extraction (text encoder fetched separately).
PIPELINE_PATTERNS = ["model_index.json", "unet/config.json", "vae/config.json"]
WEIGHT_PATTERNS = {
    "unet": ["unet/diffusion_pytorch_model.safetensors"],
    "vae": ["vae/diffusion_pytorch_model.safetensors"],
    "text": [
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/*",
    ],
}


def cache_dir() -> Path:
    """The project's own cache (prompt embeddings): $CLEANDIFT_RT_CACHE or ~/.cache/cleandift-rt."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cleandift-rt"
    return Path(os.environ.get("CLEANDIFT_RT_CACHE", default))


def _offline_hint(repo: str) -> str:
    return (
        f"download it where there is internet (`hf download {repo}`) and copy the Hugging Face "
        "cache here (HF_HOME), or pass a local folder / .safetensors file instead"
    )


def snapshot(repo: str, patterns: list[str]) -> Path:
    """Local folder of ``repo`` holding at least the files matching ``patterns`` (downloaded
    into the Hugging Face cache when missing). Any failure → ModelError, one line."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated, HTTP errors: all user-facing
        raise ModelError(
            f"cannot get '{repo}' from the hub ({one_line(exc)}); " + _offline_hint(repo)
        ) from None


def hub_file(repo: str, filename: str) -> Path:
    """Local path of one file of a hub repo (downloaded when missing)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:
        raise ModelError(
            f"cannot get '{filename}' of '{repo}' from the hub "
            f"({one_line(exc)}); " + _offline_hint(repo)
        ) from None


def looks_like_repo_id(name: str) -> bool:
    """'org/name' with no path separators beyond the one slash and no file extension."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.endswith(".safetensors")
