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

Memory (what a device must hold for a cut) is in ``memory.py``. A U-shaped split
(docs/architecture.md, D15) moves the head, the loss and the last ``tail`` blocks to the client:
:meth:`StepCosts.for_cut` with ``tail`` splits the step into its four legs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from splitft.config_codec import ADAPTER_FORMATS, CUT_FORMATS, WIRE_DTYPES, cut_format_ok
from splitft.errors import ConfigError, ModelError
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
MASK_BYTES_PER_TOKEN = 1
"""A U-shaped client sends only the attention mask (uint8) with its hidden state."""
ADAMW_FLOPS_PER_PARAM = 12
LOSS_FLOPS_PER_LOGIT = 5

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
    def head_params(self) -> int:
        """Weights of the LM head beyond the embeddings: none when tied (it is the embedding
        matrix), else ``V*e``; OPT's ``project_out`` (``h != e``) adds ``h*e``."""
        project_out = self.embed_dim * self.hidden if self.embed_dim != self.hidden else 0
        return (0 if self.tied else self.vocab * self.embed_dim) + project_out

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
    num_blocks: int, cut: int, r_others: int, r_cut: int, server_r_cut: int | None = None, tail: int = 0
) -> list[int]:
    """Trained LoRA rank per block for one client: ``r_cut`` on the client's last block,
    ``server_r_cut`` (default ``r_cut``) on the server's first, ``r_others`` elsewhere; with a
    ``tail`` (U shape) also ``r_cut`` on the tail's first block and ``server_r_cut`` on the
    server's last."""
    if not 1 <= cut <= num_blocks - tail - 1:
        raise ConfigError(
            f"cut {cut} is outside 1..{num_blocks - tail - 1} (the model has {num_blocks} blocks)"
        )
    server = r_cut if server_r_cut is None else server_r_cut
    by_block = {cut - 1: r_cut, cut: server}
    if tail:
        by_block.update({num_blocks - tail: r_cut, num_blocks - tail - 1: server})
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
    blocks = shape.num_blocks * block_forward_flops(shape, tokens, seq_len)
    return embed_flops(shape, tokens) + blocks + head_eval_flops(shape, tokens)


def head_eval_flops(shape: ModelShape, tokens: int) -> int:
    """Forward FLOPs of the LM head and the loss (scoring, no gradient)."""
    return tokens * (2 * shape.embed_dim * shape.vocab + LOSS_FLOPS_PER_LOGIT * shape.vocab)


def heldout_flops(shape: ModelShape, samples: int, seq_len: int, cut: int, tail: int = 0) -> tuple[int, int]:
    """(client, server) forward FLOPs of a held-out check at ``cut``: the client runs the
    embedding and its ``cut`` blocks on its own device, the main server the rest and the
    scoring; with a ``tail`` (U shape) the client also runs the tail's blocks and the scoring."""
    tokens = samples * seq_len
    client = embed_flops(shape, tokens) + (cut + tail) * block_forward_flops(shape, tokens, seq_len)
    if tail:
        client += head_eval_flops(shape, tokens)
    return client, eval_flops(shape, samples, seq_len) - client


def client_lora_params(
    shape: ModelShape, cut: int, r_others: int, r_cut: int, adapted: Projections | None = None, tail: int = 0
) -> int:
    """Adapter parameters a client trains at ``cut`` (its last block at ``r_cut``), and on its
    ``tail`` (U shape; the tail's first block at ``r_cut``)."""
    adapted = adapted or shape.adapted_projections()
    ranks = block_ranks(shape.num_blocks, cut, r_others, r_cut, tail=tail)
    client = ranks[:cut] + ranks[shape.num_blocks - tail :] if tail else ranks[:cut]
    return sum(lora_params(r, adapted) for r in client)


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
    """Predicted FLOPs and bytes of one split step for one client at one cut.

    A U-shaped step (``tail`` > 0; docs/architecture.md, D15) has four legs: ``up_bytes`` (the
    hidden state at the cut and the attention mask) -> ``server_flops`` (the middle's forward) ->
    ``tail_down_bytes`` (its output) -> ``tail_flops`` on the client -> ``tail_up_bytes`` (the
    gradient at the tail's input) -> ``server_backward_flops`` -> ``down_bytes`` (the gradient
    at the cut) -> ``client_backward_flops``. Vanilla steps leave the ``tail`` fields at 0."""

    cut: int
    client_forward_flops: int
    client_backward_flops: int  # backward through blocks [0, cut), LoRA gradients, AdamW step
    server_flops: int  # blocks [cut, M) forward + backward, head, loss, the server's AdamW step
    up_bytes: int  # activations at the cut + labels + attention mask
    down_bytes: int  # gradient at the cut
    client_lora_params: int
    tail_flops: int = 0  # U shape: tail blocks, head and loss, forward and backward, AdamW
    server_backward_flops: int = 0  # U shape: the middle's backward and AdamW (server_flops: its forward)
    tail_down_bytes: int = 0  # U shape: the middle's output, down to the tail
    tail_up_bytes: int = 0  # U shape: the gradient at the tail's input, up

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
        tail: int = 0,
    ) -> StepCosts:
        """``wire_dtype``: the format of activations (config.CUT_FORMATS); ``gradient_format``
        that of gradients (None: the same); ``tail``: a U shape's tail (0: vanilla)."""
        adapted = adapted_per_block or shape.adapted_projections()
        ranks = block_ranks(shape.num_blocks, cut, r_others, r_cut, server_r_cut, tail)
        tokens = batch * seq_len
        tail_start = shape.num_blocks - tail
        client_fwd, client_bwd = _blocks_flops(shape, tokens, seq_len, ranks[:cut], adapted)
        server_fwd, server_bwd = _blocks_flops(shape, tokens, seq_len, ranks[cut:tail_start], adapted)
        activations = cut_bytes(wire_dtype, batch, seq_len, shape.hidden)
        gradients = cut_bytes(gradient_format or wire_dtype, batch, seq_len, shape.hidden)
        common = dict(
            cut=cut,
            client_forward_flops=embed_flops(shape, tokens) + client_fwd,
            client_backward_flops=client_bwd,
            down_bytes=gradients,
            client_lora_params=client_lora_params(shape, cut, r_others, r_cut, adapted, tail),
        )
        if not tail:
            return cls(
                **common,
                server_flops=server_fwd + server_bwd + head_flops(shape, tokens),
                up_bytes=activations + tokens * LABEL_BYTES_PER_TOKEN,
            )
        tail_fwd, tail_bwd = _blocks_flops(shape, tokens, seq_len, ranks[tail_start:], adapted)
        return cls(
            **common,
            server_flops=server_fwd,
            up_bytes=activations + tokens * MASK_BYTES_PER_TOKEN,
            tail_flops=tail_fwd + tail_bwd + head_flops(shape, tokens),
            server_backward_flops=server_bwd,
            tail_down_bytes=activations,
            tail_up_bytes=gradients,
        )
