"""The runtime interface: how the round loop calls a role, wherever that role runs.

The loop never touches an engine; it calls ``runtime.call(target, method, payload)`` with
codec bytes and gets codec bytes back, or a :class:`CallFailure` when the call raised or
timed out (a failure is a value, never an exception, so one bad client cannot stop a round).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class CallFailure:
    """A call that did not return: which role, which method, and why."""

    target: str
    method: str
    error: str


class Runtime(ABC):
    """Calls methods of named roles with byte payloads."""

    name: str = "abstract"

    @abstractmethod
    def call(self, target: str, method: str, payload: bytes) -> bytes | CallFailure:
        """Call ``method`` of role ``target`` with ``payload``."""
