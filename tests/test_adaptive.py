"""Re-allocation in the round loop: canonical cut blocks, optimizer resets, svd merge, virtual time."""

from __future__ import annotations

import pytest
import torch

from splitft.algorithms.lowrank import LORA_ROW_NORM
from splitft.algorithms.policy import Decision, FixedPolicy
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.model.loading import load_model
from splitft.model.lora import lora_pairs
from splitft.recipes.experiment import local_runtime, setup
from splitft.sim import devices
from splitft.sim.costs import ModelShape, client_lora_params
from splitft.sim.memory import client_memory_bytes


@pytest.fixture()
def lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"sample {i} " + "word " * (3 + i % 17) for i in range(80)) + "\n")
    return path


def experiment(lines, **overrides):
    base = {
        "model.name": "tiny:llama",
        "data.train": str(lines),
        "federation.num_clients": 3,
        "federation.rounds": 4,
        "lora.r_cut": 4,
        "train.lr": 0.01,
        "split.cuts": "1,2,3",
    }
    return setup(Config().with_overrides({**base, **overrides}))


def make_loop(exp):
    """The method's loop over in-process clients."""
    return exp.method.make_loop(exp, local_runtime(exp))


def client(loop, i):
    return loop.runtime.roles[f"client-{i}"]


class ScriptedPolicy:
    """Cuts given per round, to drive re-allocation deterministically."""

    name = "scripted"
    uses_accuracy = False

    def __init__(self, plan):
        self.plan = plan

    def allocate(self, ctx):
        return [Decision(c, "scripted") for c in self.plan[ctx.round_number]]


def updates(loop, names):
    g = loop.global_adapters
    return {a: g[b] @ g[a] for a, b in lora_pairs(names)}


def test_new_cut_blocks_are_canonical_and_the_model_is_unchanged(lines):
    exp = experiment(lines)
    loop = make_loop(exp)
    loop.policy = ScriptedPolicy({1: [1, 1, 1], 2: [2, 2, 2]})
    loop.run_round(1)
    names = exp.layout.names([1, 2])  # blocks that become cut blocks in round 2
    before = updates(loop, names)
    loop.cfg.federation.local_steps = 0  # only the re-allocation happens in round 2
    result = loop.run_round(2)
    assert result.canonicalized == [2]  # block 1 already was a (server-side) cut block
    after = updates(loop, names)
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-6)
    g = loop.global_adapters
    for a_name, _ in lora_pairs(exp.layout.names([2])):
        norms = g[a_name].norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, LORA_ROW_NORM), atol=1e-5)


def test_optimizer_state_is_reset_only_for_canonicalized_tensors(lines):
    exp = experiment(lines, **{"split.cuts": "3"})
    loop = make_loop(exp)
    loop.policy = ScriptedPolicy({1: [3, 3, 3], 2: [2, 3, 3]})
    loop.run_round(1)
    one = client(loop, 1)
    state = one.optimizer.optimizer.state
    keep = exp.layout.names([0])[0]  # block 0 stays client-side and is never a cut block
    touched = exp.layout.names([1])[0]  # block 1 becomes client 0's cut block in round 2
    assert one.params[keep] in state and one.params[touched] in state
    loop.run_round(2)
    # block 1 was canonicalised at the start of round 2: its state restarted (one step since)
    assert state[one.params[touched]]["step"] == 1
    assert state[one.params[keep]]["step"] == 2


def test_rank_cut_components_of_cut_blocks_are_untouched_when_only_rank_cut_trains(lines):
    """Every client at cut 2: blocks 1 and 2 train at rank 4 only; components 4.. never change."""
    exp = experiment(lines, **{"split.cuts": "2"})
    loop = make_loop(exp)
    loop.run_round(1)  # canonicalises blocks 1 and 2 first
    g0 = {n: t.clone() for n, t in loop.global_adapters.items()}
    loop.run_round(2)
    g1 = loop.global_adapters
    for name in exp.layout.names([1, 2]):
        rows = slice(4, None)
        old, new = (
            (g0[name][rows], g1[name][rows]) if ".lora_A." in name else (g0[name][:, rows], g1[name][:, rows])
        )
        assert torch.equal(old, new), name
    assert any(not torch.equal(g0[n], g1[n]) for n in exp.layout.names([1, 2]))


def test_svd_mode_stores_canonical_pairs_and_reports_truncation(lines):
    exp = experiment(lines, aggregation="svd")
    loop = make_loop(exp)
    result = loop.run_round(1)
    assert result.truncation_error >= 0
    g = loop.global_adapters
    for a_name, _ in lora_pairs(g):
        norms = g[a_name].norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, LORA_ROW_NORM), atol=1e-5)
    state = client(loop, 0).optimizer.optimizer.state
    loop.run_round(2)
    assert all(s["step"] == 1 for s in state.values())  # svd: state restarts every round


def test_virtual_time_is_deterministic_and_policy_records_reasons(lines):
    runs = []
    for _ in range(2):
        exp = experiment(
            lines, **{"policy.name": "splitft", "devices.preset": "hetero", "devices.server": "busy"}
        )
        loop = make_loop(exp)
        runs.append([loop.run_round(r) for r in (1, 2, 3)])
    first, second = runs
    assert [r.virtual_s for r in first] == [r.virtual_s for r in second]
    assert [r.cuts for r in first] == [r.cuts for r in second]
    assert first[-1].virtual_s > first[0].virtual_s > 0
    assert all(d.reason for r in first for d in r.decisions)
    assert first[1].accuracy and set(first[1].weights) == set(first[1].accuracy)
    assert 0 <= first[0].timing.server_busy_share <= 1


def test_a_client_that_cannot_hold_one_block_is_a_config_error(lines, monkeypatch):
    tiny = devices.replace(devices.TIERS["phone-low"], memory_bytes=1e6)
    monkeypatch.setitem(devices.TIERS, "phone-low", tiny)
    with pytest.raises(ConfigError, match="client 0 .*one block"):
        experiment(lines, **{"devices.clients": "phone-low"})


def test_a_fixed_cut_beyond_memory_is_a_config_error(lines, monkeypatch):
    shape = ModelShape.from_hf_config(load_model("tiny:llama", vocab_size=49152).config)
    one, two = (client_memory_bytes(shape, k, 4, 64, client_lora_params(shape, k, 16, 4)) for k in (1, 2))
    small = devices.replace(devices.TIERS["phone-low"], memory_bytes=(one + two) / 2)  # holds one block
    monkeypatch.setitem(devices.TIERS, "phone-low", small)
    with pytest.raises(ConfigError, match="holds at most 1 blocks"):
        experiment(lines, **{"devices.clients": "phone-low", "split.cuts": "3"})


def test_fixed_policy_is_the_default_and_keeps_cuts(lines):
    exp = experiment(lines)
    loop = make_loop(exp)
    assert isinstance(loop.policy, FixedPolicy)
    assert [loop.run_round(r).cuts for r in (1, 2)] == [[1, 2, 3], [1, 2, 3]]


def test_a_client_not_sampled_gets_its_reset_at_its_next_round(lines):
    exp = experiment(lines, **{"split.cuts": "3", "federation.clients_per_round": 1})
    loop = make_loop(exp)
    loop.policy = ScriptedPolicy({r: [3, 3, 3] if r == 1 else [2, 3, 3] for r in range(1, 9)})
    loop.sample_clients = lambda r: [1] if r < 3 else [2]  # client 2 is away in rounds 1-2
    loop.run_round(1)
    loop.run_round(2)  # block 1 becomes a cut block (client 0's) and is canonicalised
    assert set(exp.layout.names([1])) <= loop.pending_reset[2]
    assert 1 not in loop.pending_reset  # client 1 took part and got its reset
    loop.run_round(3)
    assert 2 not in loop.pending_reset


def test_a_tensor_whose_rank_drops_loses_its_moments(lines):
    """Client 0 moves 3 -> 2: block 1 was full rank for it and is now its rank-r_cut cut block."""
    exp = experiment(lines, **{"split.cuts": "3"})
    loop = make_loop(exp)
    loop.policy = ScriptedPolicy({1: [3, 3, 3], 2: [2, 3, 3]})
    loop.run_round(1)
    zero = client(loop, 0)
    name = exp.layout.names([1])[0]
    tensor = zero.params[name]
    assert tensor in zero.optimizer.optimizer.state
    loop.cfg.federation.local_steps = 0
    loop.run_round(2)
    assert tensor not in zero.optimizer.optimizer.state


def test_every_client_failing_stops_the_run(lines):
    from splitft.errors import SplitFTError

    loop = make_loop(experiment(lines))
    for role in loop.runtime.roles.values():
        role.forward_step = lambda payload: (_ for _ in ()).throw(RuntimeError("device lost"))
    with pytest.raises(SplitFTError, match="every client failed.*device lost"):
        loop.run_round(1)
