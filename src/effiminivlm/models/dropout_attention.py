"""Attention with dropout for training on a CPU: low-precision matrix products and a cheap dropout mask.

Why: a Hugging Face text tower (MiniLM: `attention_probs_dropout_prob` 0.1) calls PyTorch's
`scaled_dot_product_attention` with `dropout_p > 0` while it trains. On a CPU no fused kernel takes
dropout, so PyTorch runs its unfused "math" path, which under bf16 autocast casts q, k and v up to fp32
(so both batched products miss the bf16 matrix units) and draws the dropout mask with `bernoulli_`, one
serial draw per attention weight (32 x 12 x 256 x 256 = 25M per layer). Profiled on a training step of the
offline recipe (batch 32, 256 tokens), that path was about half of the step, the draw alone ~20%.

`dropout_attention` computes the same function as that path, `dropout(softmax(q k^T * scale + mask)) v`, in
the order of Hugging Face's eager BERT attention under autocast: both products in the autocast dtype (bf16:
the matrix units), softmax over fp32-accumulated logits, the dropout mask drawn 64 bits at a time
(`drop_mask`: one generator call per four weights, ~3x cheaper than `bernoulli_`) and applied with one
`where`, the 1/(1-p) rescale folded into the small [B, H, L, D] output. It is used only where dropout is
live (Hugging Face passes p > 0 only in training mode); otherwise, in evaluation, inference and export,
it hands the call to Hugging Face's SDPA function unchanged, which picks the fused flash kernel.

The dropout mask draws from PyTorch's default generator, so a seeded run is reproducible; its keep
probability is quantised to 1/65536 (p = 0.1 drops 6554/65536 = 0.100006 of the weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

NAME = "effiminivlm_dropout_sdpa"  # the attention implementation's name in Hugging Face's registries


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True (dropped) with probability p (quantised to 1/65536).

    Why this way: one 64-bit draw over the whole int64 range yields four uniform 16-bit words, so the
    generator runs once per four elements; a signed word below `thr` has probability (thr + 2^15) / 2^16."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2 ** 63), None)
    thr = round(p * 65536) - 32768
    return (words.view(torch.int16)[:n] < thr).view(shape)


def _zeroed(x: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """`x` with the elements where `drop` is True set to 0 (one pass, no rescale)."""
    return torch.where(drop, x.new_zeros(()), x)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SDPA's mask as an additive bias in `dtype`: a bool mask (True = attend) becomes 0 / dtype's minimum.
    A padding mask expanded over query rows ([B, 1, L, L] with stride 0 on the rows, as Hugging Face builds
    for an encoder) is reduced to one row ([B, 1, 1, L]), so the bias broadcasts instead of being stored."""
    if mask.dim() == 4 and mask.size(2) > 1 and mask.stride(2) == 0:
        mask = mask[:, :, :1]
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask, torch.finfo(dtype).min)


class _SoftmaxDropout(torch.autograd.Function):
    """softmax(scores) with a `drop_mask` zeroing (no rescale), in the scores' dtype (fp32 accumulation
    inside the kernels). Why a Function: autograd would chain `where`'s backward (two passes over the
    [B, H, L, L] weights) into softmax's; here the backward is one `where` and one softmax backward."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, p: float) -> torch.Tensor:
        with torch.autocast(scores.device.type, enabled=False):
            probs = torch.softmax(scores, dim=-1)
        drop = drop_mask(probs.shape, p, probs.device)
        ctx.save_for_backward(probs, drop)
        return _zeroed(probs, drop)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, drop = ctx.saved_tensors
        return torch._softmax_backward_data(_zeroed(grad, drop), probs, -1, probs.dtype), None


def dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Hugging Face attention-interface function (query/key/value [B, H, L, D]; returns [B, L, H, D]).

    With dropout (Hugging Face passes p only to a module in training mode) the unfused path of this module;
    with p = 0 Hugging Face's SDPA function, unchanged. `attention_mask`: SDPA's format (bool, True =
    attend; or additive float; or None).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.size(-1) ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # scale on q: L/D times fewer elements
    if attention_mask is not None:
        scores = scores + _additive(attention_mask, scores.dtype)
    probs = _SoftmaxDropout.apply(scores, dropout)
    out = torch.matmul(probs, value) * (1.0 / (1.0 - dropout))
    return out.transpose(1, 2).contiguous(), None


class MaskDropout(nn.Dropout):
    """`nn.Dropout` whose training mask comes from `drop_mask` (the same probability, ~3x cheaper to draw on
    a CPU than `bernoulli_`), applied with one `where` and one rescale; identical in evaluation. The class
    swap keeps the module's name and has no parameters, so nothing saved changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _zeroed(x, drop_mask(x.shape, self.p, x.device)) * (1.0 / (1.0 - self.p))


def _register() -> None:
    """Add `NAME` to Hugging Face's attention and mask registries (SDPA's mask format); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, dropout_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Switch every Hugging Face sub-model of `model` that runs SDPA attention with dropout to
    `dropout_attention`, and its `nn.Dropout` layers to `MaskDropout`; returns how many sub-models. Only
    the config's attention implementation and the dropout layers' class change: no weight, name or saved
    format does, and evaluation keeps SDPA's fused kernel."""
    n = 0
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if (cfg is None or not hasattr(module, "set_attn_implementation")
                or getattr(cfg, "_attn_implementation", None) != "sdpa"
                or not getattr(cfg, "attention_probs_dropout_prob", 0.0)):
            continue
        _register()
        module.set_attn_implementation(NAME)
        for sub in module.modules():
            if type(sub) is nn.Dropout:
                sub.__class__ = MaskDropout
        n += 1
    return n
