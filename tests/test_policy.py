"""Allocation policies: the accuracy rule's integer mapping, resource search, splitft ranges."""

from __future__ import annotations

import pytest

from splitft.algorithms.policy import (
    AccuracyPolicy,
    AllocationContext,
    FixedPolicy,
    ResourcePolicy,
    SplitFTPolicy,
    accuracy_step,
    accuracy_weights,
    best_resource_cuts,
)
from splitft.model.loading import smollm2_config
from splitft.sim.clock import RoundTiming, predict_round
from splitft.sim.costs import ModelShape
from splitft.sim.devices import device_preset, server_profile
from splitft.sim.memory import check_fits


def fake_timing(per_client: dict[int, float]) -> RoundTiming:
    return RoundTiming(max(per_client.values()), per_client, 0.0, 0.0, {})


def context(previous, max_cut, predict=None, accuracy=None):
    predict = predict or (lambda cuts: fake_timing({i: 1.0 for i in range(len(cuts))}))
    return AllocationContext(2, list(previous), list(max_cut), predict, accuracy or {})


def test_accuracy_weights_follow_the_paper():
    w = accuracy_weights({0: 0.5, 1: 0.3, 2: 0.4}, gamma=2.0)
    assert w == pytest.approx({0: 1.2, 1: 0.8, 2: 1.0})


@pytest.mark.parametrize(
    "weight, expected",  # w_i, blocks added
    [(1.2, 1), (1.011, 1), (1.01, 0), (1.0, 0), (0.995, 0), (0.99, 0), (0.98, -1), (0.5, -1)],
)
def test_accuracy_step_is_one_block_beyond_the_tolerance(weight, expected):
    assert accuracy_step(weight, tolerance=0.01) == expected


def test_accuracy_policy_moves_one_block_within_memory_bounds():
    policy = AccuracyPolicy(gamma=1.0, tolerance=0.01)
    ctx = context([3, 1, 5, 4], max_cut=[6, 6, 5, 6], accuracy={0: 0.6, 1: 0.2, 2: 0.6, 3: 0.4})
    cuts = [d.cut for d in policy.allocate(ctx)]
    # mean 0.45: clients 0 and 2 up (2 is at its memory bound), 1 down (already at 1), 3 down
    assert cuts == [4, 1, 5, 3]
    assert all(d.weight is not None for d in policy.allocate(ctx))


def test_accuracy_policy_keeps_cuts_before_any_accuracy():
    cuts = [d.cut for d in AccuracyPolicy(1.0, 0.01).allocate(context([3, 9], max_cut=[6, 6]))]
    assert cuts == [3, 6]  # clamped into memory


def test_fixed_policy_returns_its_cuts():
    assert [d.cut for d in FixedPolicy([2, 2]).allocate(context([1, 1], [5, 5]))] == [2, 2]


def test_resource_search_finds_the_optimum_of_a_separable_cost():
    # Client i's time is |cut - best_i| + 1: the optimum is best_i, wherever that lies.
    best = [2, 5, 1]

    def predict(cuts):
        return fake_timing({i: abs(c - best[i]) + 1.0 for i, c in enumerate(cuts)})

    cuts, timing = best_resource_cuts(context([1, 1, 1], max_cut=[6, 6, 6], predict=predict))
    assert cuts == best and timing.makespan_s == 1.0
    decisions = ResourcePolicy().allocate(context([1, 1, 1], max_cut=[6, 4, 6], predict=predict))
    assert [d.cut for d in decisions] == [2, 4, 1]  # client 1's memory caps it at 4


def smollm2_shape() -> ModelShape:
    return ModelShape.from_hf_config(smollm2_config())


def real_context(server: str, previous=(2, 2, 2, 2, 2)) -> AllocationContext:
    shape, devices = smollm2_shape(), device_preset("hetero", 5)
    max_cut = check_fits(shape, devices, 4, 128)

    def predict(cuts):
        return predict_round(devices, cuts, shape, server_profile(server), 4, 128)

    return AllocationContext(2, list(previous), max_cut, predict, {})


@pytest.mark.parametrize("server", ["idle", "busy"])
def test_resource_cuts_fit_memory_and_beat_the_same_split(server):
    ctx = real_context(server)
    cuts, timing = best_resource_cuts(ctx)
    assert all(1 <= c <= m for c, m in zip(cuts, ctx.max_cut, strict=True))
    assert timing.makespan_s <= ctx.predict([2] * 5).makespan_s
    if server == "idle":
        assert cuts == [1] * 5  # a fast idle server should run everything it can
    else:
        assert max(cuts) > 2  # a busy server pays fast clients to keep blocks


def test_splitft_ranges_contain_the_resource_cut_and_accuracy_steers_inside():
    policy = SplitFTPolicy(gamma=1.0, tolerance=0.01, slack=0.25)
    ctx = real_context("busy")
    best, ranges, makespan = policy.ranges(ctx)
    for cut, (low, high), most in zip(best, ranges, ctx.max_cut, strict=True):
        assert 1 <= low <= cut <= high <= most
    ctx.accuracy = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.5, 4: 0.5}
    ctx.previous = [(low + high) // 2 for low, high in ranges]
    decisions = policy.allocate(ctx)
    for d, (low, high), prev in zip(decisions, ranges, ctx.previous, strict=True):
        assert low <= d.cut <= high
        assert abs(d.cut - prev) <= 1
    assert decisions[0].cut >= ctx.previous[0] and decisions[1].cut <= ctx.previous[1]
    assert decisions == policy.allocate(ctx)  # deterministic
