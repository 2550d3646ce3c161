"""Reliability: a malformed reply drops its client (the round goes on), divergence stops the
run with the round and client named, and file writes are atomic with normal permissions."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat

import pytest
import torch

from splitft.cli import main
from splitft.config import Config
from splitft.errors import DivergenceError, ReplyError
from splitft.recipes.experiment import local_runtime, setup
from splitft.report.rundir import RunDirectory, write_atomic
from splitft.runtime import InProcessRuntime
from splitft.wire import checks
from splitft.wire.codec import Entry, decode_message, encode_message


def metric_rows(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "wall_s"} for x in lines]


def reencode(message: dict) -> bytes:
    return encode_message(
        Entry(k, "activations" if isinstance(v, torch.Tensor) else "control", v) for k, v in message.items()
    ).data


def edit(change):
    """A tamper that decodes a reply, lets ``change`` edit the dict, and re-encodes it (valid CRC)."""

    def tamper(data: bytes) -> bytes:
        message = decode_message(data)
        change(message)
        return reencode(message)

    return tamper


def flip_bit(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return bytes(flipped)


def first_adapter(message: dict) -> str:
    return next(k for k, v in message.items() if isinstance(v, torch.Tensor))


def _set(message: dict, key: str, value) -> None:
    message[key] = value


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


# (case, method whose reply client 1 garbles, tamper)
SPLIT_CASES = [
    ("bit-flip", "forward_step", flip_bit),
    ("truncated", "forward_step", lambda d: d[: len(d) // 3]),
    ("wrong-shape", "forward_step", edit(lambda m: _set(m, "hidden", torch.zeros(2, 3, 5)))),
    ("token-range", "forward_step", edit(lambda m: _set(m, "labels", m["labels"].fill_(10**6)))),
    ("float-labels", "forward_step", edit(lambda m: _set(m, "labels", m["labels"].float()))),
    ("mask-values", "forward_step", edit(lambda m: _set(m, "attention_mask", m["attention_mask"] * 3))),
    ("nan-hidden", "forward_step", edit(lambda m: _set(m, "hidden", _nan(m["hidden"])))),
    ("missing-hidden", "forward_step", edit(lambda m: m.pop("hidden"))),
    ("deep-json", "forward_step", edit(lambda m: _set(m, "extra", json.loads("[" * 40 + "]" * 40)))),
    ("adapter-shape", "end_round", edit(lambda m: _set(m, first_adapter(m), torch.zeros(3, 3)))),
    ("adapter-nan", "end_round", edit(lambda m: _set(m, first_adapter(m), _nan(m[first_adapter(m)])))),
    (
        "adapter-extra",
        "end_round",
        edit(lambda m: _set(m, "model.layers.9.mlp.lora_A.default.weight", torch.zeros(1))),
    ),
    ("samples-negative", "end_round", edit(lambda m: _set(m, "control", {"samples": -3}))),
    ("samples-text", "end_round", edit(lambda m: _set(m, "control", {"samples": "many"}))),
    ("heldout-nan", "heldout_forward", edit(lambda m: _set(m, "hidden", _nan(m["hidden"])))),
    ("heldout-garbage", "heldout_forward", lambda d: b"garbage"),
]


class GarblingRuntime(InProcessRuntime):
    """In-process, but the reply of ``target`` to ``method`` is passed through ``tamper``."""

    def __init__(self, roles, target: str, method: str, tamper) -> None:
        super().__init__(roles)
        self.target, self.method, self.tamper = target, method, tamper

    def call(self, target, method, payload):
        result = super().call(target, method, payload)
        if (target, method) == (self.target, self.method) and isinstance(result, bytes):
            return self.tamper(result)
        return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("".join(f"sample {i} " + "word " * (3 + i % 11) + "\n" for i in range(60)))
    return path


def config(corpus, **extra) -> Config:
    values = {
        "model.name": "tiny:llama", "model.keep_layers": 3, "data.train": str(corpus),
        "federation.num_clients": 3, "federation.rounds": 2, "policy.name": "splitft", "policy.signal": "heldout", "threads": 1,
    }  # fmt: skip
    return Config().with_overrides({**values, **extra})


@pytest.fixture(scope="module")
def split_exp(corpus):
    return setup(config(corpus))


@pytest.mark.parametrize("method, tamper", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_a_malformed_reply_drops_that_client_and_the_round_goes_on(split_exp, method, tamper):
    runtime = GarblingRuntime(local_runtime(split_exp).roles, "client-1", method, tamper)
    loop = split_exp.method.make_loop(split_exp, runtime)
    result = loop.run_round(1)
    # The held-out check comes after the merge: that client still contributed to round 1.
    assert result.clients == ([0, 1, 2] if method == "heldout_forward" else [0, 2])
    (drop,) = result.dropped
    assert (drop["client"], drop["round"], drop["method"]) == (1, 1, method)
    assert drop["error"].startswith("malformed reply: ")
    assert math.isfinite(result.train_loss)
    assert all(bool(torch.isfinite(t).all()) for t in loop.global_adapters.values())
    assert 1 not in loop.sample_clients(2)  # dropped for the rest of the job
    assert loop.run_round(2).clients == [0, 2]


def test_every_client_malformed_stops_the_run_with_the_reasons(split_exp):
    class AllGarbled(InProcessRuntime):
        def call(self, target, method, payload):
            result = super().call(target, method, payload)
            return flip_bit(result) if method == "end_round" else result

    loop = split_exp.method.make_loop(split_exp, AllGarbled(local_runtime(split_exp).roles))
    with pytest.raises(Exception, match="every client failed.*client 0: malformed reply"):
        loop.run_round(1)


@pytest.mark.parametrize(
    "case, tamper",
    [
        ("nan-loss", edit(lambda m: _set(m, "control", {**m["control"], "loss_sum": float("nan")}))),
        ("shapes", edit(lambda m: _set(m, "control", {**m["control"], "shapes": [[0, -1]]}))),
        ("tokens", edit(lambda m: _set(m, "control", {**m["control"], "tokens": 2.5}))),
        ("bit-flip", flip_bit),
    ],
)
def test_fedlora_drops_a_trainer_with_malformed_stats(corpus, case, tamper):
    exp = setup(config(corpus, method="fedlora", **{"policy.name": "fixed"}))
    loop = exp.method.make_loop(exp, GarblingRuntime(local_runtime(exp).roles, "client-2", "train", tamper))
    result = loop.run_round(1)
    assert result.clients == [0, 1] and [d["client"] for d in result.dropped] == [2]
    assert "malformed reply" in result.dropped[0]["error"] and math.isfinite(result.train_loss)


def test_checks_name_what_is_wrong():
    message = {
        "hidden": torch.zeros(2, 4, 8),
        "labels": torch.full((2, 4), -100),
        "attention_mask": torch.ones(2, 4),
    }
    with pytest.raises(ReplyError, match="'attention_mask' has dtype torch.float32"):
        checks.smashed(reencode(message), 8, 50)
    message["attention_mask"] = torch.ones(2, 4, dtype=torch.long)
    assert checks.smashed(reencode(message), 8, 50)["labels"].dtype == torch.long
    with pytest.raises(ReplyError, match=r"'hidden' has shape \[2, 4, 8\], expected \['\*', '\*', 16\]"):
        checks.smashed(reencode(message), 16, 50)
    message["labels"][0, 0] = 50
    with pytest.raises(ReplyError, match="token ids outside 0..49"):
        checks.smashed(reencode(message), 8, 50)
    with pytest.raises(ReplyError, match="'samples' is True"):
        checks.number({"samples": True}, "samples", integer=True)


@pytest.mark.parametrize(
    "method, symptom",
    [
        # split, per-client server copies: the clients' activations turn NaN first; each is
        # dropped, and with none left the run stops as diverged, naming every client and why
        (
            "splitft:per-client",
            r"every client failed \(client 0: CodecError: tensor holds NaN or infinite values; refusing",
        ),
        # split, one shared server set: the server's own set diverges on a client's step; that is
        # the server's failure, not the client's, so the run stops naming the step's client
        ("splitft:shared", r"client \d: the gradient norm is nan at step \d+: training diverged"),
        ("fedlora", r"no client finished \(client 0: DivergenceError: the gradient norm is nan"),
        ("centralized", r"the gradient norm is nan at step \d+: training diverged \(train.lr = 1e\+30"),
    ],
)
def test_divergence_stops_the_run_naming_round_and_client(corpus, tmp_path, capsys, method, symptom):
    """An absurd (finite) learning rate blows the adapters up: the run stops with the round
    (and clients) named; FAILED says why and the last checkpoint is the last good round."""
    out = tmp_path / "run"
    argv = ["train", "--model.name", "tiny:llama", "--data.train", str(corpus), "--threads", "1"]
    argv += ["--federation.num_clients", "2", "--federation.rounds", "6", "--train.lr", "1e30"]
    method, _, server_adapters = method.partition(":")
    argv += ["--train.max_grad_norm", "0", "--eval.max_samples", "4", "--method", method, "--out", str(out)]
    argv += ["--split.server_adapters", server_adapters] if server_adapters else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: round \d+: ", err) and re.search(symptom, err), err
    failed_round = int(err.removeprefix("error: round ").split(":")[0])
    assert "DivergenceError" in (out / "FAILED").read_text()
    rows = metric_rows(out) if (out / "metrics.jsonl").exists() else []
    assert [r["round"] for r in rows] == list(range(1, failed_round))
    if failed_round > 1:
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        assert state["round"] == failed_round - 1


def test_a_write_fault_is_one_line_and_the_run_resumes_once_it_is_gone(corpus, tmp_path, monkeypatch, capsys):
    argv = ["train", "--model.name", "tiny:llama", "--model.keep_layers", "2", "--data.train", str(corpus)]
    argv += [
        "--federation.num_clients",
        "2",
        "--federation.rounds",
        "3",
        "--eval.max_samples",
        "4",
        "--threads",
        "1",
    ]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    real = RunDirectory.append_metrics

    def disk_full_at_round_2(self, row):
        if row["round"] == 2:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(row)[:20])  # what fit on the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_path))
        real(self, row)

    monkeypatch.setattr(RunDirectory, "append_metrics", disk_full_at_round_2)
    run = tmp_path / "faulty"
    assert main([*argv, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: No space left on device: {run / 'metrics.jsonl'}"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["round"] == 1
    monkeypatch.setattr(RunDirectory, "append_metrics", real)  # the disk has room again
    assert main(["train", "--resume", str(run)]) == 0
    assert not (run / "FAILED").exists()
    assert metric_rows(run) == metric_rows(tmp_path / "straight")


def test_atomic_writes_get_normal_permissions_and_leave_no_temporaries(tmp_path):
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", "{}")
        run = RunDirectory(tmp_path)
        (tmp_path / ".checkpoint.tmpdead").mkdir()  # a write killed before its swap
        (tmp_path / ".a.json.tmpdead").write_text("half")
        run.write_folder("checkpoint", lambda p: (p / "x").write_text("1"))
        write_atomic(tmp_path / "a.json", "{}")
        with pytest.raises(RuntimeError):
            run.write_folder("adapter", lambda p: (_ for _ in ()).throw(RuntimeError("fill failed")))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "checkpoint"]


def test_divergence_error_is_raised_before_the_step(split_exp):
    from splitft.algorithms.optim import retarget

    layout = split_exp.layout
    names = layout.names([0])
    params, optimizer = retarget({}, None, names, layout.shapes, torch.device("cpu"), split_exp.cfg.train, 10)
    before = {n: t.detach().clone() for n, t in params.items()}
    for t in params.values():
        t.grad = torch.full_like(t, float("inf"))
    with pytest.raises(DivergenceError, match="gradient norm is (nan|inf) at step 3"):
        optimizer.step(3)
    assert all(torch.equal(before[n], params[n]) for n in names)


def test_a_folder_that_refuses_failed_still_reports_the_original_error(tmp_path, monkeypatch):
    """A run folder made read-only mid-run: FAILED cannot be written, and the error the user
    sees is the one that stopped the run, not the one of writing FAILED."""
    from splitft.recipes import train as recipe

    def refuse(path, text):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("splitft.report.rundir.write_atomic", refuse)
    with (
        pytest.raises(RuntimeError, match="the original fault"),
        recipe._failure_marker(RunDirectory(tmp_path)),
    ):
        raise RuntimeError("the original fault")
    assert not (tmp_path / "FAILED").exists()
