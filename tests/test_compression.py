"""Compression on the wire (wire/quantize.py, wire/feedback.py, delta adapters): error bounds,
error feedback, honest byte counts, and runs that stay consistent with compression on."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.cli import main
from splitft.config import Config
from splitft.config_codec import client_format
from splitft.errors import CodecError, ConfigError
from splitft.recipes.experiment import local_runtime, setup
from splitft.sim.costs import cut_bytes
from splitft.wire.codec import Entry, decode_message, encode_message, tensor_header_size
from splitft.wire.feedback import ErrorFeedback
from splitft.wire.quantize import GROUP, pack, packed_size, unpack, wire_size

INT_FORMATS = {"int8": 127, "int4": 7, "int2": 1}
FORMATS = [*INT_FORMATS, "topk:0.05", "topk:0.5", "topk:1"]


def _tensor(shape, scale, seed, zeros=0.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * scale
    if zeros:
        t[torch.rand(shape, generator=g) < zeros] = 0.0
    return t


def _int_bound(t, spec):
    """Per value: half a quantisation step of its group (the format's stated bound)."""
    flat = t.reshape(-1)
    group = GROUP if spec != "int8" else (t.shape[-1] if t.dim() and t.shape[-1] >= GROUP else None)
    if group is None:  # short rows share a scale: bound by the tensor's absmax
        return torch.full_like(flat, float(flat.abs().max()) / (2 * INT_FORMATS[spec]) if flat.numel() else 0)
    pad = (-flat.numel()) % group
    rows = torch.nn.functional.pad(flat.abs(), (0, pad)).reshape(-1, group)
    return (rows.amax(dim=1, keepdim=True).expand_as(rows) / (2 * INT_FORMATS[spec])).reshape(-1)[
        : flat.numel()
    ]


shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)
scales = st.sampled_from([1e-30, 1e-6, 1.0, 1e3, 1e30])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, scale=scales, seed=st.integers(0, 2**16), zeros=st.sampled_from([0.0, 0.5, 1.0]))
def test_int_round_trip_within_half_a_step(shape, scale, seed, zeros):
    t = _tensor(shape, scale, seed, zeros)
    for spec in INT_FORMATS:
        packed = pack(t, spec)
        assert packed.numel() == packed_size(spec, shape)
        back = unpack(packed)
        assert back.shape == t.shape and back.dtype == torch.float32
        err = (back - t).abs().reshape(-1)
        bound = _int_bound(t, spec)
        assert bool((err <= bound * (1 + 1e-5) + 1e-45).all()), spec
        assert bool((back[t == 0] == 0).all())  # zeros stay exactly zero


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes, scale=scales, seed=st.integers(0, 2**16), fraction=st.sampled_from([0.01, 0.1, 0.5, 1.0])
)
def test_topk_keeps_the_largest_values_within_fp16_precision(shape, scale, seed, fraction):
    t = _tensor(shape, scale, seed)
    spec = f"topk:{fraction}"
    packed = pack(t, spec)
    assert packed.numel() == packed_size(spec, shape)
    back = unpack(packed)
    kept = back != 0
    k = math.ceil(fraction * t.numel())
    assert int(kept.sum()) <= k
    # Kept: fp16 after a power-of-two scale; dropped: no larger than the smallest kept value.
    amax = float(t.abs().max())
    tol = t.abs() * 2**-11 + amax * 2**-24
    assert bool(((back - t).abs()[kept] <= tol[kept]).all())
    if kept.any() and (~kept).any():
        assert float(t.abs()[~kept].max()) <= float(t.abs()[kept].min()) * (1 + 2**-10)


@pytest.mark.parametrize("spec", FORMATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_errors_never_sent(spec, bad):
    t = torch.ones(4, 8)
    t[1, 3] = bad
    with pytest.raises(CodecError, match="NaN or infinite values"):
        pack(t, spec)
    with pytest.raises(CodecError, match="NaN or infinite values"):
        ErrorFeedback().encode("x", t, "fp32")


@pytest.mark.parametrize("spec", FORMATS)
def test_empty_and_zero_dim_tensors(spec):
    for t in (torch.zeros(0, 5), torch.tensor(3.5), torch.zeros(3, 0, 2)):
        back = unpack(pack(t, spec))
        assert back.shape == t.shape
        if t.numel():
            assert float((back - t).abs().max()) <= abs(float(t)) / 2


@pytest.mark.parametrize("spec", FORMATS)
def test_defective_payloads_are_codec_errors(spec):
    packed = pack(torch.randn(3, 70), spec)
    with pytest.raises(CodecError, match="truncated"):
        unpack(packed[:-1])
    with pytest.raises(CodecError, match="after its data"):
        unpack(torch.cat([packed, torch.zeros(1, dtype=torch.uint8)]))
    bad_magic = packed.clone()
    bad_magic[0] = 0
    with pytest.raises(CodecError, match="not a packed"):
        unpack(bad_magic)


def test_topk_rejects_out_of_range_indices():
    packed = pack(torch.arange(10.0), "topk:0.2").clone()
    head = 10 + 8  # fixed header + one dim
    packed[head + 4 : head + 8] = torch.tensor([99], dtype=torch.int32).view(torch.uint8)
    with pytest.raises(CodecError, match="indices"):
        unpack(packed)


@pytest.mark.parametrize("spec", ["int8", "int4", "int2", "topk:0.05"])
def test_error_feedback_keeps_the_running_sums_within_one_step(spec):
    """After K messages, sum(sent) differs from sum(meant) by exactly the last residual, which
    is at most one message's error (not K of them)."""
    fb, meant, sent = (
        ErrorFeedback(),
        torch.zeros(6, 80, dtype=torch.float64),
        torch.zeros(6, 80, dtype=torch.float64),
    )
    largest = 0.0
    for step in range(30):
        t = _tensor((6, 80), 1e-3 * (1 + step % 3), step)
        largest = max(largest, float(t.abs().max()))
        value, _ = fb.encode("g", t, spec)
        meant, sent = meant + t.double(), sent + unpack(value).double()
        torch.testing.assert_close(meant - sent, fb.residual["g"].double(), rtol=0, atol=1e-7)
        if spec in INT_FORMATS:
            # |r| <= (|t| + |r|) / (2 qmax) at every step, so |r| <= max|t| / (2 qmax - 1): one
            # step's error, however many messages went by.
            qmax = INT_FORMATS[spec]
            assert float(fb.residual["g"].abs().max()) <= largest / (2 * qmax - 1) * (1 + 1e-5)


def test_error_feedback_drops_a_residual_of_another_shape():
    fb = ErrorFeedback()
    fb.encode("g", torch.randn(4, 64), "int2")
    value, _ = fb.encode("g", torch.randn(2, 64), "int2")
    assert unpack(value).shape == (2, 64) and fb.residual["g"].shape == (2, 64)


@pytest.mark.parametrize("spec", ["fp32", "fp16", "bf16", *FORMATS])
def test_predicted_bytes_equal_the_encoded_payload(spec):
    """The cost model's prediction for a packed format is the codec payload it will be."""
    t = torch.randn(2, 9, 96)
    value, wire_dtype = ErrorFeedback().encode("h", t, spec)
    payload = encode_message([Entry("h", "activations", value, wire_dtype=wire_dtype)])
    assert payload.bytes_by_kind["activations"] == wire_size(spec, t.shape)
    header = tensor_header_size(3) if spec in ("fp32", "fp16", "bf16") else 0
    assert cut_bytes(spec, 2, 9, 96) == wire_size(spec, t.shape) - header


def test_config_lists_one_for_all_or_one_per_client():
    cfg = Config().with_overrides({"codec.activations": "int8,int4,topk:0.1,fp16,fp32"})
    cfg.validate()
    assert [client_format(cfg.codec.activations, i, "x") for i in (0, 2)] == ["int8", "topk:0.1"]
    assert client_format([], 3, "bf16") == "bf16" and client_format(["int4"], 3, "x") == "int4"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"codec.activations": "int3"}, "codec.activations = ['int3']: every value must be one of fp32"),
        ({"codec.gradients": "topk:0"}, "codec.gradients = ['topk:0']"),
        ({"codec.gradients": "topk:abc"}, "(0 < fraction <= 1)"),
        ({"codec.adapters": "int8"}, "codec.adapters = ['int8']: every value must be one of fp32, delta,"),
        ({"codec.adapters": "fp32,fp32"}, "must hold 0, 1 or num_clients=5 values"),
        ({"codec.activations": "int8", "method": "fedlora"}, "must be empty or fp32 with method = 'fedlora'"),
        ({"codec.gradients": "int8", "method": "fedlora"}, "at a split's cut"),
        (
            {"codec.adapters": "delta", "method": "centralized"},
            "with method = 'centralized', which exchanges no",
        ),
    ],
)
def test_bad_formats_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        Config().with_overrides(override).validate()
    assert message in str(err.value)


def test_bad_format_on_the_command_line_exits_2(tmp_path, capsys):
    assert main(["train", "--codec.activations", "int3", "--out", str(tmp_path / "run")]) == 2
    assert "error: codec.activations = ['int3']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def compressed(tmp_path):
    """Three clients at cuts 1-3, each with its own activation, gradient and adapter format."""
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"sample {i} " + "word " * (3 + i % 17) for i in range(60)) + "\n")
    codec = {
        "activations": ["int8", "int4", "topk:0.2"],
        "gradients": ["topk:0.1", "int2", "int8"],
        "adapters": ["delta-int8", "delta", "fp32"],
    }
    sections = {"model": {"name": "tiny:llama"}, "data": {"train": str(path)}, "split": {"cuts": [1, 2, 3]}}
    sections["federation"] = {"num_clients": 3, "rounds": 3, "local_steps": 2}
    exp = setup(Config.from_dict({**sections, "codec": codec, "policy": {"name": "accuracy"}}))
    return exp, local_runtime(exp)


def test_bytes_counted_equal_bytes_sent_and_references_agree(compressed):
    """Every payload's length lands in the ledger, and each delta client holds exactly what
    the loop thinks it holds (so a delta is always against the receiver's tensor)."""
    exp, runtime = compressed
    sent = {"up": 0, "down": 0}
    call = runtime.call

    def counting(target, method, payload):
        result = call(target, method, payload)
        sent["down"] += len(payload)
        sent["up"] += len(result) if isinstance(result, bytes) else 0
        return result

    runtime.call = counting
    loop = exp.method.make_loop(exp, runtime)
    for r in (1, 2, 3):
        loop.run_round(r)
    totals = exp.ledger.totals()
    assert (totals["bytes_up"], totals["bytes_down"]) == (sent["up"], sent["down"])
    for i in (0, 1):
        client = runtime.roles[f"client-{i}"]
        held = loop.references[i]["tensors"]
        assert held.keys() == client.reference.keys()
        for name, tensor in held.items():
            assert torch.equal(tensor, client.reference[name]), name
    assert 2 not in loop.references  # fp32 client: whole tensors, nothing tracked
    # References are copies (a checkpoint cannot hold tensors that share memory).
    storages = [t.untyped_storage().data_ptr() for t in loop.fed_server.global_adapters.values()]
    for i in (0, 1):
        for tensor in loop.references[i]["tensors"].values():
            assert tensor.untyped_storage().data_ptr() not in storages
    assert runtime.roles["client-0"].feedback.residual  # delta-int8 keeps residuals
    assert not runtime.roles["client-1"].feedback.residual  # fp32 deltas are exact


def test_compressed_messages_are_smaller_and_decode(compressed):
    exp, runtime = compressed
    loop = exp.method.make_loop(exp, runtime)
    loop.run_round(1)
    by_client = {i: exp.ledger.client_round(1, i) for i in range(3)}
    # Same cut-tensor shapes per step would need equal cuts; compare against fp32's size instead.
    client = runtime.roles["client-1"]
    message = decode_message(
        client.heldout_forward(encode_message([Entry("control", "control", {"samples": 2})]).data)
    )
    assert message["hidden"].dtype == torch.uint8  # int4, packed
    assert by_client[2]["up"]["adapters"] > by_client[0]["up"]["adapters"] * 3  # fp32 vs int8


def _run_args(corpus, rounds, *extra):
    return [
        "--model.name", "tiny:llama", "--data.train", str(corpus), "--federation.num_clients", "3",
        "--federation.rounds", str(rounds), "--eval.every", "2", "--eval.max_samples", "8",
        "--policy.name", "splitft", "--devices.preset", "hetero", "--devices.server", "busy",
        "--train.lr", "0.01", "--lora.r_cut", "4", "--codec.activations", "int4",
        "--codec.gradients", "topk:0.1", "--codec.adapters", "delta-int8", *extra,
    ]  # fmt: skip


def test_resume_with_compression_is_exact(tmp_path):
    """Residuals and references are part of the checkpoint: 2 + 2 rounds equal 4."""
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(f"line {i} " + "thou art fair " * (1 + i % 9) for i in range(90)) + "\n")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(["train", *_run_args(corpus, 4), "--out", str(straight)]) == 0
    assert main(["train", *_run_args(corpus, 2), "--out", str(halves)]) == 0
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    rows = []
    for d in (straight, halves):
        lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        rows.append([{k: v for k, v in row.items() if k != "wall_s"} for row in lines])
    assert rows[0] == rows[1]


def test_the_policy_predicts_with_the_configured_formats(compressed):
    """Predicted traffic (and so round time on slow uplinks) follows each client's formats."""
    exp, _ = compressed
    fp32 = setup(
        exp.cfg.with_overrides({"codec.activations": "", "codec.gradients": "", "codec.adapters": ""})
    )
    assert exp.timer.formats == [
        ("int8", "topk:0.1", "delta-int8"),
        ("int4", "int2", "delta"),
        ("topk:0.2", "int8", "fp32"),
    ]
    assert fp32.timer.formats == [("fp32", None, "fp32")] * 3
    cuts = [1, 2, 3]
    compressed_time, fp32_time = exp.timer.predict(cuts), fp32.timer.predict(cuts)
    for i in range(3):
        comm = compressed_time.breakdown[i].comm_s
        assert comm < fp32_time.breakdown[i].comm_s, i


def test_a_client_that_missed_a_round_gets_whole_tensors(compressed):
    """With 2 of 3 clients a round, a client sampled after a pause gets whole tensors (no
    delta against what it held before), and still holds what the loop thinks it holds."""
    exp, runtime = compressed
    exp.cfg.federation.clients_per_round = 2
    sent = []
    call = runtime.call

    def spy(target, method, payload):
        if method == "begin_round":
            meta = decode_message(payload)["control"]
            sent.append((meta["round"], int(target.rsplit("-", 1)[1]), meta.get("delta")))
        return call(target, method, payload)

    runtime.call = spy
    loop = exp.method.make_loop(exp, runtime)
    taken: dict[int, list[int]] = {}
    for r in (1, 2, 3, 4):
        for i in loop.sample_clients(r):
            taken.setdefault(i, []).append(r)
        loop.run_round(r)
    first = {}
    for r, i, delta in sent:  # the first download of a round (the held-out check sends a second)
        first.setdefault((r, i), delta)
    returns = [(r, i) for (r, i) in first if i != 2 and r - 1 not in taken[i] and r > min(taken[i])]
    assert returns  # the seeded sample makes a delta client sit a round out (client 2: fp32)
    assert not any(first[key] for key in returns)
    assert any(delta for *_, delta in sent)
    for i in (0, 1):
        held, client = loop.references[i]["tensors"], runtime.roles[f"client-{i}"]
        assert all(torch.equal(t, client.reference[n]) for n, t in held.items())
