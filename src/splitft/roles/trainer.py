"""LoRA fine-tuning of the unsplit model on one data set: a FedLoRA client, or the pooled
trainer of centralized LoRA. Its methods take and return codec bytes, like the split client's,
so the same runtimes and byte ledger serve it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitft.algorithms.optim import retarget
from splitft.config import Config
from splitft.config_codec import client_format
from splitft.data.tokenize import BatchStream, TokenizedDataset
from splitft.model.lora import AdapterLayout, full_ranks
from splitft.model.split import SplitModel
from splitft.wire.adapter_sync import HeldAdapters
from splitft.wire.messages import control, read, read_state, state_message


def pool(parts: Sequence[TokenizedDataset]) -> TokenizedDataset:
    """All clients' training samples as one data set (client order, then sample order)."""
    return TokenizedDataset(
        [ids for p in parts for ids in p.input_ids],
        [s for p in parts for s in p.loss_start],
        [m for p in parts for m in p.meta],
    )


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
        self.held = HeldAdapters(client_format(cfg.codec.adapters, client_id, "fp32"))
        """Delta adapter formats (fedlora): the adapters as last received and the residual of
        each change not yet sent (docs/architecture.md, "Compression")."""

    def begin_round(self, payload: bytes) -> bytes:
        """Take the global adapters (every block; in a delta format, their change against what
        this trainer last received). After an ``svd`` merge every factor is in a new basis, so
        the AdamW moments of the old one are dropped (as the split client does)."""
        self.held.take(read(payload), self.layout, self.params)
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
            nll, count, _ = self.model.full_stats(ids, mask, batch["labels"].to(device), self.params)
            (nll / max(count, 1)).backward()
            self.optimizer.step(int(meta["first_step"]) + step)
            loss_sum, tokens = loss_sum + float(nll.detach()), tokens + count
            shapes.append(list(ids.shape))
        return control(loss_sum=loss_sum, tokens=tokens, shapes=shapes)

    def end_round(self, payload: bytes) -> bytes:
        """Send the adapters back for aggregation, with this trainer's sample count; in a delta
        format, their change since the round's download."""
        return self.held.upload(self.params, self.ranks, {"samples": len(self.data)})

    def state_dict(self) -> dict[str, Any]:
        """Its position in the data stream, its adapters with their AdamW moments, and in a delta
        format the adapters as last received and its residuals."""
        state = {"batches_taken": self.stream.taken, "optimizer": self.optimizer.state_dict()}
        return {**state, **self.held.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stream.skip_to(int(state["batches_taken"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.held.load_state_dict(state, self.model.device)

    def export_state(self, payload: bytes) -> bytes:
        """:meth:`state_dict` as codec bytes (a checkpoint asks it wherever the trainer runs)."""
        return state_message(self.state_dict())

    def restore_state(self, payload: bytes) -> bytes:
        self.load_state_dict(read_state(payload))
        return control(ok=True)
