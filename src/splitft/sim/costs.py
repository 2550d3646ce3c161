"""FLOPs, bytes and memory of one split step, per cut, from the model's HF config (docs/architecture.md, D8).

These are *predictions* for the virtual clock and the resource policy; the round loop passes
the codec's actual byte counts where it has them. All FLOP and byte counts are exact integers
(so client + server == unsplit holds exactly). ``T = batch * seq_len`` tokens (padding included:
it is computed too), ``h`` hidden size, ``q = heads * head_dim``, ``kv = kv_heads * head_dim``,
``I`` MLP size, ``m`` = 3 MLP matrices for gated (Llama/Qwen2) else 2, ``V`` vocab, ``e`` the
embedding width (OPT's ``word_embed_proj_dim``, else ``h``), ``s = seq_len``.

Per block::

    P        = h*q + 2*h*kv + q*h + m*h*I           projection weights (biases, norms: <1%, left out)
    forward  = T * (2*P + 4*s*q)                     matmuls + QK^T and AV over the full s x s square
    backward = T * (2*P + 8*s*q)                     input gradients of the frozen projections (1x),
                                                     attention core 2x (it has gradients for Q, K, V)
    LoRA, rank r, per adapted projection (d_in, d_out): forward 2*r*(d_in + d_out) per token,
    backward twice that (input gradient + weight gradients); AdamW: 12 FLOPs per adapter param.

Head (server): ``T * (2*e*V + 2*e*V + 5*V)`` = LM head, its input gradient, softmax + loss and
its gradient; OPT's ``project_out`` (``h != e``) adds ``4*h*e`` per token, ``project_in`` adds
``2*e*h`` per token of client forward. Elementwise work (norms, activations) is left out;
GPT-Neo's local-attention layers are counted as full attention (an upper bound).

Client memory (bytes, fp32): frozen embeddings (``V*e``, plus positions ``max_pos*h`` for
GPT-2/OPT/GPT-Neo) + ``cut`` blocks of ``P`` weights + activations kept for backward + adapters
x4 (weights, gradients, two AdamW moments) + ``RUNTIME_OVERHEAD_BYTES``. Activations per token
per block, in floats: ``4*h`` (inputs and outputs of both norms) + ``q + 2*kv`` (Q, K, V) +
``heads*s`` (attention probabilities, kept by eager attention) + ``q`` (input of the output
projection) + ``4*I`` gated (gate, up, activation, product) or ``2*I`` (pre- and post-activation).
LoRA's rank-r intermediates add < 1% and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from splitft.config_codec import ADAPTER_FORMATS, CUT_FORMATS, WIRE_DTYPES, cut_format_ok
from splitft.errors import ConfigError, ModelError
from splitft.sim.devices import DeviceProfile
from splitft.wire.quantize import GROUP, wire_size

FLOAT_BYTES = 4
WIRE_ITEMSIZE = dict(zip(WIRE_DTYPES, (4, 2, 2), strict=True))
ADAPTER_BYTES_PER_PARAM = dict(
    zip(
        ADAPTER_FORMATS,
        (
            FLOAT_BYTES,
            FLOAT_BYTES,
            1 + FLOAT_BYTES / GROUP,
            0.5 + FLOAT_BYTES / GROUP,
            0.25 + FLOAT_BYTES / GROUP,
        ),
        strict=True,
    )
)
"""Predicted adapter bytes per parameter of each codec.adapters format (int8: at most one
fp32 scale per 64 values)."""
LABEL_BYTES_PER_TOKEN = 5
"""Labels travel as int32 and the attention mask as uint8 (``client.forward_step``)."""
ADAMW_FLOPS_PER_PARAM = 12
LOSS_FLOPS_PER_LOGIT = 5
RUNTIME_OVERHEAD_BYTES = 32 * 2**20
"""Allocator slack, kernel workspaces, the batch and the received gradient."""

GATED_MLP = {"llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma", "gemma2", "phi3", "olmo", "olmo2"}
ABSOLUTE_POSITIONS = {"gpt2", "opt", "gpt_neo", "gpt_bigcode", "biogpt"}


def _attr(config: Any, *names: str) -> Any:
    """The first of ``names`` the config sets (not None)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class ModelShape:
    """The sizes the cost model needs, family differences resolved."""

    model_type: str
    num_blocks: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    embed_dim: int
    tied: bool
    gated_mlp: bool
    absolute_positions: bool
    max_positions: int

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        model_type = getattr(config, "model_type", "?")
        blocks = _attr(config, "num_hidden_layers", "n_layer", "num_layers")
        hidden = _attr(config, "hidden_size", "n_embd", "d_model")
        heads = _attr(config, "num_attention_heads", "n_head", "num_heads")
        vocab = _attr(config, "vocab_size")
        if None in (blocks, hidden, heads, vocab):
            raise ModelError(
                f"model family '{model_type}': its config lacks layers, hidden size, heads or vocab"
            )
        # GPT-2 n_inner=None and GPT-Neo intermediate_size=None both mean 4*hidden.
        intermediate = _attr(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
        absolute = model_type in ABSOLUTE_POSITIONS
        positions = _attr(config, "max_position_embeddings", "n_positions") if absolute else 0
        return cls(
            model_type=model_type,
            num_blocks=int(blocks),
            hidden=int(hidden),
            intermediate=int(intermediate),
            num_heads=int(heads),
            num_kv_heads=int(_attr(config, "num_key_value_heads") or heads),
            head_dim=int(_attr(config, "head_dim") or hidden // heads),
            vocab=int(vocab),
            embed_dim=int(_attr(config, "word_embed_proj_dim") or hidden),
            tied=bool(getattr(config, "tie_word_embeddings", True)),
            # Unknown families: Llama-style (SiLU) models use the gated MLP.
            gated_mlp=model_type in GATED_MLP or getattr(config, "hidden_act", None) == "silu",
            absolute_positions=absolute,
            max_positions=int(positions or 0),
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + mlp

    @property
    def embedding_params(self) -> int:
        project_in = self.embed_dim * self.hidden if self.embed_dim != self.hidden else 0
        return self.vocab * self.embed_dim + self.max_positions * self.hidden + project_in

    def adapted_projections(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of the projections LoRA adapts by default (``families.py``: attention)."""
        if self.model_type == "gpt2":  # fused c_attn, then c_proj
            return [(self.hidden, 3 * self.hidden), (self.hidden, self.hidden)]
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        return [(h, q), (h, kv), (h, kv), (q, h)]


Projections = Sequence[tuple[int, int]]


def block_forward_flops(shape: ModelShape, tokens: int, seq_len: int) -> int:
    return tokens * (2 * shape.block_params + 4 * seq_len * shape.q_dim)


def block_backward_flops(shape: ModelShape, tokens: int, seq_len: int) -> int:
    return tokens * (2 * shape.block_params + 8 * seq_len * shape.q_dim)


def lora_flops(tokens: int, rank: int, adapted: Projections) -> tuple[int, int]:
    """(forward, backward) FLOPs of LoRA at ``rank`` on the ``adapted`` projections of one block."""
    forward = tokens * sum(2 * rank * (d_in + d_out) for d_in, d_out in adapted)
    return forward, 2 * forward


def lora_params(rank: int, adapted: Projections) -> int:
    return sum(rank * (d_in + d_out) for d_in, d_out in adapted)


def head_flops(shape: ModelShape, tokens: int) -> int:
    project_out = 4 * shape.hidden * shape.embed_dim if shape.embed_dim != shape.hidden else 0
    return tokens * (4 * shape.embed_dim * shape.vocab + LOSS_FLOPS_PER_LOGIT * shape.vocab + project_out)


def embed_flops(shape: ModelShape, tokens: int) -> int:
    """The lookup is free; only OPT's ``project_in`` costs."""
    return tokens * 2 * shape.embed_dim * shape.hidden if shape.embed_dim != shape.hidden else 0


def block_ranks(
    num_blocks: int, cut: int, r_others: int, r_cut: int, server_r_cut: int | None = None
) -> list[int]:
    """Trained LoRA rank per block for one client: ``r_cut`` on the client's last block,
    ``server_r_cut`` (default ``r_cut``) on the server's first, ``r_others`` elsewhere."""
    if not 1 <= cut <= num_blocks - 1:
        raise ConfigError(f"cut {cut} is outside 1..{num_blocks - 1} (the model has {num_blocks} blocks)")
    by_block = {cut - 1: r_cut, cut: r_cut if server_r_cut is None else server_r_cut}
    return [by_block.get(b, r_others) for b in range(num_blocks)]


def _blocks_flops(
    shape: ModelShape, tokens: int, seq_len: int, ranks: Sequence[int], adapted: Projections
) -> tuple[int, int]:
    """(forward, backward + optimizer) FLOPs of blocks trained at ``ranks``."""
    fwd = bwd = 0
    for rank in ranks:
        lora_fwd, lora_bwd = lora_flops(tokens, rank, adapted)
        fwd += block_forward_flops(shape, tokens, seq_len) + lora_fwd
        bwd += block_backward_flops(shape, tokens, seq_len) + lora_bwd
        bwd += ADAMW_FLOPS_PER_PARAM * lora_params(rank, adapted)
    return fwd, bwd


def unsplit_step_flops(
    shape: ModelShape, batch: int, seq_len: int, ranks: Sequence[int], adapted: Projections | None = None
) -> int:
    """FLOPs of one training step of the whole model on one device, block ``b`` at ``ranks[b]``."""
    tokens = batch * seq_len
    fwd, bwd = _blocks_flops(shape, tokens, seq_len, ranks, adapted or shape.adapted_projections())
    return embed_flops(shape, tokens) + fwd + bwd + head_flops(shape, tokens)


def eval_flops(shape: ModelShape, samples: int, seq_len: int) -> int:
    """Forward FLOPs of scoring ``samples`` held-out sequences with the whole model."""
    tokens = samples * seq_len
    head_fwd = tokens * (2 * shape.embed_dim * shape.vocab + LOSS_FLOPS_PER_LOGIT * shape.vocab)
    blocks = shape.num_blocks * block_forward_flops(shape, tokens, seq_len)
    return embed_flops(shape, tokens) + blocks + head_fwd


def heldout_flops(shape: ModelShape, samples: int, seq_len: int, cut: int) -> tuple[int, int]:
    """(client, server) forward FLOPs of a held-out check at ``cut``: the client runs the
    embedding and its ``cut`` blocks on its own device, the main server the rest and the scoring."""
    tokens = samples * seq_len
    client = embed_flops(shape, tokens) + cut * block_forward_flops(shape, tokens, seq_len)
    return client, eval_flops(shape, samples, seq_len) - client


def client_lora_params(
    shape: ModelShape, cut: int, r_others: int, r_cut: int, adapted: Projections | None = None
) -> int:
    """Adapter parameters a client trains at ``cut`` (its last block at ``r_cut``)."""
    adapted = adapted or shape.adapted_projections()
    return sum(lora_params(r, adapted) for r in block_ranks(shape.num_blocks, cut, r_others, r_cut)[:cut])


def wire_itemsize(dtype: str) -> int:
    if dtype not in WIRE_ITEMSIZE:
        raise ConfigError(f"unknown wire dtype '{dtype}'; allowed: {', '.join(WIRE_ITEMSIZE)}")
    return WIRE_ITEMSIZE[dtype]


def cut_bytes(spec: str, batch: int, seq_len: int, hidden: int) -> int:
    """Predicted bytes of one tensor at the cut in format ``spec``: the data alone for the
    casting formats (fp32, fp16, bf16), the whole packed payload for int and top-k formats."""
    if spec in WIRE_ITEMSIZE:
        return batch * seq_len * hidden * wire_itemsize(spec)
    if not cut_format_ok(spec):
        raise ConfigError(f"unknown wire format '{spec}'; allowed: {', '.join(CUT_FORMATS)}")
    return wire_size(spec, (batch, seq_len, hidden))


@dataclass(frozen=True)
class StepCosts:
    """Predicted FLOPs and bytes of one split step for one client at one cut."""

    cut: int
    client_forward_flops: int
    client_backward_flops: int  # backward through blocks [0, cut), LoRA gradients, AdamW step
    server_flops: int  # blocks [cut, M) forward + backward, head, loss, the server's AdamW step
    up_bytes: int  # activations at the cut + labels + attention mask
    down_bytes: int  # gradient at the cut
    client_lora_params: int

    @classmethod
    def for_cut(
        cls,
        shape: ModelShape,
        cut: int,
        batch: int,
        seq_len: int,
        r_others: int = 16,
        r_cut: int = 8,
        adapted_per_block: Projections | None = None,
        wire_dtype: str = "fp32",
        server_r_cut: int | None = None,
        gradient_format: str | None = None,
    ) -> StepCosts:
        """``wire_dtype``: the format of activations (config.CUT_FORMATS); ``gradient_format``
        that of gradients (None: the same)."""
        adapted = adapted_per_block or shape.adapted_projections()
        ranks = block_ranks(shape.num_blocks, cut, r_others, r_cut, server_r_cut)
        tokens = batch * seq_len
        client_fwd, client_bwd = _blocks_flops(shape, tokens, seq_len, ranks[:cut], adapted)
        server_fwd, server_bwd = _blocks_flops(shape, tokens, seq_len, ranks[cut:], adapted)
        activations = cut_bytes(wire_dtype, batch, seq_len, shape.hidden)
        gradients = cut_bytes(gradient_format or wire_dtype, batch, seq_len, shape.hidden)
        return cls(
            cut=cut,
            client_forward_flops=embed_flops(shape, tokens) + client_fwd,
            client_backward_flops=client_bwd,
            server_flops=server_fwd + server_bwd + head_flops(shape, tokens),
            up_bytes=activations + tokens * LABEL_BYTES_PER_TOKEN,
            down_bytes=gradients,
            client_lora_params=client_lora_params(shape, cut, r_others, r_cut, adapted),
        )


def whole_model_memory_bytes(shape: ModelShape, batch: int, seq_len: int, r_others: int) -> int:
    """Peak training memory of a device holding the whole model (fedlora): every block, and
    the logits with their gradient on top of the split client's terms."""
    tokens = batch * seq_len
    lora = shape.num_blocks * lora_params(r_others, shape.adapted_projections())
    logits = 2 * tokens * shape.vocab
    return client_memory_bytes(shape, shape.num_blocks, batch, seq_len, lora) + FLOAT_BYTES * logits


def activation_floats_per_token(shape: ModelShape, seq_len: int) -> int:
    """Floats one block keeps per token for its backward (see the module docstring)."""
    mlp = (4 if shape.gated_mlp else 2) * shape.intermediate
    return 4 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim + shape.num_heads * seq_len + mlp


def client_memory_bytes(
    shape: ModelShape, cut: int, batch: int, seq_len: int, lora_params_client: int
) -> int:
    """Peak training memory of a client holding the embeddings and blocks [0, cut)."""
    tokens = batch * seq_len
    weights = shape.embedding_params + cut * shape.block_params
    activations = tokens * cut * activation_floats_per_token(shape, seq_len)
    return FLOAT_BYTES * (weights + activations + 4 * lora_params_client) + RUNTIME_OVERHEAD_BYTES


def max_cut_that_fits(
    shape: ModelShape,
    device: DeviceProfile,
    batch: int,
    seq_len: int,
    r_others: int = 16,
    r_cut: int = 8,
    adapted_per_block: Projections | None = None,
) -> int:
    """The largest cut in 1..M-1 whose client memory fits the device's; 0 if cut 1 does not."""
    best = 0
    for cut in range(1, shape.num_blocks):
        lora = client_lora_params(shape, cut, r_others, r_cut, adapted_per_block)
        if client_memory_bytes(shape, cut, batch, seq_len, lora) > device.memory_bytes:
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
) -> list[int]:
    """Every client's largest cut (client order); ConfigError for a client that cannot hold one block."""
    cuts = []
    for i, device in enumerate(devices):
        cut = max_cut_that_fits(shape, device, batch, seq_len, r_others, r_cut, adapted_per_block)
        if cut == 0:
            lora = client_lora_params(shape, 1, r_others, r_cut, adapted_per_block)
            need = client_memory_bytes(shape, 1, batch, seq_len, lora)
            raise ConfigError(
                f"client {i} ({device.name}) has {device.memory_bytes / 1e6:.1f} MB of usable memory, "
                f"but the embeddings and one block need {need / 1e6:.1f} MB (batch {batch}, seq_len {seq_len}); "
                "give it more memory or use a smaller batch or sequence length"
            )
        cuts.append(cut)
    return cuts
