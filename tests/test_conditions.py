"""Changing conditions (docs/architecture.md, D13): the seeded preset, trace files and their
errors, and how the clock applies a snapshot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from splitft.cli import main
from splitft.errors import ConfigError
from splitft.sim import conditions as cond
from splitft.sim.clock import ClientWork, simulate_round
from splitft.sim.devices import TIERS, server_profile


def snapshots(source, times):
    return [source.at(t) for t in times]


def test_the_preset_is_a_function_of_seed_and_time():
    times = [0.5 + 2.0 * k for k in range(60)]
    one, again = cond.ChangingConditions(5, 3, 2.0), cond.ChangingConditions(5, 3, 2.0)
    # Asked in another order (a resumed run starts late): the same conditions at every time.
    assert snapshots(one, times) == list(reversed(snapshots(again, list(reversed(times)))))
    assert snapshots(cond.ChangingConditions(5, 4, 2.0), times) != snapshots(one, times)
    assert one.at(1.9) == cond.Snapshot.nominal(5)  # the profiles are right at the start
    seen = snapshots(one, times)
    assert all(any(s.available) for s in seen)
    ups = [u for s in seen for u in s.up]
    assert min(ups) >= cond.WALK_RANGE[0] - 1e-12 and max(ups) <= cond.WALK_RANGE[1] + 1e-12
    # Over 60 segments each process shows itself: throttling, leaving, a busy server, slow links.
    assert {c for s in seen for c in s.compute} == {1.0, cond.THROTTLE}
    assert not all(a for s in seen for a in s.available)
    assert {s.server for s in seen} == {1.0, cond.BUSY}
    assert min(ups) < 0.5
    assert one.next_change(4.5) == 6.0


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_trace_sets_values_from_its_time_on(tmp_path):
    path = write(
        tmp_path,
        "time_s,device,field,value\n0,1,up,0.5\n10,server,compute,0.2\n10,0,available,0\n20,0,available,1\n",
    )
    source = cond.load_conditions(str(path), 2, 0, 1.0)
    assert source.at(0) == cond.Snapshot((1.0, 1.0), (1.0, 0.5), (1.0, 1.0), (True, True), 1.0)
    assert source.at(15) == cond.Snapshot((1.0, 1.0), (1.0, 0.5), (1.0, 1.0), (False, True), 0.2)
    assert source.at(20).available == (True, True)
    assert source.next_change(10) == 20 and source.next_change(20) is None


@pytest.mark.parametrize(
    "body, line, words",  # the trace after its header, the line named, what the error says
    [
        ("0,7,up,0.5\n", 2, "unknown device '7'"),
        ("0,phone,up,0.5\n", 2, "unknown device 'phone'"),
        ("0,0,bandwidth,0.5\n", 2, "unknown field 'bandwidth'"),
        ("0,server,up,0.5\n", 2, "unknown field 'up'"),
        ("5,0,up,0.5\n3,0,up,0.4\n", 3, "times must not decrease"),
        ("-1,0,up,0.5\n", 2, "must be a finite number >= 0"),
        ("0,0,up,fast\n", 2, "must be numbers"),
        ("zero,0,up,1\n", 2, "must be numbers"),
        ("0,0,up,0\n", 2, "must be > 0"),
        ("0,0,available,0.5\n", 2, "must be 0 or 1"),
        ("0,0,up\n", 2, "expected 4 values"),
    ],
)
def test_a_malformed_trace_names_file_and_line(tmp_path, body, line, words):
    path = write(tmp_path, "time_s,device,field,value\n" + body)
    with pytest.raises(ConfigError) as err:
        cond.load_conditions(str(path), 2, 0, 1.0)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ") and words in message and "\n" not in message


def test_a_trace_without_its_header_or_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trace\.csv:1: the first line must be the header"):
        cond.load_conditions(str(write(tmp_path, "0,0,up,0.5\n")), 2, 0, 1.0)
    with pytest.raises(ConfigError, match="cannot read the trace"):
        cond.load_conditions(str(tmp_path / "missing.csv"), 2, 0, 1.0)


def test_a_bad_trace_stops_train_before_anything_is_written(tmp_path, capsys):
    path = write(tmp_path, "time_s,device,field,value\n0,9,up,0.5\n")
    out = tmp_path / "run"
    code = main(
        ["train", "--model.name", "tiny:llama", "--devices.conditions", str(path), "--out", str(out)]
        + ["--federation.num_clients", "2", "--data.max_samples", "40"]
    )
    assert code == 2 and not out.exists()
    assert f"{path}:2: unknown device '9'" in capsys.readouterr().err


def test_conditions_are_config_checked():
    from splitft.config import Config

    for bad in ({"devices.conditions": "stormy"}, {"devices.change_every_s": "0"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Config().with_overrides(bad).validate()
    fedlora = Config().with_overrides({"method": "fedlora", "devices.conditions": "changing"})
    with pytest.raises(ConfigError, match="must be 'static' with method = 'fedlora'"):
        fedlora.validate()


def test_the_clock_applies_a_snapshot_to_the_profiles():
    laptop, server = TIERS["laptop"], server_profile("busy")
    work = ClientWork(laptop, 4e9, 4e9, 8e9, steps=2, up_bytes=1e6, down_bytes=1e6)
    snapshot = cond.Snapshot((0.5,), (0.25,), (1.0,), (True,), 0.5)
    nominal = simulate_round(server, [work])
    slow = simulate_round(snapshot.server_device(server), [replace(work, device=snapshot.device(0, laptop))])
    part, base = slow.breakdown[0], nominal.breakdown[0]
    assert part.compute_s == pytest.approx(2 * base.compute_s)
    assert part.up_s == pytest.approx(4 * base.up_s) and part.down_s == pytest.approx(base.down_s)
    assert part.server_s == pytest.approx(2 * base.server_s)
    assert cond.Snapshot.nominal(1).device(0, laptop) is laptop  # static: the profile itself
