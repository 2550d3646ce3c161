"""The run directory: what a run leaves behind (docs/architecture.md, "What a run writes").

``config.toml`` (resolved), ``metrics.jsonl`` (one JSON object per finished round),
``summary.json`` (written last: a run directory without it is not complete), PNG plots, and
the adapters in PEFT format (``adapter/``, ``adapter-best/``). Files are replaced atomically,
so an interrupted run never leaves a half-written file behind; a failed run gets ``FAILED``
with the reason and keeps everything it wrote before.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitft.errors import ConfigError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path) -> RunDirectory:
        """A new, empty run directory; refuses a folder that already holds files."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"--out {path} already exists and is not empty; choose a new folder (nothing was changed)"
            )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def keep_metrics_until(self, round_number: int) -> None:
        """Drop rows after ``round_number`` (a round that finished after the last checkpoint)."""
        rows = [row for row in self.read_metrics() if row["round"] <= round_number]
        write_atomic(self.metrics_path, "".join(json.dumps(row) + "\n" for row in rows))

    def clear_failure(self) -> None:
        (self.path / "FAILED").unlink(missing_ok=True)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_atomic(self.path / name, json.dumps(data, indent=2) + "\n")

    def write_folder(self, name: str, fill: Callable[[Path], None]) -> None:
        """Create folder ``name`` with ``fill(tmp_folder)``, replacing any old one.

        The swap is two renames (a folder cannot replace a non-empty one in one step); a
        crash between them leaves only ``.<name>.old``, which :meth:`folder` then returns.
        """
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{name}."))
        fill(tmp)
        target, old = self.path / name, self.path / f".{name}.old"
        if target.exists():
            if old.exists():  # left by a crash after the swap, before the clean-up
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    def folder(self, name: str) -> Path:
        """Folder ``name``, or its previous version when a crash hit between the two renames
        of :meth:`write_folder`."""
        target, old = self.path / name, self.path / f".{name}.old"
        return old if not target.exists() and old.exists() else target

    def mark_failed(self, reason: str) -> None:
        write_atomic(self.path / "FAILED", reason.rstrip() + "\n")
