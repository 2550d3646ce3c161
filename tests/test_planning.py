"""Planning from what was observed (docs/architecture.md, D10-D14): the observer, the free
training signal, the cut+wire rule, the shared-mode rule, and rounds with clients sitting out."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from splitft.algorithms.policy import AllocationContext, Decision, SplitFTPolicy
from splitft.algorithms.signals import TrainSignal
from splitft.algorithms.wire_choice import choose_wire
from splitft.cli import main
from splitft.config import Config
from splitft.recipes.experiment import local_runtime, setup
from splitft.sim.clock import ClientWork, RoundTiming, simulate_round
from splitft.sim.conditions import Snapshot
from splitft.sim.devices import TIERS, server_profile
from splitft.sim.observer import RateObserver


def works():
    return {
        0: ClientWork(
            TIERS["phone-low"], 2e9, 2e9, 9e9, steps=2, up_bytes=3e5, down_bytes=2e5, adapter_up_bytes=1e5
        ),
        1: ClientWork(
            TIERS["laptop"], 6e9, 6e9, 3e9, steps=2, up_bytes=3e5, down_bytes=2e5, adapter_down_bytes=1e5
        ),
    }


def timed(snapshot):
    server = server_profile("busy")
    conditioned = {i: replace(w, device=snapshot.device(i, w.device)) for i, w in works().items()}
    return simulate_round(snapshot.server_device(server), conditioned), server


def test_static_observations_leave_the_profiles_bit_for_bit():
    observer = RateObserver(0.5)
    for _ in range(3):
        timing, server = timed(Snapshot.nominal(2))
        observer.observe(works(), timing, server)
    assert observer.device(0, TIERS["phone-low"]) is TIERS["phone-low"]
    assert observer.server_device(server) is server
    assert all(v == 1.0 for rates in observer.clients.values() for v in rates.values())


def test_the_observer_learns_each_leg_and_smooths_over_rounds():
    observer = RateObserver(0.5)
    slow = Snapshot((0.25, 1.0), (1.0, 0.5), (0.8, 1.0), (True, True), 0.2)
    observer.observe(works(), *timed(slow))
    assert observer.clients[0] == {"compute": 0.25, "up": 1.0, "down": 0.8}  # the first replaces the prior
    assert observer.clients[1] == {"compute": 1.0, "up": 0.5, "down": 1.0}
    assert observer.server == 0.2
    observer.observe(works(), *timed(Snapshot.nominal(2)))
    assert observer.clients[0]["compute"] == 0.625 and observer.server == 0.6  # halfway back
    assert observer.device(0, TIERS["phone-low"]).flops == TIERS["phone-low"].flops * 0.625
    again = RateObserver(0.5)
    again.load_state_dict(json.loads(json.dumps(observer.state_dict())))
    assert again.state_dict() == observer.state_dict()


def test_the_training_signal_is_a_smoothed_accuracy_per_client():
    signal = TrainSignal(0.5)
    assert signal.observe({0: (10.0, 100, 40), 1: (5.0, 50, 10), 2: (0.0, 0, 0)}) == {0: 0.4, 1: 0.2}
    signal.observe({0: (10.0, 100, 60)})  # client 1 sat out: it keeps its value
    assert signal.accuracy == {0: 0.5, 1: 0.2} and signal.loss == {0: 0.1, 1: 0.1}


def fake_predict(per_client_bytes_time):
    """Client i's time is compute 1 s plus its link time, halved per step down the format list."""
    scale = {"fp32": 1.0, "int8": 0.5, "int4": 0.25}

    def predict(cuts, wire=None):
        wire = wire or ["fp32"] * len(cuts)
        times = {
            i: 1.0 + t * scale[w or "fp32"]
            for i, (t, w) in enumerate(zip(per_client_bytes_time, wire, strict=True))
        }
        return RoundTiming(max(times.values()), times, 0.0, 0.0)

    return predict


def test_only_the_client_the_round_waits_for_is_compressed():
    formats = ["fp32", "int8", "int4"]
    # client 0's uplink dominates: it moves down the list; the others keep fp32
    assert choose_wire(fake_predict([8.0, 1.0, 0.5]), [1, 1, 1], [0, 1, 2], formats) == [
        "int4",
        "fp32",
        "fp32",
    ]
    # two slow links take turns being last; the third client, never last, keeps fp32
    assert choose_wire(fake_predict([2.0, 1.2, 0.0]), [1, 1, 1], [0, 1, 2], formats) == [
        "int4",
        "int4",
        "fp32",
    ]
    # nobody's link matters (under 1 % of the round): nothing is compressed
    assert choose_wire(fake_predict([0.001, 0.001]), [1, 1], [0, 1], formats) == ["fp32", "fp32"]
    # a client not taking part gets no format
    assert choose_wire(fake_predict([8.0, 1.0]), [1, 1], [1], formats)[0] is None


def test_shared_mode_takes_the_smallest_cut_the_time_allows():
    def predict(cuts, wire=None):  # client 0 is free at cuts 1..3, slower beyond; client 1 best at 4
        times = {0: 1.0 + max(0, cuts[0] - 3), 1: 1.0 + abs(cuts[1] - 4) * 0.1}
        return RoundTiming(max(times.values()), times, 0.0, 0.0)

    policy = SplitFTPolicy(gamma=1.0, tolerance=0.01, slack=0.25)
    ctx = AllocationContext(3, [3, 4], [6, 6], predict, {0: 0.9, 1: 0.1})
    _, ranges, _ = policy.ranges(ctx)
    per_client = [d.cut for d in policy.allocate(ctx)]
    assert ranges == [(1, 3), (2, 6)]
    assert per_client == [3, 3]  # the accuracy rule: client 0 up (its range ends at 3), client 1 down
    shared = [d.cut for d in policy.allocate(replace(ctx, shared=True))]
    assert shared == [low for low, _ in ranges] == [1, 2]


def trace_experiment(tmp_path, trace, **overrides):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(f"sample {i} " + "word " * (3 + i % 11) for i in range(60)) + "\n")
    path = tmp_path / "trace.csv"
    path.write_text("time_s,device,field,value\n" + trace)
    base = {
        "model.name": "tiny:llama",
        "data.train": str(lines),
        "federation.num_clients": 3,
        "devices.preset": "hetero",
        "devices.server": "busy",
        "devices.conditions": str(path),
        "policy.name": "resource",
    }
    exp = setup(Config().with_overrides({**base, **overrides}))
    return exp, exp.method.make_loop(exp, local_runtime(exp))


def test_a_client_that_is_away_sits_out_and_comes_back(tmp_path):
    exp, loop = trace_experiment(tmp_path, "0,1,available,0\n1e-9,1,available,1\n")
    first = loop.run_round(1)  # at t = 0 client 1 is away
    assert first.sat_out == [1] and first.clients == [0, 2]
    assert exp.ledger.client_round(1, 1)["down"]["total"] == 0  # nothing was sent to it
    assert first.timing.per_client_s.keys() == {0, 2}
    second = loop.run_round(2)
    assert second.sat_out == [] and second.clients == [0, 1, 2]
    adapters = exp.ledger.client_round(2, 1)["down"]["adapters"]
    assert adapters == exp.ledger.client_round(1, 0)["down"]["adapters"]  # all of its blocks, whole


def test_the_policy_plans_from_observations_never_from_the_truth(tmp_path):
    # Client 0's compute drops to a tenth from the start; only a round can show it.
    exp, loop = trace_experiment(tmp_path, "0,0,compute,0.1\n")

    class Spy:
        name, uses_accuracy = "spy", False

        def __init__(self):
            self.seen = []

        def allocate(self, ctx):
            self.seen.append(ctx.predict([1, 1, 1]).per_client_s[0])
            return [Decision(1, "spy")] * 3

    loop.policy = Spy()
    loop.run_round(1)
    loop.run_round(2)
    profile_time = exp.timer.predict([1, 1, 1]).per_client_s[0]
    assert loop.policy.seen[0] == profile_time  # round 1: the prior, though the truth differs
    assert loop.planner.observer.clients[0]["compute"] == pytest.approx(0.1)
    assert loop.policy.seen[1] > profile_time  # round 2: what round 1 showed


def test_heldout_signal_runs_the_check_every_k_rounds_and_train_signal_never(tmp_path):
    calls = {}
    for signal in ("train", "heldout"):
        exp, loop = trace_experiment(
            tmp_path, "", **{"policy.name": "splitft", "policy.signal": signal, "policy.heldout_every": 2}
        )
        results = [loop.run_round(r) for r in (1, 2, 3)]
        calls[signal] = [exp.ledger.round_totals(r)["bytes_by_kind"]["activations"] for r in (1, 2, 3)]
        if signal == "train":
            assert results[0].train_acc and results[1].accuracy.keys() == results[1].train_acc.keys()
        else:
            assert not results[0].accuracy and results[1].accuracy == results[2].accuracy
    train, heldout = calls["train"], calls["heldout"]
    assert heldout[1] > train[1] and heldout[0] == train[0] and heldout[2] == train[2]


def test_two_plus_two_rounds_equal_four_under_changing_conditions(tmp_path):
    def run(out, rounds, *extra):
        lines = tmp_path / "lines.txt"
        lines.write_text("\n".join(f"line {i} " + "thou art fair " * (1 + i % 9) for i in range(90)) + "\n")
        common = ["--model.name", "tiny:llama", "--data.train", str(lines), "--federation.num_clients", "3",
                  "--eval.every", "2", "--eval.max_samples", "8", "--policy.name", "splitft",
                  "--devices.preset", "hetero", "--devices.server", "busy", "--devices.conditions", "changing",
                  "--devices.change_every_s", "0.02", "--policy.wire_formats", "fp32,int8,int4"]  # fmt: skip
        return main(["train", *common, "--federation.rounds", str(rounds), *extra, "--out", str(out)])

    assert run(tmp_path / "straight", 4) == 0 and run(tmp_path / "halves", 2) == 0
    assert main(["train", "--resume", str(tmp_path / "halves"), "--federation.rounds", "4"]) == 0
    rows = [
        [
            {k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (tmp_path / d / "metrics.jsonl").open()
        ]
        for d in ("straight", "halves")
    ]
    assert rows[0] == rows[1]
    assert len({json.dumps(r["conditions"]) for r in rows[0]}) > 1  # the conditions did change
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["prediction_error"]["rounds"] == 4
