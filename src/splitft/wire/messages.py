"""What travels in each call between the round loop, the clients and the main server.

All of it goes through the codec (``codec.py``): named entries, each of one kind, so every
byte is accounted for. Adapters travel at the rank actually trained (the first ``r_cut``
components of a cut block), and are zero-padded back to full shape on arrival.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitft.model.lora import AdapterLayout, Adapters, pad_to, truncate
from splitft.wire.codec import Entry, decode_message, encode_message
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.quantize import decode_value, encode_value
from splitft.wire.state import join_state, split_state

STATE_ENTRY = "__state__"
DELTA_FORMATS = {"delta": "fp32", "delta-int8": "int8", "delta-int4": "int4", "delta-int2": "int2"}
"""codec.adapters formats that send changes, and the format each change travels in."""


def adapter_entries(
    adapters: Mapping[str, torch.Tensor],
    ranks: Mapping[str, int],
    spec: str = "fp32",
    feedback: ErrorFeedback | None = None,
) -> list[Entry]:
    """One ``adapters`` entry per tensor, cut to its trained rank; with a delta ``spec`` the
    tensors are changes, sent in that format (through ``feedback`` when the sender keeps one)."""
    entries = []
    for name, t in adapters.items():
        t = truncate(name, t.detach(), ranks[name]).cpu()
        if spec not in DELTA_FORMATS:
            entries.append(Entry(name, "adapters", t))
            continue
        fmt = DELTA_FORMATS[spec]
        value, wire_dtype = feedback.encode(name, t, fmt) if feedback else encode_value(t, fmt)
        entries.append(Entry(name, "adapters", value, wire_dtype=wire_dtype))
    return entries


def read_adapters(message: Mapping[str, object], layout: AdapterLayout) -> Adapters:
    """The adapter tensors of a decoded message (packed ones unpacked), padded back to full shape."""
    return {
        name: pad_to(name, decode_value(value).float(), layout.shapes[name])
        for name, value in message.items()
        if name in layout.shapes and isinstance(value, torch.Tensor)
    }


def add_to(base: Mapping[str, torch.Tensor], changes: Mapping[str, torch.Tensor]) -> Adapters:
    """``base + change`` for every tensor of a received delta message."""
    return {name: base[name] + change.to(base[name].device) for name, change in changes.items()}


def control(**values: object) -> bytes:
    """A message holding only a small control record."""
    return encode_message([Entry("control", "control", values)]).data


def read(data: bytes) -> dict[str, object]:
    return decode_message(data)


def state_message(state: Mapping[str, object]) -> bytes:
    """A role's ``state_dict()`` as codec bytes: each tensor one entry named by its path, the
    rest one JSON entry (what a checkpoint asks of a client, wherever it runs)."""
    tensors, rest = split_state(state)
    entries = [Entry(path, "adapters", t.cpu()) for path, t in tensors.items()]
    entries.append(Entry(STATE_ENTRY, "control", rest))
    return encode_message(entries).data


def read_state(payload: bytes) -> dict[str, object]:
    """The state dict :func:`state_message` encoded."""
    message = read(payload)
    rest = message.pop(STATE_ENTRY)
    return join_state({k: v for k, v in message.items() if isinstance(v, torch.Tensor)}, rest)
