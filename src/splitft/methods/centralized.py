"""``method = "centralized"``: LoRA on the unsplit model with every client's data pooled.

One trainer runs on the main server. A round is as many steps as all clients of a federated
round take together, so round ``r`` means the same number of samples in every method. Nothing
crosses a boundary. With one client and one round, fedlora and centralized do the same steps
on the same batches (the pooled data of one client is that client's data, and both draw
batches from the stream keyed by client 0), which a test checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from splitft.algorithms.policy import Decision
from splitft.config import Config
from splitft.methods.base import Experiment, Method, RoundResult, SharedModel, sample_clients
from splitft.model.lora import Adapters
from splitft.roles.fed_server import FedServer
from splitft.roles.trainer import WholeModelTrainer, pool
from splitft.runtime.base import Runtime
from splitft.sim.clock import VirtualClock
from splitft.sim.timing import RoundTimer
from splitft.wire.ledger import ByteLedger
from splitft.wire.messages import control, read

if TYPE_CHECKING:
    from splitft.data.tokenize import TokenizedDataset


class CentralizedLoop:
    def __init__(
        self,
        cfg: Config,
        trainer: WholeModelTrainer,
        fed_server: FedServer,
        ledger: ByteLedger,
        timer: RoundTimer,
    ) -> None:
        self.cfg = cfg
        self.trainer = trainer
        self.fed_server = fed_server
        self.ledger = ledger
        self.timer = timer
        self.clock = VirtualClock()
        self.num_clients = cfg.federation.num_clients
        with torch.no_grad():  # the trainer starts from the initial global set
            for name, tensor in trainer.params.items():
                tensor.copy_(fed_server.global_adapters[name])

    @property
    def global_adapters(self) -> Adapters:
        return self.fed_server.global_adapters

    def run_round(self, round_number: int) -> RoundResult:
        """As many steps as the round's clients would take together, on the pooled data."""
        alive = list(range(self.num_clients))
        per_round = len(sample_clients(self.cfg, alive, round_number)) * self.cfg.federation.local_steps
        request = control(steps=per_round, first_step=(round_number - 1) * per_round)
        stats = read(self.trainer.train(request))["control"]
        self.fed_server.assign(self.trainer.params)
        timing = self.timer.centralized(stats["shapes"])
        self.clock.advance(timing)
        return RoundResult(
            round=round_number,
            cuts=[0] * self.num_clients,
            clients=[0],
            train_loss=stats["loss_sum"] / stats["tokens"] if stats["tokens"] else None,
            train_tokens=stats["tokens"],
            decisions=[Decision(0, "centralized: data pooled on the server")] * self.num_clients,
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            samples=sum(b for b, _ in stats["shapes"]),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "fed_server": self.fed_server.state_dict(),
            "trainer": self.trainer.state_dict(),
            "clock": self.clock.to_dict(),
            "ledger": self.ledger.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fed_server.load_state_dict(state["fed_server"])
        self.trainer.load_state_dict(state["trainer"])
        self.clock = VirtualClock.from_dict(state["clock"])
        self.ledger.restore(state["ledger"])


class Centralized(Method):
    name = "centralized"
    splits = False
    sends = ()

    def build_server(self, exp: Experiment) -> WholeModelTrainer:
        """The one trainer, on the pooled training data of every client."""
        fed = exp.cfg.federation
        steps = fed.rounds * (fed.clients_per_round or fed.num_clients) * fed.local_steps
        return WholeModelTrainer(0, exp.model, exp.layout, pool(exp.data.clients), exp.cfg, exp.pad_id, steps)

    def build_client(
        self, cfg: Config, index: int, train: TokenizedDataset, heldout: TokenizedDataset, shared: SharedModel
    ) -> None:
        """Centralized training has no clients: their data is pooled on the server."""
        return None

    def uses_clients(self) -> bool:
        return False

    def make_loop(self, exp: Experiment, runtime: Runtime | None) -> CentralizedLoop:
        fed_server = FedServer(exp.layout, dict(exp.initial), exp.cfg.aggregation)
        return CentralizedLoop(exp.cfg, exp.server, fed_server, exp.ledger, exp.timer)

    def trainable_params(self, exp: Experiment, cuts: Sequence[int]) -> tuple[list[int], list[int]]:
        """All of them, once, on the server."""
        everything = sum(exp.layout.num_params(name, exp.layout.rank) for name in exp.layout.shapes)
        return [0] * len(cuts), [everything]


CENTRALIZED = Centralized()
