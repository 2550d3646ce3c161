"""The round loop (design.md 2.1-2.8), written only against the runtime interface.

One round:

1. the policy picks every client's cut (from last round's cuts, held-out accuracies, memory
   bounds and the predicted round time);
2. blocks that just became cut blocks are put in canonical form, so their first ``r_cut``
   components are the best rank-``r_cut`` approximation; optimizer state is reset for them
   (and for everything in ``svd`` mode, where every merge changes the basis);
3. the sampled clients get the global adapters of their blocks (unless they already hold
   them) and run ``local_steps`` split steps: client forward -> main server forward/backward
   -> client backward;
4. clients upload their adapters; the fed server and the main server merge all changes;
5. when the policy uses accuracy, every participant scores the new global set on its
   held-out part (a split forward, so it is counted like any other traffic);
6. the virtual clock times the round from what happened (step shapes, codec bytes).

Every payload that crosses the client/server boundary is codec bytes and is recorded in the
byte ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from splitft.algorithms.aggregation import merge
from splitft.algorithms.lowrank import canonicalize
from splitft.algorithms.policy import AllocationContext, AllocationPolicy, Decision, accuracy_weights
from splitft.config import Config, LoraConfig
from splitft.errors import SplitFTError
from splitft.model.lora import AdapterLayout, Adapters, copy_ranks, lora_pairs
from splitft.roles.fed_server import FedServer
from splitft.roles.main_server import MainServer
from splitft.runtime.base import Runtime
from splitft.sim.clock import RoundTiming, VirtualClock
from splitft.sim.timing import RoundTimer
from splitft.wire.calls import client_role, counted_call
from splitft.wire.codec import ByteLedger, Entry, encode_message
from splitft.wire.messages import adapter_entries, control

__all__ = ["RoundLoop", "RoundResult", "client_role", "sample_clients"]


def sample_clients(cfg: Config, alive: Sequence[int], round_number: int) -> list[int]:
    """The clients taking part in a round: a sample of ``alive`` seeded by the round."""
    k = cfg.federation.clients_per_round or len(alive)
    if k >= len(alive):
        return list(alive)
    rng = np.random.default_rng([cfg.seed, round_number])
    return sorted(int(i) for i in rng.choice(alive, size=k, replace=False))


@dataclass
class RoundResult:
    """What one round did, before test evaluation."""

    round: int
    cuts: list[int]
    clients: list[int]
    train_loss: float | None
    train_tokens: int
    decisions: list[Decision]
    timing: RoundTiming
    virtual_s: float
    accuracy: dict[int, float] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    canonicalized: list[int] = field(default_factory=list)
    truncation_error: float = 0.0
    dropped: list[dict] = field(default_factory=list)
    samples: int = 0
    """Training samples (sequences) the round's steps took, all clients together."""


def cut_blocks(cuts: Sequence[int], lora: LoraConfig) -> set[int]:
    """Blocks trained below ``r_others`` by someone: each client's last and the server's first
    (only those on the sides ``lora.cut_rank_sides`` names)."""
    reduced = set()
    for k in cuts:
        if lora.client_cut_rank < lora.r_others:
            reduced.add(k - 1)
        if lora.server_cut_rank < lora.r_others:
            reduced.add(k)
    return reduced


def canonicalize_blocks(adapters: Adapters, layout: AdapterLayout, blocks: Sequence[int]) -> list[str]:
    """Rewrite the LoRA pairs of ``blocks`` in canonical form in place; returns their names."""
    names = layout.names(blocks)
    for a_name, b_name in lora_pairs(names):
        adapters[a_name], adapters[b_name] = canonicalize(adapters[a_name], adapters[b_name])
    return names


class RoundLoop:
    def __init__(
        self,
        cfg: Config,
        layout: AdapterLayout,
        runtime: Runtime,
        main_server: MainServer,
        policy: AllocationPolicy,
        ledger: ByteLedger,
        timer: RoundTimer,
        start_cuts: Sequence[int],
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.runtime = runtime
        self.main_server = main_server
        self.fed_server = FedServer(layout, cfg.lora.client_cut_rank)
        self.policy = policy
        self.ledger = ledger
        self.timer = timer
        self.clock = VirtualClock()
        self.num_clients = cfg.federation.num_clients
        self.dropped: set[int] = set()
        self.late_drops: list[dict] = []  # failed outside a round; reported with the next one
        self.previous_cuts = list(start_cuts)
        self.accuracy: dict[int, float] = {}
        self.cut_blocks: set[int] = set()
        self.version = 0  # bumped whenever the global set changes
        self.synced: dict[int, tuple[int, int]] = {}  # client -> (version, cut) it holds
        self.pending_reset: dict[
            int, set[str]
        ] = {}  # client -> tensors whose basis changed since its last round

    @property
    def global_adapters(self) -> Adapters:
        return self.main_server.global_adapters

    @property
    def uses_accuracy(self) -> bool:
        return self.policy.name in ("accuracy", "splitft")

    def sample_clients(self, round_number: int) -> list[int]:
        """The clients taking part in a round: a seeded sample of those not dropped."""
        alive = [i for i in range(self.num_clients) if i not in self.dropped]
        return sample_clients(self.cfg, alive, round_number)

    def run_round(self, round_number: int) -> RoundResult:
        ctx = AllocationContext(
            round_number, self.previous_cuts, self.timer.max_cut, self.timer.predict, dict(self.accuracy)
        )
        decisions = self.policy.allocate(ctx)
        cuts = [d.cut for d in decisions]
        clients = self.sample_clients(round_number)
        dropped, self.late_drops = self.late_drops, []

        # Blocks that just became cut blocks get a canonical basis (B @ A unchanged).
        new_cut_blocks = cut_blocks(cuts, self.cfg.lora)
        fresh = sorted(new_cut_blocks - self.cut_blocks)
        self.cut_blocks = new_cut_blocks
        if fresh:
            changed = canonicalize_blocks(self.main_server.global_adapters, self.layout, fresh)
            self.version += 1
            # Every copy of these tensors, including those of clients not sampled this round,
            # holds optimizer moments in the old basis: reset them at that client's next round.
            for i in range(self.num_clients):
                self.pending_reset.setdefault(i, set()).update(changed)
        reset_all = self.cfg.aggregation == "svd"

        # 1. Each client takes the global adapters of its blocks [0, cut).
        start = self.main_server.global_adapters
        for i in clients:
            reset = sorted(self.pending_reset.get(i, ()))
            if self._begin(round_number, i, cuts[i], start, reset, reset_all, dropped):
                self.main_server.begin_round(i, cuts[i], reset=reset, reset_all=reset_all)
                self.pending_reset.pop(i, None)
        clients = [i for i in clients if i not in self.dropped]

        # 2. Split steps. Each client's step runs forward -> server -> backward before the
        # next client starts, so only one client's activations are alive at a time (the
        # virtual clock, not this order, models clients running in parallel).
        loss_sum, tokens = 0.0, 0
        step_shapes: dict[int, list[tuple[int, int]]] = {i: [] for i in clients}
        for step in range(self.cfg.federation.local_steps):
            global_step = (round_number - 1) * self.cfg.federation.local_steps + step
            for i in clients:
                if i in self.dropped:
                    continue
                smashed = self._call(round_number, i, "forward_step", control(step=global_step), dropped)
                if smashed is None:
                    continue
                grad, stats = self.main_server.train_step(i, smashed, global_step)
                loss_sum, tokens = loss_sum + stats.loss_sum, tokens + stats.tokens
                step_shapes[i].append((stats.batch, stats.seq_len))
                self._call(round_number, i, "backward_step", grad, dropped)
        clients = [i for i in clients if i not in self.dropped]

        # 3. Upload client-side adapters; merge both sides' changes into the global set.
        uploads = {
            i: p for i in clients if (p := self._call(round_number, i, "end_round", control(), dropped))
        }
        client_side = self.fed_server.contributions(uploads, cuts)
        server_side = self.main_server.contributions({i: c.weight for i, c in client_side.items()})
        merged, truncation = merge(
            start, list(client_side.values()), server_side, self.cfg.aggregation, self.cfg.lora.r_others
        )
        self.main_server.global_adapters = merged
        self.version += 1
        participants = sorted(client_side)
        if not participants:
            failures = "; ".join(f"client {d['client']}: {d['error']}" for d in dropped) or "no client left"
            raise SplitFTError(f"round {round_number}: every client failed ({failures})")

        # 4. Held-out accuracy of the new global set, for the policy's next decision.
        if self.uses_accuracy:
            self._score_heldout(round_number, participants, cuts, dropped)

        # 5. Virtual time of what happened.
        timing = self.timer.actual(round_number, cuts, {i: step_shapes[i] for i in participants}, self.ledger)
        self.clock.advance(timing)
        self.previous_cuts = cuts
        return RoundResult(
            round=round_number,
            cuts=cuts,
            clients=participants,
            train_loss=loss_sum / tokens if tokens else None,
            train_tokens=tokens,
            decisions=decisions,
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            accuracy={i: self.accuracy[i] for i in participants if i in self.accuracy},
            weights=accuracy_weights(self.accuracy, self.cfg.policy.gamma),
            canonicalized=fresh,
            truncation_error=truncation,
            dropped=dropped,
            samples=sum(b for i in participants for b, _ in step_shapes[i]),
        )

    def _begin(
        self,
        round_number: int,
        i: int,
        cut: int,
        adapters: Adapters,
        reset: Sequence[str],
        reset_all: bool,
        dropped: list[dict],
    ) -> bool:
        """Send client ``i`` its cut, what to reset, and the adapters it does not hold yet."""
        ranks = copy_ranks(self.layout, range(cut), cut - 1, self.cfg.lora.client_cut_rank)
        held = self.synced.get(i) == (self.version, cut)
        entries = [] if held else adapter_entries({n: adapters[n] for n in ranks}, ranks)
        meta = {
            "round": round_number,
            "cut": cut,
            "reset": [n for n in reset if n in ranks],
            "reset_all": reset_all,
        }
        entries.append(Entry("control", "control", meta))
        if self._call(round_number, i, "begin_round", encode_message(entries).data, dropped) is None:
            return False
        self.synced[i] = (self.version, cut)
        return True

    def _score_heldout(
        self, round_number: int, clients: list[int], cuts: list[int], dropped: list[dict]
    ) -> None:
        """Each client forwards its held-out samples through the new global set; the server scores."""
        samples = self.cfg.policy.heldout_samples
        self.accuracy = {}  # only this round's scores steer the next allocation
        for i in clients:
            self._begin(round_number, i, cuts[i], self.main_server.global_adapters, [], False, dropped)
            payload = self._call(round_number, i, "heldout_forward", control(samples=samples), dropped)
            if payload is None:
                continue
            stats = self.main_server.score(i, payload)
            if stats.tokens:
                self.accuracy[i] = stats.correct / stats.tokens

    def drop_late(self, round_number: int, i: int, method: str, error: str) -> None:
        """Drop client ``i`` after a failed call outside a round (a checkpoint's state export
        or a resume's restore): it is skipped from the next round on, and the drop is reported
        in that round's ``dropped`` with the round it happened after."""
        self.dropped.add(i)
        self.late_drops.append({"client": i, "round": round_number, "method": method, "error": error})

    def _call(
        self, round_number: int, i: int, method: str, payload: bytes, dropped: list[dict]
    ) -> bytes | None:
        """Call client ``i``, count every byte both ways; a failed call drops the client."""
        return counted_call(
            self.runtime, self.ledger, self.dropped, dropped, round_number, i, method, payload
        )
