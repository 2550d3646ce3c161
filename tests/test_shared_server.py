"""One shared server-side adapter set (SplitFed V2, ``split.server_adapters = "shared"``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from splitft.algorithms.optim import AdapterOptimizer
from splitft.cli import main
from splitft.config import Config
from splitft.model.lora import component_mask
from splitft.model.split import token_stats
from splitft.recipes.experiment import local_runtime, setup
from splitft.roles.shared_server import SharedMainServer
from splitft.runtime import InProcessRuntime
from splitft.sim.clock import ClientWork, simulate_round
from splitft.sim.devices import device_preset, server_profile
from splitft.wire.messages import read, read_adapters


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"speech {i} " + "my good lord " * (1 + i % 7) for i in range(90)) + "\n")
    return path


def args(corpus, out, *extra):
    return [
        "train", "--model.name", "tiny:llama", "--data.train", str(corpus), "--federation.rounds", "3",
        "--eval.every", "1", "--eval.max_samples", "8", "--train.lr", "0.01", "--out", str(out), *extra,
    ]  # fmt: skip


def rows(run):
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in out:
        row.pop("wall_s")
    return out


def test_with_one_client_shared_and_per_client_modes_are_identical(corpus, tmp_path):
    one = ["--federation.num_clients", "1", "--split.cuts", "2"]
    assert main(args(corpus, tmp_path / "per", *one)) == 0
    assert main(args(corpus, tmp_path / "shared", *one, "--split.server_adapters", "shared")) == 0
    assert rows(tmp_path / "per") == rows(tmp_path / "shared")


class Recording(InProcessRuntime):
    def __init__(self, roles):
        super().__init__(roles)
        self.replies: list[tuple[str, str, bytes]] = []

    def call(self, target, method, payload):
        result = super().call(target, method, payload)
        self.replies.append((target, method, result))
        return result


def experiment(corpus, **overrides):
    base = {"model.name": "tiny:llama", "data.train": str(corpus), "federation.num_clients": 3,
            "federation.rounds": 2, "train.lr": 0.01, "split.server_adapters": "shared"}  # fmt: skip
    exp = setup(Config().with_overrides({**base, **overrides}))
    runtime = Recording(local_runtime(exp).roles)
    return exp, exp.method.make_loop(exp, runtime), runtime


def test_with_one_cut_for_all_the_server_blocks_train_sequentially_in_client_order(corpus):
    """Every client at cut 2 (full rank everywhere): the merged server blocks equal AdamW steps on
    the three clients' smashed batches, one after the other, from the same start."""
    exp, loop, runtime = experiment(corpus, **{"split.cuts": "2", "lora.r_cut": 16})
    start = {n: t.clone() for n, t in loop.global_adapters.items()}
    loop.run_round(1)
    assert isinstance(exp.server, SharedMainServer)
    names = exp.layout.names(range(2, exp.model.num_blocks))
    params = {n: start[n].clone().requires_grad_(True) for n in names}
    optimizer = AdapterOptimizer(params, exp.cfg.train, exp.cfg.federation.rounds)
    smashed = [payload for target, method, payload in runtime.replies if method == "forward_step"]
    assert [t for t, m, _ in runtime.replies if m == "forward_step"] == ["client-0", "client-1", "client-2"]
    for payload in smashed:
        message = read(payload)
        logits = exp.model.server_forward(
            2, message["hidden"].float(), message["attention_mask"].long(), params
        )
        nll, tokens, _ = token_stats(logits, message["labels"].long())
        (nll / tokens).backward()
        optimizer.step(0)
    for n in names:
        assert torch.allclose(loop.global_adapters[n], params[n].detach(), atol=1e-6), n


def test_a_block_server_side_for_some_and_client_side_for_others_merges_both(corpus):
    """Cuts 1 and 3: block 2 is the shared set's for client 0 and client 1's own. Its new value is
    start + (w0 * shared change + w1 * client 1's change) / (w0 + w1)."""
    exp, loop, runtime = experiment(
        corpus, **{"federation.num_clients": 2, "split.cuts": "1,3", "lora.r_cut": 16}
    )
    start = {n: t.clone() for n, t in loop.global_adapters.items()}
    loop.run_round(1)
    uploads = {t: read(p) for t, m, p in runtime.replies if m == "end_round"}
    w0, w1 = (float(uploads[f"client-{i}"]["control"]["samples"]) for i in (0, 1))
    client1 = read_adapters(uploads["client-1"], exp.layout)
    differ = []
    for n in exp.layout.names([2]):
        shared_change = exp.server.shared[n].detach() - start[n]
        expected = start[n] + (w0 * shared_change + w1 * (client1[n] - start[n])) / (w0 + w1)
        assert torch.allclose(loop.global_adapters[n], expected, atol=1e-6), n
        differ.append(not torch.allclose(shared_change, client1[n] - start[n]))
    assert any(differ)  # two different changes were merged (B's; A has none in a first step)


def test_the_server_cut_block_trains_at_the_cut_rank_only(corpus):
    exp, loop, _ = experiment(corpus, **{"split.cuts": "2", "lora.r_cut": 4})
    loop.run_round(1)  # canonicalises blocks 1 and 2 first
    before = {n: t.clone() for n, t in loop.global_adapters.items()}
    loop.run_round(2)
    for n in exp.layout.names([2]):
        keep = component_mask(n, before[n].shape, 4).bool().expand_as(before[n])
        assert torch.equal(before[n][~keep], loop.global_adapters[n][~keep]), n
        assert not torch.equal(before[n][keep], loop.global_adapters[n][keep]), n


def test_shared_mode_resumes_exactly(corpus, tmp_path):
    shared = ["--federation.num_clients", "3", "--split.cuts", "1,2,3", "--split.server_adapters", "shared"]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(args(corpus, straight, *shared, "--federation.rounds", "4")) == 0
    assert main(args(corpus, halves, *shared, "--federation.rounds", "2")) == 0
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    assert rows(straight) == rows(halves)


def test_the_clock_serves_a_shared_set_in_client_order():
    """Client 1 is fast and arrives first; FIFO serves it first, in-order serving makes it wait."""
    server = replace(server_profile("busy"), flops=2e9)  # slow enough that jobs queue
    slow, fast = device_preset("hetero", 5)[0], device_preset("hetero", 5)[4]
    works = [ClientWork(slow, 1e9, 1e9, 4e9), ClientWork(fast, 1e9, 1e9, 4e9)]
    fifo, ordered = simulate_round(server, works), simulate_round(server, works, in_order=True)
    assert fifo.breakdown[1].wait_s == 0.0 and fifo.breakdown[0].wait_s > 0
    assert ordered.breakdown[0].wait_s == 0.0 and ordered.breakdown[1].wait_s > 0
    assert ordered.server_busy_s == pytest.approx(fifo.server_busy_s)
