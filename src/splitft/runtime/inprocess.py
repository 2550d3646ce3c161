"""The default runtime: every role is an object in this process, called directly."""

from __future__ import annotations

from collections.abc import Mapping

from splitft.runtime.base import CallFailure, Runtime


class InProcessRuntime(Runtime):
    name = "inprocess"

    def __init__(self, roles: Mapping[str, object]) -> None:
        self.roles = dict(roles)

    def call(self, target: str, method: str, payload: bytes) -> bytes | CallFailure:
        try:
            return getattr(self.roles[target], method)(payload)
        except Exception as err:  # a failing role is reported, not raised (see base.py)
            return CallFailure(target, method, f"{type(err).__name__}: {err}")
