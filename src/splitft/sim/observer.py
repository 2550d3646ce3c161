"""What the allocation policy knows about the devices: rates observed in earlier rounds
(docs/architecture.md, D12).

A real deployment does not know a phone's FLOP/s or its uplink today. What it does see, after a
round, is how long each leg took: a client's compute, the seconds its bytes took going up and
coming down, the server's compute for it, and it knows the FLOPs and bytes of what was done.
:class:`RateObserver` turns those into, per client, a multiplier of its configured profile's
FLOP/s, uplink and downlink, and one of the server's FLOP/s, each an exponential moving average
(weight ``policy.smoothing`` on the newest round). The profile is the prior: a client never
observed has multipliers 1 (its profile), and its first observation replaces the prior.

It reads only :class:`~splitft.sim.clock.ClientWork` (what was done, at the profile) and the
:class:`~splitft.sim.clock.RoundTiming` the clock produced for the round, never the conditions
source (``sim/conditions.py``): the clock's truth and the policy's estimate are separate objects.

Multipliers are kept to ``DIGITS`` decimals (a clock resolution of a nanosecond per second):
on devices that never change the observed multiplier is 1 exactly (x / (x / r) is not always r
in floating point), so plans from observations are bit for bit those from the profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from splitft.sim.clock import ClientWork, RoundTiming
from splitft.sim.devices import DeviceProfile

DIGITS = 9
LEGS = ("compute", "up", "down")


def _ratio(nominal_s: float, actual_s: float) -> float | None:
    """Observed multiplier of a leg: the time it would take at the profile over the time it took."""
    return round(nominal_s / actual_s, DIGITS) if nominal_s > 0 and actual_s > 0 else None


class RateObserver:
    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.clients: dict[int, dict[str, float]] = {}
        """Client -> smoothed multiplier per leg (a leg never observed is absent: prior 1)."""
        self.server = 1.0
        self.server_seen = False

    def _update(self, old: float | None, new: float) -> float:
        # old + w * (new - old) keeps old exactly when new == old (an EMA written as a + b does not).
        return new if old is None else round(old + self.smoothing * (new - old), DIGITS)

    def observe(self, works: Mapping[int, ClientWork], timing: RoundTiming, server: DeviceProfile) -> None:
        """Take one round: ``works`` at the clients' profiles, ``timing`` as it happened."""
        server_flops = server_s = 0.0
        for i, work in works.items():
            spent = timing.breakdown[i]
            d = work.device
            flops = work.steps * (work.forward_flops + work.backward_flops)
            flops += work.local_flops + work.eval_client_flops
            up = work.steps * work.up_bytes + work.adapter_up_bytes
            down = work.steps * work.down_bytes + work.adapter_down_bytes
            observed = {
                "compute": _ratio(flops / d.flops, spent.compute_s),
                "up": _ratio(up / min(d.up_bps, server.down_bps), spent.up_s),
                "down": _ratio(down / min(server.up_bps, d.down_bps), spent.down_s),
            }
            rates = self.clients.setdefault(i, {})
            for leg, value in observed.items():
                if value is not None:
                    rates[leg] = self._update(rates.get(leg), value)
            server_flops += work.steps * work.server_flops + work.eval_flops
            server_s += spent.server_s
        if (value := _ratio(server_flops / server.flops, server_s)) is not None:
            self.server = self._update(self.server if self.server_seen else None, value)
            self.server_seen = True

    def device(self, i: int, profile: DeviceProfile) -> DeviceProfile:
        """Client ``i``'s device as observed (its profile until it has been)."""
        rates = self.clients.get(i, {})
        compute, up, down = (rates.get(leg, 1.0) for leg in LEGS)
        if (compute, up, down) == (1.0, 1.0, 1.0):
            return profile
        return replace(
            profile,
            flops=profile.flops * compute,
            up_bps=profile.up_bps * up,
            down_bps=profile.down_bps * down,
        )

    def server_device(self, profile: DeviceProfile) -> DeviceProfile:
        return profile if self.server == 1.0 else replace(profile, flops=profile.flops * self.server)

    def state_dict(self) -> dict[str, Any]:
        return {
            "clients": {str(i): dict(r) for i, r in self.clients.items()},
            "server": self.server,
            "server_seen": self.server_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clients = {int(i): {leg: float(v) for leg, v in r.items()} for i, r in state["clients"].items()}
        self.server = float(state["server"])
        self.server_seen = bool(state["server_seen"])
