"""Error feedback: what a sender meant to send but did not, added to its next message.

A lossy format (``wire/quantize.py``) sends ``Q(x)`` instead of ``x``. The sender keeps
``residual += intended - sent`` per tensor and adds it to the next message of the same
tensor, so the running sum of what was sent equals the running sum of what was meant to
within one quantisation step, however many messages went by (docs/architecture.md,
"Compression"). The residuals are per-sender state: the role that sends owns an
:class:`ErrorFeedback` and returns it from its ``state_dict()``, so a resumed run continues
exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from splitft.wire.quantize import decode_value, encode_value, is_packed


class ErrorFeedback:
    """Residuals by key (a tensor name, or a client id for gradients at the cut)."""

    def __init__(self) -> None:
        self.residual: dict[str, torch.Tensor] = {}

    def encode(self, key: str, t: torch.Tensor, spec: str) -> tuple[torch.Tensor, str | None]:
        """(value, wire_dtype) of the codec Entry that sends ``t`` plus the residual of ``key``.

        Casting formats (fp32 / fp16 / bf16) keep no residual. A residual of another shape (the
        tensor was cut to another rank, or the batch was shorter) is dropped, not misapplied.
        """
        if not is_packed(spec):
            return encode_value(t, spec)
        t = t.detach().to(torch.float32)
        r = self.residual.get(key)
        intended = t + r.to(t.device) if r is not None and r.shape == t.shape else t
        value, wire_dtype = encode_value(intended, spec)
        self.residual[key] = (intended - decode_value(value).to(t.device)).cpu()
        return value, wire_dtype

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget the residuals of tensors this sender no longer sends (a cut moved)."""
        keep = set(keys)
        self.residual = {k: v for k, v in self.residual.items() if k in keep}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.residual)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.residual = {k: v.detach().cpu().to(torch.float32) for k, v in state.items()}
