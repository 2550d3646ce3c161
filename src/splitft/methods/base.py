"""What every training method provides, and what every round loop returns.

A **method** (``method = ...`` in the config, found through :data:`splitft.registry.METHODS`)
is one object that knows how to build its roles, make its round loop, count what it trains
and say what it sends. The recipe (``recipes/``) and the runtimes call only this interface,
so a new method is one new module plus one registry line (a test registers a toy one).

A **round loop** runs one round at a time and returns a :class:`RoundResult`; it owns the
state that must survive a restart and saves it through ``state_dict()`` /
``load_state_dict()`` (PyTorch's convention), which the checkpoint module serialises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from peft import PeftModel

from splitft.algorithms.policy import Decision
from splitft.config import Config
from splitft.data.prepare import PreparedData
from splitft.data.tokenize import TokenizedDataset
from splitft.model.lora import AdapterLayout, Adapters
from splitft.model.split import SplitModel
from splitft.sim.clock import RoundTiming
from splitft.sim.timing import RoundTimer
from splitft.wire.ledger import ByteLedger

if TYPE_CHECKING:
    from splitft.runtime.base import Runtime

Rule = tuple[str, Callable[[Any], bool], str]
"""(config key, test, what is allowed): one check of :meth:`Config.validate`."""


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
    predicted_s: float | None = None
    """The round's makespan as the policy predicted it before the round (split methods)."""
    conditions: dict[str, Any] | None = None
    """The conditions the clock timed the round under (``sim/conditions.py`` Snapshot.to_dict)."""
    sat_out: list[int] = field(default_factory=list)
    """Clients that were not available and sat the round out (docs/architecture.md, D13)."""
    wire: list[str] | None = None
    """Each client's format of activations at the cut this round (split methods)."""
    train_acc: dict[int, float] = field(default_factory=dict)
    """Each participant's token accuracy on this round's training batches (docs/architecture.md, D11)."""


class RoundLoop(Protocol):
    """The loop a method makes: one round at a time, state that saves itself."""

    @property
    def global_adapters(self) -> Adapters: ...

    def run_round(self, round_number: int) -> RoundResult: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Method(ABC):
    """One way to train (``centralized``, ``fedlora``, ``sfl-fixed``, ``splitft``, ...)."""

    name: str
    splits: bool
    """Whether the model is split at a per-client cut (the cut layer, policies and the
    reduced rank at the cut then apply); False: clients or the server train it whole."""
    runtimes: tuple[str, ...] = ("inprocess",)
    """Runtimes that can run it (FLARE runs need roles that travel)."""
    sends: tuple[str, ...] = ()
    """Kinds of payload that cross the client/server boundary (see ``wire/codec.py``)."""

    def config_rules(self, cfg: Config) -> list[Rule]:
        """Checks of the config this method adds to :meth:`Config.validate`."""
        return []

    def check(self, exp: Experiment) -> None:  # noqa: B027 - most methods need nothing more
        """Checks that need the model and the devices (run by ``setup`` before anything is written)."""

    def build_server(self, exp: Experiment) -> Any:
        """The server-side role (the main server, the pooled trainer), or None."""
        return None

    @abstractmethod
    def build_client(
        self, cfg: Config, index: int, train: TokenizedDataset, heldout: TokenizedDataset, shared: SharedModel
    ) -> Any:
        """Client ``index`` from the config, its own data and the model this process holds."""

    @abstractmethod
    def make_loop(self, exp: Experiment, runtime: Runtime | None) -> RoundLoop:
        """The round loop; ``runtime`` reaches the clients (None for a method without any)."""

    @abstractmethod
    def trainable_params(self, exp: Experiment, cuts: Sequence[int]) -> tuple[list[int], list[int]]:
        """LoRA parameters each client trains, and the server trains for it, at the rank trained."""

    def infeasible_clients(self, exp: Experiment) -> list[int]:
        """Clients whose device cannot take part at all (reported in the summary)."""
        return []

    def uses_clients(self) -> bool:
        """Whether the server reaches clients through a runtime."""
        return True


@dataclass
class SharedModel:
    """The frozen base model with its LoRA slots: what every role in one process shares (each
    role keeps only its own adapter tensors and optimizer state)."""

    peft_model: PeftModel
    model: SplitModel
    layout: AdapterLayout
    initial: Adapters
    """The freshly initialised global adapter set (LoRA's A random from the seed, B zero)."""
    pad_id: int


@dataclass
class Experiment:
    """The server side of a run, built and checked by :func:`splitft.recipes.experiment.setup`: what a method builds its roles and loop from."""

    cfg: Config
    method: Method
    tokenizer: Any
    shared: SharedModel
    data: PreparedData
    cuts: list[int]
    """Starting cut of every client (split methods)."""
    timer: RoundTimer
    ledger: ByteLedger = field(default_factory=ByteLedger)
    server: Any = None
    """The method's server-side role (the main server, the pooled trainer), or None."""

    @property
    def model(self) -> SplitModel:
        return self.shared.model

    @property
    def layout(self) -> AdapterLayout:
        return self.shared.layout

    @property
    def peft_model(self) -> PeftModel:
        return self.shared.peft_model

    @property
    def initial(self) -> Adapters:
        return self.shared.initial

    @property
    def pad_id(self) -> int:
        return self.shared.pad_id
