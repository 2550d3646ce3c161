"""One counted call from the server side to a client, shared by every round loop.

Every payload is codec bytes and is recorded in the byte ledger in both directions; a call
that fails (a :class:`CallFailure`, never an exception) drops the client for the rest of the
job and is recorded with its round and method.
"""

from __future__ import annotations

from splitft.errors import CodecError
from splitft.runtime.base import CallFailure, Runtime
from splitft.wire.codec import bytes_by_kind
from splitft.wire.ledger import ByteLedger


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
