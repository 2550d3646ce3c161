"""Checkpoint and resume (design.md section 4): a run continues exactly where it stopped.

After every round the run directory gets ``checkpoint/`` (replaced atomically):
``tensors.safetensors`` (the global adapters, every client's and every server copy's adapter
tensors and AdamW moments) and ``state.json`` (round number, cuts, accuracies, policy and
merge bookkeeping, dropped clients, each client's position in its data stream, the byte
ledger, the virtual clock, the best round so far). No pickle anywhere.

A client's state is asked of the client itself (``Client.export_state`` / ``restore_state``:
codec bytes through the runtime, called directly so the byte ledger does not count them), so
checkpoints work wherever clients run, in-process or on FLARE sites, and across the two.

No global random state needs saving: after ``setup`` every random choice is keyed by the
seed and the round, client or epoch (client sampling, batch order), so restoring the counters
restores the randomness. Resuming four rounds as 2 + 2 gives the metrics of 4 rounds straight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from splitft.algorithms.optim import optimizer_tensors, restore_optimizer
from splitft.errors import ConfigError
from splitft.methods.split_loop import RoundLoop, client_role
from splitft.methods.whole_model import WholeModelLoop, WholeModelTrainer
from splitft.report.rundir import RunDirectory
from splitft.runtime.base import CallFailure
from splitft.sim.clock import VirtualClock
from splitft.wire.codec import Entry, encode_message
from splitft.wire.messages import control, read

FOLDER = "checkpoint"


def save(run: RunDirectory, loop: RoundLoop, round_number: int, extra: dict[str, Any]) -> None:
    """Write the state after ``round_number`` (all of it, or nothing: one atomic rename)."""
    if isinstance(loop, WholeModelLoop):
        tensors, state = _whole_model_state(loop)
        _write(run, tensors, {"round": round_number, **state, **extra})
        return
    tensors: dict[str, torch.Tensor] = {f"global/{n}": t for n, t in loop.main_server.global_adapters.items()}
    clients = {}
    for i in range(loop.num_clients):
        if i in loop.dropped:
            continue  # never called again, and its process may be gone
        result = loop.runtime.call(client_role(i), "export_state", control())  # not training traffic
        if isinstance(result, CallFailure):
            loop.drop_late(round_number, i, "export_state", result.error)
            continue
        message = read(result)
        clients[i] = message.pop("control")
        prefix = f"client{i}/"
        tensors.update({prefix + k.removeprefix("client/"): v for k, v in message.items()})
    copies = {}
    for i, copy in loop.main_server.copies.items():
        copies[i] = copy.cut
        tensors.update(optimizer_tensors(f"server{i}", copy.optimizer))
    state = {
        "round": round_number,
        "previous_cuts": loop.previous_cuts,
        "accuracy": loop.accuracy,
        "cut_blocks": sorted(loop.cut_blocks),
        "version": loop.version,
        "synced": {i: list(v) for i, v in loop.synced.items()},
        "pending_reset": {i: sorted(v) for i, v in loop.pending_reset.items()},
        "dropped": sorted(loop.dropped),
        "clock": loop.clock.to_dict(),
        "ledger": loop.ledger.to_dict(),
        "clients": clients,
        "server_copies": copies,
        **extra,
    }

    _write(run, tensors, state)


def _write(run: RunDirectory, tensors: Mapping[str, torch.Tensor], state: dict[str, Any]) -> None:
    def fill(folder: Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
        (folder / "state.json").write_text(json.dumps(state) + "\n")

    run.write_folder(FOLDER, fill)


def load(run: RunDirectory, loop: RoundLoop) -> dict[str, Any]:
    """Restore ``loop`` (built by ``setup`` from the run's config) to the saved round."""
    folder = run.folder(FOLDER)
    if not (folder / "state.json").exists():
        raise ConfigError(f"--resume {run.path}: no checkpoint/ found (was the run started by this version?)")
    try:
        state = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume {run.path}: the checkpoint cannot be read ({err})") from None
    if isinstance(loop, WholeModelLoop):
        _restore_whole_model(loop, state, tensors)
        return state
    device = loop.main_server.model.device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    loop.main_server.global_adapters = {
        k.removeprefix("global/"): v for k, v in tensors.items() if k.startswith("global/")
    }
    for key, cut in state["server_copies"].items():
        i = int(key)
        loop.main_server.begin_round(i, cut)
        restore_optimizer(f"server{i}", loop.main_server.copies[i].optimizer, tensors)
    loop.dropped = set(state["dropped"])
    for key, meta in state["clients"].items():
        i = int(key)
        prefix = f"client{i}/"
        entries = [Entry("control", "control", meta)]
        entries += [
            Entry("client/" + k.removeprefix(prefix), "adapters", v.cpu())
            for k, v in tensors.items()
            if k.startswith(prefix)
        ]
        result = loop.runtime.call(client_role(i), "restore_state", encode_message(entries).data)
        if isinstance(result, CallFailure):
            loop.drop_late(state["round"], i, "restore_state", result.error)
    loop.previous_cuts = state["previous_cuts"]
    loop.accuracy = {int(i): a for i, a in state["accuracy"].items()}
    loop.cut_blocks = set(state["cut_blocks"])
    loop.version = state["version"]
    loop.synced = {int(i): tuple(v) for i, v in state["synced"].items()}
    loop.pending_reset = {int(i): set(v) for i, v in state["pending_reset"].items()}
    loop.clock = VirtualClock.from_dict(state["clock"])
    loop.ledger.restore(state["ledger"])  # in place: the Experiment and the loop share it
    return state


def _trainers(loop: WholeModelLoop) -> dict[str, WholeModelTrainer]:
    if loop.trainer is not None:
        return {"trainer": loop.trainer}
    return {f"client{role.client_id}": role for role in loop.runtime.roles.values()}


def _whole_model_state(loop: WholeModelLoop) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """fedlora / centralized: global adapters, each trainer's AdamW state and data position."""
    tensors: dict[str, torch.Tensor] = {f"global/{n}": t for n, t in loop.global_adapters.items()}
    for prefix, trainer in _trainers(loop).items():
        tensors.update(optimizer_tensors(prefix, trainer.optimizer))
    state = {
        "batches_taken": {prefix: t.batches_taken for prefix, t in _trainers(loop).items()},
        "dropped": sorted(loop.dropped),
        "clock": loop.clock.to_dict(),
        "ledger": loop.ledger.to_dict(),
    }
    return tensors, state


def _restore_whole_model(
    loop: WholeModelLoop, state: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    trainers = _trainers(loop)
    device = next(iter(trainers.values())).model.device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    loop.global_adapters = {
        k.removeprefix("global/"): v for k, v in tensors.items() if k.startswith("global/")
    }
    for prefix, trainer in trainers.items():
        restore_optimizer(prefix, trainer.optimizer, tensors)
        trainer.skip_batches(state["batches_taken"][prefix])
    loop.clock = VirtualClock.from_dict(state["clock"])
    loop.dropped = set(state["dropped"])
    loop.ledger.restore(state["ledger"])
