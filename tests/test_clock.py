"""Tests of the deterministic virtual clock: hand-computed rounds, FIFO queueing, properties."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.errors import ConfigError
from splitft.sim.clock import ClientWork, VirtualClock, predict_round, simulate_round
from splitft.sim.costs import block_forward_flops, eval_flops, heldout_flops
from splitft.sim.devices import DeviceProfile, device_preset, server_profile
from test_devices import smollm2

# Round numbers: the server's link is never the narrower one and adds no latency.
SERVER = DeviceProfile("server", 1e10, 1e12, 1e9, 1e9, 0.0)
CLIENT = DeviceProfile("client", 1e9, 1e9, 1e6, 2e6, 0.01)


def work(device: DeviceProfile = CLIENT, **changes: float) -> ClientWork:
    base = ClientWork(
        device,
        forward_flops=2e9,
        backward_flops=3e9,
        server_flops=5e9,
        steps=1,
        up_bytes=1e6,
        down_bytes=2e6,
        adapter_down_bytes=1e5,
        adapter_up_bytes=1e5,
    )
    return replace(base, **changes)


def test_one_client_one_step_is_the_sum_of_its_phases() -> None:
    timing = simulate_round(SERVER, [work()])
    adapters_down, forward, upload = 0.01 + 1e5 / 2e6, 2.0, 0.01 + 1e6 / 1e6
    server, download, backward, adapters_up = 0.5, 0.01 + 2e6 / 2e6, 3.0, 0.01 + 1e5 / 1e6
    expected = adapters_down + forward + upload + server + download + backward + adapters_up
    assert timing.makespan_s == pytest.approx(expected, rel=1e-12)
    assert timing.per_client_s == {0: timing.makespan_s}
    parts = timing.breakdown[0]
    assert parts.compute_s == pytest.approx(5.0)
    assert parts.comm_s == pytest.approx(adapters_down + upload + download + adapters_up)
    assert (parts.server_s, parts.wait_s) == (pytest.approx(0.5), 0.0)
    assert timing.server_busy_s == pytest.approx(0.5)
    assert timing.server_busy_share == pytest.approx(0.5 / expected)


def test_link_is_limited_by_the_narrower_side_and_latencies_add() -> None:
    slow_server = replace(SERVER, down_bps=5e5, latency_s=0.002)
    fast = simulate_round(SERVER, [work()]).makespan_s
    slow = simulate_round(slow_server, [work()]).makespan_s
    # Upload of activations and adapters at 5e5 B/s instead of 1e6, 4 transfers x 2 ms more.
    assert slow - fast == pytest.approx(1e6 / 5e5 - 1.0 + 1e5 / 5e5 - 0.1 + 4 * 0.002)


def test_identical_clients_queue_fifo_on_a_bottleneck_server() -> None:
    slow_server = replace(SERVER, flops=1e9)  # a server step takes 5 s, longer than anything else
    timing = simulate_round(slow_server, [work(), work()])
    step = 5.0
    assert timing.breakdown[0].wait_s == 0.0
    assert timing.breakdown[1].wait_s == pytest.approx(step, abs=1e-12)  # exactly one server step
    assert timing.per_client_s[1] - timing.per_client_s[0] == pytest.approx(step)
    assert timing.makespan_s == timing.per_client_s[1]


def test_bottleneck_server_stays_busy_over_several_steps() -> None:
    slow_server = replace(SERVER, flops=1e9)
    w = work(steps=3, backward_flops=1e9, forward_flops=1e9)  # client round trip 4.02 s < 5 s step
    timing = simulate_round(slow_server, [w, w])
    first_arrival = 0.01 + 1e5 / 2e6 + 1.0 + 0.01 + 1.0
    tail = 0.01 + 1.0 + 1.0 + 0.01 + 0.1  # last gradient down, backward, adapters up
    assert timing.makespan_s == pytest.approx(first_arrival + 6 * 5.0 + tail)
    assert timing.server_busy_s == pytest.approx(30.0)


def test_sequential_makespan_is_the_sum_of_per_client_times() -> None:
    clients = {i: work(profile, steps=2) for i, profile in enumerate(device_preset("hetero", 5))}
    timing = simulate_round(SERVER, clients, order="sequential")
    assert timing.makespan_s == pytest.approx(sum(timing.per_client_s.values()), rel=1e-12)
    assert all(t.wait_s == 0.0 for t in timing.breakdown.values())  # nobody to wait for
    parallel = simulate_round(SERVER, clients)
    assert parallel.makespan_s < timing.makespan_s


def test_evaluation_is_charged_where_it_runs() -> None:
    plain = simulate_round(SERVER, [work()]).makespan_s
    on_server = simulate_round(SERVER, [work(eval_flops=4e9)])
    assert on_server.makespan_s - plain == pytest.approx(4e9 / SERVER.flops)
    assert on_server.server_busy_s == pytest.approx(0.5 + 0.4)
    # split like training: the client's blocks of the check on its device, the rest on the server
    split = simulate_round(SERVER, [work(eval_flops=4e9, eval_client_flops=1e9)])
    assert split.makespan_s - plain == pytest.approx(1e9 / CLIENT.flops + 4e9 / SERVER.flops)
    assert split.breakdown[0].compute_s == pytest.approx(2.0 + 3.0 + 1.0)
    assert split.server_busy_s == pytest.approx(0.5 + 0.4)


def test_predicted_heldout_check_is_split_at_each_cut() -> None:
    shape, profiles, server = smollm2(), device_preset("hetero", 5), server_profile("busy")
    cuts = [1, 2, 4, 8, 16]
    plain = predict_round(profiles, cuts, shape, server, 4, 64)
    checked = predict_round(profiles, cuts, shape, server, 4, 64, heldout_samples=4)
    for i, cut in enumerate(cuts):
        on_client, on_server = heldout_flops(shape, 4, 64, cut)
        extra = checked.breakdown[i].compute_s - plain.breakdown[i].compute_s
        assert extra == pytest.approx(on_client / profiles[i].flops)
    total_server = sum(heldout_flops(shape, 4, 64, cut)[1] for cut in cuts)
    assert checked.server_busy_s - plain.server_busy_s == pytest.approx(total_server / server.flops)


def test_timing_is_deterministic_and_json_ready() -> None:
    shape, profiles = smollm2(), device_preset("hetero", 5)
    runs = [
        predict_round(profiles, [1, 2, 4, 8, 16], shape, server_profile("busy"), 4, 128, steps=3)
        for _ in "ab"
    ]
    assert runs[0] == runs[1]
    assert json.loads(json.dumps(runs[0].to_dict())) == runs[1].to_dict()


def test_idle_server_favours_offloading_and_busy_server_favours_fast_clients() -> None:
    shape, profiles = smollm2(), device_preset("hetero", 5)
    idle, busy = server_profile("idle"), server_profile("busy")
    all_low, fast_keep_more = [1] * 5, [1, 3, 6, 10, 10]
    assert (
        predict_round(profiles, all_low, shape, idle, 4, 128).makespan_s
        <= predict_round(profiles, fast_keep_more, shape, idle, 4, 128).makespan_s
    )
    assert (
        predict_round(profiles, fast_keep_more, shape, busy, 4, 128).makespan_s
        < predict_round(profiles, all_low, shape, busy, 4, 128).makespan_s
    )


def test_virtual_clock_accumulates_and_round_trips() -> None:
    clock = VirtualClock()
    timing = simulate_round(SERVER, [work(), work()])
    clock.advance(timing)
    assert clock.advance(timing) == pytest.approx(2 * timing.makespan_s)
    restored = VirtualClock.from_dict(json.loads(json.dumps(clock.to_dict())))
    assert restored == clock and restored.rounds == 2


def test_bad_order_and_mismatched_cuts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="parallel, sequential"):
        simulate_round(SERVER, [work()], order="random")
    with pytest.raises(ConfigError, match="2 device profiles but 1 cuts"):
        predict_round(device_preset("hetero", 2), [1], smollm2(), SERVER, 4, 128)


def test_faster_uplink_can_delay_a_parallel_round() -> None:
    """The FIFO anomaly the clock docstring warns about: a fast link lets a client overtake."""
    bare = DeviceProfile("c", 1e9, 1e9, 1e6, 1e6, 0.0)
    critical = ClientWork(bare, forward_flops=1e9, backward_flops=1e10, server_flops=1e10)
    uploader = ClientWork(bare, forward_flops=0.0, backward_flops=0.0, server_flops=1e10, up_bytes=1.5e6)
    before = simulate_round(SERVER, {0: uploader, 1: critical}).makespan_s
    faster = ClientWork(replace(bare, up_bps=1e7), 0.0, 0.0, 1e10, up_bytes=1.5e6)
    after = simulate_round(SERVER, {0: faster, 1: critical}).makespan_s
    assert (before, after) == (pytest.approx(12.0), pytest.approx(12.15))


# --- properties over random profiles ----------------------------------------------------

profiles = st.builds(
    DeviceProfile,
    name=st.just("random"),
    flops=st.floats(1e8, 1e12),
    memory_bytes=st.just(1e9),
    up_bps=st.floats(1e4, 1e9),
    down_bps=st.floats(1e4, 1e9),
    latency_s=st.floats(0.0, 0.2),
)
works = st.builds(
    ClientWork,
    device=profiles,
    forward_flops=st.floats(0.0, 1e11),
    backward_flops=st.floats(0.0, 1e11),
    server_flops=st.floats(0.0, 1e12),
    steps=st.integers(0, 4),
    up_bytes=st.floats(0.0, 1e7),
    down_bytes=st.floats(0.0, 1e7),
    adapter_down_bytes=st.floats(0.0, 1e6),
    adapter_up_bytes=st.floats(0.0, 1e6),
    eval_flops=st.floats(0.0, 1e11),
    eval_client_flops=st.floats(0.0, 1e10),
)
servers = st.builds(replace, st.just(SERVER), flops=st.floats(1e9, 1e13))
speedups = st.floats(1.0, 100.0)


def faster_uplink(w: ClientWork, factor: float) -> ClientWork:
    return replace(w, device=replace(w.device, up_bps=w.device.up_bps * factor))


@settings(max_examples=60, deadline=None)
@given(st.lists(works, min_size=1, max_size=5), servers, speedups, st.data())
def test_faster_uplink_never_increases_a_sequential_round(clients, server, factor, data) -> None:
    i = data.draw(st.integers(0, len(clients) - 1))
    before = simulate_round(server, clients, order="sequential").makespan_s
    clients[i] = faster_uplink(clients[i], factor)
    assert simulate_round(server, clients, order="sequential").makespan_s <= before


@settings(max_examples=60, deadline=None)
@given(works, st.integers(1, 5), servers, speedups)
def test_faster_uplink_never_increases_a_parallel_round_of_identical_clients(w, n, server, factor) -> None:
    before = simulate_round(server, [w] * n).makespan_s
    assert simulate_round(server, [faster_uplink(w, factor)] * n).makespan_s <= before


@settings(max_examples=60, deadline=None)
@given(st.lists(works, min_size=1, max_size=5), servers, st.sampled_from(["parallel", "sequential"]))
def test_busy_share_and_breakdown_are_consistent(clients, server, order) -> None:
    timing = simulate_round(server, clients, order=order)
    assert 0.0 <= timing.server_busy_share <= 1.0
    per_client = timing.per_client_s.values()
    assert timing.makespan_s == pytest.approx(max(per_client) if order == "parallel" else sum(per_client))
    for i, parts in timing.breakdown.items():
        total = parts.compute_s + parts.comm_s + parts.server_s + parts.wait_s
        assert total == pytest.approx(timing.per_client_s[i], rel=1e-9, abs=1e-9)
        assert min(parts.compute_s, parts.comm_s, parts.server_s, parts.wait_s) >= 0.0


def test_heldout_check_flops_split_at_the_cut() -> None:
    shape = smollm2()
    whole = eval_flops(shape, 4, 64)
    for cut in (1, 2, 29):
        on_client, on_server = heldout_flops(shape, 4, 64, cut)
        assert on_client + on_server == whole
        assert on_client == cut * block_forward_flops(shape, 4 * 64, 64)  # SmolLM2: no project_in
    assert heldout_flops(shape, 0, 64, 2) == (0, 0)
