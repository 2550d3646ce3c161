"""Model loading and the family table: known families, the common layout, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from splitft.errors import ModelError
from splitft.model.families import FAMILIES, family_of
from splitft.model.loading import load_model
from splitft.model.lora import AdapterLayout, attach_lora, initial_adapters
from splitft.model.split import SplitModel, token_stats

from _models import batch, tokenizer


def test_family_not_in_the_table_with_the_common_layout_splits_exactly():
    """Mistral is not in the table; its one list of decoder blocks is found by inspection."""
    config = AutoConfig.for_model(
        "mistral",
        vocab_size=len(tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    assert "mistral" not in FAMILIES
    family = family_of(base)
    assert family.blocks == "model.layers" and "q_proj" in family.lora_targets
    lm = attach_lora(base, family, 4, 8.0).base_model.model
    model, layout = SplitModel(lm), AdapterLayout.of(lm, family)
    adapters = {n: 0.05 * torch.randn_like(t) for n, t in initial_adapters(lm).items()}
    b = batch("left")
    ref = token_stats(model.full_forward(b["input_ids"], b["attention_mask"], adapters), b["labels"])[0]
    client = {n: adapters[n] for n in layout.names(range(2))}
    server = {n: adapters[n] for n in layout.names(range(2, 3))}
    hidden = model.client_forward(2, b["input_ids"], b["attention_mask"], client)
    split = token_stats(model.server_forward(2, hidden, b["attention_mask"], server), b["labels"])[0]
    assert abs(float(split - ref)) < 1e-4


def test_unsupported_layout_names_the_family():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "oddformer", "num_hidden_layers": 3})()
            self.stack = nn.Sequential(nn.Linear(2, 2))

    with pytest.raises(ModelError, match="oddformer"):
        family_of(Odd())


def test_keep_layers_truncates_blocks_and_config():
    model = load_model("tiny:qwen2", vocab_size=len(tokenizer()), keep_layers=2)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert len(model.config.layer_types) == 2
    with pytest.raises(ModelError, match="keep_layers=9"):
        load_model("tiny:qwen2", vocab_size=len(tokenizer()), keep_layers=9)


def test_base_model_is_frozen_and_in_eval_mode():
    model = load_model("tiny:opt", vocab_size=len(tokenizer()))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_tiny_models_are_deterministic_by_seed():
    a = load_model("tiny:gpt2", vocab_size=1000, seed=3)
    b = load_model("tiny:gpt2", vocab_size=1000, seed=3)
    c = load_model("tiny:gpt2", vocab_size=1000, seed=4)
    wa, wb, wc = (m.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
