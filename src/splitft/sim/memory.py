"""Memory of a client's device for a cut, from the model's shape (docs/architecture.md, D8):
what bounds every client's cut (``max_cut``), and whether a device can train the whole model.

Client memory (bytes): frozen embeddings (``V*e``, plus positions ``max_pos*h`` for
GPT-2/OPT/GPT-Neo) + ``cut`` blocks of ``P`` weights + activations kept for backward, both in the
run's ``compute_dtype`` (4 bytes in fp32, 2 in bf16 or fp16: ``model/precision.py`` holds the
frozen base in it and the blocks compute in it), + adapters x4 (weights, gradients, two AdamW
moments) and the loss's logits, always fp32, + ``RUNTIME_OVERHEAD_BYTES``. Activations per token
per block, in floats: ``4*h`` (inputs and outputs of both norms) + ``q + 2*kv`` (Q, K, V) +
``heads*s`` (attention probabilities, kept by eager attention) + ``q`` (input of the output
projection) + ``4*I`` gated (gate, up, activation, product) or ``2*I`` (pre- and post-activation).
LoRA's rank-r intermediates add < 1% and are left out. A U-shaped client (docs/architecture.md,
D15) adds its tail's blocks and their activations, the head (nothing when it is tied to the
embeddings the client already holds) and the loss's logits (whole, with their gradient, or
one ``loss_chunk`` of them).
"""

from __future__ import annotations

from collections.abc import Sequence

from splitft.errors import ConfigError
from splitft.sim.costs import (
    FLOAT_BYTES,
    ModelShape,
    Projections,
    client_lora_params,
    lora_params,
    wire_itemsize,
)
from splitft.sim.devices import DeviceProfile

RUNTIME_OVERHEAD_BYTES = 32 * 2**20
"""Allocator slack, kernel workspaces, the batch and the received gradient."""


def whole_model_memory_bytes(
    shape: ModelShape, batch: int, seq_len: int, r_others: int, compute_dtype: str = "fp32"
) -> int:
    """Peak training memory of a device holding the whole model (fedlora): every block, and
    the logits with their gradient (fp32) on top of the split client's terms."""
    tokens = batch * seq_len
    lora = shape.num_blocks * lora_params(r_others, shape.adapted_projections())
    logits = 2 * tokens * shape.vocab
    base = client_memory_bytes(shape, shape.num_blocks, batch, seq_len, lora, compute_dtype=compute_dtype)
    return base + FLOAT_BYTES * logits


def activation_floats_per_token(shape: ModelShape, seq_len: int) -> int:
    """Floats one block keeps per token for its backward (see the module docstring)."""
    mlp = (4 if shape.gated_mlp else 2) * shape.intermediate
    return 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim + shape.num_heads * seq_len + mlp


def client_memory_bytes(
    shape: ModelShape,
    cut: int,
    batch: int,
    seq_len: int,
    lora_params_client: int,
    tail: int = 0,
    loss_chunk: int = 0,
    compute_dtype: str = "fp32",
) -> int:
    """Peak training memory of a client holding the embeddings and blocks [0, cut); with a
    ``tail`` (U shape) also blocks [M - tail, M), the head (its own matrix only when untied)
    and the loss's logits (see :func:`loss_floats`). Frozen weights and the blocks' activations
    take ``compute_dtype``'s bytes; adapters, their gradients and moments, and the loss fp32."""
    tokens = batch * seq_len
    blocks = cut + tail
    weights = shape.embedding_params + blocks * shape.block_params + (shape.head_params if tail else 0)
    activations = tokens * blocks * activation_floats_per_token(shape, seq_len)
    logits = loss_floats(shape, tokens, loss_chunk) if tail else 0
    base = wire_itemsize(compute_dtype) * (weights + activations)
    return base + FLOAT_BYTES * (logits + 4 * lora_params_client) + RUNTIME_OVERHEAD_BYTES


def loss_floats(shape: ModelShape, tokens: int, loss_chunk: int = 0) -> int:
    """Floats the head's loss holds at its peak: the logits and their gradient, or with
    ``loss_chunk`` one chunk's logits and the gradient of the head's input (``model/loss.py``)."""
    if not loss_chunk:
        return 2 * tokens * shape.vocab
    return min(loss_chunk, tokens) * shape.vocab + tokens * shape.embed_dim


def max_cut_that_fits(
    shape: ModelShape,
    device: DeviceProfile,
    batch: int,
    seq_len: int,
    r_others: int = 16,
    r_cut: int = 8,
    adapted_per_block: Projections | None = None,
    tail: int = 0,
    loss_chunk: int = 0,
    compute_dtype: str = "fp32",
) -> int:
    """The largest cut in 1..M-1 (1..M-tail-1 with a U shape's ``tail``) whose client memory
    (frozen base in ``compute_dtype``) fits the device's; 0 if cut 1 does not."""
    best = 0
    for cut in range(1, shape.num_blocks - tail):
        lora = client_lora_params(shape, cut, r_others, r_cut, adapted_per_block, tail)
        need = client_memory_bytes(shape, cut, batch, seq_len, lora, tail, loss_chunk, compute_dtype)
        if need > device.memory_bytes:
            break
        best = cut
    return best


def check_fits(
    shape: ModelShape,
    devices: Sequence[DeviceProfile],
    batch: int,
    seq_len: int,
    r_others: int = 16,
    r_cut: int = 8,
    adapted_per_block: Projections | None = None,
    tails: Sequence[int] = (),
    loss_chunk: int = 0,
    compute_dtype: str = "fp32",
) -> list[int]:
    """Every client's largest cut (client order; ``tails``: each client's U-shape tail, empty
    for a vanilla split, whose loss runs in ``loss_chunk`` chunks; the frozen base held in
    ``compute_dtype``); ConfigError for a client that cannot hold one block."""
    cuts = []
    for i, device in enumerate(devices):
        tail = tails[i] if tails else 0
        cut = max_cut_that_fits(
            shape, device, batch, seq_len, r_others, r_cut, adapted_per_block, tail, loss_chunk, compute_dtype
        )
        if cut == 0:
            lora = client_lora_params(shape, 1, r_others, r_cut, adapted_per_block, tail)
            need = client_memory_bytes(shape, 1, batch, seq_len, lora, tail, loss_chunk, compute_dtype)
            held = f"one block, its tail of {tail} blocks and the head" if tail else "one block"
            raise ConfigError(
                f"client {i} ({device.name}) has {device.memory_bytes / 1e6:.1f} MB of usable memory, "
                f"but the embeddings and {held} need {need / 1e6:.1f} MB (batch {batch}, seq_len {seq_len}, "
                f"compute_dtype {compute_dtype}); "
                "give it more memory or use a smaller batch or sequence length"
            )
        cuts.append(cut)
    return cuts
