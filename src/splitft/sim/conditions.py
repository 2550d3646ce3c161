"""Conditions that change over virtual time: each device's compute, uplink and downlink, whether
it is there at all, and the main server's load (docs/architecture.md, D13).

A conditions source answers :meth:`Conditions.at` for a virtual time ``t`` with a
:class:`Snapshot`: per client a multiplier of its profile's FLOP/s, uplink and downlink and
whether it is available, and a multiplier of the server's FLOP/s. The round loop asks once per
round, at the round's virtual start; the clock times the round under that snapshot, while the
policy only sees what the round then took (``sim/observer.py``).

* ``static``: every multiplier 1, everyone available (what every run did before).
* ``changing``: a preset seeded by the run's seed. Time is cut into segments of
  ``devices.change_every_s`` virtual seconds; the first segment is nominal (the profiles are
  right at the start), then per segment, per client: its uplink and its downlink follow random
  walks of their logarithm (steps of ``WALK_SIGMA``, kept within ``WALK_RANGE``), its compute
  is throttled to ``THROTTLE`` for 1-3 segments with probability ``THROTTLE_P`` (a phone that
  heats up, a laptop on battery), it leaves for 1-2 segments with probability ``LEAVE_P`` (at
  least client 0 stays when all would leave); the server is busy with other tenants
  (``BUSY`` of its FLOP/s) for 1-3 segments with probability ``BUSY_P``.
* a trace file, CSV with the header ``time_s,device,field,value``: from ``time_s`` on,
  ``device`` (a client index, or ``server``) has ``field`` (``compute``, ``up``, ``down`` as a
  multiplier of its profile; ``available`` as 0 or 1; the server has only ``compute``) at
  ``value``. Times are seconds of virtual time, non-negative and in order. Anything not set is
  1 (available). A malformed line is a one-line ConfigError naming the file and the line.

Every source is a pure function of ``t`` (the preset regenerates its segments from the seed),
so a resumed run sees the same conditions as one that ran straight through.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from splitft.choices import CONDITIONS
from splitft.errors import ConfigError
from splitft.sim.devices import DeviceProfile

WALK_SIGMA = 0.4
WALK_RANGE = (0.1, 1.0)
THROTTLE, THROTTLE_P = 0.25, 0.15
LEAVE_P = 0.1
BUSY, BUSY_P = 0.25, 0.2
CLIENT_FIELDS = ("compute", "up", "down", "available")
TRACE_HEADER = ["time_s", "device", "field", "value"]


@dataclass(frozen=True)
class Snapshot:
    """The conditions of one moment: per-client multipliers and availability, the server's load."""

    compute: tuple[float, ...]
    up: tuple[float, ...]
    down: tuple[float, ...]
    available: tuple[bool, ...]
    server: float = 1.0

    @classmethod
    def nominal(cls, num_clients: int) -> Snapshot:
        ones = (1.0,) * num_clients
        return cls(ones, ones, ones, (True,) * num_clients)

    def device(self, i: int, profile: DeviceProfile) -> DeviceProfile:
        """Client ``i``'s device under these conditions (the profile itself when nominal)."""
        rates = (self.compute[i], self.up[i], self.down[i])
        if rates == (1.0, 1.0, 1.0):
            return profile
        return replace(
            profile,
            flops=profile.flops * rates[0],
            up_bps=profile.up_bps * rates[1],
            down_bps=profile.down_bps * rates[2],
        )

    def server_device(self, profile: DeviceProfile) -> DeviceProfile:
        return profile if self.server == 1.0 else replace(profile, flops=profile.flops * self.server)

    def to_dict(self) -> dict[str, object]:
        """For ``metrics.jsonl``: lists by client, and the server's multiplier."""
        return {
            "compute": list(self.compute),
            "up": list(self.up),
            "down": list(self.down),
            "available": list(self.available),
            "server": self.server,
        }


class Conditions(Protocol):
    def at(self, t: float) -> Snapshot:
        """The conditions at virtual time ``t`` (seconds)."""
        ...

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which the conditions may change (None: never)."""
        ...


class StaticConditions:
    def __init__(self, num_clients: int) -> None:
        self.snapshot = Snapshot.nominal(num_clients)

    def at(self, t: float) -> Snapshot:
        return self.snapshot

    def next_change(self, t: float) -> float | None:
        return None


class _ClientProcess:
    """One client's preset processes, drawn segment by segment from its own random stream."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.log_up = self.log_down = 0.0
        self.throttled = self.away = 0  # segments left

    def step(self) -> tuple[float, float, float, bool]:
        """(compute, up, down, available) of the next segment; draws the same numbers every time."""
        up_step, down_step, throttle, leave = self.rng.normal(size=2).tolist() + self.rng.random(2).tolist()
        throttle_for, away_for = int(self.rng.integers(1, 4)), int(self.rng.integers(1, 3))
        low, high = math.log(WALK_RANGE[0]), math.log(WALK_RANGE[1])
        self.log_up = min(max(self.log_up + WALK_SIGMA * up_step, low), high)
        self.log_down = min(max(self.log_down + WALK_SIGMA * down_step, low), high)
        self.throttled = (
            self.throttled - 1 if self.throttled else (throttle_for if throttle < THROTTLE_P else 0)
        )
        self.away = self.away - 1 if self.away else (away_for if leave < LEAVE_P else 0)
        compute = THROTTLE if self.throttled else 1.0
        return compute, math.exp(self.log_up), math.exp(self.log_down), not self.away


class ChangingConditions:
    """The ``changing`` preset (see the module docstring), seeded by the run's seed."""

    def __init__(self, num_clients: int, seed: int, period_s: float) -> None:
        self.num_clients = num_clients
        self.period_s = period_s
        streams = np.random.SeedSequence([seed, 0x5EED]).spawn(num_clients + 1)
        self._clients = [_ClientProcess(np.random.default_rng(s)) for s in streams[:-1]]
        self._server_rng = np.random.default_rng(streams[-1])
        self._server_busy = 0
        self._segments = [Snapshot.nominal(num_clients)]

    def _next_segment(self) -> Snapshot:
        states = [process.step() for process in self._clients]
        busy, busy_for = float(self._server_rng.random()), int(self._server_rng.integers(1, 4))
        self._server_busy = self._server_busy - 1 if self._server_busy else (busy_for if busy < BUSY_P else 0)
        available = [s[3] for s in states]
        if not any(available):
            available[0] = True  # someone is always there
        return Snapshot(
            tuple(s[0] for s in states),
            tuple(s[1] for s in states),
            tuple(s[2] for s in states),
            tuple(available),
            BUSY if self._server_busy else 1.0,
        )

    def at(self, t: float) -> Snapshot:
        segment = int(t // self.period_s)
        while len(self._segments) <= segment:
            self._segments.append(self._next_segment())
        return self._segments[segment]

    def next_change(self, t: float) -> float | None:
        return (int(t // self.period_s) + 1) * self.period_s


class TraceConditions:
    """Conditions from a trace file (see the module docstring)."""

    def __init__(self, path: str | Path, num_clients: int) -> None:
        self.num_clients = num_clients
        self.changes = read_trace(path, num_clients)
        """(time_s, device, field, value) in time order; device -1 is the server."""

    def at(self, t: float) -> Snapshot:
        values = {field: [1.0] * self.num_clients for field in CLIENT_FIELDS}
        server = 1.0
        for time_s, device, field, value in self.changes:
            if time_s > t:
                break
            if device < 0:
                server = value
            else:
                values[field][device] = value
        return Snapshot(
            tuple(values["compute"]),
            tuple(values["up"]),
            tuple(values["down"]),
            tuple(v == 1.0 for v in values["available"]),
            server,
        )

    def next_change(self, t: float) -> float | None:
        return next((time_s for time_s, *_ in self.changes if time_s > t), None)


def _trace_row(row: list[str], num_clients: int, last_time: float) -> tuple[float, int, str, float]:
    """One data row of a trace as (time_s, device, field, value); ValueError says what is wrong."""
    if len(row) != 4:
        raise ValueError(f"expected 4 values (time_s,device,field,value), got {len(row)}")
    time_text, device_text, field, value_text = (cell.strip() for cell in row)
    try:
        time_s, value = float(time_text), float(value_text)
    except ValueError:
        raise ValueError(f"time_s and value must be numbers (got {time_text!r}, {value_text!r})") from None
    if not (math.isfinite(time_s) and time_s >= 0):
        raise ValueError(f"time_s must be a finite number >= 0 (got {time_text})")
    if time_s < last_time:
        raise ValueError(f"times must not decrease (time_s {time_text} after {last_time:g})")
    if device_text == "server":
        device, allowed = -1, ("compute",)
    elif device_text.isdigit() and int(device_text) < num_clients:
        device, allowed = int(device_text), CLIENT_FIELDS
    else:
        raise ValueError(
            f"unknown device {device_text!r}; use 'server' or a client index 0..{num_clients - 1}"
        )
    if field not in allowed:
        raise ValueError(f"unknown field {field!r} for device {device_text}; allowed: {', '.join(allowed)}")
    if field == "available" and value not in (0.0, 1.0):
        raise ValueError(f"available must be 0 or 1 (got {value_text})")
    if field != "available" and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{field} is a multiplier of the profile and must be > 0 (got {value_text})")
    return time_s, device, field, value


def read_trace(path: str | Path, num_clients: int) -> list[tuple[float, int, str, float]]:
    """The rows of a trace file; a ConfigError ``FILE:LINE: what is wrong`` on the first bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"devices.conditions: cannot read the trace {path}: {err}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [cell.strip() for cell in rows[0]] != TRACE_HEADER:
        raise ConfigError(f"{path}:1: the first line must be the header {','.join(TRACE_HEADER)}")
    changes: list[tuple[float, int, str, float]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            changes.append(_trace_row(row, num_clients, changes[-1][0] if changes else 0.0))
        except ValueError as err:
            raise ConfigError(f"{path}:{line}: {err}") from None
    return changes


def load_conditions(value: str, num_clients: int, seed: int, period_s: float) -> Conditions:
    """The source ``devices.conditions`` names (a trace is read and checked here, at setup)."""
    if value == "static":
        return StaticConditions(num_clients)
    if value == "changing":
        return ChangingConditions(num_clients, seed, period_s)
    if value.endswith(".csv"):
        return TraceConditions(value, num_clients)
    raise ConfigError(
        f"devices.conditions = {value!r}: must be one of {', '.join(CONDITIONS)} or a trace .csv"
    )
