"""The adapter exchange in the delta formats of ``codec.adapters`` (docs/architecture.md,
"Compression"), for every method that exchanges adapters: the split loop and fedlora.

* **Down.** The sender (a round loop) keeps, per client, the tensors that client decoded (its
  reference) and sends ``global - reference`` (:func:`adapter_download`); because the reference
  is what was decoded, an error not sent now is in the next change (error feedback without a
  separate residual). A client that holds nothing current (it missed a round, or its cut moved)
  gets whole tensors, in the same format.
* **Up.** The receiver (:class:`HeldAdapters`: a split client, a fedlora trainer) keeps the
  tensors as it last received them and sends ``trained - reference`` through its own error
  feedback (``wire/feedback.py``); the fed server adds the decoded change to the round's start,
  so the merge averages the clients' changes (D3) and never a download error.

References and residuals are state of the role that keeps them (in its ``state_dict()``), so a
resumed run continues exactly. With ``fp32`` (the default) whole tensors travel and nothing is
kept: the messages are those of before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from splitft.model.lora import AdapterLayout, Adapters
from splitft.wire.codec import Entry, encode_message
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.messages import DELTA_FORMATS, adapter_entries, add_to, read_adapters

References = dict[int, dict[str, Any]]
"""Client -> {"cut", "round" (the last round it was sent adapters), "tensors" (what it decoded)}."""


def adapter_download(
    references: References,
    round_number: int,
    i: int,
    cut: int,
    adapters: Adapters,
    ranks: Mapping[str, int],
    spec: str,
    layout: AdapterLayout,
) -> tuple[list[Entry], bool]:
    """Client ``i``'s adapters of ``ranks`` in delta format ``spec``: the change against what it
    holds, or whole tensors when it holds nothing current (another cut, or it missed a round);
    records in ``references`` what it will decode, so the next change carries this one's
    quantisation error. Returns (entries, whether they are a delta)."""
    held = references.get(i)
    delta = held is not None and held["cut"] == cut and held["round"] >= round_number - 1
    send = {n: adapters[n] - held["tensors"][n] if delta else adapters[n] for n in ranks}
    entries = adapter_entries(send, ranks, spec)
    decoded = read_adapters({e.name: e.value for e in entries}, layout)
    device = next(iter(adapters.values())).device
    if delta:
        tensors = add_to(held["tensors"], decoded)
    else:  # copies: a decoded fp32 tensor may be a view of the global set
        tensors = {n: t.to(device).clone() for n, t in decoded.items()}
    references[i] = {"cut": cut, "round": round_number, "tensors": tensors}
    return entries, delta


def references_state(references: References) -> dict[str, Any]:
    """``references`` for a ``state_dict()`` (JSON keys)."""
    return {str(i): v for i, v in references.items()}


def load_references(state: Mapping[str, Any], device: torch.device) -> References:
    """What :func:`references_state` saved, its tensors on ``device``."""
    return {
        int(i): {**v, "tensors": {n: t.to(device) for n, t in v["tensors"].items()}} for i, v in state.items()
    }


class HeldAdapters:
    """A receiver's side of the exchange in format ``spec``: the adapters as last received (what
    the sender thinks it holds) and the residual of its uploads."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.reference: dict[str, torch.Tensor] = {}
        self.feedback = ErrorFeedback()
        """Lossy delta formats: the residual of each adapter change not yet sent."""

    @property
    def delta(self) -> bool:
        return self.spec in DELTA_FORMATS

    def take(
        self, message: Mapping[str, Any], layout: AdapterLayout, params: Mapping[str, torch.Tensor]
    ) -> None:
        """Copy the adapters of a received ``message`` into ``params`` (a delta is added to the
        reference first); in a delta format, the result becomes the reference."""
        received = read_adapters(message, layout)
        meta = message.get("control")
        if isinstance(meta, Mapping) and meta.get("delta"):
            received = add_to(self.reference, received)
        with torch.no_grad():
            for name, tensor in received.items():
                params[name].copy_(tensor)
        if self.delta and received:
            self.reference = {n: t.detach().clone() for n, t in params.items()}
            self.feedback.keep_only(params)

    def upload(
        self, params: Mapping[str, torch.Tensor], ranks: Mapping[str, int], meta: dict[str, Any]
    ) -> bytes:
        """``params`` at ``ranks`` with the control record ``meta``; in a delta format, their
        change since the last download instead (``meta["delta"]``), through the error feedback."""
        if self.delta:
            changes = {n: t.detach() - self.reference[n] for n, t in params.items()}
            entries = adapter_entries(changes, ranks, self.spec, self.feedback)
            meta = {**meta, "delta": True}
        else:
            entries = adapter_entries(params, ranks)
        entries.append(Entry("control", "control", meta))
        return encode_message(entries).data

    def state_dict(self) -> dict[str, Any]:
        """The reference and residuals (nothing in fp32, which keeps neither)."""
        if not self.delta:
            return {}
        return {"reference": dict(self.reference), "feedback": self.feedback.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.reference = {n: t.to(device, torch.float32) for n, t in state.get("reference", {}).items()}
        self.feedback.load_state_dict(state.get("feedback", {}))
