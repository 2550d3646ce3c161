"""Allocation policies: who cuts where, decided before every round (docs/architecture.md, D7).

A policy sees an :class:`AllocationContext` (last round's cuts, each client's held-out
accuracy of the global model, each device's memory bound, and a predictor of the round's
virtual time for any cuts) and returns one :class:`Decision` per client: the cut and a short
reason, which the round loop logs.

* ``fixed``: the cuts of ``split.cuts`` every round (one for all: the paper's "Same Split").
* ``accuracy``: the paper's rule ``w_i = 1 + gamma * (acc_i - mean acc)``. Integer mapping:
  a client with ``w_i > 1 + tolerance`` takes one more block, one with
  ``w_i < 1 - tolerance`` one fewer, the others keep their cut; always within
  ``1 .. max_cut_i`` (memory, and ``M - 1``).
* ``resource``: the cuts that minimise the predicted round makespan (server queue included),
  within every device's memory. Search: coordinate descent (each client's best cut with the
  others fixed, until nothing improves) from several starts; ties on the makespan are broken
  by the sum of the clients' times so non-bottleneck clients still move to their best cut.
* ``splitft`` (resource + accuracy): the resource cuts bound each client's range, namely the
  cuts that keep the predicted makespan within ``(1 + slack)`` of the best; inside it the
  accuracy rule steers the client from last round's cut. With one shared server-side adapter
  set (``ctx.shared``, docs/architecture.md D10) the cut is a quality lever instead: every
  block on the server trains sequentially, so each client takes the *smallest* cut of its
  range, the most server blocks the time budget allows.

The accuracy comes from ``policy.signal``: each client's smoothed training-batch accuracy
(``algorithms/signals.py``, free) or a held-out check (docs/architecture.md, D11). The
predictor plans for the round's participants only (``ctx.clients``); a client not taking part
keeps its cut. With ``policy.wire_formats``, ``resource`` and ``splitft`` also pick each
client's format at the cut (``algorithms/wire_choice.py``, docs/architecture.md D14).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from splitft.algorithms.wire_choice import Predict, Wire, choose_wire
from splitft.errors import ConfigError
from splitft.sim.clock import RoundTiming

if TYPE_CHECKING:
    from splitft.config import PolicyConfig


@dataclass(frozen=True)
class Decision:
    cut: int
    reason: str
    weight: float | None = None
    """The accuracy weight ``w_i`` where the policy used one."""
    wire: str | None = None
    """The format of activations and gradients at the cut the policy chose (None: as configured)."""


@dataclass
class AllocationContext:
    round_number: int
    previous: list[int]
    """Cuts of the previous round (round 1: the configured starting cuts)."""
    max_cut: list[int]
    """Largest cut each client's memory holds (at most M - 1)."""
    predict: Predict
    """Predicted virtual timing of a round with the given cuts (and, optionally, one wire format
    per client); ``per_client_s`` is keyed by client index."""
    accuracy: dict[int, float] = field(default_factory=dict)
    """The accuracy signal per client (empty before the first measurement)."""
    clients: list[int] | None = None
    """The clients taking part in the round (None: all); the others keep their cut."""
    shared: bool = False
    """Whether the main server keeps one shared server-side adapter set (D10)."""

    @property
    def participants(self) -> list[int]:
        return list(range(len(self.max_cut))) if self.clients is None else list(self.clients)


class AllocationPolicy(Protocol):
    name: str
    uses_accuracy: bool
    """Whether it steers with held-out accuracy (the loop then runs the held-out check)."""

    def allocate(self, ctx: AllocationContext) -> list[Decision]:
        """One decision per client (client order) for the round ``ctx.round_number``."""
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
    """The same cuts every round."""

    name = "fixed"
    uses_accuracy = False

    def __init__(self, cuts: list[int]) -> None:
        self.cuts = list(cuts)

    @classmethod
    def from_config(cls, cfg: PolicyConfig, start_cuts: list[int]) -> FixedPolicy:
        return cls(start_cuts)

    def allocate(self, ctx: AllocationContext) -> list[Decision]:
        return [Decision(cut, "fixed by split.cuts") for cut in self.cuts]


def accuracy_weights(accuracy: dict[int, float], gamma: float) -> dict[int, float]:
    """``w_i = 1 + gamma * (acc_i - mean acc)`` over the clients that were scored."""
    if not accuracy:
        return {}
    mean = sum(accuracy.values()) / len(accuracy)
    return {i: 1.0 + gamma * (acc - mean) for i, acc in accuracy.items()}


def accuracy_step(weight: float, tolerance: float) -> int:
    """+1 block for ``w > 1 + tolerance``, -1 for ``w < 1 - tolerance``, else 0."""
    if weight > 1.0 + tolerance:
        return 1
    if weight < 1.0 - tolerance:
        return -1
    return 0


class AccuracyPolicy:
    """The paper's accuracy rule, one block per round, within memory."""

    name = "accuracy"
    uses_accuracy = True

    def __init__(self, gamma: float, tolerance: float) -> None:
        self.gamma = gamma
        self.tolerance = tolerance

    @classmethod
    def from_config(cls, cfg: PolicyConfig, start_cuts: list[int]) -> AccuracyPolicy:
        return cls(cfg.gamma, cfg.tolerance)

    def allocate(self, ctx: AllocationContext) -> list[Decision]:
        weights = accuracy_weights(ctx.accuracy, self.gamma)
        decisions = []
        for i, cut in enumerate(ctx.previous):
            low, high = 1, ctx.max_cut[i]
            if i not in weights:
                decisions.append(Decision(min(max(cut, low), high), "no held-out accuracy yet: keep cut"))
                continue
            w = weights[i]
            new = min(max(cut + accuracy_step(w, self.tolerance), low), high)
            decisions.append(Decision(new, f"w={w:.3f}: {_moved(cut, new)} within 1..{high}", w))
        return decisions


def _moved(old: int, new: int) -> str:
    return "keep cut" if new == old else f"cut {old}->{new}"


def _objective(timing: RoundTiming) -> tuple[float, float]:
    return (round(timing.makespan_s, 9), round(sum(timing.per_client_s.values()), 9))


def predict(ctx: AllocationContext, cuts: list[int], wire: Wire | None) -> RoundTiming:
    """``ctx.predict`` of ``cuts``, with the wire formats where the policy chose any."""
    return ctx.predict(cuts) if wire is None else ctx.predict(cuts, wire)


def best_resource_cuts(
    ctx: AllocationContext, max_sweeps: int = 20, wire: Wire | None = None
) -> tuple[list[int], RoundTiming]:
    """Cuts minimising the predicted makespan (then the sum of client times) within memory;
    only the participants' cuts are searched (the others keep last round's)."""
    previous = [min(max(c, 1), m) for c, m in zip(ctx.previous, ctx.max_cut, strict=True)]
    clients = ctx.participants
    starts = [
        [1] * len(previous),
        list(ctx.max_cut),
        previous,
        [(1 + m) // 2 for m in ctx.max_cut],
    ]
    best_cuts, best_timing = None, None
    for start in starts:
        cuts = [start[i] if i in clients else c for i, c in enumerate(previous)]
        timing = predict(ctx, cuts, wire)
        for _ in range(max_sweeps):
            improved = False
            for i in clients:
                for cut in range(1, ctx.max_cut[i] + 1):
                    if cut == cuts[i]:
                        continue
                    trial = cuts[:i] + [cut] + cuts[i + 1 :]
                    trial_timing = predict(ctx, trial, wire)
                    if _objective(trial_timing) < _objective(timing):
                        cuts, timing, improved = trial, trial_timing, True
            if not improved:
                break
        if best_timing is None or _objective(timing) < _objective(best_timing):
            best_cuts, best_timing = cuts, timing
    return best_cuts, best_timing


def plan(ctx: AllocationContext, formats: Sequence[str]) -> tuple[list[int], RoundTiming, Wire | None]:
    """The resource cuts; with wire ``formats`` the cuts and formats together: cuts at the most
    faithful format, the formats for those cuts (D14), then the cuts again for those formats."""
    cuts, timing = best_resource_cuts(ctx)
    if not formats:
        return cuts, timing, None
    wire = choose_wire(ctx.predict, cuts, ctx.participants, formats)
    cuts, timing = best_resource_cuts(ctx, wire=wire)
    return cuts, timing, wire


def with_wire(ctx: AllocationContext, decisions: list[Decision], formats: Sequence[str]) -> list[Decision]:
    """The decisions with each client's format for its final cut (D14; none without ``formats``)."""
    if not formats:
        return decisions
    wire = choose_wire(ctx.predict, [d.cut for d in decisions], ctx.participants, formats)
    return [
        replace(d, wire=w, reason=f"{d.reason}; wire {w}") if w is not None else d
        for d, w in zip(decisions, wire, strict=True)
    ]


class ResourcePolicy:
    """Minimise the predicted round makespan within every device's memory."""

    name = "resource"
    uses_accuracy = False

    def __init__(self, wire_formats: Sequence[str] = ()) -> None:
        self.wire_formats = list(wire_formats)

    @classmethod
    def from_config(cls, cfg: PolicyConfig, start_cuts: list[int]) -> ResourcePolicy:
        return cls(cfg.wire_formats)

    def allocate(self, ctx: AllocationContext) -> list[Decision]:
        cuts, timing, _ = plan(ctx, self.wire_formats)
        decisions = [
            Decision(cut, f"min makespan {timing.makespan_s:.3f}s (memory allows 1..{ctx.max_cut[i]})")
            for i, cut in enumerate(cuts)
        ]
        return with_wire(ctx, decisions, self.wire_formats)


class SplitFTPolicy:
    """Resource and memory bound each client's range; accuracy steers inside it (per-client
    server copies), or the smallest cut of the range is taken (one shared server set, D10)."""

    name = "splitft"
    uses_accuracy = True

    def __init__(
        self, gamma: float, tolerance: float, slack: float, wire_formats: Sequence[str] = ()
    ) -> None:
        self.gamma = gamma
        self.tolerance = tolerance
        self.slack = slack
        self.wire_formats = list(wire_formats)

    @classmethod
    def from_config(cls, cfg: PolicyConfig, start_cuts: list[int]) -> SplitFTPolicy:
        return cls(cfg.gamma, cfg.tolerance, cfg.slack, cfg.wire_formats)

    def ranges(self, ctx: AllocationContext) -> tuple[list[int], list[tuple[int, int]], float]:
        """Resource cuts, each client's allowed range, and the best predicted makespan (a client
        not taking part: its resource cut, its last one, alone)."""
        cuts, timing, wire = plan(ctx, self.wire_formats)
        limit = timing.makespan_s * (1.0 + self.slack)
        ranges = []
        for i in range(len(cuts)):
            ok = [
                c
                for c in range(1, ctx.max_cut[i] + 1)
                if c == cuts[i]
                or (
                    i in ctx.participants
                    and predict(ctx, cuts[:i] + [c] + cuts[i + 1 :], wire).makespan_s <= limit
                )
            ]
            ranges.append((min(ok), max(ok)))
        return cuts, ranges, timing.makespan_s

    def allocate(self, ctx: AllocationContext) -> list[Decision]:
        best, ranges, makespan = self.ranges(ctx)
        weights = accuracy_weights(ctx.accuracy, self.gamma)
        decisions = []
        for i, (low, high) in enumerate(ranges):
            span = f"range {low}..{high} (makespan <= {(1 + self.slack) * makespan:.3f}s)"
            if ctx.shared:
                # D10: the fewer client blocks, the more of the model trains sequentially on the server.
                decisions.append(
                    Decision(low, f"shared server set: fewest client blocks in {span}", weights.get(i))
                )
                continue
            if i not in weights:
                decisions.append(Decision(best[i], f"resource cut; {span}"))
                continue
            w = weights[i]
            start = min(max(ctx.previous[i], low), high)
            new = min(max(start + accuracy_step(w, self.tolerance), low), high)
            decisions.append(Decision(new, f"w={w:.3f}: {_moved(ctx.previous[i], new)} in {span}", w))
        return with_wire(ctx, decisions, self.wire_formats)
