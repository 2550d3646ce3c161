"""Reading and writing the files SplitFT keeps, so that every fault is one clear error.

Reads: a file that is missing, unreadable, truncated or corrupt raises :class:`DataError`
naming the file and what is wrong (never a traceback, never a change on disk). Writes go
through a temporary file and a rename (:func:`write_atomic`): a crash or a full disk leaves
the old file whole and no temporary behind for long (the next write of that file removes
any left over), and the new file gets the usual permissions (0666 less the umask), as
``open`` would give it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:  # torch only where tensors are read: configs and metrics need none of it
    import torch

from splitft.errors import DataError

READ_ERRORS = (OSError, ValueError, RecursionError, SafetensorError)
"""What reading a damaged file raises (UnicodeDecodeError and JSONDecodeError are ValueErrors;
JSON nested too deep is a RecursionError)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """What ``open`` (0o666) or ``mkdir`` (0o777) would give, less the umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove temporaries ``<prefix>*`` a killed write left in ``folder``."""
    for stale in folder.glob(f"{prefix}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    remove_leftovers(path.parent, f".{path.name}.tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _why(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "it is nested too deeply"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_text(path: Path, what: str = "file") -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except READ_ERRORS as err:
        raise DataError(f"{what} {path} cannot be read: {_why(err)}") from None


def read_json(path: Path, what: str = "file") -> Any:
    """A JSON file's value; DataError naming the file when it is missing, unreadable or not JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except READ_ERRORS as err:
        raise DataError(f"{what} {path} is not valid JSON: {_why(err)}") from None


def read_json_object(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON file holding an object with (at least) ``keys``."""
    value = read_json(path, what)
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if not isinstance(value, dict) or missing:
        raise DataError(f"{what} {path} is damaged: it lacks {', '.join(missing) or 'a JSON object'}")
    return value


def read_jsonl(path: Path, drop_partial_last: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one a line; a bad line is a DataError naming its number.

    With ``drop_partial_last``, a last line without its newline that does not parse (a write
    cut short by a kill or a full disk) is left out instead.
    """
    text = read_text(path, "metrics file")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except READ_ERRORS as err:
            if drop_partial_last and number == len(lines):  # no newline after it: cut short
                break
            raise DataError(f"{path}: line {number} is not valid JSON ({_why(err)})") from None
        if not isinstance(row, dict) or type(row.get("round")) is not int:
            raise DataError(f"{path}: line {number} is not a round's record (no integer 'round')")
        rows.append(row)
    return rows


def load_tensors(path: Path, what: str = "file") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU); DataError naming the file when damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except READ_ERRORS as err:
        raise DataError(f"{what} {path} cannot be read: {_why(err)}") from None
