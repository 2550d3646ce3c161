"""Deterministic virtual clock of one round: a discrete-event simulation (docs/architecture.md, D8).

Nothing measured enters: the same profiles, FLOPs and bytes give bit-identical times. Every
phase of client ``i`` (device ``d``, main server ``S``)::

    compute on a device   flops / device.flops
    transfer up           d.latency_s + S.latency_s + bytes / min(d.up_bps, S.down_bps)
    transfer down         d.latency_s + S.latency_s + bytes / min(S.up_bps, d.down_bps)

A round of client ``i``: adapter download -> ``steps`` x [client forward -> upload
(activations + labels) -> server forward + backward -> download (gradient) -> client
backward + optimizer step] -> held-out evaluation -> adapter upload. The one main server
runs its jobs FIFO in arrival order (ties: lower client index first); the server link is
not shared (a 10 Gbit/s server link is never the bottleneck of phone-class clients).

A U-shaped step (docs/architecture.md, D15) has four legs and two server jobs: client forward
-> upload (hidden state + mask) -> server forward (a queued job) -> download (hidden state) ->
client tail, head, loss and their backward -> upload (gradient) -> server backward (a second
queued job) -> download (gradient) -> client backward and optimizer step.

The held-out evaluation the policy needs is split like training: after the adapter upload the
client forwards its held-out samples through its own blocks (``eval_client_flops`` on its
device) and the main server runs the rest and scores (``eval_flops``, a FIFO job like any
other). Its FLOPs are charged where they run and its bytes (the merged adapters down again,
the held-out activations up) are in the round's transfers, but it is timed per client, right
after that client's upload. The loop itself waits for the merge first; the clock does not
model that barrier, so a fast client's check overlaps the slow ones' training (a round's
makespan, set by the slowest client, changes little).

``order="parallel"`` (the default, docs/architecture.md D8): every client starts at 0, the makespan is when the last one
is done. ``order="sequential"`` (the paper's Algorithm 1): each client starts when the one
before it is done, so the makespan is the sum of the per-client times.

Per client, ``compute_s + comm_s + server_s + wait_s`` is its time from its start to its end:
its device's compute, its transfers, the server computing for it, its jobs waiting in the queue
(``up_s`` and ``down_s`` split out the transfers' byte time, latency excluded).

Caveat for policies: with heterogeneous clients in parallel, a faster link for one client can
*increase* the makespan (it may overtake a client whose critical path then waits in the FIFO
queue: a classic scheduling anomaly). For one client, for sequential order and for identical
clients it cannot (tests check both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from splitft.choices import CLOCK_ORDERS as ORDERS
from splitft.errors import ConfigError
from splitft.sim.costs import (
    ADAPTER_BYTES_PER_PARAM,
    FLOAT_BYTES,
    ModelShape,
    Projections,
    StepCosts,
    heldout_flops,
)
from splitft.sim.devices import DeviceProfile


@dataclass(frozen=True)
class ClientWork:
    """What one participating client does in a round: FLOPs per step and bytes per transfer."""

    device: DeviceProfile
    forward_flops: float
    backward_flops: float
    server_flops: float
    steps: int = 1
    up_bytes: float = 0.0
    down_bytes: float = 0.0
    adapter_down_bytes: float = 0.0
    adapter_up_bytes: float = 0.0
    eval_flops: float = 0.0
    local_flops: float = 0.0
    """FLOPs the client computes on its own after the adapter download (fedlora's whole-model
    steps: no server job, no activations)."""
    eval_client_flops: float = 0.0
    """The client's part of the held-out evaluation (its blocks, on its device); ``eval_flops``
    is the server's part."""
    tail_flops: float = 0.0
    """U shape (docs/architecture.md, D15): the client's tail, head and loss per step, between
    the server's two jobs; 0: a vanilla step, one server job."""
    server_backward_flops: float = 0.0
    """U shape: the server's second job of a step (``server_flops`` is then its first)."""
    tail_down_bytes: float = 0.0
    """U shape: the middle's output, down to the tail."""
    tail_up_bytes: float = 0.0
    """U shape: the gradient at the tail's input, up to the server."""

    @property
    def jobs_per_step(self) -> int:
        """Server jobs of one training step: 2 in a U shape (forward, then backward)."""
        return 2 if self.tail_flops else 1

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0 (got {self.steps})")

    @classmethod
    def from_costs(
        cls,
        device: DeviceProfile,
        costs: StepCosts,
        steps: int = 1,
        eval_flops: float = 0.0,
        eval_client_flops: float = 0.0,
        adapter_bytes_per_param: float = FLOAT_BYTES,
    ) -> ClientWork:
        """Predicted work; adapters travel at the rank trained, both ways, at
        ``adapter_bytes_per_param`` (fp32 unless codec.adapters compresses them)."""
        adapter_bytes = costs.client_lora_params * adapter_bytes_per_param
        return cls(
            device,
            costs.client_forward_flops,
            costs.client_backward_flops,
            costs.server_flops,
            steps,
            costs.up_bytes,
            costs.down_bytes,
            adapter_bytes,
            adapter_bytes,
            eval_flops,
            eval_client_flops=eval_client_flops,
            tail_flops=costs.tail_flops,
            server_backward_flops=costs.server_backward_flops,
            tail_down_bytes=costs.tail_down_bytes,
            tail_up_bytes=costs.tail_up_bytes,
        )


@dataclass
class ClientTime:
    """Where one client's round time went (they add up to its ``per_client_s``)."""

    compute_s: float = 0.0
    comm_s: float = 0.0
    server_s: float = 0.0
    wait_s: float = 0.0
    up_s: float = 0.0
    """Of ``comm_s``, the seconds its bytes took going up, latency excluded (what the policy's
    observer divides the bytes by, ``sim/observer.py``)."""
    down_s: float = 0.0
    """The same for the bytes coming down."""


@dataclass(frozen=True)
class RoundTiming:
    """Virtual times of one round; ``per_client_s`` is each client's own span, start to end."""

    makespan_s: float
    per_client_s: dict[int, float]
    server_busy_s: float
    server_busy_share: float
    breakdown: dict[int, ClientTime] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "makespan_s": self.makespan_s,
            "per_client_s": {str(i): t for i, t in self.per_client_s.items()},
            "server_busy_s": self.server_busy_s,
            "server_busy_share": self.server_busy_share,
            "breakdown": {str(i): asdict(t) for i, t in self.breakdown.items()},
        }


class _Client:
    """One client's progress through its round."""

    def __init__(self, work: ClientWork, server: DeviceProfile, start: float) -> None:
        self.work, self.time, self.steps_left = work, ClientTime(), work.steps
        self.evaluating = False  # its last server job, the evaluation, is queued or done
        d = work.device
        self.latency = d.latency_s + server.latency_s
        self.up_bps, self.down_bps = min(d.up_bps, server.down_bps), min(server.up_bps, d.down_bps)
        self.start = self.t = start
        self.jobs = 0  # server jobs served so far
        self.in_tail = False  # U shape: the step's first server job is done, the tail runs next

    @property
    def step_index(self) -> int:
        """The step the next server job belongs to (a U-shaped step has two jobs)."""
        return self.jobs // self.work.jobs_per_step

    def compute(self, flops: float) -> None:
        seconds = flops / self.work.device.flops
        self.t += seconds
        self.time.compute_s += seconds

    def transfer(self, num_bytes: float, up: bool) -> None:
        on_the_wire = num_bytes / (self.up_bps if up else self.down_bps)
        seconds = self.latency + on_the_wire
        self.t += seconds
        self.time.comm_s += seconds
        if up:
            self.time.up_s += on_the_wire
        else:
            self.time.down_s += on_the_wire

    def next_job(self) -> tuple[float, float] | None:
        """(arrival at the server, server FLOPs) of the next job, or None when done."""
        w = self.work
        if self.in_tail:
            return self._tail_job()
        if self.steps_left > 0:
            self.compute(w.forward_flops)
            self.transfer(w.up_bytes, up=True)
            return self.t, w.server_flops
        self.transfer(w.adapter_up_bytes, up=True)
        if w.eval_flops > 0 or w.eval_client_flops > 0:
            self.compute(w.eval_client_flops)  # its blocks of the check, then the server's
            self.evaluating = True
            return self.t, w.eval_flops
        return None

    def served(self, arrival: float, start: float, end: float) -> bool:
        """Account a server job that ran [start, end); False when it was the client's last."""
        self.jobs += 1
        self.time.wait_s += start - arrival
        self.time.server_s += end - start
        self.t = end
        if self.evaluating:
            return False
        if self.work.tail_flops and not self.in_tail:
            self.in_tail = True  # U shape: next_job runs the tail and queues the server's backward
            return True
        self.in_tail = False
        self.steps_left -= 1  # a training step: gradient back, client backward
        self.transfer(self.work.down_bytes, up=False)
        self.compute(self.work.backward_flops)
        return True

    def _tail_job(self) -> tuple[float, float]:
        """U shape: the middle's output down, the tail, head and loss, the gradient up; then the
        server's backward job."""
        w = self.work
        self.transfer(w.tail_down_bytes, up=False)
        self.compute(w.tail_flops)
        self.transfer(w.tail_up_bytes, up=True)
        return self.t, w.server_backward_flops


def _run(
    server: DeviceProfile, clients: dict[int, _Client], server_free: float, in_order: bool = False
) -> float:
    """Run ``clients`` to completion, the server idle from ``server_free``; its busy seconds.

    The server serves jobs FIFO by arrival, or with ``in_order`` in the loop's serving order:
    every client's first job in client order, then every second job, ... (one shared
    server-side adapter set must see the steps in the order they are applied)."""
    busy = 0.0
    pending: dict[int, tuple[float, float]] = {}
    for i, client in clients.items():
        client.transfer(client.work.adapter_down_bytes, up=False)
        client.compute(client.work.local_flops)
        job = client.next_job()
        if job is not None:
            pending[i] = job
    while pending:
        # Every client not done has its next arrival here (computed as soon as its previous
        # job ended), so the earliest one is the next job in FIFO order.
        i = min(pending, key=lambda c: (clients[c].step_index, c) if in_order else (pending[c][0], c))
        arrival, flops = pending.pop(i)
        start = max(arrival, server_free)
        server_free = start + flops / server.flops
        busy += server_free - start
        if clients[i].served(arrival, start, server_free) and (job := clients[i].next_job()) is not None:
            pending[i] = job
    return busy


def simulate_round(
    server: DeviceProfile,
    clients: Mapping[int, ClientWork] | Sequence[ClientWork],
    order: str = "parallel",
    in_order: bool = False,
) -> RoundTiming:
    """Times of one round; ``clients`` maps client index -> work (a sequence: indices 0..n-1);
    ``in_order``: the server serves in client order, not FIFO (see :func:`_run`)."""
    if order not in ORDERS:
        raise ConfigError(f"clock order must be one of {', '.join(ORDERS)} (got {order!r})")
    works = dict(clients) if isinstance(clients, Mapping) else dict(enumerate(clients))
    if order == "parallel":
        state = {i: _Client(w, server, 0.0) for i, w in sorted(works.items())}
        busy = _run(server, state, 0.0, in_order)
    else:
        state, busy, t = {}, 0.0, 0.0
        for i, w in sorted(works.items()):
            state[i] = _Client(w, server, t)
            busy += _run(server, {i: state[i]}, t)
            t = state[i].t  # its server jobs are over: it waited for each
    makespan = max((c.t for c in state.values()), default=0.0)
    return RoundTiming(
        makespan_s=makespan,
        per_client_s={i: c.t - c.start for i, c in state.items()},
        server_busy_s=busy,
        server_busy_share=busy / makespan if makespan > 0 else 0.0,
        breakdown={i: c.time for i, c in state.items()},
    )


@dataclass
class VirtualClock:
    """Virtual time summed over rounds; part of the checkpoint."""

    elapsed_s: float = 0.0
    server_busy_s: float = 0.0
    rounds: int = 0

    def advance(self, timing: RoundTiming) -> float:
        self.elapsed_s += timing.makespan_s
        self.server_busy_s += timing.server_busy_s
        self.rounds += 1
        return self.elapsed_s

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float | int]) -> VirtualClock:
        return cls(float(data["elapsed_s"]), float(data["server_busy_s"]), int(data["rounds"]))


def predict_round(
    profiles: Sequence[DeviceProfile],
    cuts: Sequence[int],
    shape: ModelShape,
    server: DeviceProfile,
    batch: int,
    seq_len: int,
    steps: int = 1,
    wire_dtype: str = "fp32",
    r_others: int = 16,
    r_cut: int = 8,
    order: str = "parallel",
    heldout_samples: int = 0,
    adapted_per_block: Projections | None = None,
    server_r_cut: int | None = None,
    in_order: bool = False,
    formats: Sequence[tuple[str, str | None, str]] | None = None,
    tails: Sequence[int] = (),
) -> RoundTiming:
    """Predicted timing of a round where client ``i`` has ``profiles[i]`` and cuts at ``cuts[i]``
    (and, with ``heldout_samples``, then scores that many held-out sequences, split at its cut).
    ``formats[i]``: client ``i``'s (activation, gradient or None = the same, adapter) formats;
    None: ``wire_dtype`` for both cut tensors and fp32 adapters. ``tails[i]``: client ``i``'s
    U-shape tail (empty: vanilla splits)."""
    if len(profiles) != len(cuts):
        raise ConfigError(f"{len(profiles)} device profiles but {len(cuts)} cuts")
    works = []
    for i, (device, cut) in enumerate(zip(profiles, cuts, strict=True)):
        activations, gradients, adapters = formats[i] if formats else (wire_dtype, None, "fp32")
        costs = StepCosts.for_cut(
            shape,
            cut,
            batch,
            seq_len,
            r_others,
            r_cut,
            adapted_per_block,
            activations,
            server_r_cut,
            gradients,
            tail=tails[i] if tails else 0,
        )
        on_client, on_server = heldout_flops(shape, heldout_samples, seq_len, cut, tails[i] if tails else 0)
        per_param = ADAPTER_BYTES_PER_PARAM[adapters]
        works.append(ClientWork.from_costs(device, costs, steps, on_server, on_client, per_param))
    return simulate_round(server, works, order, in_order)
