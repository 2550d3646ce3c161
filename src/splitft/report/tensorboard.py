"""Optional TensorBoard event files of a run (``eval.tensorboard = true``).

The run directory's ``metrics.jsonl`` stays the source of truth; this mirrors every numeric
value of each row as a scalar, tagged by its path (``bytes_by_kind/activations``,
``cuts/2`` for client 2's cut), at step = the round. View with
``tensorboard --logdir RUN_DIR/tensorboard``. tensorboardX writes the standard event format
without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter

FOLDER = "tensorboard"


def scalars(value: Any, tag: str = "") -> Iterator[tuple[str, float]]:
    """``(tag, number)`` of every number in a metrics row (nested dicts and lists; text skipped)."""
    if isinstance(value, int | float):  # bools too (as 0/1)
        yield tag, float(value)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from scalars(inner, f"{tag}/{key}" if tag else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from scalars(inner, f"{tag}/{i}")


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        self.writer = SummaryWriter(str(run_dir / FOLDER))

    def log(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for tag, number in scalars({k: v for k, v in row.items() if k != "round"}):
            self.writer.add_scalar(tag, number, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
