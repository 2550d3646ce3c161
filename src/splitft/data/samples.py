"""What every corpus loader shares: :class:`Sample`, :class:`Corpus`, where shared data
folders are looked for, and reading text files with every failure a
:class:`~splitft.errors.DataError` naming the path and what was expected.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitft.errors import DataError

__all__ = ["DATA_DIR_ENV", "Corpus", "Sample", "data_dir_candidates", "find_data_dir"]

DATA_DIR_ENV = "SPLITFT_DATA_DIR"


@dataclass
class Sample:
    """One training text and its metadata columns."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Corpus:
    """The splits of one source. ``validation``/``test`` are None when the source has none."""

    name: str
    train: list[Sample]
    validation: list[Sample] | None = None
    test: list[Sample] | None = None
    notes: list[str] = field(default_factory=list)
    """Caveats worth reporting (e.g. a split that was substituted)."""

    def splits(self) -> dict[str, list[Sample] | None]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def describe(self) -> dict[str, Any]:
        """JSON-able facts: name, samples and characters per split (None = split absent)."""
        facts: dict[str, Any] = {"name": self.name}
        for split, samples in self.splits().items():
            facts[f"{split}_samples"] = None if samples is None else len(samples)
            facts[f"{split}_chars"] = None if samples is None else sum(len(s.text) for s in samples)
        if self.notes:
            facts["notes"] = list(self.notes)
        return facts


def _repo_root() -> Path:
    """The checkout root when running from source (``<repo>/src/splitft/data/samples.py``)."""
    return Path(__file__).resolve().parents[3]


def data_dir_candidates(name: str, path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where a shared data folder ``name`` is looked for, in order."""
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path).expanduser())
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        candidates.append(Path(env).expanduser() / name)
    candidates.append(_repo_root().parent / "shared" / "data" / name)
    candidates.append(Path.cwd().parent / "shared" / "data" / name)
    return candidates


def find_data_dir(name: str, path: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing folder among :func:`data_dir_candidates`, or None.

    An explicit ``path`` that does not exist is an error rather than a fall-through: the user
    asked for that folder.
    """
    if path is not None and not Path(path).expanduser().is_dir():
        raise DataError(f"data folder {path} does not exist (expected a folder in the {name} layout)")
    for candidate in data_dir_candidates(name, path):
        if candidate.is_dir():
            return candidate
    return None


def missing_dir_error(name: str, fix: str) -> DataError:
    tried = ", ".join(str(p) for p in data_dir_candidates(name))
    return DataError(f"no local copy of {name} found (tried {tried}); {fix}")


def read_text(path: Path, what: str) -> str:
    """Read a UTF-8 text file (``.xz`` is decompressed); every failure is a DataError."""
    if not path.exists():
        raise DataError(f"{path} does not exist (expected {what})")
    if not path.is_file():
        raise DataError(f"{path} is not a file (expected {what})")
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except PermissionError as e:
        raise DataError(f"{path} is not readable (permission denied); expected {what}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); expected {what}") from e
    except (OSError, lzma.LZMAError) as e:
        raise DataError(f"{path} cannot be read ({e}); expected {what}") from e


def split_lines(text: str) -> list[str]:
    """Split on newlines only (``str.splitlines`` also splits on form feeds and U+2028)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def require_samples(samples: list[Sample], path: Path, what: str) -> list[Sample]:
    if not samples:
        raise DataError(f"{path} holds no samples (expected {what})")
    return samples


def jsonl_records(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(split_lines(read_text(path, what)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: invalid JSON ({e.msg}, column {e.colno})") from e
        except RecursionError:
            raise DataError(f"{path}, line {number}: invalid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def string_field(record: dict[str, Any], key: str, path: Path, number: int) -> str:
    if key not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(f"{path}, line {number}: no field '{key}' (available keys: {keys})")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{path}, line {number}: field '{key}' is {type(value).__name__}, expected a string")
    return value
