"""The free performance signal: each client's accuracy and loss on its own training batches
(docs/architecture.md, D11).

The main server computes the loss and the exact next-token predictions of every training
batch anyway (``MainServer.train_step``, before its optimizer step, so they score the model the
client started the step with). :class:`TrainSignal` sums them per client over a round and keeps
an exponential moving average over rounds (weight ``policy.smoothing`` on the newest round; a
client's first round sets it; a client that sat a round out keeps its value).

It is a training-set signal, so it is optimistic (the model has seen similar batches, and a
client's adapters fit its own data): it is not a quality report. The accuracy rule uses it only
to *rank* clients against their mean (``w_i = 1 + gamma (acc_i - mean acc)``), for which an
equal optimism across clients cancels; it costs no byte and no second of virtual time, where the
held-out check costs a forward pass through every client's blocks and the adapters sent again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TrainSignal:
    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.accuracy: dict[int, float] = {}
        self.loss: dict[int, float] = {}

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)

    def observe(self, totals: Mapping[int, tuple[float, int, int]]) -> dict[int, float]:
        """Take one round's ``client -> (summed NLL, scored tokens, exact predictions)``; returns
        the round's raw accuracy per client that scored any token."""
        raw = {}
        for i, (loss_sum, tokens, correct) in sorted(totals.items()):
            if tokens:
                raw[i] = correct / tokens
                self.accuracy[i] = self._smooth(self.accuracy.get(i), raw[i])
                self.loss[i] = self._smooth(self.loss.get(i), loss_sum / tokens)
        return raw

    def state_dict(self) -> dict[str, Any]:
        return {
            "accuracy": {str(i): a for i, a in self.accuracy.items()},
            "loss": {str(i): v for i, v in self.loss.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accuracy = {int(i): float(a) for i, a in state["accuracy"].items()}
        self.loss = {int(i): float(v) for i, v in state["loss"].items()}
