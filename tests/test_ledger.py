"""Tests of the byte ledger: totals by round, client, direction and kind; JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

from splitft.wire.codec import KINDS, Entry, encode_message
from splitft.wire.ledger import ByteLedger


def test_ledger_totals_match_recorded_messages() -> None:
    ledger = ByteLedger()
    sent: list[tuple[int, int, str, dict[str, int]]] = []
    for rnd in range(2):
        for client in range(3):
            up = encode_message([Entry("h", "activations", torch.randn(2, 4, 8 + client))]).bytes_by_kind
            down = encode_message(
                [Entry("g", "gradients", torch.randn(2, 4), wire_dtype="fp16")]
            ).bytes_by_kind
            ledger.record(rnd, client, "up", up)
            ledger.record(rnd, client, "down", down)
            sent += [(rnd, client, "up", up), (rnd, client, "down", down)]

    def total(rows: list[tuple[int, int, str, dict[str, int]]], direction: str) -> int:
        return sum(sum(k.values()) for _, _, d, k in rows if d == direction)

    r1 = [s for s in sent if s[0] == 1]
    totals = ledger.round_totals(1)
    assert totals["bytes_up"] == total(r1, "up") and totals["bytes_down"] == total(r1, "down")
    assert totals["bytes_by_kind"] == {kind: sum(k[kind] for *_, k in r1) for kind in KINDS}
    assert ledger.totals()["bytes_up"] + ledger.totals()["bytes_down"] == total(sent, "up") + total(
        sent, "down"
    )
    assert ledger.totals()["bytes_by_kind"]["labels"] == 0  # absent kinds are present as zeros
    assert ledger.round_totals(7) == {
        "bytes_up": 0,
        "bytes_down": 0,
        "bytes_by_kind": dict.fromkeys(KINDS, 0),
    }
    per_client = ledger.client_round(0, 2)
    assert {d: per_client[d]["total"] for d in ("up", "down")} == {
        "up": total([s for s in sent if s[:2] == (0, 2)], "up"),
        "down": total([s for s in sent if s[:2] == (0, 2)], "down"),
    }


def test_ledger_to_dict_from_dict_round_trips_through_json() -> None:
    ledger = ByteLedger()
    ledger.record(0, 1, "up", {"activations": 100, "control": 20})
    ledger.record(1, 0, "down", {"gradients": 50})
    restored = ByteLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored.to_dict() == ledger.to_dict()
    assert restored.totals() == ledger.totals()
    assert (
        restored.client_round(0, 1)["up"]["total"] == 120
        and restored.client_round(1, 0)["down"]["total"] == 50
    )


def test_ledger_rejects_bad_direction_kind_and_dict() -> None:
    ledger = ByteLedger()
    with pytest.raises(ValueError, match="up, down"):
        ledger.record(0, 0, "sideways", {})
    with pytest.raises(ValueError, match="activations"):
        ledger.record(0, 0, "up", {"weights": 3})
    with pytest.raises(ValueError, match="non-negative"):
        ledger.record(0, 0, "up", {"control": -1})
    with pytest.raises(ValueError, match="ByteLedger"):
        ByteLedger.from_dict({"rows": []})
