"""Shared builders for tests: tiny random models of every family, with LoRA, split."""

from __future__ import annotations

import functools

import torch

from splitft.model.loading import load_model, load_tokenizer
from splitft.model.lora import AdapterLayout, attach_lora, initial_adapters
from splitft.model.split import SplitModel

FAMILIES = ("gpt2", "opt", "gpt-neo", "llama", "qwen2")


@functools.cache
def tokenizer():
    return load_tokenizer("tiny:llama")  # SmolLM2's tokenizer


def tiny_split(
    family: str, rank: int = 16, seed: int = 0
) -> tuple[SplitModel, AdapterLayout, dict[str, torch.Tensor]]:
    """A tiny model of ``family`` with LoRA, its layout, and non-trivial adapters.

    PEFT initialises B to zero, which would make every gradient of A zero; the adapters
    returned are random in both factors so every gradient is exercised.
    """
    base = load_model(f"tiny:{family}", vocab_size=len(tokenizer()), seed=seed)
    probe = SplitModel(base)
    peft_model = attach_lora(base, probe.family, rank, 2.0 * rank, seed=seed)
    causal_lm = peft_model.base_model.model
    model = SplitModel(causal_lm)
    layout = AdapterLayout.of(causal_lm, model.family)
    gen = torch.Generator().manual_seed(seed + 1)
    adapters = {n: 0.05 * torch.randn(t.shape, generator=gen) for n, t in initial_adapters(causal_lm).items()}
    return model, layout, adapters


def batch(padding_side: str, seed: int = 0, batch_size: int = 3, length: int = 24) -> dict[str, torch.Tensor]:
    """Random ids with ragged padding on ``padding_side``; labels -100 on padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(tokenizer()), (batch_size, length), generator=gen)
    mask = torch.ones_like(ids)
    for row, real in enumerate([length, length // 2, 5][:batch_size]):
        if padding_side == "right":
            mask[row, real:] = 0
        else:
            mask[row, : length - real] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def leaves(adapters: dict[str, torch.Tensor], names=None) -> dict[str, torch.Tensor]:
    names = adapters.keys() if names is None else names
    return {n: adapters[n].clone().requires_grad_(True) for n in names}
