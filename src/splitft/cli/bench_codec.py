"""``splitft bench``: encode + decode time and size of each wire format at the cut.

One step's traffic at the cut is the activation message up and the gradient message down, as
the roles build them (``Client._smashed``, ``MainServer.train_step``): the tensor packed in the
format (the gradient through error feedback, as the server sends it), framed by the codec,
then decoded and unpacked. Sizes are exact; times are medians of repeats on this machine.
"""

from __future__ import annotations

import statistics
import timeit
from typing import Any

import torch

from splitft.wire.codec import Entry, decode_message, encode_message
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.quantize import decode_value, encode_value

BENCH_FORMATS = ("fp32", "fp16", "bf16", "int8", "int4", "int2", "topk:0.1", "topk:0.05", "topk:0.01")


def _step(hidden: torch.Tensor, spec: str, feedback: ErrorFeedback) -> tuple[int, int]:
    """Encode and decode both messages of one step; their sizes (up, down)."""
    value, wire_dtype = encode_value(hidden, spec)
    up = encode_message([Entry("hidden", "activations", value, wire_dtype=wire_dtype)]).data
    decode_value(decode_message(up)["hidden"])
    value, wire_dtype = feedback.encode("grad", hidden, spec)
    grad = Entry("grad", "gradients", value, wire_dtype=wire_dtype, scaled=wire_dtype == "fp16")
    down = encode_message([grad]).data
    decode_value(decode_message(down)["grad"])
    return len(up), len(down)


def codec_formats(batch_size: int, length: int, dim: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Per format: bytes of both messages of one step, the ratio to fp32, and the median
    encode + decode time of the two."""
    hidden = torch.randn(batch_size, length, dim)
    out: dict[str, dict[str, Any]] = {}
    for spec in BENCH_FORMATS:
        feedback = ErrorFeedback()
        up, down = _step(hidden, spec, feedback)
        times = timeit.repeat(
            lambda spec=spec, fb=feedback: _step(hidden, spec, fb), number=1, repeat=repeats
        )
        out[spec] = {"bytes_up": up, "bytes_down": down, "codec_s": statistics.median(times)}
    fp32 = out["fp32"]["bytes_up"] + out["fp32"]["bytes_down"]
    for row in out.values():
        row["ratio_to_fp32"] = fp32 / (row["bytes_up"] + row["bytes_down"])
    return out


def report_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The table ``splitft bench`` prints."""
    head = f"{'format':<10} {'bytes/step':>11} {'x smaller':>9} {'encode+decode s':>16}"
    lines = [head, "-" * len(head)]
    for spec, row in rows.items():
        total = row["bytes_up"] + row["bytes_down"]
        lines.append(f"{spec:<10} {total:>11} {row['ratio_to_fp32']:>9.2f} {row['codec_s']:>16.5f}")
    return lines
