"""Allocation policies: who cuts where, decided before every round (design.md 2.7).

A policy sees the round number and what it needs about the clients, and returns one
:class:`Decision` per client: the cut and a short reason, which the round loop logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from splitft.errors import ConfigError


@dataclass(frozen=True)
class Decision:
    cut: int
    reason: str


class AllocationPolicy(Protocol):
    name: str

    def allocate(self, round_number: int) -> list[Decision]:
        """Cuts for every client (client order) for round ``round_number``."""
        ...


def resolve_cuts(cuts: list[int], num_clients: int, num_blocks: int) -> list[int]:
    """One cut per client from ``split.cuts`` (empty: spread evenly over 1..M-1)."""
    if num_blocks < 2:
        raise ConfigError(f"the model has {num_blocks} block(s); a split needs at least 2")
    if not cuts:
        if num_clients == 1:
            return [max(1, num_blocks // 2)]
        step = (num_blocks - 2) / (num_clients - 1)
        return [1 + round(i * step) for i in range(num_clients)]
    if len(cuts) == 1:
        cuts = cuts * num_clients
    if len(cuts) != num_clients:
        raise ConfigError(
            f"split.cuts has {len(cuts)} values; give one value or one per client (federation.num_clients={num_clients})"
        )
    for cut in cuts:
        if not 1 <= cut <= num_blocks - 1:
            raise ConfigError(
                f"split.cuts value {cut} is outside 1..{num_blocks - 1} (the model has {num_blocks} blocks)"
            )
    return list(cuts)


class FixedPolicy:
    """The same cuts every round (per client, or one for all: the paper's "Same Split")."""

    name = "fixed"

    def __init__(self, cuts: list[int]) -> None:
        self.cuts = list(cuts)

    def allocate(self, round_number: int) -> list[Decision]:
        return [Decision(cut, "fixed by split.cuts") for cut in self.cuts]
