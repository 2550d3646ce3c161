"""The fed server role: collects the client-side adapters each round (design.md 2.3).

It sees only what clients upload at the end of a round (their adapters, at the rank they
trained) and hands them to the merge together with the main server's server-side copies.
"""

from __future__ import annotations

from collections.abc import Mapping

from splitft.algorithms.aggregation import Contribution
from splitft.model.lora import AdapterLayout, copy_ranks
from splitft.wire.messages import read, read_adapters


class FedServer:
    def __init__(self, layout: AdapterLayout, r_cut: int) -> None:
        self.layout = layout
        self.r_cut = r_cut

    def contributions(self, uploads: Mapping[int, bytes], cuts: list[int]) -> dict[int, Contribution]:
        """Decode each client's upload; its weight is its number of training samples."""
        out = {}
        for i, payload in uploads.items():
            message = read(payload)
            ranks = copy_ranks(self.layout, range(cuts[i]), cuts[i] - 1, self.r_cut)
            out[i] = Contribution(
                float(message["control"]["samples"]), read_adapters(message, self.layout), ranks
            )
        return out
