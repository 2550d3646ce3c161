"""The [codec] section of the config, its choice lists, and how per-client codec fields are
read (config.py checks them).

Kept apart from config.py so the wire layer can import them without the whole config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIRE_DTYPES = ("fp32", "fp16", "bf16")
"""The codec's casting formats (also config.WIRE_DTYPES, codec.activation_dtype's choices)."""
CUT_FORMATS = (*WIRE_DTYPES, "int8", "int4", "int2", "topk:<fraction>")
"""Formats of activations and gradients at the cut (codec.activations, codec.gradients)."""
ADAPTER_FORMATS = ("fp32", "delta", "delta-int8", "delta-int4", "delta-int2")
"""Formats of the adapter exchange (codec.adapters)."""


@dataclass
class CodecConfig:
    activation_dtype: str = "fp32"
    """Wire dtype of activations: 'fp32', 'fp16' or 'bf16'."""
    gradient_dtype: str = "fp32"
    """Wire dtype of gradients: 'fp32', 'fp16' (with a per-tensor scale) or 'bf16'."""
    activations: list[str] = field(default_factory=list)
    """Format of activations at the cut, one for all clients or one per client (empty =
    activation_dtype): fp32, fp16, bf16, int8 (per-token scales), int4 / int2 (packed, a scale
    per 64 values) or topk:<fraction> (the largest values and their indices). No error feedback:
    the server computes on what it decoded; the client's backward treats the codec as identity."""
    gradients: list[str] = field(default_factory=list)
    """Format of gradients at the cut, one for all or one per client (empty = gradient_dtype):
    the formats of 'activations'; int and topk formats keep the server's residual per client
    (error feedback), so what is not sent now is added to the next gradient."""
    adapters: list[str] = field(default_factory=list)
    """Adapter exchange, both directions, one for all or one per client (empty = fp32):
    'fp32' (whole tensors), 'delta' (the change against what the receiver holds, fp32) or
    'delta-int8' / 'delta-int4' / 'delta-int2' (that change in int8 per row, int4 or int2 per 64
    values, the sender keeping its residual; whole tensors, when sent, in the same format)."""


def topk_fraction(spec: str) -> float | None:
    """The fraction of a 'topk:<fraction>' format, None for any other format (a bad fraction
    is NaN, which fails every range check)."""
    if not spec.startswith("topk:"):
        return None
    try:
        return float(spec.removeprefix("topk:"))
    except ValueError:
        return math.nan


def cut_format_ok(spec: str) -> bool:
    """Whether ``spec`` names a format of activations or gradients (CUT_FORMATS)."""
    fraction = topk_fraction(spec)
    return spec in CUT_FORMATS[:-1] if fraction is None else 0 < fraction <= 1


def client_format(values: list[str], client: int, default: str) -> str:
    """Client ``client``'s value of a per-client codec field (one for all, or one per client)."""
    if not values:
        return default
    return values[client] if len(values) > 1 else values[0]
