"""The main server with one server-side adapter set for every client (SplitFed V2,
``split.server_adapters = "shared"``; docs/architecture.md, D10).

Every client's step updates the same tensors, one client after the other in client order
(the loop's serving order, modelled by the virtual clock as a server that serves in that
order), so the blocks the server runs learn like centralised training on the concatenated
batches, and only the client-side blocks are averaged. Client ``i``'s step sees the set through
its ranks: its first server block at the server's cut rank (the other components are masked
in the forward, so they get no gradient from this step; AdamW's momentum still moves them).

At the merge each served client contributes the shared set's change over its blocks
``[cut_i, M)``, at its ranks, with its weight, exactly as a per-client copy would: a block that
is server-side for some clients and client-side for others gets the shared change weighted by
the data of the clients it served, plus the client-side changes of the others. With one client
this is the per-client mode; with every client at one cut the server blocks end as sequential
training in serving order (both tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from splitft.algorithms.optim import retarget
from splitft.model.lora import Adapters, component_mask
from splitft.roles.main_server import MainServer, _ServerCopy


class SharedMainServer(MainServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(self.layout.shapes)
        self.shared, self.optimizer = retarget(
            {}, None, names, self.layout.shapes, self.model.device, self.cfg.train, self.total_steps
        )

    def start_round(self, global_adapters: Adapters, reset_all: bool = False) -> None:
        """Load the global set into the shared tensors (their AdamW moments stay)."""
        if reset_all:
            self.optimizer.reset(self.shared)
        with torch.no_grad():
            for name, tensor in self.shared.items():
                tensor.copy_(global_adapters[name])

    def canonicalized(self, names: Iterable[str]) -> None:
        self.optimizer.reset(names)

    def _copy_for(self, client_id: int, cut: int) -> _ServerCopy:
        """Client ``client_id``'s view of the shared set: its blocks ``[cut, M)`` (``[cut, M - tail)``
        in a U shape) and ranks."""
        ranks = self.segments(client_id, cut).server_ranks(self.layout, self.cfg.lora.server_cut_rank)
        view = _ServerCopy(cut, {n: self.shared[n] for n in ranks}, self.optimizer, ranks)
        self.copies[client_id] = view
        return view

    def begin_round(
        self,
        client_id: int,
        cut: int,
        global_adapters: Adapters,
        reset: Iterable[str] = (),
        reset_all: bool = False,
    ) -> None:
        self._copy_for(client_id, cut)  # the values were loaded once, by start_round

    def _params_for(self, copy: _ServerCopy) -> dict[str, torch.Tensor]:
        return {
            name: tensor * component_mask(name, tensor.shape, copy.ranks[name]).to(tensor.device)
            if copy.ranks[name] < self.layout.rank
            else tensor
            for name, tensor in copy.params.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """The shared set with its AdamW moments, each client's cut, and the gradients' error feedback."""
        return {
            "shared": self.optimizer.state_dict(),
            "cuts": {str(i): c.cut for i, c in self.copies.items()},
            "feedback": self.feedback.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["shared"])
        self.feedback.load_state_dict(state["feedback"])
        self.copies = {}
        for key, cut in state["cuts"].items():
            self._copy_for(int(key), int(cut))
