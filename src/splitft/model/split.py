"""Split one causal LM at block ``k``: the client runs embeddings + blocks ``[0, k)``, the main
server runs blocks ``[k, M)`` + final norm + head.

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

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from splitft.errors import ModelError
from splitft.model.families import Family, decoder_blocks, family_of


class _CutReached(Exception):
    """Raised by the hook after the client's last block to stop the forward pass there."""

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

    Adapter tensors (``params``) are keyed by parameter name relative to ``model``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
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

        def stop(_module: nn.Module, _args: object, output: torch.Tensor | tuple) -> None:
            raise _CutReached(_first(output))

        handle = self.blocks[cut - 1].register_forward_hook(stop)
        try:
            self._call(dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False), params)
        except _CutReached as reached:
            return reached.hidden
        finally:
            handle.remove()
        raise ModelError(f"the forward pass never reached block {cut - 1}")  # pragma: no cover

    def server_forward(
        self,
        cut: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits from the hidden state entering block ``cut``."""
        self.check_cut(cut)
        hidden = hidden.to(self.model.dtype)

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
        return out.logits

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


def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed next-token NLL, number of scored tokens, and number predicted exactly.

    ``labels`` are the input ids with -100 wherever a token must not be scored (padding, and a
    prompt when the loss is on the response only); position t predicts label t+1.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    with torch.no_grad():
        correct = int(((logits.argmax(-1) == target) & mask).sum())
    return nll, int(mask.sum()), correct
