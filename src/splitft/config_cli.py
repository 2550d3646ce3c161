"""The ``--section.field`` options of the commands that take a config (``splitft train``, ...).

One option per config field, its help text the docstring under the field; the values are
parsed by :meth:`splitft.config.Config.with_overrides`, so the command line, TOML files and
Python overrides share one parser and one set of error messages.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import textwrap
from typing import Any

from splitft.config import FIELD_TYPES, SECTIONS, Config
from splitft.config_io import TYPES

__all__ = ["add_config_arguments", "config_from_args", "field_docs"]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, on one line (undocumented fields left out)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):  # each statement with the one after it
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _show(value: Any) -> str:
    """A default as one would type it on the command line."""
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if value == "" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--section.field`` (and ``--seed`` etc.) for every field, one help group per section.

    Options default to ``argparse.SUPPRESS`` so the namespace holds only those given.
    """
    groups = {name: (parser.add_argument_group(f"[{name}]"), cls) for name, cls in SECTIONS.items()}
    groups[""] = (parser.add_argument_group("[top-level]"), Config)
    docs = {section: field_docs(cls) for section, (_, cls) in groups.items()}
    defaults = Config()
    for key, tp in FIELD_TYPES.items():
        section, _, name = key.rpartition(".")
        default = getattr(getattr(defaults, section) if section else defaults, name)
        help_text = f"{docs[section].get(name, '')} (default: {_show(default)})"
        groups[section][0].add_argument(
            f"--{key}",
            dest=key,
            type=str,  # parsed by with_overrides, so CLI and Python overrides share one parser
            default=argparse.SUPPRESS,
            metavar=TYPES[tp][2],
            help=help_text.strip().replace("%", "%%"),  # argparse %-formats help strings
        )


def config_from_args(ns: argparse.Namespace, config_file: str | os.PathLike[str] | None) -> Config:
    """Load ``config_file`` (or the defaults), apply the options given, validate and return it."""
    cfg = Config.from_toml(config_file) if config_file else Config()
    cfg = cfg.with_overrides({k: v for k, v in vars(ns).items() if k in FIELD_TYPES})
    cfg.validate()
    return cfg
