"""Scoring an adapter set on held-out text (design.md 2.9).

Perplexity is ``exp(sum of token NLL / number of scored tokens)`` over the whole evaluated
set, each sample scored on its own (no sliding window), padding excluded through the attention
mask; accuracy is the share of scored next tokens predicted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from splitft.data.tokenize import TokenizedDataset, collate
from splitft.model.split import SplitModel, token_stats


@dataclass(frozen=True)
class EvalResult:
    loss: float
    """Mean NLL per scored token."""
    ppl: float
    acc: float
    tokens: int

    @classmethod
    def from_sums(cls, loss_sum: float, tokens: int, correct: int) -> EvalResult:
        loss = loss_sum / max(tokens, 1)
        return cls(loss, math.exp(min(loss, 700.0)), correct / max(tokens, 1), tokens)


@torch.no_grad()
def evaluate(
    model: SplitModel,
    adapters: Mapping[str, torch.Tensor] | None,
    data: TokenizedDataset,
    pad_id: int,
    batch_size: int,
    max_samples: int,
) -> EvalResult:
    """Score the unsplit model with ``adapters`` on the first ``max_samples`` samples of ``data``."""
    n = min(len(data), max_samples)
    # Batches of similar lengths waste little compute on padding; every sample is scored on
    # its own (padding is masked), so the order does not change the result.
    order = sorted(range(n), key=lambda i: len(data[i]["input_ids"]))
    loss_sum, tokens, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        batch = collate([data[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model.full_forward(batch["input_ids"], batch["attention_mask"], adapters)
        s, t, c = token_stats(logits, batch["labels"])
        loss_sum, tokens, correct = loss_sum + float(s), tokens + t, correct + c
    return EvalResult.from_sums(loss_sum, tokens, correct)
