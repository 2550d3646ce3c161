"""The round loop: every byte that crosses the boundary is counted, failures drop a client."""

from __future__ import annotations

import pytest
import torch

from splitft.algorithms.policy import FixedPolicy
from splitft.config import Config
from splitft.recipes.experiment import local_runtime, setup
from splitft.runtime import InProcessRuntime
from splitft.wire.codec import Entry, bytes_by_kind, decode_message, encode_message, tensor_header_size
from splitft.wire.messages import control


class RecordingRuntime(InProcessRuntime):
    """Counts the bytes of every payload actually passed, and can make one call fail."""

    def __init__(self, roles, fail=None):
        super().__init__(roles)
        self.sent = {"up": 0, "down": 0}
        self.fail = fail  # (target, method) that raises

    def call(self, target, method, payload):
        self.sent["down"] += len(payload)
        if (target, method) == self.fail:
            self.roles[target].forward_step = _raise
        result = super().call(target, method, payload)
        if isinstance(result, bytes):
            self.sent["up"] += len(result)
        return result


def _raise(payload):
    raise ConnectionError("client went away")


@pytest.fixture()
def experiment(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"sample {i} " + "word " * (3 + i % 17) for i in range(60)) + "\n")
    cfg = Config().with_overrides(
        {
            "model.name": "tiny:gpt2",
            "data.train": str(path),
            "federation.num_clients": 3,
            "federation.rounds": 2,
            "federation.local_steps": 2,
            "split.cuts": "1,2,3",
        }
    )
    exp = setup(cfg)
    return exp, local_runtime(exp)


def make_loop(exp, runtime, policy=None):
    loop = exp.method.make_loop(exp, runtime)
    loop.policy = policy or FixedPolicy(exp.cuts)
    return loop


def test_bytes_counted_equal_bytes_sent(experiment):
    experiment, local = experiment
    runtime = RecordingRuntime(local.roles)
    loop = make_loop(experiment, runtime)
    for r in (1, 2):
        loop.run_round(r)
    totals = experiment.ledger.totals()
    assert totals["bytes_up"] == runtime.sent["up"]
    assert totals["bytes_down"] == runtime.sent["down"]
    assert sum(totals["bytes_by_kind"].values()) == runtime.sent["up"] + runtime.sent["down"]


@pytest.mark.parametrize("dtype, itemsize", [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_activation_bytes_are_btd_itemsize_plus_header(experiment, dtype, itemsize):
    experiment, local = experiment
    experiment.cfg.codec.activation_dtype = dtype
    client = local.roles["client-1"]
    cut = 2
    start = experiment.initial
    client.begin_round(encode_message([Entry("control", "control", {"cut": cut, "round": 1})]).data)
    assert set(client.params) == set(experiment.layout.names(range(cut)))
    assert all(torch.equal(client.params[n], torch.zeros_like(start[n])) for n in client.params)
    payload = client.forward_step(control(step=0))
    hidden = decode_message(payload)["hidden"]
    b, t, d = hidden.shape
    assert d == experiment.model.embed_dim
    assert bytes_by_kind(payload)["activations"] == b * t * d * itemsize + tensor_header_size(3)


def test_a_failing_client_is_dropped_and_the_round_completes(experiment):
    experiment, local = experiment
    runtime = RecordingRuntime(local.roles, fail=("client-1", "forward_step"))
    loop = make_loop(experiment, runtime)
    first = loop.run_round(1)
    assert first.clients == [0, 2]
    assert first.dropped and first.dropped[0]["client"] == 1 and "went away" in first.dropped[0]["error"]
    second = loop.run_round(2)
    assert second.clients == [0, 2] and not second.dropped
    assert loop.sample_clients(3) == [0, 2]


def test_clients_per_round_samples_deterministically(experiment):
    experiment, local = experiment
    experiment.cfg.federation.clients_per_round = 2
    loop = make_loop(experiment, local)
    picks = [loop.sample_clients(r) for r in range(1, 6)]
    assert all(len(p) == 2 for p in picks)
    assert picks == [loop.sample_clients(r) for r in range(1, 6)]
    assert len({tuple(p) for p in picks}) > 1


def test_round_changes_only_adapters_and_merges_into_global(experiment):
    experiment, local = experiment
    loop = make_loop(experiment, local)
    before = {n: t.clone() for n, t in loop.global_adapters.items()}
    frozen = {n: p.clone() for n, p in experiment.model.model.named_parameters() if "lora_" not in n}
    loop.run_round(1)
    after = loop.global_adapters
    assert any(not torch.equal(before[n], after[n]) for n in before)
    for n, p in experiment.model.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
