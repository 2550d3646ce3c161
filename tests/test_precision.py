"""Compute precision (bf16 base, fp32 LoRA/optimizer/loss) and the memory-light LM-head loss."""

from __future__ import annotations

import pytest
import torch

from splitft.cli import main
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.model.loss import chunked_token_stats
from splitft.model.precision import attention_for, cast_frozen_base, hold_base_in, resolve_compute_dtype
from splitft.recipes.experiment import load_shared_model, local_runtime, setup

from _models import FAMILIES, batch, leaves, tiny_split, tokenizer


def _stats_and_grads(model, adapters, b, chunk):
    model.loss_chunk = chunk
    params = leaves(adapters)
    nll, tokens, correct = model.full_stats(b["input_ids"], b["attention_mask"], b["labels"], params)
    (nll / tokens).backward()
    return float(nll.detach()), tokens, correct, {n: p.grad for n, p in params.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_loss_equals_the_whole_logits_loss(family):
    model, _, adapters = tiny_split(family)
    b = batch("right")
    ref_nll, ref_tokens, ref_correct, ref_grads = _stats_and_grads(model, adapters, b, 0)
    for chunk in (1, 7, 10_000):  # one token, a ragged split, one chunk for everything
        nll, tokens, correct, grads = _stats_and_grads(model, adapters, b, chunk)
        assert (tokens, correct) == (ref_tokens, ref_correct)
        assert nll == pytest.approx(ref_nll, rel=1e-6)
        worst = max(float((grads[n] - ref_grads[n]).abs().max()) for n in grads)
        assert worst <= 1e-6, f"{family} chunk {chunk}: max grad diff {worst}"


def test_chunked_loss_never_saves_the_whole_logits():
    """The point of the chunked loss: no tensor the size of the batch's logits is kept for backward."""
    model, _, adapters = tiny_split("llama")
    b = batch("right")
    vocab = model.model.get_output_embeddings().weight.shape[0]
    whole = b["input_ids"].numel() * vocab  # elements of the logits of the batch

    def largest_saved(chunk: int) -> int:
        model.loss_chunk = chunk
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            model.full_stats(b["input_ids"], b["attention_mask"], b["labels"], leaves(adapters))
        return max(sizes)

    assert largest_saved(0) >= whole * 0.9  # the usual path keeps vocabulary-wide tensors
    assert largest_saved(8) < vocab  # the chunked one keeps nothing even one token's logits wide


def test_chunked_loss_refuses_a_trainable_head():
    head = torch.nn.Linear(4, 10, bias=False)
    with pytest.raises(Exception, match="frozen linear LM head"):
        chunked_token_stats(torch.zeros(1, 3, 4), head, torch.zeros(1, 3, dtype=torch.long), 2)


def test_split_step_with_chunked_loss_equals_unsplit():
    model, layout, adapters = tiny_split("qwen2")
    model.loss_chunk = 5
    b = batch("left")
    params = leaves(adapters)
    nll, tokens, _ = model.full_stats(b["input_ids"], b["attention_mask"], b["labels"], params)
    (nll / tokens).backward()
    cut = 2
    client = leaves(adapters, layout.names(range(cut)))
    server = leaves(adapters, layout.names(range(cut, model.num_blocks)))
    hidden = model.client_forward(cut, b["input_ids"], b["attention_mask"], client)
    received = hidden.detach().requires_grad_(True)
    split_nll, split_tokens, _ = model.server_stats(cut, received, b["attention_mask"], b["labels"], server)
    (split_nll / split_tokens).backward()
    hidden.backward(received.grad)
    assert float(split_nll.detach()) == pytest.approx(float(nll.detach()), rel=1e-6)
    split_grads = {**client, **server}
    assert max(float((split_grads[n].grad - params[n].grad).abs().max()) for n in params) <= 1e-5


def test_bf16_holds_the_base_in_bf16_and_the_adapters_in_fp32():
    cfg32 = Config().with_overrides({"model.name": "tiny:llama", "device": "cpu"})
    fp32 = load_shared_model(cfg32, tokenizer())
    bf16 = load_shared_model(cfg32.with_overrides({"compute_dtype": "bf16"}), tokenizer())
    dtypes = {name: p.dtype for name, p in bf16.model.model.named_parameters() if p.is_floating_point()}
    assert {d for n, d in dtypes.items() if ".lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".lora_" not in n} == {torch.bfloat16}
    # The same seeded LoRA initialisation in every precision.
    assert fp32.initial.keys() == bf16.initial.keys()
    assert all(torch.equal(fp32.initial[n], bf16.initial[n]) for n in fp32.initial)
    frozen32 = sum(
        p.numel() * p.element_size() for n, p in fp32.model.model.named_parameters() if ".lora_" not in n
    )
    frozen16 = sum(
        p.numel() * p.element_size() for n, p in bf16.model.model.named_parameters() if ".lora_" not in n
    )
    assert frozen16 * 2 == frozen32  # the frozen base takes half the memory


def test_bf16_round_trains_fp32_state_and_tracks_fp32(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line number {i} of a small corpus for training\n" for i in range(60)))
    overrides = {"model.name": "tiny:llama", "data.train": str(corpus), "federation.num_clients": 2}
    overrides |= {"federation.rounds": 1, "device": "cpu", "data.max_length": 16}
    overrides |= {"split.server_adapters": "per-client"}  # the copies checked below
    losses = {}
    for dtype, chunk in (("fp32", 0), ("bf16", 8)):
        exp = setup(Config().with_overrides(overrides | {"compute_dtype": dtype, "loss_chunk": chunk}))
        runtime = local_runtime(exp)
        loop = exp.method.make_loop(exp, runtime)
        losses[dtype] = loop.run_round(1).train_loss
        for client in runtime.roles.values():
            assert {t.dtype for t in client.params.values()} == {torch.float32}
            moments = [s for state in client.optimizer.optimizer.state.values() for s in state.values()]
            assert moments and {m.dtype for m in moments if m.is_floating_point()} == {torch.float32}
        for copy in exp.server.copies.values():
            assert {t.dtype for t in copy.params.values()} == {torch.float32}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert losses["bf16"] != losses["fp32"]  # it really ran in bf16


def test_fp16_needs_cuda():
    if torch.cuda.is_available():
        assert resolve_compute_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        resolve_compute_dtype("fp16", torch.device("cpu"))
    assert resolve_compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="device 'auto' resolves to CUDA here")
def test_fp16_with_auto_device_on_a_cpu_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model.name", "tiny:llama", "--compute_dtype", "fp16", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: compute_dtype = 'fp16' needs a CUDA device") and "\n" not in err
    assert not out.exists()


def test_fp32_cast_touches_nothing():
    model, _, _ = tiny_split("gpt2")
    before = {n: p for n, p in model.model.named_parameters()}
    cast_frozen_base(model.model, torch.float32)
    assert all(p is before[n] and p.dtype == torch.float32 for n, p in model.model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_on_a_cpu_runs_eager_attention_and_computes_what_sdpa_computes(family):
    """hold_base_in picks splitft's matmul attention for bf16 on a CPU where a family runs SDPA
    (torch's CPU flash kernel is slower in bf16 than in fp32). Against the fp32 step, that bf16
    step must be as accurate as the SDPA bf16 step (two bf16 paths differ from each other by bf16 rounding, so each is compared
    with fp32), for every family and both paddings."""
    model, _, adapters = tiny_split(family)
    cpu = torch.device("cpu")
    default = model.model.config._attn_implementation
    assert attention_for(model.model, torch.float32, cpu) is None
    hold_base_in(model.model, torch.float32, cpu)
    assert model.model.config._attn_implementation == default  # fp32: nothing changes
    paddings = ("left", "right")
    results = {"fp32": {p: _stats_and_grads(model, adapters, batch(p), 0) for p in paddings}}
    cast_frozen_base(model.model, torch.bfloat16)
    if default == "sdpa":
        results["sdpa"] = {p: _stats_and_grads(model, adapters, batch(p), 0) for p in paddings}
    hold_base_in(model.model, torch.bfloat16, cpu)
    assert model.model.config._attn_implementation == ("splitft_matmul" if default == "sdpa" else default)
    results["eager"] = {p: _stats_and_grads(model, adapters, batch(p), 0) for p in paddings}

    def error(kind: str, padding: str) -> tuple[float, float]:
        (nll, tokens, _, grads), (nll32, tokens32, _, grads32) = (
            results[kind][padding],
            results["fp32"][padding],
        )
        assert tokens == tokens32
        worst = max(float((grads[n] - grads32[n]).abs().max() / grads32[n].abs().max()) for n in grads32)
        return abs(nll / nll32 - 1), worst

    for padding in paddings:
        loss_error, grad_error = error("eager", padding)
        assert loss_error < 1e-2 and grad_error < 0.5, (family, padding, loss_error, grad_error)
        if "sdpa" in results:
            sdpa_loss_error, sdpa_grad_error = error("sdpa", padding)
            assert loss_error <= 2 * sdpa_loss_error + 1e-3, (family, padding)
            assert grad_error <= 2 * sdpa_grad_error + 1e-2, (family, padding, grad_error, sdpa_grad_error)


def test_matmul_attention_computes_sdpa_in_fp32():
    """The bf16-on-CPU attention is SDPA's formula: in fp32 it must give SDPA's output and
    gradients, with grouped keys, a causal call without a mask, a boolean mask with a row that
    sees nothing (SDPA returns zeros there) and an additive float mask."""
    from torch import nn
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from splitft.model.attention import matmul_attention

    gen = torch.Generator().manual_seed(0)
    module = nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q = torch.randn(2, 6, 5, 8, generator=gen)
    k, v = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    blind = causal.clone()
    blind[0] = False  # a left-padding row: sees no key
    additive = torch.zeros(5, 5).masked_fill(~causal, float("-inf"))
    for mask in (None, causal, blind, additive):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out, _ = matmul_attention(module, *leaves, mask, scaling=0.3)
        out.square().sum().backward()
        ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        kk, vv = (t.repeat_interleave(3, dim=1) for t in ref_leaves[1:])
        ref = sdpa(ref_leaves[0], kk, vv, attn_mask=mask, is_causal=mask is None, scale=0.3).transpose(1, 2)
        ref.square().sum().backward()
        assert torch.allclose(out, ref, atol=1e-5)
        for got, want in zip(leaves, ref_leaves, strict=True):
            assert torch.allclose(got.grad, want.grad, atol=1e-5)
    assert torch.equal(matmul_attention(module, q, k, v, blind)[0][:, 0], torch.zeros(2, 6, 8))
