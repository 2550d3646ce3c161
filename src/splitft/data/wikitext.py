"""The ``wikitext-2`` / ``wikitext-2-raw`` corpora: WikiText-2, one paragraph line per sample."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from splitft.data.samples import (
    DATA_DIR_ENV,
    Corpus,
    Sample,
    find_data_dir,
    missing_dir_error,
    read_text,
    require_samples,
    split_lines,
)
from splitft.errors import DataError

__all__ = ["is_wikitext_dir", "is_wikitext_heading", "load_wikitext2", "wikitext_samples"]

_WIKI_HEADING = re.compile(r"^ *(?:= )+.*?(?: =)+ *$")
_WIKI_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
_WIKI_FIX = (
    f"put WikiText-2 there (layout: tokens/wiki.{{train.tokens.xz,valid.tokens,test.tokens}}), set "
    f"{DATA_DIR_ENV} to a folder holding wikitext-2/, pass an explicit path, or pip install datasets"
)


def is_wikitext_heading(line: str) -> bool:
    """Whether a WikiText line is an article or section heading (`` = Title = ``, `` = = S = = ``)."""
    return bool(_WIKI_HEADING.match(line))


def wikitext_samples(lines: list[str], keep_headings: bool = False) -> list[Sample]:
    """One sample per non-empty line (stripped); headings only when ``keep_headings``."""
    samples = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        heading = is_wikitext_heading(line)
        if heading and not keep_headings:
            continue
        samples.append(Sample(text, {"line": number, "heading": heading}))
    return samples


def is_wikitext_dir(path: Path) -> bool:
    """Whether ``path`` looks like the WikiText-2 layout (tokens/ or raw/ with wiki.* files)."""
    return any((path / sub).is_dir() and any((path / sub).glob("wiki.*")) for sub in ("tokens", "raw"))


def _wiki_file(root: Path, sub: str, split: str) -> Path | None:
    suffix = "tokens" if sub == "tokens" else "raw"
    for name in (f"wiki.{split}.{suffix}", f"wiki.{split}.{suffix}.xz"):
        if (root / sub / name).is_file():
            return root / sub / name
    return None


def load_wikitext2(
    path: str | os.PathLike[str] | None = None, raw: bool = False, keep_headings: bool = False
) -> Corpus:
    """WikiText-2, one sample per non-empty line.

    ``raw=False`` reads the v1 tokenized files (``tokens/``, with ``<unk>``), ``raw=True`` the
    raw ones (``raw/``). The raw train split is often missing (it is in ``../shared/data``):
    then train comes from ``tokens/`` and ``Corpus.notes`` says so. Headings are dropped
    unless ``keep_headings``. ``meta`` = ``{"line": <1-based line number>, "heading": bool}``.

    The folder is looked for at ``path``, ``$SPLITFT_DATA_DIR/wikitext-2``,
    ``<repo>/../shared/data/wikitext-2`` and ``<cwd>/../shared/data/wikitext-2``; when none
    exists the Hugging Face ``datasets`` library is used if it is installed.
    """
    name = "wikitext-2-raw" if raw else "wikitext-2"
    root = find_data_dir("wikitext-2", path)
    if root is None:
        if importlib.util.find_spec("datasets") is None:
            raise missing_dir_error("wikitext-2", _WIKI_FIX)
        return _load_wikitext2_hub(raw, keep_headings)
    if not is_wikitext_dir(root):
        raise DataError(
            f"{root} is not in the WikiText-2 layout (expected tokens/ or raw/ with wiki.* files)"
        )
    splits: dict[str, list[Sample]] = {}
    notes: list[str] = []
    for split, file_split in _WIKI_SPLITS.items():
        wanted = "raw" if raw else "tokens"
        found = _wiki_file(root, wanted, file_split)
        if found is None and raw:
            found = _wiki_file(root, "tokens", file_split)
            if found is not None:
                notes.append(f"{split} split read from the tokenized file {found} (no raw {split} file)")
        if found is None:
            raise DataError(
                f"{root / wanted} has no wiki.{file_split}.{'raw' if raw else 'tokens'}[.xz] "
                f"(the {split} split of the WikiText-2 layout)"
            )
        what = f"the WikiText-2 {split} split"
        splits[split] = require_samples(
            wikitext_samples(split_lines(read_text(found, what)), keep_headings), found, what
        )
    return Corpus(name, splits["train"], splits["validation"], splits["test"], notes)


def _load_wikitext2_hub(raw: bool, keep_headings: bool) -> Corpus:  # pragma: no cover - needs network
    import datasets  # type: ignore[import-not-found]

    config = "wikitext-2-raw-v1" if raw else "wikitext-2-v1"
    try:
        dsd = datasets.load_dataset("wikitext", config)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise missing_dir_error("wikitext-2", f"and load_dataset('wikitext', '{config}') failed: {e}") from e
    splits = {
        split: wikitext_samples([row.rstrip("\n") for row in dsd[split]["text"]], keep_headings)
        for split in _WIKI_SPLITS
    }
    name = "wikitext-2-raw" if raw else "wikitext-2"
    return Corpus(name, splits["train"], splits["validation"], splits["test"], [f"from the hub ({config})"])
