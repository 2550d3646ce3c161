"""Compute precision: the frozen base model in fp32, bf16 or fp16; LoRA, optimizer and loss in fp32.

Why this split: the frozen base holds almost every weight and does almost every FLOP, so
holding it in bf16 halves its memory and lets the matrix units run at their bf16 rate (about
2x fp32 on this project's CPU, more on GPUs). The adapters are tiny but are what training
changes: their updates (lr x Adam step, ~1e-3 relative) would vanish in bf16's 8-bit mantissa,
so they, their AdamW moments and the loss stay fp32.

How it runs: PEFT's LoRA layer casts its input to the adapter's dtype, computes the low-rank
path in fp32 and casts the sum back to the base layer's dtype, so a bf16 base with fp32 adapter
tensors (handed in through ``functional_call``) needs nothing more. Adapters are created on the
fp32 model before the cast, so a run's initial adapters are the same in every precision.
"""

from __future__ import annotations

import torch
from torch import nn

from splitft.choices import COMPUTE_DTYPES
from splitft.errors import ConfigError
from splitft.model.attention import NAME
from splitft.model.attention import register as register_matmul_attention

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
assert tuple(TORCH_DTYPES) == COMPUTE_DTYPES  # one list of names, defined in config.py


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of ``compute_dtype = name`` on ``device``; fp16 needs CUDA (CPUs have no
    fast fp16 matrix path, and fp16's range needs loss scaling that only pays off on GPUs)."""
    if name not in TORCH_DTYPES:
        raise ConfigError(f"compute_dtype = {name!r}: must be one of {', '.join(COMPUTE_DTYPES)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"compute_dtype = 'fp16' needs a CUDA device (the run's device is {device.type}); "
            "on a CPU use 'bf16' or 'fp32'"
        )
    return TORCH_DTYPES[name]


def cast_frozen_base(model: nn.Module, dtype: torch.dtype) -> None:
    """Hold every frozen floating-point weight of ``model`` in ``dtype``, in place; LoRA slots
    (``.lora_`` in the name) and buffers (rotary frequencies, masks) keep their dtype."""
    if dtype == torch.float32:
        return  # nothing to do, and nothing touched: fp32 runs stay bit-identical
    for name, param in model.named_parameters():
        if ".lora_" not in name and param.is_floating_point():
            param.data = param.data.to(dtype)


def hold_base_in(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Hold the frozen base of ``model`` in ``dtype`` (:func:`cast_frozen_base`) and pick the
    attention kernel for it on ``device`` (:func:`attention_for`)."""
    cast_frozen_base(model, dtype)
    attention = attention_for(model, dtype, device)
    if attention is not None and model.config._attn_implementation != attention:
        model.set_attn_implementation(attention)


def attention_for(model: nn.Module, dtype: torch.dtype, device: torch.device) -> str | None:
    """The attention implementation ``model`` should run with a base in ``dtype`` on ``device``,
    or None to keep its own.

    A bf16 base on a CPU runs :func:`splitft.model.attention.matmul_attention` where the family
    would run SDPA (torch's CPU flash kernel is slower in bf16 than in fp32; see that module).
    Families without SDPA (GPT-Neo) keep their eager path; fp32 keeps SDPA, so fp32 runs stay
    bit-identical.
    """
    if (
        dtype == torch.bfloat16
        and device.type == "cpu"
        and model.config._attn_implementation in ("sdpa", NAME)
    ):
        return register_matmul_attention()
    return None


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the frozen base runs in (that of its input embeddings)."""
    return model.get_input_embeddings().weight.dtype
