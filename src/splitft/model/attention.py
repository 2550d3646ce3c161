"""Attention for a bf16 base on a CPU: matrix products in bf16, the softmax in fp32.

Why it exists: torch's CPU flash-attention kernel (what HF's ``sdpa`` runs there) is slower in
bf16 than in fp32: forward + backward of one SmolLM2 attention at 4 x 128 tokens, one thread,
took 27.5 ms in bf16 against 11.7 ms in fp32, a seventh of a bf16 split step
(docs/benchmarks.md). HF's own ``eager`` path is fast but, in some families (GPT-2), takes the
softmax in bf16, which measurably loses gradient accuracy, and gives a query that sees no key
(a left-padding position) a uniform average where SDPA gives zeros. :func:`matmul_attention` is
the plain formula with the softmax in fp32 and SDPA's zeros: about 11 ms, and within 2x of the
flash kernel's bf16 rounding error against fp32 (tests/test_precision.py).

It is registered with transformers' ``AttentionInterface`` under :data:`NAME`, with the mask
``sdpa`` uses (a boolean mask, or None with ``is_causal``), so a model runs it through its own
forward like any built-in implementation.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

NAME = "splitft_matmul"
"""The name under which :func:`matmul_attention` is registered (``config._attn_implementation``)."""


def matmul_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """``softmax(q k^T * scaling + mask) v`` over (batch, heads, length, head_dim) tensors, the
    softmax in fp32; returns (batch, length, heads, head_dim) as HF's attention functions do."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    q_len, kv_len = scores.shape[-2:]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and q_len > 1:
        # sdpa's is_causal: query i (the last q_len of kv_len positions) sees keys up to itself.
        rows = torch.arange(kv_len - q_len, kv_len, device=scores.device)[:, None]
        attention_mask = rows >= torch.arange(kv_len, device=scores.device)[None, :]
    blind = None  # query rows that may see no key at all
    if attention_mask is not None:
        attention_mask = attention_mask[..., :kv_len]
        if attention_mask.dtype == torch.bool:
            # finfo.min, not -inf, keeps a fully masked row (a left-padding position) finite
            # through softmax and its backward; SDPA returns zeros for such a row, and so do we.
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            blind = ~attention_mask.any(dim=-1, keepdim=True)
        else:
            scores = scores + attention_mask.to(scores.dtype)
    probs = scores.softmax(dim=-1, dtype=torch.float32)  # reads bf16, sums in fp32
    if blind is not None:
        probs = probs.masked_fill(blind, 0.0)
    probs = probs.to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`matmul_attention` (and sdpa's mask for it) with transformers; idempotent."""
    AttentionInterface.register(NAME, matmul_attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return NAME
