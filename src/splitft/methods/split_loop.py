"""The round loop of split learning (docs/architecture.md, "One round"), written only against
the runtime interface.

One round:

1. the policy picks every client's cut (from last round's cuts, held-out accuracies, memory
   bounds and the predicted round time);
2. blocks that just became cut blocks are put in canonical form (by the fed server, which owns
   the global set), so their first ``r_cut`` components are the best rank-``r_cut``
   approximation; optimizer state is reset for them (and for everything in ``svd`` mode,
   where every merge changes the basis);
3. the sampled clients get the global adapters of their blocks (unless they already hold
   them) and run ``local_steps`` split steps: client forward -> main server forward/backward
   -> client backward;
4. clients upload their adapters; the fed server merges them with the main server's copies;
5. when the policy uses accuracy, every participant scores the new global set on its
   held-out part (a split forward, so it is counted like any other traffic);
6. the virtual clock times the round from what happened (step shapes, codec bytes).

Every payload that crosses the client/server boundary is codec bytes and is recorded in the
byte ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitft.algorithms.policy import AllocationPolicy, accuracy_weights
from splitft.config import Config, LoraConfig
from splitft.config_codec import client_format
from splitft.errors import DivergenceError, SplitFTError
from splitft.methods.base import RoundResult, sample_clients
from splitft.methods.round_plan import RoundPlanner
from splitft.model.lora import AdapterLayout, Adapters
from splitft.model.segments import Segments
from splitft.roles.fed_server import FedServer
from splitft.roles.main_server import MainServer
from splitft.runtime.base import Runtime
from splitft.sim.clock import VirtualClock
from splitft.sim.conditions import Snapshot
from splitft.sim.timing import RoundTimer
from splitft.wire.adapter_sync import References, adapter_download, load_references, references_state
from splitft.wire.calls import Clients, guarded
from splitft.wire.checks import diverged
from splitft.wire.codec import Entry, encode_message
from splitft.wire.ledger import ByteLedger
from splitft.wire.messages import DELTA_FORMATS, adapter_entries, control


def cut_blocks(
    cuts: Sequence[int], lora: LoraConfig, num_blocks: int = 0, tails: Sequence[int] = ()
) -> set[int]:
    """Blocks trained below ``r_others`` by someone: each client's last and the server's first,
    and with ``tails`` (a U shape) the tail's first and the server's last (only those on the
    sides ``lora.cut_rank_sides`` names)."""
    reduced = set()
    for i, k in enumerate(cuts):
        segments = Segments(num_blocks, k, tails[i] if tails else 0)
        if lora.client_cut_rank < lora.r_others:
            reduced |= segments.client_boundary
        if lora.server_cut_rank < lora.r_others:
            reduced |= segments.server_boundary
    return reduced


class SplitRoundLoop:
    def __init__(
        self,
        cfg: Config,
        layout: AdapterLayout,
        runtime: Runtime,
        main_server: MainServer,
        fed_server: FedServer,
        policy: AllocationPolicy,
        ledger: ByteLedger,
        timer: RoundTimer,
        start_cuts: Sequence[int],
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.clients = Clients(runtime, ledger, cfg.federation.num_clients)
        self.main_server = main_server
        self.fed_server = fed_server
        self.policy = policy
        self.ledger = ledger
        self.timer = timer
        self.clock = VirtualClock()
        self.num_clients = cfg.federation.num_clients
        self.num_blocks = main_server.model.num_blocks
        self.tails = [cfg.split.tail_of(i) for i in range(self.num_clients)]
        self.previous_cuts = list(start_cuts)
        self.accuracy: dict[int, float] = {}
        self.cut_blocks: set[int] = set()
        self.synced: dict[int, tuple[int, int]] = {}  # client -> (global version, cut) it holds
        self.pending_reset: dict[int, set[str]] = {}  # client -> tensors whose basis changed since
        # Delta adapter formats: what each client holds (as it decoded it) and the last round it
        # was sent adapters; a client that missed a round or moved its cut gets full tensors.
        self.references: References = {}
        self.planner = RoundPlanner(cfg, timer)
        """Conditions, observed rates and the training signal (docs/architecture.md, D11-D13)."""
        # Client -> this round's format at the cut, where the policy chose one; the round's conditions.
        self._wire: dict[int, str] = {}
        self._conditions: Snapshot | None = None

    @property
    def global_adapters(self) -> Adapters:
        return self.fed_server.global_adapters

    @property
    def runtime(self) -> Runtime:
        return self.clients.runtime

    def sample_clients(self, round_number: int) -> list[int]:
        """The clients taking part in a round: a seeded sample of those not dropped and
        available under the round's conditions (docs/architecture.md, D13)."""
        alive = self.clients.alive()
        available = alive if self._conditions is None else [i for i in alive if self._conditions.available[i]]
        return sample_clients(self.cfg, available, round_number)

    def run_round(self, round_number: int) -> RoundResult:
        alive = self.clients.alive()
        # The round starts now, or when someone is there; an unavailable client sits it out (D13).
        self.clock.elapsed_s, conditions = self.planner.conditions(self.clock.elapsed_s, alive)
        self._conditions = conditions
        available = [i for i in alive if conditions.available[i]]
        decisions, predicted_s = self.planner.decide(
            self.policy, round_number, self.previous_cuts, available, self.accuracy
        )
        cuts = [d.cut for d in decisions]
        self._wire = {i: d.wire for i, d in enumerate(decisions) if d.wire is not None}
        dropped = self.clients.start_round(round_number)
        clients = self.sample_clients(round_number)
        fresh = self._canonicalize_new_cut_blocks(cuts)
        clients = self._begin_all(round_number, clients, cuts, dropped)
        loss_sum, tokens, step_shapes, totals = self._train(round_number, clients, dropped)
        clients = [i for i in clients if i not in self.clients.dropped]
        participants, truncation = self._merge(round_number, clients, cuts, dropped)
        heldout = self.planner.heldout_round(self.policy, round_number)
        if heldout:
            self._score_heldout(round_number, participants, cuts, dropped)
        shapes = {i: step_shapes[i] for i in participants}
        works = self.timer.actual_works(round_number, cuts, shapes, self.ledger, heldout)
        timing = self.timer.simulate(works, conditions)  # the truth: the round's conditions
        train_acc = self.planner.learn(works, timing, {i: totals[i] for i in participants})
        self.clock.advance(timing)
        self.previous_cuts = cuts
        accuracy = self.planner.accuracy(self.policy, self.accuracy)
        return RoundResult(
            round=round_number,
            cuts=cuts,
            clients=participants,
            train_loss=loss_sum / tokens if tokens else None,
            train_tokens=tokens,
            decisions=decisions,
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            accuracy={i: accuracy[i] for i in participants if i in accuracy},
            weights=accuracy_weights(accuracy, self.cfg.policy.gamma),
            canonicalized=fresh,
            truncation_error=truncation,
            dropped=dropped,
            samples=sum(b for i in participants for b, _ in step_shapes[i]),
            predicted_s=predicted_s,
            conditions=conditions.to_dict(),
            sat_out=[i for i in alive if i not in available],
            wire=[self._wire.get(i) or self._configured_wire(i) for i in range(self.num_clients)],
            train_acc=train_acc,
        )

    def _configured_wire(self, i: int) -> str:
        return client_format(self.cfg.codec.activations, i, self.cfg.codec.activation_dtype)

    def _canonicalize_new_cut_blocks(self, cuts: Sequence[int]) -> list[int]:
        """Blocks that just became cut blocks get a canonical basis (B @ A unchanged)."""
        new_cut_blocks = cut_blocks(cuts, self.cfg.lora, self.num_blocks, self.tails)
        fresh = sorted(new_cut_blocks - self.cut_blocks)
        self.cut_blocks = new_cut_blocks
        if fresh:
            changed = self.fed_server.canonicalize(fresh)
            self.main_server.canonicalized(changed)
            # Every copy of these tensors, including those of clients not sampled this round,
            # holds optimizer moments in the old basis: reset them at that client's next round.
            for i in range(self.num_clients):
                self.pending_reset.setdefault(i, set()).update(changed)
        return fresh

    def _begin_all(
        self, round_number: int, clients: list[int], cuts: list[int], dropped: list[dict]
    ) -> list[int]:
        """Each client takes the global adapters of its blocks ``[0, cut)``, the main server
        those of ``[cut, M)``; returns the clients still there."""
        start = self.fed_server.global_adapters
        reset_all = self.cfg.aggregation == "svd"
        self.main_server.start_round(start, reset_all)
        for i in clients:
            reset = sorted(self.pending_reset.get(i, ()))
            if self._begin(round_number, i, cuts[i], start, reset, reset_all, dropped):
                self.main_server.begin_round(i, cuts[i], start, reset=reset, reset_all=reset_all)
                self.main_server.use_wire(i, self._wire.get(i))
                self.pending_reset.pop(i, None)
        return [i for i in clients if i not in self.clients.dropped]

    def _train(
        self, round_number: int, clients: list[int], dropped: list[dict]
    ) -> tuple[float, int, dict[int, list[tuple[int, int]]], dict[int, tuple[float, int, int]]]:
        """The split steps. Each client's step runs forward -> server -> backward before the
        next client starts, so only one client's activations are alive at a time (the virtual
        clock, not this order, models clients running in parallel). Returns the summed loss and
        tokens, each client's step shapes, and its (loss, tokens, correct) (the free signal, D11)."""
        loss_sum, tokens = 0.0, 0
        step_shapes: dict[int, list[tuple[int, int]]] = {i: [] for i in clients}
        totals = dict.fromkeys(clients, (0.0, 0, 0))
        for step in range(self.cfg.federation.local_steps):
            global_step = (round_number - 1) * self.cfg.federation.local_steps + step
            for i in clients:
                if i in self.clients.dropped:
                    continue
                smashed = self._call(round_number, i, "forward_step", control(step=global_step), dropped)
                if (
                    smashed is None
                    or (served := self._server_step(round_number, i, smashed, global_step, dropped)) is None
                ):
                    continue
                grad, stats = served
                loss_sum, tokens = loss_sum + stats.loss_sum, tokens + stats.tokens
                step_shapes[i].append((stats.batch, stats.seq_len))
                loss_i, tokens_i, correct_i = totals[i]
                totals[i] = (loss_i + stats.loss_sum, tokens_i + stats.tokens, correct_i + stats.correct)
                self._call(round_number, i, "backward_step", grad, dropped)
        return loss_sum, tokens, step_shapes, totals

    def _merge(
        self, round_number: int, clients: list[int], cuts: list[int], dropped: list[dict]
    ) -> tuple[list[int], float]:
        """Clients upload their adapters; the fed server merges both sides' changes. Returns
        the clients that contributed and the merge's truncation error."""
        weights = {}  # uploads are folded in as they arrive: one held at a time (memory per client)
        for i in clients:
            if (payload := self._call(round_number, i, "end_round", control(), dropped)) is not None:
                ranks = self._client_ranks(i, cuts[i])
                weight = self._read(
                    round_number, i, "end_round", dropped, self.fed_server.receive, payload, ranks
                )
                if weight is not None:
                    weights[i] = weight
        truncation = self.fed_server.merge(server_side=self.main_server.contributions(weights))
        if not weights:
            failures = "; ".join(f"client {d['client']}: {d['error']}" for d in dropped) or "no client left"
            error = DivergenceError if diverged(dropped) else SplitFTError
            raise error(f"round {round_number}: every client failed ({failures})")
        return sorted(weights), truncation

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
        ranks = self._client_ranks(i, cut)
        held = self.synced.get(i) == (self.fed_server.version, cut)
        spec = client_format(self.cfg.codec.adapters, i, "fp32")
        meta = {
            "round": round_number,
            "cut": cut,
            "reset": [n for n in reset if n in ranks],
            "reset_all": reset_all,
        }
        if i in self._wire:  # only then: default control messages stay byte for byte as they were
            meta["wire"] = self._wire[i]
        if held:
            entries = []
        elif spec in DELTA_FORMATS:
            entries, meta["delta"] = adapter_download(
                self.references, round_number, i, cut, adapters, ranks, spec, self.layout
            )
        else:
            entries = adapter_entries({n: adapters[n] for n in ranks}, ranks)
        entries.append(Entry("control", "control", meta))
        if self._call(round_number, i, "begin_round", encode_message(entries).data, dropped) is None:
            return False
        self.synced[i] = (self.fed_server.version, cut)
        if i in self.references:
            self.references[i]["round"] = round_number
        return True

    def _score_heldout(
        self, round_number: int, clients: list[int], cuts: list[int], dropped: list[dict]
    ) -> None:
        """Each client forwards its held-out samples through the new global set; the server scores."""
        samples = self.cfg.policy.heldout_samples
        self.accuracy = {}  # only this round's scores steer the next allocation
        adapters = self.fed_server.global_adapters
        for i in clients:
            self._begin(round_number, i, cuts[i], adapters, [], False, dropped)
            payload = self._call(round_number, i, "heldout_forward", control(samples=samples), dropped)
            if payload is None:
                continue
            stats = self._score(round_number, i, payload, adapters, dropped)
            if stats is not None and stats.tokens:
                self.accuracy[i] = stats.correct / stats.tokens

    def _server_step(
        self, round_number: int, i: int, smashed: bytes, global_step: int, dropped: list[dict]
    ) -> tuple[bytes, Any] | None:
        """The main server's step on client ``i``'s smashed data: None when the data is malformed
        (the client is dropped); a non-finite loss or gradient stops the run, naming the client."""
        try:
            return self._serve(round_number, i, smashed, global_step, dropped)
        except DivergenceError as err:
            raise DivergenceError(f"client {i}: {err}") from None

    def _serve(
        self, round_number: int, i: int, smashed: bytes, global_step: int, dropped: list[dict]
    ) -> tuple[bytes, Any] | None:
        """The main server's forward and backward from the smashed data (it holds the loss)."""
        return self._read(
            round_number, i, "forward_step", dropped, self.main_server.train_step, i, smashed, global_step
        )

    def _score(
        self, round_number: int, i: int, payload: bytes, adapters: Adapters, dropped: list[dict]
    ) -> Any:
        """The main server scores client ``i``'s held-out smashed data (None: malformed)."""
        return self._read(
            round_number, i, "heldout_forward", dropped, self.main_server.score, i, payload, adapters
        )

    def _client_ranks(self, i: int, cut: int) -> dict[str, int]:
        """Trained rank of each tensor client ``i`` holds at ``cut``."""
        segments = Segments(self.num_blocks, cut, self.tails[i])
        return segments.client_ranks(self.layout, self.cfg.lora.client_cut_rank)

    def _read(self, round_number: int, i: int, method: str, dropped: list[dict], use: Any, *args: Any) -> Any:
        """``use(*args)`` on client ``i``'s reply to ``method``; None (and ``i`` dropped) when malformed."""
        return guarded(self.clients.dropped, dropped, round_number, i, method, use, *args)

    def _call(
        self, round_number: int, i: int, method: str, payload: bytes, dropped: list[dict]
    ) -> bytes | None:
        """Call client ``i``, count every byte both ways; a failed call drops the client."""
        return self.clients.call(i, method, payload, dropped)

    def state_dict(self) -> dict[str, Any]:
        """The loop's bookkeeping, the fed and main servers' state, and the clients' (each asked
        of the client itself; one that cannot answer is dropped, reported with the next round)."""
        return {
            "previous_cuts": list(self.previous_cuts),
            "accuracy": {str(i): a for i, a in self.accuracy.items()},
            "cut_blocks": sorted(self.cut_blocks),
            "synced": {str(i): list(v) for i, v in self.synced.items()},
            "pending_reset": {str(i): sorted(v) for i, v in self.pending_reset.items()},
            "references": references_state(self.references),
            "clock": self.clock.to_dict(),
            "planner": self.planner.state_dict(),
            "ledger": self.ledger.to_dict(),
            "fed_server": self.fed_server.state_dict(),
            "main_server": self.main_server.state_dict(),
            "clients": self.clients.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fed_server.load_state_dict(state["fed_server"])
        self.main_server.load_state_dict(state["main_server"])
        self.clock = VirtualClock.from_dict(state["clock"])
        self.planner.load_state_dict(state["planner"])
        self.clients.load_state_dict(state["clients"])
        self.previous_cuts = list(state["previous_cuts"])
        self.accuracy = {int(i): a for i, a in state["accuracy"].items()}
        self.cut_blocks = set(state["cut_blocks"])
        self.synced = {int(i): tuple(v) for i, v in state["synced"].items()}
        self.pending_reset = {int(i): set(v) for i, v in state["pending_reset"].items()}
        device = next(iter(self.global_adapters.values())).device
        self.references = load_references(state.get("references", {}), device)
        self.ledger.restore(state["ledger"])  # in place: the experiment and the loop share it
