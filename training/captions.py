"""Caption embeddings with the teacher's text encoder (loaded only when captions are used).

Images without a caption use the teacher's empty-prompt context (``LoadedModel.context``), as
the recipe's unconditional case. Teachers without a text encoder (``tiny``, ``random:*``) train
on the empty prompt: captions are ignored with one warning (decided so that a captioned folder
can be smoke-tested on ``tiny``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cleandift_rt.errors import ModelError
from cleandift_rt.models.hub import WEIGHT_PATTERNS, looks_like_repo_id, snapshot
from cleandift_rt.models.presets import PRESETS


def text_encoder_folder(teacher: str) -> Path | None:
    """Folder with ``text_encoder/`` and ``tokenizer/`` for a teacher name, or None if it has none
    (``tiny``, ``random:*``). Presets and hub ids download the text files into the Hugging Face
    cache."""
    preset = PRESETS.get(teacher)
    if preset is not None:
        if preset.base is None:
            return None
        return snapshot(preset.base, WEIGHT_PATTERNS["text"]).folder
    path = Path(teacher).expanduser()
    if path.is_dir():
        return path if (path / "text_encoder").is_dir() else None
    if looks_like_repo_id(teacher):
        return snapshot(teacher, WEIGHT_PATTERNS["text"]).folder
    return None


class CaptionEncoder:
    """Captions → cross-attention context (B, 77, D) float32; "" → the empty-prompt context."""

    def __init__(self, folder: Path, empty_context: torch.Tensor, device: torch.device):
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise ModelError(
                "captions need transformers: pip install 'cleandift-rt[train]'"
            ) from None
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", use_safetensors=True
        ).to(device)
        self.encoder.requires_grad_(False).eval()
        self.empty = empty_context.to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        context = self.encoder(ids)[0].float()
        empty = torch.tensor([not c for c in captions], device=self.device)
        return torch.where(empty[:, None, None], self.empty.expand_as(context), context)
