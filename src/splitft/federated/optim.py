"""AdamW with optional linear warm-up and a linear or cosine decay, per adapter owner.

Every role keeps one optimizer per client copy it trains (design.md 2.5): state survives
rounds and is reset only when the tensors it optimises are replaced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from splitft.config import TrainConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


class AdapterOptimizer:
    """AdamW over one set of adapter tensors, with schedule and gradient clipping."""

    def __init__(self, params: Iterable[torch.Tensor], cfg: TrainConfig, total_steps: int) -> None:
        self.params = list(params)
        self.cfg = cfg
        self.total_steps = total_steps
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(self, global_step: int) -> None:
        """Clip, step at the learning rate scheduled for ``global_step``, clear the gradients.

        The schedule follows the run's step count, not this optimizer's: a client whose state
        was reset does not warm up again.
        """
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        factor = lr_factor(global_step, self.cfg.warmup_steps, self.total_steps, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
