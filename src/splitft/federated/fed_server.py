"""The fed server role: averages the client-side adapters each round (design.md 2.3).

It sees only what clients upload at the end of a round (their adapters, at the rank they
trained) and hands the main server weighted sums, which the main server merges with the
server-side copies into one global adapter set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitft.federated.aggregation import ChangeAccumulator
from splitft.model.lora import Adapters


class FedServer:
    def accumulate(
        self,
        start: Adapters,
        uploads: Mapping[int, tuple[float, Mapping[str, torch.Tensor], Mapping[str, int]]],
    ) -> ChangeAccumulator:
        """Sum ``weight * change`` over clients; ``uploads[i] = (weight, adapters, ranks)``."""
        acc = ChangeAccumulator()
        for weight, adapters, ranks in uploads.values():
            for name, tensor in adapters.items():
                acc.add(name, start[name], tensor, ranks[name], weight)
        return acc
