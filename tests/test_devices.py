"""Tests of device profiles (presets, validation, parsing) and of the FLOP / memory cost model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from splitft.config import Config
from splitft.errors import ConfigError
from splitft.model.loading import smollm2_config
from splitft.sim.costs import (
    ModelShape,
    StepCosts,
    block_forward_flops,
    block_ranks,
    client_lora_params,
    unsplit_step_flops,
)
from splitft.sim.devices import (
    TIERS,
    DeviceProfile,
    device_preset,
    parse_profiles,
    server_profile,
)
from splitft.sim.memory import (
    RUNTIME_OVERHEAD_BYTES,
    activation_floats_per_token,
    check_fits,
    client_memory_bytes,
    max_cut_that_fits,
    whole_model_memory_bytes,
)
from splitft.sim.timing import RoundTimer

BATCH, SEQ = 4, 128


def smollm2() -> ModelShape:
    return ModelShape.from_hf_config(smollm2_config())


def with_memory(memory: float) -> DeviceProfile:
    return DeviceProfile("test", 1e9, memory, 1e6, 1e6, 0.0)


# --- presets and profiles ---------------------------------------------------------------


def test_hetero_spans_compute_and_bandwidth() -> None:
    profiles = device_preset("hetero", 5)
    assert len({p.name for p in profiles}) == 5
    slow = min(profiles, key=lambda p: p.flops)
    fast = max(profiles, key=lambda p: p.flops)
    assert fast.flops >= 8 * slow.flops
    assert fast.up_bps >= 10 * slow.up_bps
    assert fast.down_bps >= 10 * slow.down_bps
    for p in profiles:
        assert 2 <= p.down_bps / p.up_bps <= 5
        assert 0.005 <= p.latency_s <= 0.050


def test_hetero_cycles_over_tiers_and_homogeneous_is_uniform() -> None:
    profiles = device_preset("hetero", 7)
    assert profiles[5] == profiles[0] and profiles[6] == profiles[1]
    assert len(set(device_preset("homogeneous", 4))) == 1


def test_weakest_hetero_device_holds_only_a_few_smollm2_blocks() -> None:
    shape = smollm2()
    cuts = check_fits(shape, device_preset("hetero", 5), BATCH, SEQ)
    assert 1 <= cuts[0] <= 5
    assert cuts == sorted(cuts)  # tiers are listed slowest (and smallest) first
    assert cuts[-1] == shape.num_blocks - 1


def test_unknown_preset_names_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'cluster'.*homogeneous, hetero"):
        device_preset("cluster", 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flops", 0.0),
        ("memory_bytes", -1.0),
        ("up_bps", float("nan")),
        ("latency_s", -0.1),
        ("down_bps", True),
    ],
)
def test_profile_validation_names_the_field_and_range(field: str, value: float) -> None:
    data = {**TIERS["laptop"].to_dict(), field: value}
    bound = ">= 0" if field == "latency_s" else "> 0"
    with pytest.raises(ConfigError, match=f"{field} must be a finite number {bound}"):
        DeviceProfile.from_dict(data)


def test_profile_round_trips_through_json() -> None:
    for profile in TIERS.values():
        assert DeviceProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        DeviceProfile.from_dict({**TIERS["laptop"].to_dict(), "gpu": 1})
    with pytest.raises(ConfigError, match="missing field.*latency_s"):
        DeviceProfile.from_dict({"flops": 1e9, "memory_bytes": 1e9, "up_bps": 1e6, "down_bps": 1e6})


def test_server_speeds() -> None:
    idle, busy = server_profile("idle"), server_profile("busy")
    assert idle.flops == 50 * busy.flops
    assert idle.flops > max(p.flops for p in TIERS.values())
    assert server_profile(1e12).flops == 1e12
    with pytest.raises(ConfigError, match="'lazy'.*idle, busy"):
        server_profile("lazy")
    with pytest.raises(ConfigError, match="flops"):
        server_profile(-5.0)


def test_parse_profiles_accepts_presets_tables_and_tier_names() -> None:
    assert parse_profiles("hetero", 3) == device_preset("hetero", 3)
    table = {
        "name": "mine",
        "flops": 1e10,
        "memory_bytes": 1e9,
        "up_bps": 1e6,
        "down_bps": 3e6,
        "latency_s": 0.02,
    }
    parsed = parse_profiles([table, "laptop"], 2)
    assert parsed == [DeviceProfile.from_dict(table), TIERS["laptop"]]
    assert parse_profiles(["phone-low"], 3) == [TIERS["phone-low"]] * 3
    with pytest.raises(ConfigError, match="2 entries"):
        parse_profiles([table, table], 3)
    with pytest.raises(ConfigError, match="unknown device tier 'toaster'"):
        parse_profiles(["toaster"], 1)


# --- model shapes -----------------------------------------------------------------------


def test_shapes_of_every_family() -> None:
    gpt2 = ModelShape.from_hf_config(
        AutoConfig.for_model("gpt2", n_embd=64, n_layer=3, n_head=4, n_inner=None)
    )
    assert (gpt2.num_blocks, gpt2.hidden, gpt2.intermediate, gpt2.head_dim) == (3, 64, 256, 16)
    assert gpt2.absolute_positions and gpt2.max_positions == 1024 and not gpt2.gated_mlp
    assert gpt2.adapted_projections() == [(64, 192), (64, 64)]  # fused c_attn, c_proj

    opt = ModelShape.from_hf_config(
        AutoConfig.for_model(
            "opt",
            hidden_size=64,
            ffn_dim=96,
            word_embed_proj_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    )
    assert (opt.num_blocks, opt.intermediate, opt.embed_dim) == (2, 96, 32)
    assert opt.absolute_positions and not opt.gated_mlp

    neo = ModelShape.from_hf_config(
        AutoConfig.for_model(
            "gpt_neo", hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]]
        )
    )
    assert (neo.num_blocks, neo.intermediate, neo.num_heads) == (2, 256, 4)
    assert neo.absolute_positions

    llama = smollm2()
    assert (llama.num_heads, llama.num_kv_heads, llama.head_dim, llama.kv_dim) == (9, 3, 64, 192)
    assert llama.gated_mlp and llama.tied and not llama.absolute_positions
    assert llama.block_params * 4 == pytest.approx(14e6, rel=0.02)  # ~14 MB per block in fp32
    assert llama.embedding_params * 4 == pytest.approx(113e6, rel=0.01)

    qwen = ModelShape.from_hf_config(
        AutoConfig.for_model(
            "qwen2",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    assert (qwen.kv_dim, qwen.intermediate) == (16, 128)
    assert qwen.gated_mlp and not qwen.tied
    assert qwen.block_params == 2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 128


# --- FLOPs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("r_others", "r_cut"), [(16, 8), (8, 8)])
def test_client_plus_server_flops_equal_an_unsplit_step(r_others: int, r_cut: int) -> None:
    shape = smollm2()
    for cut in range(1, shape.num_blocks):
        costs = StepCosts.for_cut(shape, cut, BATCH, SEQ, r_others, r_cut)
        ranks = block_ranks(shape.num_blocks, cut, r_others, r_cut)
        assert (
            costs.client_forward_flops + costs.client_backward_flops + costs.server_flops
            == unsplit_step_flops(shape, BATCH, SEQ, ranks)
        )
    if r_others == r_cut:  # then every cut costs the same in total
        uniform = unsplit_step_flops(shape, BATCH, SEQ, [r_others] * shape.num_blocks)
        assert costs.client_forward_flops + costs.client_backward_flops + costs.server_flops == uniform


def test_client_flops_increase_with_the_cut_and_server_flops_decrease() -> None:
    shape = smollm2()
    steps = [StepCosts.for_cut(shape, cut, BATCH, SEQ) for cut in range(1, shape.num_blocks)]
    for a, b in zip(steps, steps[1:], strict=False):
        assert b.client_forward_flops > a.client_forward_flops
        assert (
            b.client_forward_flops + b.client_backward_flops
            > a.client_forward_flops + a.client_backward_flops
        )
        assert b.server_flops < a.server_flops
        assert b.client_lora_params > a.client_lora_params


def test_block_flops_are_linear_in_tokens_up_to_the_attention_term() -> None:
    shape = smollm2()
    # At a fixed sequence length, FLOPs are exactly linear in the number of tokens.
    assert block_forward_flops(shape, 2048, SEQ) == 4 * block_forward_flops(shape, 512, SEQ)
    # Doubling seq_len doubles the tokens and also the attention term per token.
    short, long = block_forward_flops(shape, 512, 128), block_forward_flops(shape, 1024, 256)
    attention_extra = 1024 * 4 * 128 * shape.q_dim
    assert long == 2 * short + attention_extra
    # ~2 FLOPs per weight per token dominate at this length.
    assert short == pytest.approx(512 * 2 * shape.block_params, rel=0.2)


def test_bytes_at_the_cut_follow_the_wire_dtype() -> None:
    shape = smollm2()
    fp32 = StepCosts.for_cut(shape, 2, BATCH, SEQ)
    fp16 = StepCosts.for_cut(shape, 2, BATCH, SEQ, wire_dtype="fp16")
    assert fp32.down_bytes == BATCH * SEQ * 576 * 4 == 2 * fp16.down_bytes
    assert fp32.up_bytes == fp32.down_bytes + BATCH * SEQ * 5  # int32 labels + uint8 mask
    with pytest.raises(ConfigError, match="'int3'.*fp32, fp16, bf16"):
        StepCosts.for_cut(shape, 2, BATCH, SEQ, wire_dtype="int3")
    assert StepCosts.for_cut(shape, 2, BATCH, SEQ, wire_dtype="int4").down_bytes < fp16.down_bytes / 3
    with pytest.raises(ConfigError, match="cut 30 is outside 1..29"):
        StepCosts.for_cut(shape, 30, BATCH, SEQ)


# --- memory -----------------------------------------------------------------------------


def test_client_memory_increases_with_the_cut() -> None:
    shape = smollm2()
    memories = [
        client_memory_bytes(shape, cut, BATCH, SEQ, client_lora_params(shape, cut, 16, 8))
        for cut in range(1, shape.num_blocks)
    ]
    assert all(b > a for a, b in zip(memories, memories[1:], strict=False))
    # Embeddings alone are ~113 MB, so even cut 1 needs more than that.
    assert memories[0] > 113e6


def test_max_cut_that_fits_is_monotone_in_memory() -> None:
    shape = smollm2()
    previous = 0
    for megabytes in range(100, 2000, 25):
        cut = max_cut_that_fits(shape, with_memory(megabytes * 1e6), BATCH, SEQ)
        assert previous <= cut <= shape.num_blocks - 1
        if cut:
            need = client_memory_bytes(shape, cut, BATCH, SEQ, client_lora_params(shape, cut, 16, 8))
            assert need <= megabytes * 1e6
        previous = cut
    assert max_cut_that_fits(shape, with_memory(100e6), BATCH, SEQ) == 0
    assert previous == shape.num_blocks - 1


def test_check_fits_names_the_client_its_memory_and_what_one_block_needs() -> None:
    shape = smollm2()
    devices = [TIERS["laptop"], with_memory(150e6)]
    with pytest.raises(ConfigError, match=r"client 1 \(test\) has 150.0 MB .* one block need 1\d\d\.\d MB"):
        check_fits(shape, devices, BATCH, SEQ)


def test_bf16_holds_the_frozen_base_and_its_activations_in_two_bytes() -> None:
    """Frozen weights (embeddings + blocks) and the blocks' activations take 2 bytes each in
    bf16 and fp16; the adapters x4 (weights, gradients, AdamW moments) stay fp32."""
    shape, cut = smollm2(), 7
    lora = client_lora_params(shape, cut, 16, 8)
    fp32, bf16, fp16 = (
        client_memory_bytes(shape, cut, BATCH, SEQ, lora, compute_dtype=d) for d in ("fp32", "bf16", "fp16")
    )
    weights = shape.embedding_params + cut * shape.block_params
    activations = BATCH * SEQ * cut * activation_floats_per_token(shape, SEQ)
    assert fp32 - bf16 == 2 * (weights + activations)
    assert bf16 == 2 * (weights + activations) + 4 * 4 * lora + RUNTIME_OVERHEAD_BYTES
    assert fp16 == bf16
    assert client_memory_bytes(shape, cut, BATCH, SEQ, lora) == fp32  # the default is fp32
    # The whole model (fedlora): every block, the logits and their gradient stay fp32.
    whole = [whole_model_memory_bytes(shape, BATCH, SEQ, 16, d) for d in ("fp32", "bf16")]
    every_block = shape.embedding_params + shape.num_blocks * shape.block_params
    every_activation = BATCH * SEQ * shape.num_blocks * activation_floats_per_token(shape, SEQ)
    assert whole[0] - whole[1] == 2 * (every_block + every_activation)


def test_a_device_that_cannot_hold_a_cut_in_fp32_holds_it_in_bf16() -> None:
    shape, cut = smollm2(), 12
    need = {
        d: client_memory_bytes(shape, cut, BATCH, SEQ, client_lora_params(shape, cut, 16, 8), compute_dtype=d)
        for d in ("fp32", "bf16")
    }
    device = with_memory((need["fp32"] + need["bf16"]) / 2)
    assert (
        check_fits(shape, [device], BATCH, SEQ)[0]
        < cut
        <= check_fits(shape, [device], BATCH, SEQ, compute_dtype="bf16")[0]
    )
    # The run's timer takes compute_dtype from the config: larger cuts, and fedlora on a tablet.
    timers = {
        d: RoundTimer(
            Config().with_overrides(
                {"compute_dtype": d, "data.max_length": "128", "devices.preset": "hetero"}
            ),
            smollm2_config(),
            30,
        )
        for d in ("fp32", "bf16")
    }
    assert timers["fp32"].max_cut == [3, 10, 24, 29, 29]  # the hetero preset, as before
    assert timers["bf16"].max_cut == [9, 22, 29, 29, 29]
    assert timers["fp32"].whole_model_fits == [False, False, False, True, True]
    assert timers["bf16"].whole_model_fits == [False, False, True, True, True]
