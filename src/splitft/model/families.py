"""Where each model family keeps its decoder blocks and which modules LoRA adapts.

One small table instead of per-family subclasses. The split itself (``split.py``) runs the
model's own forward pass, so masks, positions and rotary embeddings are always built the way
the family builds them; all it needs to know is where the list of blocks is.

A family not in the table is still handled when its layout is the common one: a single
``nn.ModuleList`` of ``config.num_hidden_layers`` decoder blocks. Otherwise a clear
:class:`~splitft.errors.ModelError` names the family.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from splitft.errors import ModelError


@dataclass(frozen=True)
class Family:
    """How one model family is laid out."""

    name: str
    blocks: str
    """Dotted path from the causal-LM module to the ``nn.ModuleList`` of decoder blocks."""
    lora_targets: tuple[str, ...]
    """Module-name suffixes LoRA adapts by default (the attention projections)."""
    conv1d: bool = False
    """Projections are GPT-2's ``Conv1D`` (weights stored transposed: PEFT's fan_in_fan_out)."""


# model_type (from the HF config) -> layout. Targets are dotted suffixes so that GPT-2's
# `c_proj` in the attention is not confused with the MLP's `c_proj`.
FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", "transformer.h", ("attn.c_attn", "attn.c_proj"), conv1d=True),
    "opt": Family("opt", "model.decoder.layers", ("q_proj", "k_proj", "v_proj", "out_proj")),
    "gpt_neo": Family(
        "gpt_neo",
        "transformer.h",
        (
            "attn.attention.q_proj",
            "attn.attention.k_proj",
            "attn.attention.v_proj",
            "attn.attention.out_proj",
        ),
    ),
    "llama": Family("llama", "model.layers", ("q_proj", "k_proj", "v_proj", "o_proj")),
    "qwen2": Family("qwen2", "model.layers", ("q_proj", "k_proj", "v_proj", "o_proj")),
}

_COMMON_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def family_of(model: nn.Module) -> Family:
    """The layout of ``model`` (a ``*ForCausalLM``), from the table or by inspection."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    # Unknown family: accept the common layout, one ModuleList with one entry per layer.
    depth = getattr(model.config, "num_hidden_layers", None)
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and depth is not None and len(module) == depth
    ]
    if len(candidates) != 1:
        known = ", ".join(sorted(FAMILIES))
        raise ModelError(
            f"model family '{model_type}' is not supported: no single list of {depth} decoder "
            f"blocks found (known families: {known})"
        )
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = tuple(t for t in _COMMON_TARGETS if t in module_names)
    return Family(model_type, candidates[0], targets)


def decoder_blocks(model: nn.Module, family: Family) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of ``model``."""
    return _get(model, family.blocks)
