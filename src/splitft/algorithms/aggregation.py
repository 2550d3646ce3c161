"""Merging client changes into the global adapter set (docs/architecture.md, D3).

Every client owns a full adapter stack: its client-side copy (blocks ``< cut``, uploaded to the
fed server) and its server-side copy (blocks ``>= cut``, on the main server). Each copy of a
tensor was trained at some rank (``r_cut`` for a cut block, else ``r_others``): a
:class:`Contribution` says which.

* ``fedavg`` (the paper): each client's change of each LoRA component (row of A, column of B)
  against the round's starting global is averaged with weights ``|D_i|``, normalised over the
  clients that trained *that component*, and added to the global. A component nobody trained
  keeps its value, so nothing decays. The client-side uploads and the main server's copies
  are summed (weighted changes and weights) and the fed server, which owns the global set,
  merges both sums, so the joint normalisation is exact.
* ``svd``: per adapted module, the weighted mean change of the update ``B @ A`` is added to the
  start and the best rank-``r_others`` approximation is stored, in canonical form
  (``lowrank.svd_merge``): no cross-term error, only a truncation error, which is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from splitft.algorithms.lowrank import svd_merge
from splitft.model.lora import Adapters, component_mask, lora_pairs


@dataclass(frozen=True)
class Contribution:
    """One client's trained copy of some tensors, the rank each was trained at, its weight."""

    weight: float
    tensors: Mapping[str, torch.Tensor]
    ranks: Mapping[str, int]


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

    def add_all(self, start: Adapters, contributions: Sequence[Contribution]) -> ChangeAccumulator:
        for c in contributions:
            for name, tensor in c.tensors.items():
                self.add(name, start[name], tensor, c.ranks[name], c.weight)
        return self

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


def merge_svd(start: Adapters, contributions: Sequence[Contribution], rank: int) -> tuple[Adapters, float]:
    """The ``svd`` merge of every adapted module; returns the new set and the total truncation error."""
    merged = {name: tensor.clone() for name, tensor in start.items()}
    total_error = 0.0
    for a_name, b_name in lora_pairs(start):
        a0, b0 = start[a_name], start[b_name]
        updates = []
        for c in contributions:
            if a_name not in c.tensors:
                continue
            r = c.ranks[a_name]
            a_start = a0 * component_mask(a_name, a0.shape, r).to(a0.device)
            b_start = b0 * component_mask(b_name, b0.shape, r).to(b0.device)
            updates.append((c.weight, c.tensors[a_name], c.tensors[b_name], a_start, b_start))
        if not updates:
            continue
        merged[a_name], merged[b_name], error = svd_merge((a0, b0), updates, rank)
        total_error += error**2
    return merged, total_error**0.5


def merge(
    start: Adapters,
    client_side: Sequence[Contribution],
    server_side: Sequence[Contribution],
    mode: str,
    rank: int,
    client_sum: ChangeAccumulator | None = None,
) -> tuple[Adapters, float]:
    """The new global set from both sides' contributions; the truncation error (0 for fedavg).
    ``client_sum``: fedavg sums of client contributions already added (``client_side`` adds to it)."""
    if mode == "svd":
        return merge_svd(start, [*client_side, *server_side], rank)
    fed = (client_sum or ChangeAccumulator()).add_all(start, client_side)
    main = ChangeAccumulator().add_all(start, server_side)
    return fed.merge(main).apply(start), 0.0
