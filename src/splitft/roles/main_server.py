"""The main server role: blocks ``[cut, M)`` + final norm + head + loss, for every client; in a
U-shaped split (docs/architecture.md, D15) blocks ``[cut, M - tail)`` only, in two calls per
step (:meth:`MainServer.forward_middle`, :meth:`MainServer.backward_middle`).

It keeps one server-side copy of the adapters per client (docs/architecture.md, D1: every
client owns a full adapter stack, wherever it lives), so per-client cuts never conflict, and
one optimizer per copy. The global adapter set it loads copies from and scores with belongs to
the fed server (``roles/fed_server.py``); the main server only reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from splitft.algorithms.aggregation import Contribution
from splitft.algorithms.optim import AdapterOptimizer, retarget
from splitft.config import Config
from splitft.config_codec import client_format
from splitft.model.lora import AdapterLayout, Adapters, component_mask
from splitft.model.segments import Segments
from splitft.model.split import SplitModel
from splitft.wire.checks import FLOATS, smashed, step_stats, tensor
from splitft.wire.codec import Entry, decode_message, encode_message
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.quantize import decode_value, encode_value


@dataclass
class StepStats:
    """What one server step measured: summed NLL, scored tokens, exact predictions."""

    loss_sum: float
    tokens: int
    correct: int
    batch: int = 0
    seq_len: int = 0


@dataclass
class _ServerCopy:
    cut: int
    params: dict[str, torch.Tensor]
    optimizer: AdapterOptimizer
    ranks: dict[str, int]


class MainServer:
    def __init__(self, model: SplitModel, layout: AdapterLayout, cfg: Config) -> None:
        self.model = model
        self.layout = layout
        self.cfg = cfg
        self.total_steps = cfg.federation.rounds * cfg.federation.local_steps
        self.copies: dict[int, _ServerCopy] = {}
        self.vocab_size = model.model.get_output_embeddings().weight.shape[0]
        self.feedback = ErrorFeedback()
        """Gradients at the cut in a lossy format: each client's residual not yet sent."""
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """U shape: per client, (the hidden state received, the middle's output) of the step
        between :meth:`forward_middle` and :meth:`backward_middle`, with its graph."""
        self.wire: dict[int, str] = {}
        """This round's gradient format per client where the policy chose one (docs/architecture.md, D14)."""

    def segments(self, client_id: int, cut: int) -> Segments:
        return Segments(self.model.num_blocks, cut, self.cfg.split.tail_of(client_id))

    def use_wire(self, client_id: int, spec: str | None) -> None:
        """Send client ``client_id``'s gradients this round in ``spec`` (None: as [codec] says)."""
        if spec is None:
            self.wire.pop(client_id, None)
        else:
            self.wire[client_id] = spec

    def _copy_for(self, client_id: int, cut: int) -> _ServerCopy:
        """Client ``client_id``'s copy over blocks ``[cut, M)``: tensors (and their moments) it
        kept across a cut change stay, new ones start at zero."""
        copy = self.copies.get(client_id)
        if copy is not None and copy.cut == cut:
            return copy
        ranks = self.segments(client_id, cut).server_ranks(self.layout, self.cfg.lora.server_cut_rank)
        params, optimizer = retarget(
            copy.params if copy else {},
            copy.optimizer if copy else None,
            list(ranks),
            self.layout.shapes,
            self.model.device,
            self.cfg.train,
            self.total_steps,
        )
        old_ranks = copy.ranks if copy else {}
        copy = self.copies[client_id] = _ServerCopy(cut, params, optimizer, ranks)
        # A tensor that now trains at a lower rank must not keep moments of its dropped components.
        optimizer.reset(n for n, r in ranks.items() if old_ranks.get(n, r) != r)
        return copy

    def start_round(self, global_adapters: Adapters, reset_all: bool = False) -> None:  # noqa: B027
        """Before any client's :meth:`begin_round` (a hook: per-client copies load per client)."""

    def canonicalized(self, names: Iterable[str]) -> None:  # noqa: B027
        """The fed server rewrote ``names`` in a new basis (per-client copies are reset per client)."""

    def _params_for(self, copy: _ServerCopy) -> dict[str, torch.Tensor]:
        """The adapter tensors a step of ``copy`` runs with (and trains)."""
        return copy.params

    def begin_round(
        self,
        client_id: int,
        cut: int,
        global_adapters: Adapters,
        reset: Iterable[str] = (),
        reset_all: bool = False,
    ) -> None:
        """Load the global adapters of blocks ``[cut, M)`` into client ``client_id``'s copy."""
        copy = self._copy_for(client_id, cut)
        copy.optimizer.reset(copy.params if reset_all else reset)
        with torch.no_grad():
            for name, tensor in copy.params.items():
                mask = component_mask(name, tensor.shape, copy.ranks[name]).to(tensor.device)
                tensor.copy_(global_adapters[name] * mask)

    def score(self, client_id: int, payload: bytes, global_adapters: Adapters) -> StepStats:
        """Loss and accuracy of the global adapters from a client's held-out smashed data."""
        copy = self.copies[client_id]
        message = smashed(payload, self.model.embed_dim, self.vocab_size, optional=True)
        if not message:
            return StepStats(0.0, 0, 0)
        device = self.model.device
        with torch.no_grad():
            loss_sum, tokens, correct = self.model.server_stats(
                copy.cut,
                decode_value(message["hidden"]).to(device, torch.float32),
                message["attention_mask"].to(device),
                message["labels"].to(device, torch.long),
                self._global_part(copy, global_adapters),
            )
        return StepStats(float(loss_sum), tokens, correct)

    def _global_part(self, copy: _ServerCopy, global_adapters: Adapters) -> dict[str, torch.Tensor]:
        """The global set as ``copy`` holds it (its boundary blocks at rank r_cut), so a score is
        of the model the client and the server train together."""
        device = self.model.device
        return {
            n: global_adapters[n] * component_mask(n, global_adapters[n].shape, copy.ranks[n]).to(device)
            for n in copy.params
        }

    def train_step(self, client_id: int, payload: bytes, global_step: int) -> tuple[bytes, StepStats]:
        """Forward + backward from the client's smashed data; returns the gradient message."""
        copy = self.copies[client_id]
        message = smashed(payload, self.model.embed_dim, self.vocab_size)  # ReplyError: drop the client
        device = self.model.device
        # The server computes on exactly what it decoded.
        hidden = decode_value(message["hidden"]).to(device, torch.float32).requires_grad_(True)
        mask = message["attention_mask"].to(device, torch.long)
        labels = message["labels"].to(device, torch.long)
        loss_sum, tokens, correct = self.model.server_stats(
            copy.cut, hidden, mask, labels, self._params_for(copy)
        )
        (loss_sum / max(tokens, 1)).backward()
        copy.optimizer.step(global_step)
        grad = self._gradient_message(client_id, hidden.grad, global_step)
        return grad, StepStats(float(loss_sum.detach()), tokens, correct, *hidden.shape[:2])

    def _gradient_message(self, client_id: int, grad: torch.Tensor, global_step: int) -> bytes:
        """The gradient at client ``client_id``'s cut, in this round's format for it (the
        policy's choice, else its configured one; a lossy one through this server's error
        feedback for that client)."""
        spec = self.wire.get(client_id) or client_format(
            self.cfg.codec.gradients, client_id, self.cfg.codec.gradient_dtype
        )
        value, dtype = self.feedback.encode(str(client_id), grad.cpu(), spec)
        return encode_message(
            [
                Entry("grad", "gradients", value, wire_dtype=dtype, scaled=dtype == "fp16"),
                Entry("control", "control", {"step": global_step}),
            ]
        ).data

    def forward_middle(self, client_id: int, payload: bytes) -> bytes:
        """U shape: blocks ``[cut, M - tail)`` from a client's hidden state and attention mask
        (no labels); returns the hidden state for its tail and keeps the graph for
        :meth:`backward_middle` (holding it costs memory per client in flight; recomputing would
        cost the middle's forward again)."""
        copy = self.copies[client_id]
        message = smashed(payload, self.model.embed_dim, self.vocab_size, labels=False)
        hidden = message["hidden"].to(self.model.device, torch.float32).requires_grad_(True)
        end = self.segments(client_id, copy.cut).tail_start
        mask = message["attention_mask"].to(self.model.device)
        out = self.model.middle_forward(copy.cut, end, hidden, mask, self._params_for(copy))
        self._pending[client_id] = (hidden, out)
        return self._hidden_message(client_id, out)

    def backward_middle(self, client_id: int, payload: bytes, global_step: int) -> tuple[bytes, StepStats]:
        """U shape: backpropagate the gradient the client sent up (at its tail's input) through
        the middle, step the copy, and return the gradient at the cut; the step's loss
        statistics are the client's, checked."""
        hidden, out = self._pending.pop(client_id)
        message = decode_message(payload)
        grad = tensor(message, "grad", FLOATS, tuple(out.shape))  # ReplyError: drop the client
        stats = step_stats(message.get("control"))
        out.backward(grad.to(out.device, out.dtype))
        self.copies[client_id].optimizer.step(global_step)
        reply = self._gradient_message(client_id, hidden.grad, global_step)
        return reply, StepStats(*stats, *hidden.shape[:2])

    def forget_step(self, client_id: int) -> None:
        """U shape: drop the graph :meth:`forward_middle` kept for a client whose step failed."""
        self._pending.pop(client_id, None)

    def score_middle(self, client_id: int, payload: bytes, global_adapters: Adapters) -> bytes:
        """U shape, held-out check: the middle of the global set on a client's held-out hidden
        states; the client scores the result with its tail (empty when it holds nothing out)."""
        copy = self.copies[client_id]
        message = smashed(payload, self.model.embed_dim, self.vocab_size, optional=True, labels=False)
        if not message:
            return encode_message([]).data
        end = self.segments(client_id, copy.cut).tail_start
        hidden = message["hidden"].to(self.model.device, torch.float32)
        with torch.no_grad():
            mask = message["attention_mask"].to(self.model.device)
            out = self.model.middle_forward(
                copy.cut, end, hidden, mask, self._global_part(copy, global_adapters)
            )
        return self._hidden_message(client_id, out)

    def _hidden_message(self, client_id: int, hidden: torch.Tensor) -> bytes:
        """A hidden state sent down to a client's tail, in its activation format (both
        directions share it; no error feedback: each batch is different data)."""
        codec = self.cfg.codec
        spec = client_format(codec.activations, client_id, codec.activation_dtype)
        value, dtype = encode_value(hidden.detach().cpu(), spec)
        return encode_message([Entry("hidden", "activations", value, wire_dtype=dtype)]).data

    def contributions(self, weights: dict[int, float]) -> list[Contribution]:
        """The server-side copies of the clients in ``weights``, for the merge."""
        return [
            Contribution(
                weight, {n: t.detach() for n, t in self.copies[i].params.items()}, self.copies[i].ranks
            )
            for i, weight in weights.items()
        ]

    def state_dict(self) -> dict[str, Any]:
        """Every client's copy: its cut and its adapters with their AdamW moments."""
        return {
            "copies": {
                str(i): {"cut": c.cut, "optimizer": c.optimizer.state_dict()} for i, c in self.copies.items()
            },
            "feedback": self.feedback.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.copies = {}
        self.feedback.load_state_dict(state.get("feedback", {}))
        for key, saved in state["copies"].items():
            self._copy_for(int(key), int(saved["cut"])).optimizer.load_state_dict(saved["optimizer"])
