"""The fed server role: the one owner of the global adapter set (docs/architecture.md, D2-D4).

It collects what clients upload at the end of a round (their adapters, at the rank they
trained) and, with the main server's server-side copies, merges every change into the global
set; it alone rewrites blocks in canonical form. Everyone else reads the global set (the main
server to load its copies and to score, the loop to send clients their blocks, evaluation and
export) and never replaces it. ``version`` counts changes, so the loop knows which clients
already hold the current set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from splitft.algorithms.aggregation import Contribution, merge
from splitft.algorithms.lowrank import canonicalize
from splitft.model.lora import AdapterLayout, Adapters, lora_pairs
from splitft.wire import checks
from splitft.wire.messages import add_to, read


class FedServer:
    def __init__(self, layout: AdapterLayout, initial: Adapters, aggregation: str) -> None:
        self.layout = layout
        self.aggregation = aggregation
        self._global = initial
        self.version = 0
        """Bumped whenever the global set changes."""

    @property
    def global_adapters(self) -> Adapters:
        """The global set: every block at ``r_others`` (read it; only this role changes it)."""
        return self._global

    def contribution(self, payload: bytes, ranks: Mapping[str, int]) -> Contribution:
        """Decode and check one client's upload (ReplyError or CodecError when malformed); its
        weight is its number of training samples. A delta upload is the change since the client's
        download, added here to the round's start."""
        message = read(payload)
        samples = checks.number(message.get("control"), "samples", integer=True, minimum=1)
        tensors = checks.adapters(message, self.layout, ranks)
        if message["control"].get("delta"):
            tensors = add_to(self._global, tensors)
        return Contribution(float(samples), tensors, ranks)

    def merge(self, client_side: Sequence[Contribution], server_side: Sequence[Contribution] = ()) -> float:
        """Add both sides' changes against the current set (``fedavg`` or ``svd``); returns the
        merge's truncation error (0 for fedavg)."""
        self._global, error = merge(
            self._global, list(client_side), list(server_side), self.aggregation, self.layout.rank
        )
        self.version += 1
        return error

    def canonicalize(self, blocks: Iterable[int]) -> list[str]:
        """Rewrite the LoRA pairs of ``blocks`` in canonical form (B @ A unchanged); their names."""
        names = self.layout.names(blocks)
        for a_name, b_name in lora_pairs(names):
            self._global[a_name], self._global[b_name] = canonicalize(
                self._global[a_name], self._global[b_name]
            )
        self.version += 1
        return names

    def assign(self, adapters: Mapping[str, torch.Tensor]) -> None:
        """Take ``adapters`` as the global set (centralized: the pooled trainer's own adapters)."""
        self._global = {name: t.detach().clone() for name, t in adapters.items()}
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        return {"global": dict(self._global), "version": self.version}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = next(iter(self._global.values())).device
        self._global = {name: t.to(device) for name, t in state["global"].items()}
        self.version = int(state["version"])
