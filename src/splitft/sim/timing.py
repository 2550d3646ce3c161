"""Virtual time of a run: device profiles + cost model + the round clock (docs/architecture.md, D8).

:class:`RoundTimer` ties the pieces to a run's config: it knows every client's device, the
server's, and the model's shape. It predicts a round for any cuts (what the resource policies
minimise) and times a round that happened from what it actually did (the padded batch shapes
of its steps and the bytes the codec produced, from the ledger). Nothing measured at run time
enters, so two runs of one config get identical virtual times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from splitft.config import Config
from splitft.config_codec import client_format
from splitft.sim.clock import ClientTime, ClientWork, RoundTiming, predict_round, simulate_round
from splitft.sim.conditions import Conditions, load_conditions
from splitft.sim.costs import ModelShape, StepCosts, heldout_flops, unsplit_step_flops
from splitft.sim.devices import DeviceProfile, parse_profiles, server_profile
from splitft.sim.memory import check_fits, whole_model_memory_bytes
from splitft.wire.ledger import ByteLedger


class Devices(Protocol):
    """Devices as someone sees them: the clock under the round's conditions
    (``sim/conditions.py`` Snapshot) or the policy from what it observed (``sim/observer.py``)."""

    def device(self, i: int, profile: DeviceProfile) -> DeviceProfile: ...

    def server_device(self, profile: DeviceProfile) -> DeviceProfile: ...


def server_speed(value: str) -> str | float:
    """``devices.server``: a named speed, or a number of FLOP/s written as text."""
    try:
        return float(value)
    except ValueError:
        return value


class RoundTimer:
    def __init__(
        self,
        cfg: Config,
        model_config: object,
        num_blocks: int,
        splits: bool = True,
        heldout_samples: int = 0,
    ) -> None:
        """``splits``: whether the method cuts the model (else every cut is moot);
        ``heldout_samples``: sequences each client scores per round for its policy (0: none)."""
        self.cfg = cfg
        self.heldout_samples = heldout_samples
        self.in_order = cfg.split.server_adapters == "shared"
        """One shared server-side set: the server serves steps in client order (roles/shared_server.py)."""
        self.shape = ModelShape.from_hf_config(model_config)
        n = cfg.federation.num_clients
        self.devices: list[DeviceProfile] = parse_profiles(cfg.devices.clients or cfg.devices.preset, n)
        self.server = server_profile(server_speed(cfg.devices.server))
        self.tails = [cfg.split.tail_of(i) for i in range(n)]
        """Each client's U-shape tail (0: vanilla): on its device, in its memory and its steps."""
        self.conditions: Conditions = load_conditions(
            cfg.devices.conditions, n, cfg.seed, cfg.devices.change_every_s
        )
        """The truth the clock times rounds under; the policy never reads it (sim/observer.py)."""
        lora = cfg.lora
        # The frozen base and its activations take the compute dtype's bytes (model/precision.py).
        self.whole_model_bytes = whole_model_memory_bytes(
            self.shape, cfg.train.batch_size, cfg.data.max_length, lora.r_others, cfg.compute_dtype
        )
        self.whole_model_fits = [d.memory_bytes >= self.whole_model_bytes for d in self.devices]
        """Whether each client's device can train the whole model (fedlora)."""
        if not splits:
            self.max_cut = [num_blocks - 1] * n
            return
        fits = check_fits(
            self.shape,
            self.devices,
            cfg.train.batch_size,
            cfg.data.max_length,
            lora.r_others,
            lora.client_cut_rank,
            tails=self.tails,
            loss_chunk=cfg.loss_chunk,
            compute_dtype=cfg.compute_dtype,
        )
        self.max_cut = [min(c, num_blocks - 1) for c in fits]
        """Largest cut each client's memory holds (a client that holds no block is a ConfigError)."""

    @property
    def formats(self) -> list[tuple[str, str | None, str]]:
        """Each client's (activation, gradient, adapter) wire formats, as the codec will send
        them (gradients None = as activations: configs without codec lists predict as before)."""
        codec = self.cfg.codec
        legacy = not codec.activations and not codec.gradients
        return [
            (
                client_format(codec.activations, i, codec.activation_dtype),
                None if legacy else client_format(codec.gradients, i, codec.gradient_dtype),
                client_format(codec.adapters, i, "fp32"),
            )
            for i in range(self.cfg.federation.num_clients)
        ]

    def predict(
        self,
        cuts: Sequence[int],
        clients: Sequence[int] | None = None,
        estimate: Devices | None = None,
        wire: Sequence[str | None] | None = None,
        heldout: bool = True,
    ) -> RoundTiming:
        """Predicted timing of a full-length round with ``cuts`` (one per client, in client
        order) for ``clients`` (None: every client; timing keys are positions in that list).
        ``estimate`` gives the devices as the policy knows them (None: the profiles); ``wire``
        a format of activations and gradients per client replacing the configured one where
        not None; ``heldout``: whether the round ends with the held-out check."""
        cfg = self.cfg
        chosen = list(range(len(cuts))) if clients is None else list(clients)
        devices = (
            self.devices if estimate is None else [estimate.device(i, d) for i, d in enumerate(self.devices)]
        )
        formats = self.formats
        if wire is not None:
            formats = [(w, w, f[2]) if w is not None else f for f, w in zip(formats, wire, strict=True)]
        timing = predict_round(
            [devices[i] for i in chosen],
            [cuts[i] for i in chosen],
            self.shape,
            self.server if estimate is None else estimate.server_device(self.server),
            cfg.train.batch_size,
            cfg.data.max_length,
            steps=cfg.federation.local_steps,
            wire_dtype=cfg.codec.activation_dtype,
            r_others=cfg.lora.r_others,
            r_cut=cfg.lora.client_cut_rank,
            server_r_cut=cfg.lora.server_cut_rank,
            order=cfg.devices.order,
            heldout_samples=self.heldout_samples if heldout else 0,
            in_order=self.in_order,
            formats=[formats[i] for i in chosen],
            tails=[self.tails[i] for i in chosen],
        )
        if clients is None:
            return timing
        return replace(  # keyed by client index, not by position among the chosen
            timing,
            per_client_s={chosen[k]: t for k, t in timing.per_client_s.items()},
            breakdown={chosen[k]: t for k, t in timing.breakdown.items()},
        )

    def actual(
        self,
        round_number: int,
        cuts: Sequence[int],
        step_shapes: Mapping[int, Sequence[tuple[int, int]]],
        ledger: ByteLedger,
        conditions: Devices | None = None,
        heldout: bool = True,
    ) -> RoundTiming:
        """Timing of a round that happened: client ``i`` ran steps of (batch, seq_len) shapes,
        on its device under ``conditions`` (None: the profiles)."""
        works = self.actual_works(round_number, cuts, step_shapes, ledger, heldout)
        return self.simulate(works, conditions)

    def simulate(self, works: Mapping[int, ClientWork], conditions: Devices | None = None) -> RoundTiming:
        """The clock on ``works`` (each at its client's profile) under ``conditions``."""
        server = self.server
        if conditions is not None:
            works = {i: replace(w, device=conditions.device(i, w.device)) for i, w in works.items()}
            server = conditions.server_device(server)
        return simulate_round(server, works, self.cfg.devices.order, self.in_order)

    def actual_works(
        self,
        round_number: int,
        cuts: Sequence[int],
        step_shapes: Mapping[int, Sequence[tuple[int, int]]],
        ledger: ByteLedger,
        heldout: bool = True,
    ) -> dict[int, ClientWork]:
        """What each client did in a round that happened, at its profile: FLOPs from its step
        shapes, bytes from the ledger (``heldout``: whether the round ran the held-out check)."""
        cfg = self.cfg
        samples = self.heldout_samples if heldout else 0
        works = {}
        for i, shapes in step_shapes.items():
            flows = ledger.client_round(round_number, i)
            steps = max(len(shapes), 1)
            costs = [
                StepCosts.for_cut(
                    self.shape,
                    cuts[i],
                    b,
                    t,
                    cfg.lora.r_others,
                    cfg.lora.client_cut_rank,
                    server_r_cut=cfg.lora.server_cut_rank,
                    tail=self.tails[i],
                )
                for b, t in shapes
            ]
            mean = lambda attr, costs=costs: sum(getattr(c, attr) for c in costs) / max(len(costs), 1)  # noqa: E731
            eval_client, eval_server = heldout_flops(
                self.shape, samples, cfg.data.max_length, cuts[i], self.tails[i]
            )
            works[i] = ClientWork(
                self.devices[i],
                mean("client_forward_flops"),
                mean("client_backward_flops"),
                mean("server_flops"),
                steps=len(shapes),
                up_bytes=(flows["up"]["total"] - flows["up"]["adapters"]) / steps,
                down_bytes=(flows["down"]["total"] - flows["down"]["adapters"]) / steps,
                adapter_down_bytes=flows["down"]["adapters"],
                adapter_up_bytes=flows["up"]["adapters"],
                eval_flops=eval_server,
                eval_client_flops=eval_client,
            )
            if self.tails[i]:
                works[i] = u_shaped_legs(works[i], flows, steps, mean)
        return works

    def _whole_model_flops(self, shapes: Sequence[Sequence[int]]) -> float:
        ranks = [self.cfg.lora.r_others] * self.shape.num_blocks
        return float(sum(unsplit_step_flops(self.shape, b, t, ranks) for b, t in shapes))

    def whole_model(
        self, round_number: int, step_shapes: Mapping[int, Sequence[Sequence[int]]], ledger: ByteLedger
    ) -> RoundTiming:
        """A fedlora round: each client downloads the adapters, trains the whole model on its
        own device, uploads; nothing waits for the server."""
        works = {}
        for i, shapes in step_shapes.items():
            flows = ledger.client_round(round_number, i)
            works[i] = ClientWork(
                self.devices[i],
                0.0,
                0.0,
                0.0,
                steps=0,
                adapter_down_bytes=flows["down"]["total"],
                adapter_up_bytes=flows["up"]["total"],
                local_flops=self._whole_model_flops(shapes),
            )
        return simulate_round(self.server, works, self.cfg.devices.order)

    def centralized(self, shapes: Sequence[Sequence[int]]) -> RoundTiming:
        """A centralized round: every step on the main server's device, no transfer."""
        seconds = self._whole_model_flops(shapes) / self.server.flops
        return RoundTiming(
            seconds, {0: seconds}, seconds, 1.0 if seconds else 0.0, {0: ClientTime(compute_s=seconds)}
        )


def u_shaped_legs(
    work: ClientWork, flows: Mapping[str, Mapping[str, int]], steps: int, mean: Callable[[str], float]
) -> ClientWork:
    """A U-shaped client's round (docs/architecture.md, D15): its steps' four legs from the
    ledger (activations down feed the tail, gradients up leave it; the rest of each direction,
    framing and the attention mask included, is the vanilla legs'), and the tail's FLOPs."""
    activations_down, gradients_up = flows["down"]["activations"], flows["up"]["gradients"]
    return replace(
        work,
        up_bytes=work.up_bytes - gradients_up / steps,
        down_bytes=work.down_bytes - activations_down / steps,
        tail_down_bytes=activations_down / steps,
        tail_up_bytes=gradients_up / steps,
        tail_flops=mean("tail_flops"),
        server_backward_flops=mean("server_backward_flops"),
    )
