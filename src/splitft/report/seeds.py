"""Runs of several settings x seeds, read back for a results table (docs/results.md).

The experiment scripts (``scripts/run_matrix.sh``) write one run folder per setting and seed,
named ``<setting>-s<seed>``; :func:`load_seeded_runs` groups their ``summary.json`` files by
setting, and :func:`spread` gives the mean and half-range that the results tables print
("mean ± half-range": with three seeds a standard deviation says little more).

    >>> spread([10.0, 12.0, 11.0])
    (11.0, 1.0)
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_seeded_runs(root: Path, names: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{setting: [summary of seed 0, of seed 1, ...]}`` for every finished run under ``root``
    (a run folder without ``summary.json`` is unfinished and left out), in seed order;
    ``names`` keeps only those settings."""
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for summary in root.glob("*-s*/summary.json"):
        name, _, seed = summary.parent.name.rpartition("-s")
        if not seed.isdigit() or (names is not None and name not in names):
            continue
        runs[name].append((int(seed), json.loads(summary.read_text())))
    return {name: [s for _, s in sorted(found, key=lambda x: x[0])] for name, found in runs.items()}


def seeds_of(root: Path, name: str) -> list[int]:
    """The seeds of setting ``name`` that finished under ``root``, ascending."""
    found = [p.parent.name.rpartition("-s")[2] for p in root.glob(f"{name}-s*/summary.json")]
    return sorted(int(s) for s in found if s.isdigit())


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half the range (max - min) / 2 of ``values``."""
    if not values:
        raise ValueError("spread of no values")
    return statistics.mean(values), (max(values) - min(values)) / 2
