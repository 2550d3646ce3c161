"""The byte ledger: every byte that crossed the client/server boundary, by round, client,
direction ("up" = client to server) and kind (``wire/codec.py`` counts each message by kind)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from splitft.wire.codec import DIRECTIONS, KINDS


class ByteLedger:
    """Bytes that crossed the wire per round, client, direction ("up" = client to server) and kind.

    Calls are summed per (round, client, direction) as they are recorded, so queries stay cheap
    however many calls a round makes.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[int, int, str], dict[str, int]] = {}

    def record(self, round: int, client: int, direction: str, bytes_by_kind: Mapping[str, int]) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        for kind, n in bytes_by_kind.items():
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"byte count for {kind!r} must be a non-negative int, got {n!r}")
        counts = self._counts.setdefault((int(round), int(client), direction), dict.fromkeys(KINDS, 0))
        for kind, n in bytes_by_kind.items():
            counts[kind] += n

    def _sum(self, keep: Callable[[int, int], bool]) -> dict[str, Any]:
        by_kind = dict.fromkeys(KINDS, 0)
        out: dict[str, Any] = {"bytes_up": 0, "bytes_down": 0, "bytes_by_kind": by_kind}
        for (rnd, client, direction), counts in self._counts.items():
            if keep(rnd, client):
                out[f"bytes_{direction}"] += sum(counts.values())
                for kind, n in counts.items():
                    by_kind[kind] += n
        return out

    def round_totals(self, round: int) -> dict[str, Any]:
        """``{"bytes_up", "bytes_down", "bytes_by_kind": {kind: int}}`` for one round (zeros if unseen)."""
        return self._sum(lambda rnd, _client: rnd == round)

    def totals(self) -> dict[str, Any]:
        return self._sum(lambda _rnd, _client: True)

    def client_round(self, round: int, client: int) -> dict[str, dict[str, int]]:
        """One client's bytes in one round: ``{direction: {kind: bytes, "total": bytes}}``."""
        out = {}
        for direction in DIRECTIONS:
            counts = dict(self._counts.get((round, client, direction), dict.fromkeys(KINDS, 0)))
            counts["total"] = sum(counts.values())
            out[direction] = counts
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [
                {"round": r, "client": c, "direction": d, "bytes_by_kind": dict(counts)}
                for (r, c, d), counts in self._counts.items()
            ]
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ByteLedger:
        ledger = cls()
        ledger.restore(data)
        return ledger

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the contents with those of a ``to_dict()`` record."""
        self._counts = {}
        try:
            for rec in data["records"]:
                self.record(rec["round"], rec["client"], rec["direction"], rec["bytes_by_kind"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a ByteLedger dict: {err!r}") from None
