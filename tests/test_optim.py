"""Learning-rate schedule: warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math

import pytest
import torch

from splitft.algorithms.optim import AdapterOptimizer, lr_factor
from splitft.config import TrainConfig


def test_warmup_is_linear_then_schedules_decay_to_zero():
    assert [lr_factor(s, 4, 20, "constant") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(10, 4, 20, "constant") == 1.0
    assert lr_factor(4, 4, 20, "linear") == 1.0
    assert lr_factor(20, 4, 20, "linear") == 0.0
    assert lr_factor(12, 4, 20, "linear") == pytest.approx(0.5)
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0)


def test_optimizer_clips_and_uses_the_scheduled_rate():
    w = torch.zeros(3, requires_grad=True)
    opt = AdapterOptimizer({"w": w}, TrainConfig(lr=0.1, max_grad_norm=1.0, warmup_steps=2), total_steps=10)
    w.grad = torch.tensor([30.0, 40.0, 0.0])  # norm 50, clipped to 1
    opt.step(0)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert w.grad is None
    # Adam's first step moves each coordinate with a nonzero gradient by about lr
    assert torch.allclose(w.detach().abs()[:2], torch.full((2,), 0.05), atol=1e-3)
    assert w.detach()[2] == 0
