"""Prompt embeddings: computed once with the base model's text encoder, then cached.

The U-Net's cross-attention context for a prompt (the empty prompt by default) is the text
encoder's last hidden state for the prompt padded to 77 tokens, as diffusers' SD pipelines
compute it. transformers is needed only to compute an embedding that is not cached yet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ModelError
from .checkpoint import atomic_save
from .hub import cache_dir

STORED_EMBEDDING = "cleandift_rt_prompt.safetensors"  # optional file in a model folder


def _cache_path(model_key: str, prompt: str) -> Path:
    digest = hashlib.sha256(f"{model_key}\0{prompt}".encode()).hexdigest()[:32]
    return cache_dir() / "prompts" / f"{digest}.safetensors"


def stored_embedding(folder: Path, prompt: str) -> torch.Tensor | None:
    """An embedding shipped in the model folder (for models without a text encoder)."""
    path = folder / STORED_EMBEDDING
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    key = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    return tensors.get(key) if key in tensors else (tensors.get("context") if not prompt else None)


def compute_embedding(folder: Path, prompt: str) -> torch.Tensor:
    """Text-encoder context (1, 77, D) float32 for ``prompt`` from a diffusers SD folder."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ModelError(
            "computing the prompt embedding needs transformers: pip install 'cleandift-rt[text]'"
        ) from None
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise ModelError(f"'{folder}' has no text_encoder/ and tokenizer/ to embed the prompt")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True)
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=encoder.config.max_position_embeddings,  # 77 for SD's CLIP encoders
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def cached_embedding(model_key: str, prompt: str, compute) -> torch.Tensor:
    """The embedding for (model, prompt) from the cache, else ``compute()`` and cache it."""
    path = _cache_path(model_key, prompt)
    if path.is_file():
        return load_file(str(path))["context"]
    context = compute()
    try:
        atomic_save({"context": context}, path, {"model": model_key, "prompt": prompt})
    except OSError:
        pass  # a read-only cache only costs a recomputation next time
    return context
