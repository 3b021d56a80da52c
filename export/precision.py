"""Precision policy for reduced-precision graphs.

An fp16/bf16 graph keeps two fp32 islands, the known error sources of Stable Diffusion in half
precision: attention scores and softmax (SD 2.1 overflows in fp16 without them) and
normalisation statistics (GroupNorm, which TensorRT otherwise runs as fp16 InstanceNorm).
Everything else runs in the reduced dtype, so the exported graph's tensors carry explicit types
(what TensorRT's strongly typed mode and onnxruntime both need).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch import nn


class FP32ScoresAttention(Attention):
    """diffusers' ``Attention`` whose scores need no scratch buffer: the classic processor's
    ``baddbmm(empty, q, kᵀ, beta=0, alpha=scale)`` becomes ``(q @ kᵀ) · scale`` (the same
    arithmetic). The empty input exported as a ConstantOfShape of (B·heads, Lq, Lk) zeros, which
    constant folding turns into huge all-zero fp32 initialisers (gigabytes at 768²)."""

    def get_attention_scores(
        self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query (B·heads, Lq, d), key (B·heads, Lk, d) → probabilities (B·heads, Lq, Lk) in
        query's dtype; q·k in fp32 when ``upcast_attention``, softmax in fp32 when
        ``upcast_softmax``."""
        dtype = query.dtype
        if self.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.bmm(query, key.transpose(-1, -2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 (statistics and affine), result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def apply_precision_policy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module`` to ``dtype`` (in place) keeping attention scores/softmax and GroupNorm
    in fp32. A no-op policy for fp32."""
    module.to(dtype)
    if dtype == torch.float32:
        return module
    for sub in module.modules():
        if type(sub) is nn.GroupNorm:
            sub.__class__ = FP32GroupNorm  # same parameters, fp32 arithmetic
        if isinstance(sub, Attention):
            # diffusers' classic processor: q·k in fp32 when upcast_attention, softmax in fp32
            # when upcast_softmax, probabilities cast back before the value product
            if type(sub) is Attention:
                sub.__class__ = FP32ScoresAttention  # same parameters, no zero scratch buffer
            sub.upcast_attention = True
            sub.upcast_softmax = True
            sub.set_processor(AttnProcessor())
    return module
