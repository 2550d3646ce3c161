"""Named, pluggable parts of SplitFT: methods, allocation policies and runtimes.

A config names each by a string (``method = "fedlora"``, ``policy.name = "resource"``,
``runtime = "flare-sim"``). Each :class:`Registry` is the one list of the allowed names and
the one place a name turns into its object. Built-ins are registered as ``"module:attribute"``
targets, imported on first use, so this module (which ``config.py`` reads for the allowed
names) depends on nothing else in the package; a plugin or a test registers an object
directly::

    from splitft.registry import METHODS
    METHODS.register("toy", ToyMethod())      # now `--method toy` validates and runs
"""

from __future__ import annotations

import importlib
from typing import Any

from splitft.errors import ConfigError


class Registry:
    """Name -> object, for the config field ``field``."""

    def __init__(self, field: str, builtins: dict[str, str]) -> None:
        self.field = field
        self._entries: dict[str, Any] = dict(builtins)

    def names(self) -> tuple[str, ...]:
        """The allowed values of the field, in registration order."""
        return tuple(self._entries)

    def register(self, name: str, obj: Any) -> Any:
        """Add (or replace) ``name``; returns ``obj``."""
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a ConfigError naming the allowed values otherwise."""
        if name not in self._entries:
            raise ConfigError(f"{self.field} = {name!r}; allowed: {', '.join(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):  # a built-in, resolved once
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry


METHODS = Registry(
    "method",
    {
        "splitft": "splitft.methods.split:SPLITFT",
        "sfl-fixed": "splitft.methods.split:SFL_FIXED",
        "fedlora": "splitft.methods.fedlora:FEDLORA",
        "centralized": "splitft.methods.centralized:CENTRALIZED",
    },
)
"""What to train: a :class:`splitft.methods.base.Method`."""

POLICIES = Registry(
    "policy.name",
    {
        "fixed": "splitft.algorithms.policy:FixedPolicy",
        "accuracy": "splitft.algorithms.policy:AccuracyPolicy",
        "resource": "splitft.algorithms.policy:ResourcePolicy",
        "splitft": "splitft.algorithms.policy:SplitFTPolicy",
    },
)
"""Allocation policies: classes with ``from_config(policy_cfg, start_cuts)``."""

RUNTIMES = Registry(
    "runtime",
    {
        "inprocess": "splitft.launch:INPROCESS",
        "flare-sim": "splitft.runtime.flare_job:FLARE",
        "flare-poc": "splitft.runtime.flare_job:FLARE",
        "flare-prod": "splitft.runtime.flare_job:FLARE",
    },
)
"""Where a run executes: launchers with ``train(cfg, out, progress)`` and ``resume(...)``."""
