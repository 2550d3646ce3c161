"""Next-token loss of a causal LM: from whole logits, or memory-light from the LM head's input.

The logits of a 49k-token vocabulary dominate a step's activation memory: for B x T tokens
the usual path holds the logits, their fp32 copy, the log-softmax autograd saves and the
logits' gradient, each B*T*V*4 bytes (100 MB apiece for 4 x 128 tokens of SmolLM2).
:func:`chunked_token_stats` never holds more than one chunk of them: per chunk of ``chunk``
tokens it forms the logits, scores them and, when training, turns them straight into their
contribution to the gradient of the head's input (``(softmax - onehot) @ W``), then frees
them. Backward then only scales that stored ``B x T x d`` gradient. This needs the head to be
frozen (it always is here: LoRA adapts decoder blocks only), and does exactly the work of the
usual forward and backward through the head, no recomputation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitft.errors import ModelError

IGNORE = -100
"""Label of a token that is not scored (padding; a prompt when the loss is on the response)."""


def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed next-token NLL, number of scored tokens, and number predicted exactly.

    ``labels`` are the input ids with -100 wherever a token must not be scored (padding, and a
    prompt when the loss is on the response only); position t predicts label t+1.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    with torch.no_grad():
        correct = int(((logits.argmax(-1) == target) & mask).sum())
    return nll, int(mask.sum()), correct


def chunked_token_stats(
    hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, int, int]:
    """What :func:`token_stats` returns for ``head(hidden)``, ``chunk`` tokens of logits at a time.

    ``hidden`` is the LM head's input (B x T x d); the returned NLL carries a gradient to
    ``hidden`` when it requires one and grad mode is on.
    """
    if not isinstance(head, nn.Linear) or head.weight.requires_grad:
        raise ModelError("loss_chunk needs a frozen linear LM head; set loss_chunk = 0 for this model")
    flat = hidden[:, :-1].reshape(-1, hidden.size(-1))
    target = labels[:, 1:].reshape(-1)
    train = hidden.requires_grad and torch.is_grad_enabled()
    nll, tokens, correct = _HeadLoss.apply(flat, head.weight, head.bias, target, chunk, train)
    return nll, int(tokens), int(correct)


class _HeadLoss(torch.autograd.Function):
    """Summed NLL of ``hidden @ W.T + b`` against ``target``, chunk by chunk; the gradient of the
    sum with respect to ``hidden`` is formed in the forward pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk, train):  # noqa: ANN001, ANN205
        grad = torch.empty_like(hidden) if train else None
        nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            t = target[start : start + chunk]
            logits = F.linear(hidden[start : start + chunk], weight, bias).float()
            valid = t != IGNORE
            safe = t.masked_fill(~valid, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            nll += torch.where(valid, lse - picked, 0.0).sum()
            correct += ((logits.argmax(-1) == t) & valid).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
                probs[torch.arange(len(t), device=t.device), safe] -= 1.0
                probs.mul_(valid[:, None])
                grad[start : start + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        ctx.mark_non_differentiable(correct)
        tokens = (target != IGNORE).sum()
        ctx.mark_non_differentiable(tokens)
        return nll, tokens, correct

    @staticmethod
    def backward(ctx, grad_nll, _grad_tokens, _grad_correct):  # noqa: ANN001, ANN205
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:
            raise RuntimeError("the chunked loss was computed without its gradient (grad mode was off)")
        return grad * grad_nll.to(grad.dtype), None, None, None, None, None
