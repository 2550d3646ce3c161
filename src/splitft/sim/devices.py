"""Device profiles of clients and of the main server, for the virtual clock (docs/architecture.md, D8).

A :class:`DeviceProfile` gives *absolute* numbers: effective (sustained) FLOP/s, usable
memory in bytes, uplink and downlink in bytes/s and one-way latency in seconds. The clock
turns FLOP counts and byte counts into seconds with them; the resource policy checks memory.

Client tiers (the ``hetero`` preset cycles over them in this order, client ``i`` gets tier
``i % 5``; ``homogeneous`` gives every client the ``laptop`` tier)::

    tier         compute      memory    uplink     downlink   latency  what it stands for
    phone-low    5 GFLOP/s    256 MiB   1 MB/s     4 MB/s     50 ms    budget phone, 4G, CPU
    phone-high   15 GFLOP/s   512 MiB   3 MB/s     10 MB/s    30 ms    flagship phone, good 4G/5G
    tablet       30 GFLOP/s   1 GiB     5 MB/s     15 MB/s    20 ms    tablet / SBC on Wi-Fi
    laptop       80 GFLOP/s   4 GiB     12.5 MB/s  40 MB/s    10 ms    laptop CPU, 100 Mbit/s up
    workstation  200 GFLOP/s  16 GiB    50 MB/s    125 MB/s   5 ms     desktop, 1 Gbit/s downlink

The fastest tier has 40x the compute, 50x the uplink and ~31x the downlink of the slowest.
Memory is what the training process may use, not the device's RAM: the ``phone-low`` tier
holds SmolLM2-135M's embeddings (~113 MB in fp32) plus only three blocks at batch 4,
sequence 128 (see ``costs.py``). MB = 10^6 bytes, MiB = 2^20 bytes.

Server speeds (``server_profile``)::

    idle   20 TFLOP/s effective          a GPU-class server with nothing else to do
    busy   20 TFLOP/s / 50 = 400 GFLOP/s the same server shared with other jobs
    float  that many FLOP/s effective

Both have 80 GB, a 10 Gbit/s link (1.25 GB/s each way) and 0.5 ms latency. With an idle
server, offloading blocks to it pays; with a busy one, fast clients should keep more blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace

from splitft.choices import DEVICE_PRESETS as PRESETS
from splitft.choices import DEVICE_TIERS, SERVER_LOADS
from splitft.errors import ConfigError

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """One device: effective FLOP/s, usable memory (bytes), up/down link (bytes/s), latency (s)."""

    name: str
    flops: float
    memory_bytes: float
    up_bps: float
    down_bps: float
    latency_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"device name must be a non-empty string (got {self.name!r})")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            minimum = "> 0" if f.name != "latency_s" else ">= 0"
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value >= 0 if f.name == "latency_s" else value > 0)
            )
            if not ok:
                raise ConfigError(
                    f"device '{self.name}': {f.name} must be a finite number {minimum} (got {value!r})"
                )

    def to_dict(self) -> dict[str, str | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DeviceProfile:
        """A profile from a JSON/TOML table; every numeric field is required, ``name`` is optional."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"device profile has unknown field(s) {unknown}; allowed: {', '.join(allowed)}")
        missing = [name for name in allowed[1:] if name not in data]
        if missing:
            raise ConfigError(
                f"device profile is missing field(s) {missing}; required: {', '.join(allowed[1:])}"
            )
        return cls(**{"name": "custom", **data})  # type: ignore[arg-type]


# (flops, memory_bytes, up_bps, down_bps, latency_s) of each of DEVICE_TIERS, in its order
TIERS: dict[str, DeviceProfile] = {
    name: DeviceProfile(name, *numbers)
    for name, numbers in zip(
        DEVICE_TIERS,
        (
            (5e9, 256 * MiB, 1e6, 4e6, 0.050),
            (15e9, 512 * MiB, 3e6, 10e6, 0.030),
            (30e9, 1 * GiB, 5e6, 15e6, 0.020),
            (80e9, 4 * GiB, 12.5e6, 40e6, 0.010),
            (200e9, 16 * GiB, 50e6, 125e6, 0.005),
        ),
        strict=True,
    )
}
"""Client tiers by name, slowest first (the order ``hetero`` cycles over)."""

SERVER_IDLE = DeviceProfile("server-idle", 20e12, 80e9, 1.25e9, 1.25e9, 0.0005)
SERVER_SPEEDS: dict[str, DeviceProfile] = dict(
    zip(
        SERVER_LOADS,
        (
            SERVER_IDLE,
            # Same machine, one fiftieth of it: the share a training job gets on a shared GPU.
            replace(SERVER_IDLE, name="server-busy", flops=SERVER_IDLE.flops / 50),
        ),
        strict=True,
    )
)


def device_preset(name: str, num_clients: int) -> list[DeviceProfile]:
    """One profile per client from a preset name (see the module docstring)."""
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1 (got {num_clients})")
    if name == "homogeneous":
        return [TIERS["laptop"]] * num_clients
    if name == "hetero":
        tiers = list(TIERS.values())
        return [tiers[i % len(tiers)] for i in range(num_clients)]
    raise ConfigError(f"unknown device preset '{name}'; known presets: {', '.join(PRESETS)}")


def server_profile(speed: str | float) -> DeviceProfile:
    """The main server: ``idle``, ``busy``, or an effective FLOP/s number (same memory and link)."""
    if isinstance(speed, str):
        if speed in SERVER_SPEEDS:
            return SERVER_SPEEDS[speed]
        raise ConfigError(
            f"unknown server speed '{speed}'; use one of {', '.join(SERVER_SPEEDS)} or a FLOP/s number"
        )
    return replace(SERVER_IDLE, name=f"server-{speed:g}", flops=speed)


def parse_profiles(
    value: str | Sequence[Mapping[str, object] | str], num_clients: int
) -> list[DeviceProfile]:
    """Client profiles from a config value.

    ``value`` is a preset name, or a list (as written in TOML) whose items are tables with
    the :class:`DeviceProfile` fields or tier names (``"laptop"``); the list has one item
    (used for every client) or one per client.
    """
    if isinstance(value, str):
        return device_preset(value, num_clients)
    items = list(value)
    if len(items) not in (1, num_clients):
        raise ConfigError(
            f"device profiles list has {len(items)} entries; give one or one per client (num_clients={num_clients})"
        )
    profiles = []
    for item in items:
        if isinstance(item, str):
            if item not in TIERS:
                raise ConfigError(f"unknown device tier '{item}'; known tiers: {', '.join(TIERS)}")
            profiles.append(TIERS[item])
        elif isinstance(item, Mapping):
            profiles.append(DeviceProfile.from_dict(item))
        else:
            raise ConfigError(f"a device profile must be a table or a tier name (got {item!r})")
    return profiles * num_clients if len(profiles) == 1 else profiles
