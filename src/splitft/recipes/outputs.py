"""What a run writes besides its checkpoint: one ``metrics.jsonl`` row per round, the adapters
in PEFT format, and ``summary.json`` (the README lists every field: a public contract)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from splitft.methods.base import RoundResult
from splitft.model.lora import export_adapters
from splitft.recipes.evaluate import EvalResult

if TYPE_CHECKING:
    from splitft.methods.base import Experiment


def metrics_row(exp: Experiment, result: RoundResult) -> dict[str, Any]:
    """A round's row of ``metrics.jsonl``, before evaluation and wall time are filled in."""
    return {
        "round": result.round,
        "train_loss": result.train_loss,
        "samples": result.samples,
        "val_loss": None,
        "test_ppl": None,
        "test_acc": None,
        "test_loss": None,
        "cuts": result.cuts,
        "clients": result.clients,
        "policy": [d.reason for d in result.decisions],
        "acc_by_client": {str(i): a for i, a in result.accuracy.items()},
        "w_by_client": {str(i): w for i, w in result.weights.items()},
        "virtual_s": result.virtual_s,
        "round_virtual_s": result.timing.makespan_s,
        "server_busy_share": result.timing.server_busy_share,
        "canonicalized_blocks": result.canonicalized,
        "svd_truncation_error": result.truncation_error,
        "dropped": result.dropped,
        "predicted_round_s": result.predicted_s,
        "sat_out": result.sat_out,
        "conditions": result.conditions,
        "wire": result.wire,
        "train_acc_by_client": {str(i): a for i, a in result.train_acc.items()},
        **exp.ledger.round_totals(result.round),
    }


def prediction_error(metrics: list[dict]) -> dict[str, Any] | None:
    """How far the policy's predicted round times were from the rounds' actual times: mean
    absolute error in seconds and relative to the actual time (None: no round was predicted)."""
    pairs = [
        (m["predicted_round_s"], m["round_virtual_s"])
        for m in metrics
        if m.get("predicted_round_s") is not None
    ]
    if not pairs:
        return None
    return {
        "mean_abs_s": sum(abs(p - a) for p, a in pairs) / len(pairs),
        "mean_abs_rel": sum(abs(p - a) / a for p, a in pairs if a > 0) / len(pairs),
        "rounds": len(pairs),
    }


def export_run_adapters(exp: Experiment, adapters: dict[str, torch.Tensor], folder: Path) -> None:
    """``adapters`` in PEFT's format, plus what ``splitft eval`` needs to rebuild the base model."""
    export_adapters(exp.peft_model, adapters, folder)
    model_cfg = exp.cfg.model
    facts = {"model": model_cfg.name, "keep_layers": model_cfg.keep_layers, "tokenizer": model_cfg.tokenizer}
    facts["seed"] = exp.cfg.seed  # the weights of a tiny random model depend on it
    (folder / "splitft.json").write_text(json.dumps(facts, indent=2) + "\n")


def summarize(
    exp: Experiment, metrics: list[dict], final: EvalResult | None, best_round: int | None, wall_s: float
) -> dict[str, Any]:
    """``summary.json`` of a finished run."""
    evaluated = [m for m in metrics if m["test_ppl"] is not None]
    client_params, server_params = exp.method.trainable_params(exp, metrics[-1]["cuts"])
    totals = exp.ledger.totals()
    best = next((m for m in evaluated if m["round"] == best_round), None)
    return {
        "final_test_ppl": final.ppl if final else None,
        "final_test_acc": final.acc if final else None,
        "final_test_loss": final.loss if final else None,
        "best_test_ppl": min((m["test_ppl"] for m in evaluated), default=None),
        "best_test_acc": max((m["test_acc"] for m in evaluated), default=None),
        "best_round": best_round,
        "best_round_test_ppl": best["test_ppl"] if best else None,
        "bytes_up": totals["bytes_up"],
        "bytes_down": totals["bytes_down"],
        "bytes_by_kind": totals["bytes_by_kind"],
        "trainable_params_client": sum(client_params),
        "trainable_params_server": sum(server_params),
        "trainable_params_by_client": {"client": client_params, "server": server_params},
        "wall_s": round(wall_s, 3),
        "virtual_s": metrics[-1]["virtual_s"],
        "rounds": len(metrics),
        "samples_seen": sum(m.get("samples", 0) for m in metrics),
        "method": exp.cfg.method,
        "policy": exp.cfg.policy.name,
        "infeasible_clients": exp.method.infeasible_clients(exp),
        "devices": {
            "clients": [d.to_dict() for d in exp.timer.devices],
            "server": exp.timer.server.to_dict(),
            "order": exp.cfg.devices.order,
            "max_cut": exp.timer.max_cut,
        },
        "dropped_clients": sorted({d["client"] for m in metrics for d in m["dropped"]}),
        "prediction_error": prediction_error(metrics),
        "sat_out_rounds": {
            str(i): n
            for i in range(exp.cfg.federation.num_clients)
            if (n := sum(i in m.get("sat_out", ()) for m in metrics))
        },
        "model": {
            "name": exp.cfg.model.name,
            "family": exp.model.family.name,
            "blocks": exp.model.num_blocks,
            "parameters": sum(p.numel() for p in exp.peft_model.parameters() if p.dtype.is_floating_point)
            - sum(exp.layout.num_params(n, exp.layout.rank) for n in exp.layout.shapes),
        },
        "data": exp.data.facts,
    }
