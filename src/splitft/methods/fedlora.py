"""``method = "fedlora"``: federated LoRA without a split, the baseline of the paper.

Every client holds the whole model. Each round it gets the global adapters (every block at
``r_others``), runs ``local_steps`` steps of plain LoRA fine-tuning on its own data and uploads
its adapters; the fed server merges them (FedAvg, or the svd merge) into the new global set.
Only adapters and control records cross the boundary, through the same codec, runtime and
byte ledger as split learning; ``codec.adapters`` compresses them both ways as it does for the
split methods (changes against what the receiver holds, ``wire/adapter_sync.py``;
docs/architecture.md, "Compression"). A client whose device memory cannot hold the whole model for
training is *infeasible*: it is left out of every round and reported, never silently run
(that client is the reason split learning exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from splitft.algorithms.aggregation import Contribution
from splitft.algorithms.policy import Decision
from splitft.config import Config
from splitft.config_codec import client_format
from splitft.errors import ConfigError, DivergenceError, ReplyError, SplitFTError
from splitft.methods.base import Experiment, Method, RoundResult, SharedModel, sample_clients
from splitft.model.lora import AdapterLayout, Adapters, full_ranks
from splitft.roles.fed_server import FedServer
from splitft.roles.trainer import WholeModelTrainer
from splitft.runtime.base import Runtime
from splitft.sim.clock import VirtualClock
from splitft.sim.timing import RoundTimer
from splitft.wire import checks
from splitft.wire.adapter_sync import References, adapter_download, load_references, references_state
from splitft.wire.calls import Clients, guarded
from splitft.wire.codec import Entry, encode_message
from splitft.wire.ledger import ByteLedger
from splitft.wire.messages import DELTA_FORMATS, adapter_entries, control, read

if TYPE_CHECKING:
    from splitft.data.tokenize import TokenizedDataset


class FedLoraLoop:
    def __init__(
        self,
        cfg: Config,
        layout: AdapterLayout,
        runtime: Runtime,
        fed_server: FedServer,
        ledger: ByteLedger,
        timer: RoundTimer,
        num_blocks: int,
        feasible: Sequence[bool],
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.clients = Clients(runtime, ledger, cfg.federation.num_clients)
        self.fed_server = fed_server
        self.ledger = ledger
        self.timer = timer
        self.num_blocks = num_blocks
        self.feasible = list(feasible)
        self.clock = VirtualClock()
        self.num_clients = cfg.federation.num_clients
        self.references: References = {}
        """Delta adapter formats: what each client decoded of its last download (its reference)."""

    @property
    def global_adapters(self) -> Adapters:
        return self.fed_server.global_adapters

    def run_round(self, round_number: int) -> RoundResult:
        """Global adapters down, local steps, adapters up, a merge over the clients that finished."""
        dropped = self.clients.start_round(round_number)
        steps = self.cfg.federation.local_steps
        alive = [i for i in self.clients.alive() if self.feasible[i]]
        adapters = encode_message(adapter_entries(self.global_adapters, full_ranks(self.layout))).data
        request = control(steps=steps, first_step=(round_number - 1) * steps)
        loss_sum, tokens, shapes, contributions = 0.0, 0, {}, []
        for i in sample_clients(self.cfg, alive, round_number):
            download = self._download(round_number, i, adapters)
            if self._call(round_number, i, "begin_round", download, dropped) is None:
                continue
            if (result := self._call(round_number, i, "train", request, dropped)) is None:
                continue
            if (upload := self._call(round_number, i, "end_round", control(), dropped)) is None:
                continue
            both = guarded(
                self.clients.dropped,
                dropped,
                round_number,
                i,
                "end_round",
                self._read_replies,
                result,
                upload,
            )
            if both is None:
                continue
            (client_loss, client_tokens, shapes[i]), contribution = both
            loss_sum, tokens = loss_sum + client_loss, tokens + client_tokens
            contributions.append(contribution)
        if not contributions:
            error = DivergenceError if checks.diverged(dropped) else SplitFTError
            raise error(f"round {round_number}: no client finished ({self._why_none(dropped)})")
        truncation = self.fed_server.merge(contributions)
        timing = self.timer.whole_model(round_number, shapes, self.ledger)
        self.clock.advance(timing)
        return RoundResult(
            round=round_number,
            cuts=[self.num_blocks] * self.num_clients,
            clients=sorted(shapes),
            train_loss=loss_sum / tokens if tokens else None,
            train_tokens=tokens,
            decisions=[
                Decision(self.num_blocks, "whole model" if ok else "infeasible: the whole model does not fit")
                for ok in self.feasible
            ],
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            dropped=dropped,
            samples=sum(b for s in shapes.values() for b, _ in s),
            truncation_error=truncation,
        )

    def _download(self, round_number: int, i: int, whole: bytes) -> bytes:
        """Client ``i``'s ``begin_round`` message: ``whole`` (every client's fp32 global set), or
        in a delta format its change against what the client holds (wire/adapter_sync.py)."""
        spec = client_format(self.cfg.codec.adapters, i, "fp32")
        if spec not in DELTA_FORMATS:
            return whole
        ranks = full_ranks(self.layout)
        entries, delta = adapter_download(
            self.references, round_number, i, self.num_blocks, self.global_adapters, ranks, spec, self.layout
        )
        entries.append(Entry("control", "control", {"delta": delta}))
        return encode_message(entries).data

    def _read_replies(self, result: bytes, upload: bytes) -> tuple[tuple[float, int, list], Contribution]:
        """A trainer's ``train`` stats and its upload, checked (ReplyError or CodecError)."""
        stats = _train_stats(result, self.cfg.federation.local_steps)
        return stats, self.fed_server.contribution(upload, full_ranks(self.layout))

    def _why_none(self, dropped: list[dict]) -> str:
        failures = "; ".join(f"client {d['client']}: {d['error']}" for d in dropped)
        if failures:
            return failures
        if self.clients.dropped:
            return f"every feasible client was dropped in an earlier round: {sorted(self.clients.dropped)}"
        return "no client's device can train the whole model"

    def _call(
        self, round_number: int, i: int, method: str, payload: bytes, dropped: list[dict]
    ) -> bytes | None:
        return self.clients.call(i, method, payload, dropped)

    def state_dict(self) -> dict[str, Any]:
        """The global set, the clients' trainer states (asked of each), the clock, the ledger and
        the clients' references (delta adapter formats)."""
        return {
            "fed_server": self.fed_server.state_dict(),
            "references": references_state(self.references),
            "clients": self.clients.state_dict(),
            "clock": self.clock.to_dict(),
            "ledger": self.ledger.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fed_server.load_state_dict(state["fed_server"])
        self.clock = VirtualClock.from_dict(state["clock"])
        self.clients.load_state_dict(state["clients"])
        self.ledger.restore(state["ledger"])
        device = next(iter(self.global_adapters.values())).device
        self.references = load_references(state.get("references", {}), device)


def _train_stats(payload: bytes, steps: int) -> tuple[float, int, list[list[int]]]:
    """A trainer's reply to ``train``: summed loss, tokens, and one [batch, seq] per step,
    checked (ReplyError or CodecError when malformed)."""
    stats = read(payload).get("control")
    loss_sum = checks.number(stats, "loss_sum")
    tokens = int(checks.number(stats, "tokens", integer=True))
    shapes = stats.get("shapes")
    if (
        not isinstance(shapes, list)
        or len(shapes) != steps
        or not all(
            isinstance(s, list) and len(s) == 2 and all(type(d) is int and d > 0 for d in s) for s in shapes
        )
    ):
        raise ReplyError(f"control field 'shapes' is not {steps} pairs of positive integers")
    return loss_sum, tokens, shapes


class FedLora(Method):
    name = "fedlora"
    splits = False
    sends = ("adapters", "control")

    def check(self, exp: Experiment) -> None:
        timer, cfg = exp.timer, exp.cfg
        if not any(timer.whole_model_fits):
            raise ConfigError(
                f"method = 'fedlora': no client's device can train the whole model (it needs "
                f"{timer.whole_model_bytes / 1e6:.0f} MB at batch {cfg.train.batch_size} x {cfg.data.max_length} "
                f"tokens; devices: {', '.join(d.name for d in timer.devices)}); that is what split learning "
                "is for: use method = 'splitft' or 'sfl-fixed', or larger devices"
            )

    def build_client(
        self, cfg: Config, index: int, train: TokenizedDataset, heldout: TokenizedDataset, shared: SharedModel
    ) -> WholeModelTrainer:
        steps = cfg.federation.rounds * cfg.federation.local_steps
        return WholeModelTrainer(index, shared.model, shared.layout, train, cfg, shared.pad_id, steps)

    def make_loop(self, exp: Experiment, runtime: Runtime | None) -> FedLoraLoop:
        fed_server = FedServer(exp.layout, dict(exp.initial), exp.cfg.aggregation)
        fits = exp.timer.whole_model_fits
        return FedLoraLoop(
            exp.cfg, exp.layout, runtime, fed_server, exp.ledger, exp.timer, exp.model.num_blocks, fits
        )

    def trainable_params(self, exp: Experiment, cuts: Sequence[int]) -> tuple[list[int], list[int]]:
        """All of them on every client that can hold the model (the others train nothing)."""
        everything = sum(exp.layout.num_params(name, exp.layout.rank) for name in exp.layout.shapes)
        return [everything if fits else 0 for fits in exp.timer.whole_model_fits], [0] * len(cuts)

    def infeasible_clients(self, exp: Experiment) -> list[int]:
        return [i for i, ok in enumerate(exp.timer.whole_model_fits) if not ok]


FEDLORA = FedLora()
