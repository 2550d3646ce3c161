"""The split methods: ``splitft`` (per-client cuts from an allocation policy, the reduced rank
at the cut) and ``sfl-fixed`` (the paper's "Same Split": one cut for all, kept all run long).

Client ``i`` runs the embeddings and blocks ``[0, k_i)``; the main server runs the rest for it,
with its own server-side copy of client ``i``'s adapters; the fed server merges both sides'
changes into the global set after every round (``split_loop.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from splitft.config import Config
from splitft.errors import ConfigError
from splitft.methods.base import Experiment, Method, Rule, SharedModel
from splitft.methods.split_loop import SplitRoundLoop
from splitft.methods.u_loop import USplitRoundLoop
from splitft.model.segments import Segments
from splitft.registry import POLICIES
from splitft.roles.client import Client
from splitft.roles.fed_server import FedServer
from splitft.roles.main_server import MainServer
from splitft.roles.shared_server import SharedMainServer
from splitft.runtime.base import Runtime

if TYPE_CHECKING:
    from splitft.data.tokenize import TokenizedDataset


class SplitMethod(Method):
    splits = True
    runtimes = ("inprocess", "flare-sim", "flare-poc", "flare-prod")
    sends = ("activations", "gradients", "labels", "adapters", "control")

    def __init__(self, name: str, one_fixed_cut: bool) -> None:
        self.name = name
        self.one_fixed_cut = one_fixed_cut

    def config_rules(self, cfg: Config) -> list[Rule]:
        """sfl-fixed is one cut for every client, kept all run long."""
        if not self.one_fixed_cut:
            return []
        return [
            (
                "policy.name",
                lambda v: v == "fixed",
                f"must be 'fixed' with method = '{self.name}' (use method = 'splitft' for cuts that move)",
            ),
            (
                "split.cuts",
                lambda v: len(set(v)) == 1,
                f"must give one cut for every client with method = '{self.name}', e.g. [2]",
            ),
        ]

    def check(self, exp: Experiment) -> None:
        """Every starting cut fits its client's device."""
        cfg, timer = exp.cfg, exp.timer
        for i, (cut, most) in enumerate(zip(exp.cuts, timer.max_cut, strict=True)):
            tail = cfg.split.tail_of(i)
            besides = f" besides its tail of {tail} blocks and the head" if tail else ""
            if cut > most:
                raise ConfigError(
                    f"split.cuts gives client {i} cut {cut}, but its device ({timer.devices[i].name}) holds at "
                    f"most {most} blocks{besides} at batch {cfg.train.batch_size} x {cfg.data.max_length} tokens; "
                    f"use a cut <= {most}"
                )

    def build_server(self, exp: Experiment) -> MainServer:
        shared = exp.cfg.split.server_adapters == "shared"
        return (SharedMainServer if shared else MainServer)(exp.model, exp.layout, exp.cfg)

    def build_client(
        self, cfg: Config, index: int, train: TokenizedDataset, heldout: TokenizedDataset, shared: SharedModel
    ) -> Client:
        return Client(index, shared.model, shared.layout, train, cfg, shared.pad_id, heldout)

    def make_loop(self, exp: Experiment, runtime: Runtime | None) -> SplitRoundLoop:
        policy = POLICIES.get(exp.cfg.policy.name).from_config(exp.cfg.policy, exp.cuts)
        fed_server = FedServer(exp.layout, dict(exp.initial), exp.cfg.aggregation)
        loop = USplitRoundLoop if exp.cfg.split.shape == "u" else SplitRoundLoop
        return loop(
            exp.cfg, exp.layout, runtime, exp.server, fed_server, policy, exp.ledger, exp.timer, exp.cuts
        )

    def trainable_params(self, exp: Experiment, cuts: Sequence[int]) -> tuple[list[int], list[int]]:
        """Per client: its blocks ``[0, cut)`` (the last at the client's cut rank; a U-shaped
        client also its tail, the first at that rank), and the server's copy of ``[cut, M)`` or
        ``[cut, M - tail)`` (its boundary blocks at the server's)."""
        lora, layout, m = exp.cfg.lora, exp.layout, exp.model.num_blocks
        client, server = [], []
        for i, cut in enumerate(cuts):
            segments = Segments(m, cut, exp.cfg.split.tail_of(i))
            sides = (
                (segments.client_ranks(layout, lora.client_cut_rank), client),
                (segments.server_ranks(layout, lora.server_cut_rank), server),
            )
            for ranks, out in sides:
                out.append(sum(layout.num_params(name, rank) for name, rank in ranks.items()))
        return client, server


SPLITFT = SplitMethod("splitft", one_fixed_cut=False)
SFL_FIXED = SplitMethod("sfl-fixed", one_fixed_cut=True)
