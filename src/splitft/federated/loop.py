"""The round loop (design.md 2.1-2.6), written only against the runtime interface.

One round: the policy picks every client's cut -> the sampled clients get the global
adapters of their blocks -> ``local_steps`` split steps (client forward -> main server
forward/backward -> client backward) -> clients upload their adapters -> the fed server and
the main server merge all changes into the global set. Every payload that crosses the
client/server boundary is codec bytes and is recorded in the byte ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from splitft.config import Config
from splitft.federated.codec import ByteLedger, Entry, bytes_by_kind, encode_message
from splitft.federated.fed_server import FedServer
from splitft.federated.main_server import MainServer
from splitft.federated.messages import adapter_entries, control, read, read_adapters
from splitft.federated.policy import AllocationPolicy, Decision
from splitft.model.lora import AdapterLayout, copy_ranks
from splitft.runtime.base import CallFailure, Runtime


def client_role(client_id: int) -> str:
    return f"client-{client_id}"


@dataclass
class RoundResult:
    """What one round did, before evaluation."""

    round: int
    cuts: list[int]
    clients: list[int]
    train_loss: float | None
    train_tokens: int
    decisions: list[Decision]
    dropped: list[dict] = field(default_factory=list)


class RoundLoop:
    def __init__(
        self,
        cfg: Config,
        layout: AdapterLayout,
        runtime: Runtime,
        main_server: MainServer,
        policy: AllocationPolicy,
        ledger: ByteLedger,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.runtime = runtime
        self.main_server = main_server
        self.fed_server = FedServer()
        self.policy = policy
        self.ledger = ledger
        self.num_clients = cfg.federation.num_clients
        self.dropped: set[int] = set()

    def sample_clients(self, round_number: int) -> list[int]:
        """The clients taking part in a round: a seeded sample of those not dropped."""
        alive = [i for i in range(self.num_clients) if i not in self.dropped]
        k = self.cfg.federation.clients_per_round or len(alive)
        if k >= len(alive):
            return alive
        rng = np.random.default_rng([self.cfg.seed, round_number])
        return sorted(int(i) for i in rng.choice(alive, size=k, replace=False))

    def run_round(self, round_number: int) -> RoundResult:
        decisions = self.policy.allocate(round_number)
        cuts = [d.cut for d in decisions]
        clients = self.sample_clients(round_number)
        start = self.main_server.global_adapters
        dropped: list[dict] = []

        # 1. Each client takes the global adapters of its blocks [0, cut).
        calls = []
        for i in clients:
            cut = cuts[i]
            ranks = copy_ranks(self.layout, range(cut), cut - 1, self.cfg.lora.r_cut)
            entries = adapter_entries({n: start[n] for n in ranks}, ranks)
            entries.append(Entry("control", "control", {"round": round_number, "cut": cut}))
            calls.append((i, "begin_round", encode_message(entries).data))
            self.main_server.begin_round(i, cut)
        clients = self._call_clients(round_number, calls, dropped)

        # 2. Split steps. Each client's step runs forward -> server -> backward before the
        # next client starts, so only one client's activations are alive at a time (the
        # virtual clock, not this order, models clients running in parallel).
        loss_sum, tokens = 0.0, 0
        for step in range(self.cfg.federation.local_steps):
            global_step = (round_number - 1) * self.cfg.federation.local_steps + step
            for i in list(clients):
                smashed = self._call_clients(
                    round_number, [(i, "forward_step", control(step=global_step))], dropped
                )
                if i not in smashed:
                    continue
                grad, stats = self.main_server.train_step(i, smashed[i], global_step)
                loss_sum, tokens = loss_sum + stats.loss_sum, tokens + stats.tokens
                self._call_clients(round_number, [(i, "backward_step", grad)], dropped)
            clients = [i for i in clients if i not in self.dropped]

        # 3. Upload client-side adapters; merge both sides' changes into the global set.
        uploads = self._call_clients(round_number, [(i, "end_round", control()) for i in clients], dropped)
        received = {}
        for i, payload in uploads.items():
            message = read(payload)
            ranks = copy_ranks(self.layout, range(cuts[i]), cuts[i] - 1, self.cfg.lora.r_cut)
            received[i] = (float(message["control"]["samples"]), read_adapters(message, self.layout), ranks)
        weights = {i: upload[0] for i, upload in received.items()}
        merged = self.fed_server.accumulate(start, received).merge(
            self.main_server.accumulate(start, weights)
        )
        self.main_server.global_adapters = merged.apply(start)

        return RoundResult(
            round=round_number,
            cuts=cuts,
            clients=sorted(received),
            train_loss=loss_sum / tokens if tokens else None,
            train_tokens=tokens,
            decisions=decisions,
            dropped=dropped,
        )

    def _call_clients(
        self, round_number: int, calls: Sequence[tuple[int, str, bytes]], dropped: list[dict]
    ) -> Mapping[int, bytes]:
        """Call clients, count every byte both ways, and drop those whose call failed."""
        results = self.runtime.call_many([(client_role(i), method, payload) for i, method, payload in calls])
        answered = {}
        for (i, method, payload), result in zip(calls, results, strict=True):
            self.ledger.record(round_number, i, "down", bytes_by_kind(payload))
            if isinstance(result, CallFailure):
                self.dropped.add(i)
                dropped.append({"client": i, "method": method, "error": result.error})
                continue
            self.ledger.record(round_number, i, "up", bytes_by_kind(result))
            answered[i] = result
        return answered
