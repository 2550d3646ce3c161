"""Checks on what a client sends, before the server side uses any of it.

A reply can decode cleanly (the codec checks framing, CRC and bounds) and still be unusable: a
wrong shape, a float where token ids belong, ids beyond the vocabulary, NaN activations, an
adapter of another block. Every function here returns the checked values or raises
:class:`ReplyError` (the codec's :class:`CodecError` passes through); :func:`guarded` turns
either into a drop of that client, so every runtime (in-process or FLARE: the loops read
replies the same way) shares one rule: a bad reply drops its client, never the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch

from splitft.data.tokenize import IGNORE_INDEX
from splitft.errors import NON_FINITE, ReplyError
from splitft.model.lora import AdapterLayout, Adapters, is_a
from splitft.wire.calls import guarded  # noqa: F401 - re-exported: checks are read through it
from splitft.wire.codec import decode_message
from splitft.wire.messages import read_adapters
from splitft.wire.quantize import decode_value

T = TypeVar("T")
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INTEGERS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def diverged(drops: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every client in ``drops`` went because its numbers stopped being finite (NaN
    sent, or its own step diverged): a run left with no client for that reason diverged."""
    return bool(drops) and all(NON_FINITE in d["error"] or "DivergenceError" in d["error"] for d in drops)


def tensor(
    message: Mapping[str, Any], name: str, dtypes: Sequence[torch.dtype], shape: Sequence[int | None]
) -> torch.Tensor:
    """Entry ``name`` as a tensor of one of ``dtypes`` and ``shape`` (None: any size), finite."""
    value = message.get(name)
    if not isinstance(value, torch.Tensor):
        raise ReplyError(f"entry {name!r} is missing or not a tensor")
    if value.dtype == torch.uint8 and torch.uint8 not in dtypes:
        value = decode_value(value)  # a packed (quantised) payload stands for floats
    if value.dtype not in dtypes:
        raise ReplyError(f"entry {name!r} has dtype {value.dtype}; allowed: {', '.join(map(str, dtypes))}")
    if value.dim() != len(shape) or any(
        s is not None and d != s for d, s in zip(value.shape, shape, strict=False)
    ):
        want = ["*" if s is None else s for s in shape]
        raise ReplyError(f"entry {name!r} has shape {list(value.shape)}, expected {want}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ReplyError(f"entry {name!r} {NON_FINITE}")
    return value


def number(record: Any, key: str, integer: bool = False, minimum: float = 0) -> float:
    """Field ``key`` of a control record: a finite number (an int if ``integer``) >= ``minimum``."""
    value = record.get(key) if isinstance(record, dict) else None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a finite number"
        raise ReplyError(f"control field {key!r} is {value!r}; expected {kind} >= {minimum}")
    return value


def smashed(
    payload: bytes, hidden_size: int, vocab_size: int, optional: bool = False, labels: bool = True
) -> dict[str, torch.Tensor]:
    """A client's smashed data: ``hidden`` [batch, seq, hidden_size] (float, finite), ``labels``
    [batch, seq] (token ids < vocab_size, or -100; not read when ``labels`` is False: a U-shaped
    client keeps them) and ``attention_mask`` [batch, seq] (0/1). With ``optional``, a message
    without ``hidden`` (nothing held out) gives ``{}``."""
    message = decode_message(payload)
    if optional and "hidden" not in message:
        return {}
    hidden = tensor(message, "hidden", FLOATS, (None, None, hidden_size))
    batch, seq = hidden.shape[:2]
    if batch == 0 or seq == 0:
        raise ReplyError(f"entry 'hidden' is empty (shape {list(hidden.shape)})")
    checked = {"hidden": hidden}
    if labels:
        ids = checked["labels"] = tensor(message, "labels", INTEGERS, (batch, seq)).long()
        if bool((((ids < 0) & (ids != IGNORE_INDEX)) | (ids >= vocab_size)).any()):
            raise ReplyError(
                f"entry 'labels' holds token ids outside 0..{vocab_size - 1} (or {IGNORE_INDEX})"
            )
    mask = checked["attention_mask"] = tensor(
        message, "attention_mask", (*INTEGERS, torch.bool), (batch, seq)
    ).long()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ReplyError("entry 'attention_mask' holds values other than 0 and 1")
    return checked


def step_stats(record: Any) -> tuple[float, int, int]:
    """A U-shaped client's loss statistics of one step or check (its tail computes the loss):
    summed NLL, scored tokens, exact predictions (at most the tokens)."""
    loss_sum = number(record, "loss_sum")
    tokens = int(number(record, "tokens", integer=True))
    correct = int(number(record, "correct", integer=True))
    if correct > tokens:
        raise ReplyError(f"control field 'correct' is {correct}, more than the {tokens} tokens scored")
    return float(loss_sum), tokens, correct


def adapters(message: Mapping[str, Any], layout: AdapterLayout, ranks: Mapping[str, int]) -> Adapters:
    """The adapter tensors of an upload: exactly the tensors of ``ranks`` (empty: any of the
    layout, at full rank), each cut to its rank (rows of A, columns of B), finite; padded back
    to full shape."""
    sent = {name for name, value in message.items() if isinstance(value, torch.Tensor)}
    if not ranks:  # none named: any tensors of the layout, at full rank
        ranks = {name: layout.rank for name in sent if name in layout.shapes}
    if sent != set(ranks):
        extra, missing = sorted(sent - set(ranks)), sorted(set(ranks) - sent)
        raise ReplyError(
            f"adapter upload names {len(extra)} unexpected tensors {extra[:2]} and misses {missing[:2]}"
        )
    for name, rank in ranks.items():
        full = layout.shapes[name]
        tensor(message, name, FLOATS, (rank, full[1]) if is_a(name) else (full[0], rank))
    return read_adapters(message, layout)
