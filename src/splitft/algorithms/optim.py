"""AdamW with optional linear warm-up and a linear or cosine decay, per adapter owner.

Every role keeps one optimizer per client copy it trains (docs/architecture.md, D5): state survives
rounds and is reset only for an adapter whose basis changed (or that was just handed over
from the other side of the cut).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from splitft.config import TrainConfig
from splitft.errors import DivergenceError


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
    """AdamW over one named set of adapter tensors, with schedule and gradient clipping."""

    def __init__(self, params: Mapping[str, torch.Tensor], cfg: TrainConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = total_steps
        self.params = dict(params)
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

    def replace(self, params: Mapping[str, torch.Tensor]) -> None:
        """Optimise ``params`` from now on, keeping the state of tensors it already had."""
        old_state = self.optimizer.state
        self.params = dict(params)
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        for tensor in self.params.values():
            if tensor in old_state:
                self.optimizer.state[tensor] = old_state[tensor]

    def reset(self, names: Iterable[str]) -> None:
        """Forget the AdamW state of the named tensors (their basis changed)."""
        for name in names:
            if name in self.params:
                self.optimizer.state.pop(self.params[name], None)

    def step(self, global_step: int) -> None:
        """Clip, step at the learning rate scheduled for ``global_step``, clear the gradients.

        The schedule follows the run's step count, not this optimizer's: a client whose state
        was reset does not warm up again. A non-finite gradient (a NaN or infinite loss behind
        it) raises DivergenceError before anything changes: stepping would spread NaN into
        every adapter it touches.
        """
        tensors = list(self.params.values())
        if self.cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(tensors, self.cfg.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([t.grad for t in tensors if t.grad is not None])
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise DivergenceError(
                f"the gradient norm is {float(norm)} at step {global_step}: training diverged "
                f"(train.lr = {self.cfg.lr:g}; try a lower one)"
            )
        factor = lr_factor(global_step, self.cfg.warmup_steps, self.total_steps, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"param": {name: tensor}, "exp_avg": {...}, "exp_avg_sq": {...}, "step": {...}}``:
        all a checkpoint needs to rebuild this optimizer exactly (a tensor without moments has
        none yet, or had them reset)."""
        out: dict[str, dict[str, torch.Tensor]] = {"param": {}}
        for name, tensor in self.params.items():
            out["param"][name] = tensor.detach()
            for key, value in self.optimizer.state.get(tensor, {}).items():
                out.setdefault(key, {})[name] = torch.as_tensor(value)
        return out

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Copy the values and moments of :meth:`state_dict` back in place."""
        with torch.no_grad():
            for name, tensor in self.params.items():
                tensor.copy_(state["param"][name])
                moments = {
                    k: state[k][name].to(tensor.device).clone() for k in MOMENTS if name in state.get(k, {})
                }
                self.optimizer.state.pop(tensor, None)
                if moments:
                    self.optimizer.state[tensor] = moments


def retarget(
    params: dict[str, torch.Tensor],
    optimizer: AdapterOptimizer | None,
    names: Iterable[str],
    shapes: Mapping[str, torch.Size],
    device: torch.device,
    cfg: TrainConfig,
    total_steps: int,
) -> tuple[dict[str, torch.Tensor], AdapterOptimizer]:
    """A copy over ``names``: tensors (and their optimizer state) it already had are kept,
    new ones start at zero (their values arrive with the round's adapters)."""
    new = {
        n: params[n] if n in params else torch.zeros(shapes[n], device=device, requires_grad=True)
        for n in names
    }
    if optimizer is None:
        return new, AdapterOptimizer(new, cfg, total_steps)
    optimizer.replace(new)
    return new, optimizer


MOMENTS = ("exp_avg", "exp_avg_sq", "step")
"""AdamW's per-tensor state, as saved in checkpoints and exported by clients."""
