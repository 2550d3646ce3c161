"""Merging client changes into the global adapter set (design.md 2.3).

Each client's change of each LoRA component against the round's starting global is averaged
with weights ``|D_i|``, normalised over the clients that trained *that component* (a copy at
rank ``r_cut`` trains only the first ``r_cut`` components), and added to the global. A
component nobody trained keeps its value, so nothing decays.

The work is split in two so that each server adds what it holds: the fed server accumulates
the client-side copies, the main server the server-side ones, and the main server merges
both accumulators (sums of weighted changes and of weights, so the joint normalisation over
both sides is exact) into one global set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitft.model.lora import Adapters, component_mask


class ChangeAccumulator:
    """Running sums of ``w_i * change_i`` and ``w_i`` per tensor component."""

    def __init__(self) -> None:
        self.weighted: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def add(self, name: str, start: torch.Tensor, trained: torch.Tensor, rank: int, weight: float) -> None:
        """Add one client's copy of tensor ``name`` trained at ``rank`` components."""
        mask = component_mask(name, start.shape, rank).to(start.device)
        change = (trained - start) * mask
        self.weighted[name] = self.weighted.get(name, 0) + weight * change
        self.weights[name] = self.weights.get(name, 0) + weight * mask

    def merge(self, other: ChangeAccumulator) -> ChangeAccumulator:
        out = ChangeAccumulator()
        for acc in (self, other):
            for name, value in acc.weighted.items():
                out.weighted[name] = out.weighted.get(name, 0) + value
                out.weights[name] = out.weights.get(name, 0) + acc.weights[name]
        return out

    def apply(self, start: Mapping[str, torch.Tensor]) -> Adapters:
        """``start`` plus the weighted mean change, component by component (``fedavg``)."""
        merged = {}
        for name, tensor in start.items():
            if name not in self.weighted:
                merged[name] = tensor.clone()
                continue
            total = self.weights[name]
            mean = self.weighted[name] / torch.where(total > 0, total, torch.ones_like(total))
            merged[name] = tensor + mean
        return merged
