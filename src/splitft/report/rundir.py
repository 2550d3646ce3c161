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
from splitft.files import default_mode, read_jsonl, remove_leftovers, write_atomic

__all__ = ["RunDirectory", "write_atomic"]


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path) -> RunDirectory:
        """A new, empty run directory; refuses a folder that already holds files."""
        path = Path(path)
        # Only temporaries of a run killed before it wrote anything: as good as empty.
        if path.exists() and (not path.is_dir() or any(not p.name.startswith(".") for p in path.iterdir())):
            hint = (
                "; to continue a run stopped there, use --resume" if (path / "config.toml").exists() else ""
            )
            raise ConfigError(
                f"--out {path} already exists and is not empty; choose a new folder (nothing was changed){hint}"
            )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self, drop_partial_last: bool = False) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (DataError naming the line when one is damaged; with
        ``drop_partial_last``, a last row cut short by a kill is left out)."""
        if not self.metrics_path.exists():
            return []
        return read_jsonl(self.metrics_path, drop_partial_last)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``rows`` (resuming: the rounds the checkpoint holds)."""
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
        remove_leftovers(self.path, f".{name}.tmp")  # of a write killed before its swap
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{name}.tmp"))
        try:
            tmp.chmod(default_mode(folder=True))
            fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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

    def mark_failed(self, reason: str) -> bool:
        """Write ``FAILED`` with ``reason``; False when the folder cannot take it (a read-only
        folder, a full disk: the failure being reported may be exactly that)."""
        try:
            write_atomic(self.path / "FAILED", reason.rstrip() + "\n")
        except OSError:
            return False
        return True
