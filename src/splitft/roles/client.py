"""The client role: embeddings + blocks ``[0, cut)`` with its own LoRA copy, and its data.

Its raw text never leaves it: what it sends is the hidden state at its cut (the smashed data),
the labels and attention mask of the batch, and its adapters at the end of a round. In a
U-shaped split (``split.shape = "u"``; docs/architecture.md, D15) it also runs the last
``split.tail`` blocks, the head and the loss (:meth:`Client.tail_step`), so it sends no labels:
only hidden states, the gradient at the tail's input and the attention mask. Every method takes
and returns codec bytes, so the same object serves any runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from splitft.algorithms.optim import AdapterOptimizer, retarget
from splitft.config import Config
from splitft.config_codec import client_format
from splitft.data.tokenize import BatchStream, TokenizedDataset, collate
from splitft.model.lora import AdapterLayout
from splitft.model.segments import Segments
from splitft.model.split import SplitModel
from splitft.wire.adapter_sync import HeldAdapters
from splitft.wire.codec import Entry, encode_message
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.messages import control, read, read_state, state_message
from splitft.wire.quantize import decode_value, encode_value


class Client:
    def __init__(
        self,
        client_id: int,
        model: SplitModel,
        layout: AdapterLayout,
        data: TokenizedDataset,
        cfg: Config,
        pad_id: int,
        heldout: TokenizedDataset | None = None,
    ) -> None:
        self.client_id = client_id
        self.model = model
        self.layout = layout
        self.data = data
        self.heldout = heldout if heldout is not None else TokenizedDataset()
        self.cfg = cfg
        self.pad_id = pad_id
        self.total_steps = cfg.federation.rounds * cfg.federation.local_steps
        self.stream = BatchStream(data, cfg.train.batch_size, cfg.seed, client_id, pad_id)
        self.cut = 0
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: AdapterOptimizer | None = None
        self._pending: torch.Tensor | None = None
        self._tail_batch: dict[str, torch.Tensor] | None = None
        """U shape: labels and attention mask of the batch (or held-out samples) in flight, for the tail."""
        self.gradient_feedback = ErrorFeedback()
        """U shape, lossy gradient formats: the residual of the gradient at the tail's input."""
        self.held = HeldAdapters(client_format(cfg.codec.adapters, client_id, "fp32"))
        """Delta adapter formats: the adapters as last received (what the server thinks we hold)
        and the residual of each change not yet sent (wire/adapter_sync.py)."""
        self.wire: str | None = None
        """This round's activation format where the policy chose one (docs/architecture.md, D14)."""

    @property
    def activation_format(self) -> str:
        codec = self.cfg.codec
        return self.wire or client_format(codec.activations, self.client_id, codec.activation_dtype)

    @property
    def reference(self) -> dict[str, torch.Tensor]:
        """Delta adapter formats: the adapters as last received."""
        return self.held.reference

    @property
    def feedback(self) -> ErrorFeedback:
        """Lossy delta formats: the residual of each adapter change not yet sent."""
        return self.held.feedback

    @property
    def gradient_format(self) -> str:
        codec = self.cfg.codec
        return client_format(codec.gradients, self.client_id, codec.gradient_dtype)

    @property
    def segments(self) -> Segments:
        return Segments(self.model.num_blocks, self.cut, self.cfg.split.tail_of(self.client_id))

    @property
    def u_shape(self) -> bool:
        return self.segments.tail > 0

    @property
    def ranks(self) -> dict[str, int]:
        return self.segments.client_ranks(self.layout, self.cfg.lora.client_cut_rank)

    def begin_round(self, payload: bytes) -> bytes:
        """Take the round's cut and the global adapters of blocks ``[0, cut)``.

        Adapters may be left out when this client already holds the current global set for its
        range (sent with the last held-out check). Tensors of blocks it keeps across a cut
        change keep their optimizer state; ``reset`` names those whose basis changed.
        """
        message = read(payload)
        meta = message["control"]
        cut = int(meta["cut"])
        self.wire = meta.get("wire")
        if cut != self.cut:
            old_ranks = self.ranks if self.cut else {}
            self.cut = cut
            self.params, self.optimizer = retarget(
                self.params,
                self.optimizer,
                self.layout.names(self.segments.client_blocks),
                self.layout.shapes,
                self.model.device,
                self.cfg.train,
                self.total_steps,
            )
            # A tensor that now trains at a lower rank must not keep moments of its dropped components.
            self.optimizer.reset(n for n, r in self.ranks.items() if old_ranks.get(n, r) != r)
        self.optimizer.reset(self.params if meta.get("reset_all") else meta.get("reset", []))
        self.held.take(message, self.layout, self.params)
        return control(ok=True)

    def heldout_forward(self, payload: bytes) -> bytes:
        """The smashed data of this client's held-out samples, for the policy's accuracy check."""
        limit = int(read(payload)["control"]["samples"])
        items = [self.heldout[i] for i in range(min(limit, len(self.heldout)))]
        if not items:
            return control(empty=True)
        batch = collate(items, self.pad_id)
        device = self.model.device
        with torch.no_grad():
            hidden = self.model.client_forward(
                self.cut, batch["input_ids"].to(device), batch["attention_mask"].to(device), self.params
            )
        return self._smashed(hidden, batch)

    def forward_step(self, payload: bytes) -> bytes:
        """Run the next batch up to the cut; send the smashed data, labels and mask."""
        batch = self.stream.next()
        device = self.model.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        self._pending = self.model.client_forward(self.cut, ids, mask, self.params)
        return self._smashed(self._pending.detach(), batch)

    def _smashed(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> bytes:
        """The message a client sends at its cut: hidden state, labels, attention mask. A
        U-shaped client keeps the labels for its tail; its mask travels as control, in bool (it
        shows the length of every sequence, and the server needs it for attention)."""
        value, wire_dtype = encode_value(hidden.cpu(), self.activation_format)
        if self.u_shape:
            self._tail_batch = {"labels": batch["labels"], "attention_mask": batch["attention_mask"]}
            entries = [Entry("attention_mask", "control", batch["attention_mask"].bool())]
        else:
            entries = [
                Entry("labels", "labels", batch["labels"].to(torch.int32)),
                Entry("attention_mask", "labels", batch["attention_mask"].to(torch.uint8)),
            ]
        return encode_message([Entry("hidden", "activations", value, wire_dtype=wire_dtype), *entries]).data

    def tail_step(self, payload: bytes) -> bytes:
        """U shape: from the hidden state the server sent down, run the tail, the head and the
        loss, backpropagate them, and send up the gradient at the tail's input and the step's
        loss statistics (the client's adapters step in :meth:`backward_step`)."""
        hidden, mask, labels = self._tail_input(payload)
        hidden.requires_grad_(True)
        loss_sum, tokens, correct = self.model.server_stats(
            self.segments.tail_start, hidden, mask, labels, self.params
        )
        (loss_sum / max(tokens, 1)).backward()
        # The server's graph continues from what it sent; a lossy format keeps our residual.
        value, dtype = self.gradient_feedback.encode("grad", hidden.grad.cpu(), self.gradient_format)
        stats = {"loss_sum": float(loss_sum.detach()), "tokens": tokens, "correct": correct}
        return encode_message(
            [
                Entry("grad", "gradients", value, wire_dtype=dtype, scaled=dtype == "fp16"),
                Entry("control", "control", stats),
            ]
        ).data

    def heldout_score(self, payload: bytes) -> bytes:
        """U shape: score the held-out samples of :meth:`heldout_forward` from the hidden state
        the server sent down (the global set's tail, head and loss, on this device)."""
        hidden, mask, labels = self._tail_input(payload)
        with torch.no_grad():
            loss_sum, tokens, correct = self.model.server_stats(
                self.segments.tail_start, hidden, mask, labels, self.params
            )
        return control(loss_sum=float(loss_sum), tokens=tokens, correct=correct)

    def _tail_input(self, payload: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The hidden state the server sent down (as decoded: the tail computes on exactly that),
        and the attention mask and labels of the batch it belongs to."""
        if self._tail_batch is None:
            raise RuntimeError("a tail call came before the forward call of its batch")
        device = self.model.device
        hidden = decode_value(read(payload)["hidden"]).to(device, torch.float32)
        batch = self._tail_batch
        return hidden, batch["attention_mask"].to(device, torch.long), batch["labels"].to(device, torch.long)

    def backward_step(self, payload: bytes) -> bytes:
        """Backpropagate the gradient at the cut and step this client's adapters."""
        message = read(payload)
        if self._pending is None:
            raise RuntimeError("backward_step called before forward_step")
        # Straight-through: the server's gradient w.r.t. what it decoded drives our own graph.
        grad = decode_value(message["grad"]).to(self._pending.device, self._pending.dtype)
        self._pending.backward(grad)
        self._pending = self._tail_batch = None
        self.optimizer.step(int(message["control"]["step"]))
        return control(ok=True)

    def end_round(self, payload: bytes) -> bytes:
        """Send this client's adapters (at the rank trained) back for aggregation; with a delta
        format, their change since the round's download instead."""
        return self.held.upload(self.params, self.ranks, {"samples": len(self.data)})

    def state_dict(self) -> dict[str, Any]:
        """Its cut, its position in the data stream, and its adapters with their AdamW moments."""
        state: dict[str, Any] = {"cut": self.cut, "batches_taken": self.stream.taken}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        state.update(self.held.state_dict())
        if self.u_shape:
            state["gradient_feedback"] = self.gradient_feedback.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`state_dict` (resuming a run; this client is fresh)."""
        self.stream.skip_to(int(state["batches_taken"]))
        if state["cut"]:
            self.cut = int(state["cut"])
            self.params, self.optimizer = retarget(
                {},
                None,
                self.layout.names(self.segments.client_blocks),
                self.layout.shapes,
                self.model.device,
                self.cfg.train,
                self.total_steps,
            )
            self.optimizer.load_state_dict(state["optimizer"])
        self.held.load_state_dict(state, self.model.device)
        self.gradient_feedback.load_state_dict(state.get("gradient_feedback", {}))

    def export_state(self, payload: bytes) -> bytes:
        """:meth:`state_dict` as codec bytes, so a checkpoint works wherever the client runs (the
        round loop does not count it as training traffic)."""
        return state_message(self.state_dict())

    def restore_state(self, payload: bytes) -> bytes:
        """:meth:`load_state_dict` from what :meth:`export_state` sent."""
        self.load_state_dict(read_state(payload))
        return control(ok=True)
