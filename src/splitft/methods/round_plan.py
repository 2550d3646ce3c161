"""How the split loop plans a round and learns from it (docs/architecture.md, D11-D13).

:class:`RoundPlanner` keeps what the allocation policy may know and nothing else:

* the **conditions** of the round (``sim/conditions.py``), which the clock applies; the policy
  learns of them only as who is available (a client that does not answer sits the round out);
* the **observer** (``sim/observer.py``): rates observed in earlier rounds, from which the
  policy's predictor plans (``policy.predict_from = "observed"``; ``"profile"``: from the
  configured profiles alone);
* the **training signal** (``algorithms/signals.py``) or the held-out check's last scores,
  the accuracy the accuracy rule steers with (``policy.signal``), and when the check runs.

It is state of the loop: :meth:`state_dict` holds the observer and the signal (the conditions
are a function of virtual time, which the clock's state holds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitft.algorithms.policy import AllocationContext, AllocationPolicy, Decision
from splitft.algorithms.signals import TrainSignal
from splitft.config import Config
from splitft.errors import SplitFTError
from splitft.sim.clock import ClientWork, RoundTiming
from splitft.sim.conditions import Snapshot
from splitft.sim.observer import RateObserver
from splitft.sim.timing import RoundTimer

MAX_WAIT_CHANGES = 10_000
"""How many changes of conditions a round may wait through for someone to be available."""


class RoundPlanner:
    def __init__(self, cfg: Config, timer: RoundTimer) -> None:
        self.cfg = cfg
        self.timer = timer
        self.observer = RateObserver(cfg.policy.smoothing)
        self.signal = TrainSignal(cfg.policy.smoothing)

    def uses_heldout(self, policy: AllocationPolicy) -> bool:
        return policy.uses_accuracy and self.cfg.policy.signal == "heldout"

    def heldout_round(self, policy: AllocationPolicy, round_number: int) -> bool:
        """Whether the round ends with ``policy``'s held-out check (``policy.heldout_every``)."""
        return self.uses_heldout(policy) and round_number % self.cfg.policy.heldout_every == 0

    def conditions(self, t: float, alive: Sequence[int]) -> tuple[float, Snapshot]:
        """The round's start and its conditions: ``t``, or later when none of ``alive`` is
        available at ``t`` (the round then waits for the first change that brings one back)."""
        source = self.timer.conditions
        for _ in range(MAX_WAIT_CHANGES):
            snapshot = source.at(t)
            if any(snapshot.available[i] for i in alive):
                return t, snapshot
            later = source.next_change(t)
            if later is None:
                break
            t = later
        raise SplitFTError(
            f"no client is available from virtual time {t:.3f} s on (devices.conditions = "
            f"{self.cfg.devices.conditions!r})"
        )

    def predictor(self, clients: Sequence[int], heldout: bool) -> Any:
        """``predict(cuts, wire=None)`` for ``clients``, from what the policy may know."""
        estimate = self.observer if self.cfg.policy.predict_from == "observed" else None

        def predict(cuts: Sequence[int], wire: Sequence[str | None] | None = None) -> RoundTiming:
            return self.timer.predict(cuts, clients, estimate, wire, heldout)

        return predict

    def accuracy(self, policy: AllocationPolicy, heldout_scores: Mapping[int, float]) -> dict[int, float]:
        """What ``policy``'s accuracy rule steers with: held-out scores or the smoothed training
        signal (nothing for a policy without the rule)."""
        if not policy.uses_accuracy:
            return {}
        return dict(heldout_scores) if self.uses_heldout(policy) else dict(self.signal.accuracy)

    def decide(
        self,
        policy: AllocationPolicy,
        round_number: int,
        previous: Sequence[int],
        clients: Sequence[int],
        heldout_scores: Mapping[int, float],
    ) -> tuple[list[Decision], float]:
        """The policy's decisions for ``clients`` (the others keep their cut) and the predicted
        makespan of the round they make."""
        predict = self.predictor(clients, self.heldout_round(policy, round_number))
        everyone = len(clients) == len(previous)
        ctx = AllocationContext(
            round_number,
            list(previous),
            self.timer.max_cut,
            predict,
            self.accuracy(policy, heldout_scores),
            clients=None if everyone else list(clients),
            shared=self.cfg.split.server_adapters == "shared",
        )
        decisions = [
            d if i in clients else Decision(previous[i], "not available: sits the round out, keeps its cut")
            for i, d in enumerate(policy.allocate(ctx))
        ]
        predicted = predict([d.cut for d in decisions], [d.wire for d in decisions])
        return decisions, predicted.makespan_s

    def learn(
        self,
        works: Mapping[int, ClientWork],
        timing: RoundTiming,
        totals: Mapping[int, tuple[float, int, int]],
    ) -> dict[int, float]:
        """Take what the round showed: its legs' times and each client's training batches;
        returns the round's raw training accuracy per client."""
        self.observer.observe(works, timing, self.timer.server)
        return self.signal.observe(totals)

    def state_dict(self) -> dict[str, Any]:
        return {"observer": self.observer.state_dict(), "signal": self.signal.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.observer.load_state_dict(state["observer"])
        self.signal.load_state_dict(state["signal"])
