"""Reading config values: TOML files and command-line text.

This module knows nothing of :class:`splitft.config.Config`; ``splitft.config`` builds on it
and ``splitft.config_cli`` on both (the imports go one way only). :func:`convert_value` is the
one parser and type check of a field value, shared by TOML, ``--section.field`` options,
Python overrides and ``Config.validate``.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable
from typing import Any, get_args, get_origin

from splitft.errors import ConfigError

__all__ = ["TYPES", "convert_value", "load_toml"]


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file as a dict; a missing or invalid file is a ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in ("true", "1", "yes", "false", "0", "no"):
        raise ValueError(text)
    return word in ("true", "1", "yes")


def _split_list(text: str) -> list[str]:
    """'a,b', '[a, b]' -> ['a', 'b']; '' and '[]' -> []."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip() for item in text.split(",") if item.strip()]


# field type -> (parser of its command-line text, what an error says is expected, CLI metavar)
TYPES: dict[Any, tuple[Callable[[str], Any], str, str]] = {
    int: (int, "an integer", "INT"),
    float: (float, "a number", "FLOAT"),
    str: (str, "a string", "STR"),
    bool: (_parse_bool, "a boolean (true/false/1/0/yes/no)", "BOOL"),
    list[int]: (lambda text: [int(x) for x in _split_list(text)], "a list of integers (e.g. 2,4,6)", "INTS"),
    list[str]: (_split_list, "a list of strings (e.g. q_proj,v_proj)", "STRS"),
}


def _matches(value: Any, tp: Any) -> bool:
    if get_origin(tp) is list:
        return isinstance(value, list) and all(_matches(v, get_args(tp)[0]) for v in value)
    if isinstance(value, bool):  # bool is an int subclass, but True is no batch size
        return tp is bool
    return isinstance(value, (int, float)) if tp is float else isinstance(value, tp)


def convert_value(key: str, value: Any, tp: Any, parse_strings: bool) -> Any:
    """``value`` checked against ``tp`` (parsed first if it is command-line text), normalized."""
    parsed = value
    if parse_strings and isinstance(value, str):
        with contextlib.suppress(ValueError):  # a failed parse is reported below, with the text
            parsed = TYPES[tp][0](value)
    if not _matches(parsed, tp):
        raise ConfigError(f"{key}: expected {TYPES[tp][1]}, got {value!r}")
    if tp is float:
        return float(parsed)
    return list(parsed) if isinstance(parsed, list) else parsed  # never alias the caller's list
