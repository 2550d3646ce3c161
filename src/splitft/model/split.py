"""Split one causal LM at block ``k``: the client runs embeddings + blocks ``[0, k)``, the main
server runs blocks ``[k, M)`` + final norm + head. In a U-shaped split (docs/architecture.md,
D15) the server stops after block ``M - t - 1`` (:meth:`SplitModel.middle_forward`) and the
client runs ``[M - t, M)`` + final norm + head the way the server runs its part.

Both halves run the model's *own* forward pass, so every family's masks (padding, causal,
GPT-Neo's local attention, Qwen2's sliding window), positions (GPT-2's ``wpe``, OPT's
mask-derived offsets) and rotary embeddings are built exactly as in the unsplit model:

* client: the forward stops right after block ``k-1`` (a hook raises with its output);
* server: blocks ``[0, k)`` are swapped for pass-throughs, the embeddings see a zero
  placeholder, and a pre-hook on block ``k`` replaces its input with the received hidden
  state. Parameter-free position work (rotary, masks) is redone on the server from the
  attention mask, so only the hidden state, the attention mask and the labels travel.

LoRA weights are not stored in the model per client: every call takes the role's own adapter
tensors and runs with them via ``torch.func.functional_call``. One frozen base model thus
serves every client and the server in a simulation. Calls are not re-entrant (the server
swaps blocks for the duration of a call), which matches one main server serving one request
at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from splitft.errors import ModelError
from splitft.model.families import Family, decoder_blocks, family_of
from splitft.model.loss import chunked_token_stats, token_stats
from splitft.model.precision import base_dtype

__all__ = ["SplitModel", "token_stats"]


class _CutReached(Exception):
    """Raised by a hook to stop the forward pass where the caller needs its tensor: after the
    client's last block, or at the LM head's input."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("cut reached")
        self.hidden = hidden


class _SkippedBlock(nn.Module):
    """Stands in for a block the server does not run: passes the hidden state through."""

    def __init__(self, returns_tuple: bool) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object):
        return (hidden_states, None) if self.returns_tuple else hidden_states


def _first(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class SplitModel:
    """A frozen causal LM that can be run whole, up to a cut, or from a cut.

    Args:
        model: a ``*ForCausalLM`` (with or without PEFT LoRA layers injected).
        loss_chunk: tokens per chunk of the memory-light loss in :meth:`full_stats` and
            :meth:`server_stats` (0 = whole logits, :func:`token_stats`).

    Adapter tensors (``params``) are keyed by parameter name relative to ``model``.
    """

    def __init__(self, model: nn.Module, loss_chunk: int = 0) -> None:
        self.model = model
        self.loss_chunk = loss_chunk
        self.family: Family = family_of(model)
        self.blocks: nn.ModuleList = decoder_blocks(model, self.family)
        self.num_blocks = len(self.blocks)
        self.embed_dim = model.get_input_embeddings().embedding_dim
        self._returns_tuple = self._probe_block_output()

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def check_cut(self, cut: int) -> None:
        if not 1 <= cut <= self.num_blocks - 1:
            raise ModelError(
                f"cut {cut} is outside 1..{self.num_blocks - 1} (the model has {self.num_blocks} blocks)"
            )

    def full_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of the unsplit model with ``params`` as its adapter weights."""
        out = self._call(dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False), params)
        return out.logits

    def client_forward(
        self,
        cut: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Hidden state after block ``cut - 1`` (the smashed data), attached to the graph."""
        self.check_cut(cut)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self._stop_at(self.blocks[cut - 1], lambda: self._call(kwargs, params), after=True)

    def server_forward(
        self,
        cut: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits from the hidden state entering block ``cut``."""
        return self._run_from(cut, hidden, attention_mask, params).logits

    def middle_forward(
        self,
        cut: int,
        end: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Hidden state after block ``end - 1`` from the hidden state entering block ``cut``,
        attached to the graph: the main server's part of a U-shaped split (blocks ``[cut, end)``)."""
        if not cut < end <= self.num_blocks - 1:
            raise ModelError(f"the server part [{cut}, {end}) is empty or reaches the last block")
        run = lambda: self._run_from(cut, hidden, attention_mask, params)  # noqa: E731
        return self._stop_at(self.blocks[end - 1], run, after=True)

    def _run_from(
        self,
        cut: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None,
    ):
        """The model's forward pass with ``hidden`` entering block ``cut`` (the blocks before it
        pass their input through; the embeddings see a zero placeholder)."""
        self.check_cut(cut)
        hidden = hidden.to(base_dtype(self.model))
        if params:  # a U-shaped client's tail call holds adapters of blocks swapped out below
            skipped = tuple(f"{self.family.blocks}.{i}." for i in range(cut))
            params = {name: t for name, t in params.items() if not name.startswith(skipped)}

        def inject(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        originals = [self.blocks[i] for i in range(cut)]
        handle = self.blocks[cut].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            for i in range(cut):
                self.blocks[i] = _SkippedBlock(self._returns_tuple)
            placeholder = hidden.new_zeros(*hidden.shape[:2], self.embed_dim)
            out = self._call(
                dict(inputs_embeds=placeholder, attention_mask=attention_mask, use_cache=False), params
            )
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block
            handle.remove()
        return out

    def full_stats(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int, int]:
        """:func:`token_stats` of the unsplit model, memory-light when ``loss_chunk`` is set."""
        if not self.loss_chunk:
            return token_stats(self.full_forward(input_ids, attention_mask, params), labels)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self._head_stats(lambda: self._call(kwargs, params), labels)

    def server_stats(
        self,
        cut: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int, int]:
        """:func:`token_stats` from the hidden state entering block ``cut``, memory-light when
        ``loss_chunk`` is set: the main server's part of a vanilla split, or the client's tail
        (``cut = M - t``) of a U-shaped one."""
        if not self.loss_chunk:
            return token_stats(self.server_forward(cut, hidden, attention_mask, params), labels)
        return self._head_stats(lambda: self.server_forward(cut, hidden, attention_mask, params), labels)

    def _head_stats(self, run: Callable[[], object], labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        head = self.model.get_output_embeddings()
        return chunked_token_stats(self._stop_at(head, run, after=False), head, labels, self.loss_chunk)

    def _stop_at(self, module: nn.Module, run: Callable[[], object], after: bool) -> torch.Tensor:
        """Run ``run`` (a forward pass) until ``module``; return its output (``after``) or input."""

        def stop_after(_module: nn.Module, _args: object, output: torch.Tensor | tuple) -> None:
            raise _CutReached(_first(output))

        def stop_before(_module: nn.Module, args: tuple) -> None:
            raise _CutReached(args[0])

        handle = (
            module.register_forward_hook(stop_after)
            if after
            else module.register_forward_pre_hook(stop_before)
        )
        try:
            run()
        except _CutReached as reached:
            return reached.hidden
        finally:
            handle.remove()
        raise ModelError(f"the forward pass never reached {type(module).__name__}")  # pragma: no cover

    def _call(self, kwargs: dict, params: Mapping[str, torch.Tensor] | None):
        if not params:
            return self.model(**kwargs)
        return functional_call(self.model, dict(params), args=(), kwargs=kwargs, strict=False)

    def _probe_block_output(self) -> bool:
        """Whether this family's blocks return a tuple (GPT-Neo) or a plain tensor."""
        seen: list[bool] = []
        handle = self.blocks[0].register_forward_hook(lambda _m, _a, out: seen.append(isinstance(out, tuple)))
        try:
            with torch.no_grad():
                ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
                self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        finally:
            handle.remove()
        return seen[0]
