"""A split step computes exactly what the unsplit model computes (docs/architecture.md, "One split step")."""

from __future__ import annotations

import pytest
import torch

from splitft.errors import ModelError
from splitft.model.loading import TINY_CONFIGS
from splitft.model.lora import component_mask
from splitft.model.split import token_stats

from _models import FAMILIES, batch, leaves, tiny_split


def split_step(model, layout, adapters, cut, b, client_ranks=None, server_ranks=None):
    """Loss and every LoRA gradient of one split step (client -> server -> client)."""
    client = leaves(adapters, layout.names(range(cut)))
    server = leaves(adapters, layout.names(range(cut, model.num_blocks)))
    hidden = model.client_forward(cut, b["input_ids"], b["attention_mask"], client)
    received = hidden.detach().requires_grad_(True)
    nll, tokens, _ = token_stats(
        model.server_forward(cut, received, b["attention_mask"], server), b["labels"]
    )
    loss = nll / tokens
    loss.backward()
    hidden.backward(received.grad)
    return loss.detach(), {n: t.grad for n, t in {**client, **server}.items()}


def unsplit_step(model, adapters, b):
    params = leaves(adapters)
    nll, tokens, _ = token_stats(model.full_forward(b["input_ids"], b["attention_mask"], params), b["labels"])
    loss = nll / tokens
    loss.backward()
    return loss.detach(), {n: t.grad for n, t in params.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_split_step_equals_unsplit(family, padding_side):
    model, layout, adapters = tiny_split(family)
    b = batch(padding_side)
    ref_loss, ref_grads = unsplit_step(model, adapters, b)
    assert all(g.abs().sum() > 0 for g in ref_grads.values()), "every LoRA tensor must get a gradient"
    for cut in range(1, model.num_blocks):
        loss, grads = split_step(model, layout, adapters, cut, b)
        assert abs(float(loss - ref_loss)) <= 1e-5
        assert grads.keys() == ref_grads.keys()
        worst = max(float((grads[n] - ref_grads[n]).abs().max()) for n in grads)
        assert worst <= 1e-5, f"{family} cut {cut}: max grad diff {worst}"


@pytest.mark.parametrize("family, key", [("gpt-neo", "window_size"), ("qwen2", "sliding_window")])
def test_windowed_attention_matters_at_test_length(family, key, monkeypatch):
    """The tiny GPT-Neo/Qwen2 use an 8-token window, so the local/sliding masks are exercised."""
    model, _, adapters = tiny_split(family)
    monkeypatch.setitem(TINY_CONFIGS, family, {**TINY_CONFIGS[family], key: 64})
    wide, _, _ = tiny_split(family)  # same seed: same weights, only the window differs
    b = batch("right", length=24)
    narrow_logits = model.full_forward(b["input_ids"], b["attention_mask"], adapters)
    wide_logits = wide.full_forward(b["input_ids"], b["attention_mask"], adapters)
    assert (narrow_logits - wide_logits).abs().max() > 1e-4


def test_padding_does_not_change_real_tokens():
    """Padding is masked by the attention mask, not by token id (pad = EOS in SmolLM2)."""
    model, _, adapters = tiny_split("llama")
    b = batch("right")
    row = b["input_ids"][1:2, :12]
    alone = model.full_forward(row, torch.ones_like(row), adapters)
    padded = model.full_forward(b["input_ids"], b["attention_mask"], adapters)[1:2, :12]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_rank_cut_copy_trains_exactly_r_cut_components():
    """Zeroed components of a cut-block copy get zero gradient: training is exactly rank r_cut."""
    model, layout, adapters = tiny_split("llama")
    cut, r_cut = 2, 4
    masked = dict(adapters)
    for block in (cut - 1, cut):
        for name in layout.names([block]):
            masked[name] = adapters[name] * component_mask(name, adapters[name].shape, r_cut)
    _, grads = split_step(model, layout, masked, cut, batch("left"))
    for block in (cut - 1, cut):
        for name in layout.names([block]):
            inside = component_mask(name, grads[name].shape, r_cut).expand_as(grads[name]).bool()
            assert grads[name][~inside].abs().max() == 0
            assert grads[name][inside].abs().max() > 0


@pytest.mark.parametrize("cut", [0, 4, -1])
def test_cut_outside_model_is_a_clear_error(cut):
    model, _, adapters = tiny_split("gpt2")
    b = batch("right")
    with pytest.raises(ModelError, match=r"outside 1\.\.3"):
        model.client_forward(cut, b["input_ids"], b["attention_mask"], adapters)
