"""The baselines without a split: FedLoRA and centralised LoRA (``method = "fedlora"`` or
``"centralized"``).

* **fedlora**: every client holds the whole model. Each round it gets the global adapters
  (every block at ``r_others``), runs ``local_steps`` steps of plain LoRA fine-tuning on its
  own data and uploads its adapters; FedAvg (or the svd merge) makes the new global set. Only
  adapters and control records cross the boundary, through the same codec, runtime and byte
  ledger as split learning. A client whose device memory cannot hold the whole model for
  training is *infeasible*: it is left out of every round and reported, never silently run
  (that client is the reason split learning exists).
* **centralized**: one trainer with all clients' training data pooled runs on the main
  server. A round is as many steps as all clients of a federated round take together, so
  round ``r`` means the same number of samples in every method. Nothing crosses a boundary.

With one client and one round, fedlora and centralized do the same steps on the same batches
(the pooled data of one client is that client's data, and both draw batches from the stream
keyed by client 0), which a test checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from splitft.algorithms.aggregation import Contribution, merge
from splitft.algorithms.optim import retarget
from splitft.algorithms.policy import Decision
from splitft.config import Config
from splitft.data.tokenize import BatchStream, TokenizedDataset
from splitft.errors import SplitFTError
from splitft.methods.split_loop import RoundResult, sample_clients
from splitft.model.lora import AdapterLayout, Adapters
from splitft.model.split import SplitModel, token_stats
from splitft.runtime.base import Runtime
from splitft.sim.clock import RoundTiming, VirtualClock
from splitft.sim.timing import RoundTimer
from splitft.wire.calls import counted_call
from splitft.wire.codec import ByteLedger, Entry, encode_message
from splitft.wire.messages import adapter_entries, control, read, read_adapters


def pool(parts: Sequence[TokenizedDataset]) -> TokenizedDataset:
    """All clients' training samples as one data set (client order, then sample order)."""
    return TokenizedDataset(
        [ids for p in parts for ids in p.input_ids],
        [s for p in parts for s in p.loss_start],
        [m for p in parts for m in p.meta],
    )


def full_ranks(layout: AdapterLayout) -> dict[str, int]:
    """Every adapter tensor at ``r_others``: nothing is a cut block without a cut."""
    return {name: layout.rank for name in layout.shapes}


class WholeModelTrainer:
    """LoRA fine-tuning of the unsplit model on one data set: a FedLoRA client, or the
    centralised trainer. Its methods take and return codec bytes, like the split client's."""

    def __init__(
        self,
        client_id: int,
        model: SplitModel,
        layout: AdapterLayout,
        data: TokenizedDataset,
        cfg: Config,
        pad_id: int,
        total_steps: int,
    ) -> None:
        self.client_id = client_id
        self.model = model
        self.layout = layout
        self.data = data
        self.cfg = cfg
        self.pad_id = pad_id
        self.ranks = full_ranks(layout)
        self.params, self.optimizer = retarget(
            {}, None, list(layout.shapes), layout.shapes, model.device, cfg.train, total_steps
        )
        self.stream = BatchStream(data, cfg.train.batch_size, cfg.seed, client_id, pad_id)

    def skip_batches(self, count: int) -> None:
        """Advance the data stream past ``count`` batches (resuming a run)."""
        self.stream.skip_to(count)

    @property
    def batches_taken(self) -> int:
        return self.stream.taken

    def begin_round(self, payload: bytes) -> bytes:
        """Take the global adapters (every block). After an ``svd`` merge every factor is in a
        new basis, so the AdamW moments of the old one are dropped (as the split client does)."""
        with torch.no_grad():
            for name, tensor in read_adapters(read(payload), self.layout).items():
                self.params[name].copy_(tensor)
        if self.cfg.aggregation == "svd":
            self.optimizer.reset(self.params)
        return control(ok=True)

    def train(self, payload: bytes) -> bytes:
        """Run ``steps`` optimizer steps numbered from ``first_step``; report loss and shapes."""
        meta = read(payload)["control"]
        loss_sum, tokens, shapes = 0.0, 0, []
        device = self.model.device
        for step in range(int(meta["steps"])):
            batch = self.stream.next()
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = self.model.full_forward(ids, mask, self.params)
            nll, count, _ = token_stats(logits, batch["labels"].to(device))
            (nll / max(count, 1)).backward()
            self.optimizer.step(int(meta["first_step"]) + step)
            loss_sum, tokens = loss_sum + float(nll.detach()), tokens + count
            shapes.append(list(ids.shape))
        return control(loss_sum=loss_sum, tokens=tokens, shapes=shapes)

    def end_round(self, payload: bytes) -> bytes:
        """Send the adapters back for aggregation, with this trainer's sample count."""
        entries = adapter_entries(self.params, self.ranks)
        entries.append(Entry("control", "control", {"samples": len(self.data)}))
        return encode_message(entries).data


class WholeModelLoop:
    """The round loop of fedlora (``trainer`` None: clients through ``runtime``) and of
    centralized (``trainer`` given: called directly, nothing counted as traffic)."""

    def __init__(
        self,
        cfg: Config,
        layout: AdapterLayout,
        runtime: Runtime | None,
        global_adapters: Adapters,
        ledger: ByteLedger,
        timer: RoundTimer,
        num_blocks: int,
        feasible: Sequence[bool],
        trainer: WholeModelTrainer | None = None,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.runtime = runtime
        self.global_adapters = global_adapters
        self.ledger = ledger
        self.timer = timer
        self.num_blocks = num_blocks
        self.feasible = list(feasible)
        self.trainer = trainer
        self.clock = VirtualClock()
        self.dropped: set[int] = set()
        self.num_clients = cfg.federation.num_clients
        if trainer is not None:  # the centralised trainer starts from the initial global set
            with torch.no_grad():
                for name, tensor in trainer.params.items():
                    tensor.copy_(global_adapters[name])

    @property
    def centralized(self) -> bool:
        return self.trainer is not None

    @property
    def cuts(self) -> list[int]:
        """Blocks each client computes: all of them (fedlora), none (centralized)."""
        return [0 if self.centralized else self.num_blocks] * self.num_clients

    def decisions(self) -> list[Decision]:
        if self.centralized:
            return [Decision(0, "centralized: data pooled on the server")] * self.num_clients
        return [
            Decision(self.num_blocks, "whole model" if ok else "infeasible: the whole model does not fit")
            for ok in self.feasible
        ]

    def run_round(self, round_number: int) -> RoundResult:
        dropped: list[dict] = []
        truncation = 0.0  # centralized: nothing is merged
        if self.centralized:
            loss_sum, tokens, shapes, timing = self._centralized_round(round_number)
        else:
            loss_sum, tokens, shapes, timing, truncation = self._fedlora_round(round_number, dropped)
        self.clock.advance(timing)
        return RoundResult(
            round=round_number,
            cuts=self.cuts,
            clients=sorted(shapes),
            train_loss=loss_sum / tokens if tokens else None,
            train_tokens=tokens,
            decisions=self.decisions(),
            timing=timing,
            virtual_s=self.clock.elapsed_s,
            dropped=dropped,
            samples=sum(b for s in shapes.values() for b, _ in s),
            truncation_error=truncation,
        )

    def _centralized_round(self, round_number: int) -> tuple[float, int, dict[int, list], RoundTiming]:
        """As many steps as the round's clients would take together, on the pooled data."""
        alive = list(range(self.num_clients))
        per_round = len(sample_clients(self.cfg, alive, round_number)) * self.cfg.federation.local_steps
        request = control(steps=per_round, first_step=(round_number - 1) * per_round)
        stats = read(self.trainer.train(request))["control"]
        self.global_adapters = {n: t.detach().clone() for n, t in self.trainer.params.items()}
        return (
            stats["loss_sum"],
            stats["tokens"],
            {0: stats["shapes"]},
            self.timer.centralized(stats["shapes"]),
        )

    def _fedlora_round(
        self, round_number: int, dropped: list[dict]
    ) -> tuple[float, int, dict[int, list], RoundTiming, float]:
        """Global adapters down, local steps, adapters up, FedAvg over the clients that finished;
        also the merge's truncation error (``svd`` aggregation)."""
        steps = self.cfg.federation.local_steps
        alive = [i for i in range(self.num_clients) if self.feasible[i] and i not in self.dropped]
        adapters = encode_message(adapter_entries(self.global_adapters, full_ranks(self.layout))).data
        request = control(steps=steps, first_step=(round_number - 1) * steps)
        loss_sum, tokens, shapes, contributions = 0.0, 0, {}, []
        for i in sample_clients(self.cfg, alive, round_number):
            if self._call(round_number, i, "begin_round", adapters, dropped) is None:
                continue
            if (result := self._call(round_number, i, "train", request, dropped)) is None:
                continue
            if (upload := self._call(round_number, i, "end_round", control(), dropped)) is None:
                continue
            stats, message = read(result)["control"], read(upload)
            loss_sum, tokens, shapes[i] = (
                loss_sum + stats["loss_sum"],
                tokens + stats["tokens"],
                stats["shapes"],
            )
            weight = float(message["control"]["samples"])
            contributions.append(
                Contribution(weight, read_adapters(message, self.layout), full_ranks(self.layout))
            )
        if not contributions:
            failures = "; ".join(f"client {d['client']}: {d['error']}" for d in dropped)
            if not failures:
                failures = (
                    f"every feasible client was dropped in an earlier round: {sorted(self.dropped)}"
                    if self.dropped
                    else "no client's device can train the whole model"
                )
            raise SplitFTError(f"round {round_number}: no client finished ({failures})")
        self.global_adapters, truncation = merge(
            self.global_adapters, contributions, [], self.cfg.aggregation, self.cfg.lora.r_others
        )
        timing = self.timer.whole_model(round_number, shapes, self.ledger)
        return loss_sum, tokens, shapes, timing, truncation

    def _call(
        self, round_number: int, i: int, method: str, payload: bytes, dropped: list[dict]
    ) -> bytes | None:
        return counted_call(
            self.runtime, self.ledger, self.dropped, dropped, round_number, i, method, payload
        )
