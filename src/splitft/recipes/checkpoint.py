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

from safetensors.torch import save_file

from splitft.errors import DataError
from splitft.files import load_tensors, read_json_object
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


def exists(run: RunDirectory) -> bool:
    """Whether the run saved a checkpoint (a run killed in its first round has none)."""
    return (run.folder(FOLDER) / "state.json").exists()


def load(run: RunDirectory) -> dict[str, Any]:
    """The state :func:`save` wrote last (tensors on the CPU); DataError naming the file when
    it is damaged."""
    folder = run.folder(FOLDER)
    rest = read_json_object(folder / "state.json", "checkpoint file", keys=("round", "loop", "fit"))
    tensors = load_tensors(folder / "tensors.safetensors", "checkpoint file")
    if type(rest["round"]) is not int or rest["round"] < 1:
        raise DataError(f"checkpoint file {folder / 'state.json'} is damaged: round = {rest['round']!r}")
    try:
        return join_state(tensors, rest)
    except (AttributeError, TypeError) as err:  # a tensor path runs through a non-table value
        raise DataError(
            f"checkpoint {folder} is damaged: its tensors do not fit state.json ({err})"
        ) from None
