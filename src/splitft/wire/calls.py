"""Calls from the server side to the clients, shared by every round loop.

Every payload is codec bytes and is recorded in the byte ledger in both directions; a call
that fails (a :class:`CallFailure`, never an exception) drops the client for the rest of the
job and is recorded with its round and method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from splitft.errors import CodecError, ReplyError
from splitft.runtime.base import CallFailure, Runtime
from splitft.wire.codec import bytes_by_kind
from splitft.wire.ledger import ByteLedger
from splitft.wire.messages import control, read_state, state_message

T = TypeVar("T")


def client_role(client_id: int) -> str:
    return f"client-{client_id}"


def drop_report(dropped: set[int], client_id: int, round_number: int, method: str, error: str) -> dict:
    """Drop ``client_id`` for the rest of the job; the record ``metrics.jsonl`` reports."""
    dropped.add(client_id)
    return {"client": client_id, "round": round_number, "method": method, "error": error}


def counted_call(
    runtime: Runtime,
    ledger: ByteLedger,
    dropped: set[int],
    drops: list[dict],
    round_number: int,
    client_id: int,
    method: str,
    payload: bytes,
) -> bytes | None:
    """Call ``method`` of client ``client_id``; its reply, or None when the call failed or the
    reply is not a well-formed message (the client is then added to ``dropped`` and the
    failure appended to ``drops``)."""
    result = runtime.call(client_role(client_id), method, payload)
    ledger.record(round_number, client_id, "down", bytes_by_kind(payload))
    if isinstance(result, CallFailure):
        drops.append(drop_report(dropped, client_id, round_number, method, result.error))
        return None
    try:
        counts = bytes_by_kind(result)
    except CodecError as err:  # it still crossed the wire: counted whole, as framing
        ledger.record(round_number, client_id, "up", {"control": len(result)})
        drops.append(drop_report(dropped, client_id, round_number, method, f"malformed reply: {err}"))
        return None
    ledger.record(round_number, client_id, "up", counts)
    return result


def guarded(
    dropped: set[int],
    drops: list[dict],
    round_number: int,
    client_id: int,
    method: str,
    use: Callable[..., T],
    *args: Any,
) -> T | None:
    """``use(*args)`` (which reads a client's reply), or None when the reply is malformed: the
    client is then dropped for the rest of the job, like a failed call, with the reason."""
    try:
        return use(*args)
    except (CodecError, ReplyError) as err:
        drops.append(drop_report(dropped, client_id, round_number, method, f"malformed reply: {err}"))
        return None


class Clients:
    """The clients a round loop reaches through a runtime: counted calls, who was dropped (for
    good: a dropped client is never called again), and each client's saved state, which a
    checkpoint asks of the client itself wherever it runs (not counted as traffic)."""

    def __init__(self, runtime: Runtime, ledger: ByteLedger, num_clients: int) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.num_clients = num_clients
        self.dropped: set[int] = set()
        self.round = 0
        """The last round started; drops outside a round are reported as after it."""
        self._late: list[dict] = []

    def alive(self) -> list[int]:
        return [i for i in range(self.num_clients) if i not in self.dropped]

    def start_round(self, round_number: int) -> list[dict]:
        """This round's drop records, starting with the drops that happened since the last."""
        self.round = round_number
        drops, self._late = self._late, []
        return drops

    def call(self, i: int, method: str, payload: bytes, drops: list[dict]) -> bytes | None:
        """A counted call of this round (see :func:`counted_call`)."""
        return counted_call(self.runtime, self.ledger, self.dropped, drops, self.round, i, method, payload)

    def _uncounted(self, i: int, method: str, payload: bytes) -> bytes | None:
        result = self.runtime.call(client_role(i), method, payload)
        if isinstance(result, CallFailure):
            self._late.append(drop_report(self.dropped, i, self.round, method, result.error))
            return None
        return result

    def state_dict(self) -> dict[str, Any]:
        """Who was dropped, and every other client's own ``state_dict()``."""
        states = {}
        for i in self.alive():
            reply = self._uncounted(i, "export_state", control())
            state = (
                None
                if reply is None
                else guarded(
                    self.dropped, self._late, self.round, i, "export_state", lambda r=reply: read_state(r)
                )
            )
            if state is not None:
                states[str(i)] = state
        return {"round": self.round, "dropped": sorted(self.dropped), "states": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.round = int(state["round"])
        self.dropped = set(state["dropped"])
        for key, client_state in state["states"].items():
            self._uncounted(int(key), "restore_state", state_message(client_state))
