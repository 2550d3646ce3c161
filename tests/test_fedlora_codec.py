"""codec.adapters with method = "fedlora" (docs/architecture.md, "Compression"): the global set
goes down as the change against what each client holds, the trained adapters come up as the
change against what the client was sent, the quantised formats through error feedback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from splitft.cli import main
from splitft.config import Config
from splitft.recipes.experiment import local_runtime, setup
from splitft.wire.codec import decode_message
from splitft.wire.messages import read_adapters

QMAX = {"delta-int8": 127, "delta-int4": 7, "delta-int2": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"verse {i} " + "fair is foul " * (1 + i % 9) for i in range(90)) + "\n")
    return path


def fedlora(corpus, adapters: str):
    """Three fedlora clients on tiny:llama, two local steps a round, ``adapters`` as codec.adapters."""
    cfg = Config.from_dict(
        {
            "method": "fedlora",
            "model": {"name": "tiny:llama"},
            "data": {"train": str(corpus)},
            "federation": {"num_clients": 3, "rounds": 4, "local_steps": 2},
            "train": {"lr": 0.01},
            "codec": {"adapters": adapters.split(",") if adapters else []},
        }
    )
    exp = setup(cfg)
    return exp, local_runtime(exp)


def spy(runtime, before=None, after=None):
    """Wrap the runtime's calls: count every byte each way; ``before(target, method, payload)``
    and ``after(target, method, payload, result)`` see each call."""
    sent = {"up": 0, "down": 0}
    call = runtime.call

    def wrapped(target, method, payload):
        if before:
            before(target, method, payload)
        result = call(target, method, payload)
        sent["down"] += len(payload)
        sent["up"] += len(result) if isinstance(result, bytes) else 0
        if after:
            after(target, method, payload, result)
        return result

    runtime.call = wrapped
    return sent


@pytest.fixture(scope="module")
def fp32_run(corpus):
    exp, runtime = fedlora(corpus, "")
    loop = exp.method.make_loop(exp, runtime)
    for r in (1, 2, 3):
        loop.run_round(r)
    return exp, loop


@pytest.mark.parametrize(
    "formats", ["delta", "delta-int8", "delta-int4", "delta-int2", "delta-int4,fp32,delta"]
)
def test_fedlora_trains_and_counts_exactly_the_bytes_it_sends(corpus, fp32_run, formats):
    exp, runtime = fedlora(corpus, formats)
    deltas = []  # (round, client, whether the download was a change)
    loop = exp.method.make_loop(exp, runtime)

    def before(target, method, payload):
        if method == "begin_round":
            meta = decode_message(payload).get("control", {})
            deltas.append((loop_round[0], int(target.rsplit("-", 1)[1]), meta.get("delta")))

    sent = spy(runtime, before)
    loop_round = [0]
    losses = []
    for r in (1, 2, 3):
        loop_round[0] = r
        losses.append(loop.run_round(r).train_loss)
    totals = exp.ledger.totals()
    assert (totals["bytes_up"], totals["bytes_down"]) == (sent["up"], sent["down"])
    assert all(math.isfinite(loss) for loss in losses)
    moved = [not torch.equal(t, exp.initial[n]) for n, t in loop.global_adapters.items()]
    assert all(moved)  # every tensor trained (LoRA's B starts at zero)
    spec = formats.split(",")
    for r, i, delta in deltas:  # whole tensors first, changes after; fp32 clients: no control entry
        assert delta == (None if spec[i % len(spec)] == "fp32" else r > 1), (r, i)
    fp32_exp, _ = fp32_run
    for i in range(3):
        ours, theirs = (e.ledger.client_round(2, i) for e in (exp, fp32_exp))
        if spec[i % len(spec)].startswith("delta-int"):  # quantised: smaller both ways
            assert ours["down"]["adapters"] * 2 < theirs["down"]["adapters"]
            assert ours["up"]["adapters"] * 2 < theirs["up"]["adapters"]


def test_fp32_deltas_give_the_global_set_of_fp32_to_float_rounding(corpus, fp32_run):
    _, fp32_loop = fp32_run
    exp, runtime = fedlora(corpus, "delta")
    loop = exp.method.make_loop(exp, runtime)
    for r in (1, 2, 3):
        loop.run_round(r)
    for name, tensor in fp32_loop.global_adapters.items():
        torch.testing.assert_close(loop.global_adapters[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("spec", list(QMAX))
def test_error_feedback_keeps_what_was_received_equal_to_what_was_meant(corpus, spec):
    """Up: the fed server's running sum of decoded changes plus the client's residual is the sum
    of the changes the client meant, and the residual is within one message's quantisation step.
    Down: each client holds exactly what the loop thinks, within one message's step of the global set."""
    exp, runtime = fedlora(corpus, spec)
    loop = exp.method.make_loop(exp, runtime)
    meant: dict[int, dict] = {i: {} for i in range(3)}
    received: dict[int, dict] = {i: {} for i in range(3)}
    last: dict[int, dict] = {}
    download: dict[int, tuple] = {}
    holding: dict[int, dict] = {}

    def before(target, method, payload):
        i = int(target.rsplit("-", 1)[1])
        trainer = runtime.roles[target]
        if method == "end_round":
            for n, t in trainer.params.items():
                meant[i][n] = meant[i].get(n, 0) + (t.detach() - trainer.held.reference[n])
        if method == "begin_round":  # a change against what the client held, or whole tensors
            previous = holding[i] if decode_message(payload)["control"]["delta"] else None
            download[i] = ({n: t.clone() for n, t in loop.global_adapters.items()}, previous)

    def after(target, method, payload, result):
        i = int(target.rsplit("-", 1)[1])
        trainer = runtime.roles[target]
        if method == "end_round":
            last[i] = read_adapters(decode_message(result), exp.layout)
            for n, t in last[i].items():
                received[i][n] = received[i].get(n, 0) + t
        if method == "begin_round":
            glob, previous = download[i]
            holding[i] = {n: t.clone() for n, t in trainer.held.reference.items()}
            for n, held in loop.references[i]["tensors"].items():
                assert torch.equal(held, trainer.held.reference[n]), n  # what the loop thinks it holds
                sent = glob[n] - previous[n] if previous is not None else glob[n]
                bound = float(sent.abs().max()) / (2 * QMAX[spec]) * (1 + 1e-5) + 1e-7
                assert float((held - glob[n]).abs().max()) <= bound, (i, n)

    spy(runtime, before, after)
    for r in (1, 2, 3, 4):
        loop.run_round(r)
    for i in range(3):
        residual = runtime.roles[f"client-{i}"].held.feedback.residual
        assert residual.keys() == meant[i].keys()
        assert any(bool(r.any()) for r in residual.values())  # something was held back
        for n, r in residual.items():
            torch.testing.assert_close(received[i][n] + r, meant[i][n], rtol=0, atol=1e-6)
            intended = last[i][n] + r  # the last message's change plus the residual it carried
            assert float(r.abs().max()) <= float(intended.abs().max()) / (2 * QMAX[spec]) * (1 + 1e-5) + 1e-7


def test_resume_with_delta_int4_is_exact(corpus, tmp_path):
    """References (the loop's) and references with residuals (the trainers') are checkpointed: 2 + 2 == 4."""
    base = [
        "train", "--method", "fedlora", "--model.name", "tiny:llama", "--data.train", str(corpus),
        "--federation.num_clients", "3", "--federation.local_steps", "2", "--eval.every", "2",
        "--eval.max_samples", "8", "--train.lr", "0.01", "--codec.adapters", "delta-int4",
    ]  # fmt: skip
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main([*base, "--federation.rounds", "4", "--out", str(straight)]) == 0
    assert main([*base, "--federation.rounds", "2", "--out", str(halves)]) == 0
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    rows = []
    for d in (straight, halves):
        lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        rows.append([{k: v for k, v in row.items() if k != "wall_s"} for row in lines])
    assert rows[0] == rows[1]
    assert rows[0][-1]["bytes_by_kind"]["adapters"] > 0
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (straight, halves))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedlora_accepts_adapter_formats_but_no_cut_formats():
    Config().with_overrides({"method": "fedlora", "codec.adapters": "delta-int2"}).validate()
    Config().with_overrides(
        {"method": "fedlora", "codec.adapters": "fp32,delta,delta-int8,delta-int4,delta"}
    ).validate()
