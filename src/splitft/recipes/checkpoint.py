"""Checkpoint and resume: a run continues exactly where it stopped.

After every round the run directory gets ``checkpoint/`` (replaced atomically), holding one
state dict: ``{"round", "loop": loop.state_dict(), "fit": ...}``. Every stateful object (loop,
fed server, main server, clients, trainers, optimizers, clock, ledger) says what its state is
through ``state_dict()`` / ``load_state_dict()``; this module only stores what it is given:
the tensors in ``tensors.safetensors`` (keyed by their path in the state) and the rest in
``state.json`` (:mod:`splitft.wire.state`). No pickle anywhere.

No global random state needs saving: after ``setup`` every random choice is keyed by the
seed and the round, client or epoch (client sampling, batch order), so restoring the counters
restores the randomness. Resuming four rounds as 2 + 2 gives the metrics of 4 rounds straight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from splitft.errors import ConfigError
from splitft.report.rundir import RunDirectory
from splitft.wire.state import join_state, split_state

FOLDER = "checkpoint"


def save(run: RunDirectory, state: dict[str, Any]) -> None:
    """Write ``state`` (all of it, or nothing: one atomic folder swap)."""
    tensors, rest = split_state(state)

    def fill(folder: Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
        (folder / "state.json").write_text(json.dumps(rest) + "\n")

    run.write_folder(FOLDER, fill)


def load(run: RunDirectory) -> dict[str, Any]:
    """The state :func:`save` wrote last (tensors on the CPU)."""
    folder = run.folder(FOLDER)
    if not (folder / "state.json").exists():
        raise ConfigError(f"--resume {run.path}: no checkpoint/ found (was the run started by this version?)")
    try:
        rest = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume {run.path}: the checkpoint cannot be read ({err})") from None
    return join_state(tensors, rest)
