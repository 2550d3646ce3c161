"""Vanilla against U-shaped split: the table of README ("Labels stay on the client") and docs/results.md.

    python scripts/ushape_report.py runs/cpu/ushape

Reads ``vanilla/`` and ``u/`` under the folder that ``splitft compare --preset
configs/cpu/ushape.toml`` wrote (``summary.json``, ``metrics.jsonl``, ``config.toml`` and the
byte ledger in ``checkpoint/state.json``) and prints Markdown: MB by kind and direction over
the run, virtual time per round, final test perplexity, and, for the phone tier (the run's
slowest client), the memory its cut needs and its predicted round time, split into compute and
communication (``sim/memory.py`` and the virtual clock, from the run's own config).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import AutoConfig

from splitft.config import Config
from splitft.model.loading import SMOLLM2, TINY_CONFIGS, load_tokenizer, smollm2_config
from splitft.sim.costs import client_lora_params
from splitft.sim.memory import client_memory_bytes
from splitft.sim.timing import RoundTimer
from splitft.wire.codec import DIRECTIONS, KINDS

SHAPES = {"vanilla": "vanilla", "u": "U-shaped"}
MB = 1e6


def model_config(cfg: Config):
    """The HF config of the run's model, at the depth it ran."""
    name, keep = cfg.model.name, cfg.model.keep_layers
    if name == SMOLLM2:
        return smollm2_config(keep or 30)
    if name.startswith("tiny:"):
        kwargs = dict(TINY_CONFIGS[name.removeprefix("tiny:")])
        kwargs["vocab_size"] = len(load_tokenizer(cfg.model.tokenizer or name))  # as load_model sets it
        config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    else:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    if keep:
        config.num_hidden_layers = keep
    return config


def bytes_by_direction(run: Path) -> dict[tuple[str, str], int]:
    """Bytes over the run by (direction, kind), from the checkpoint's byte ledger."""
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    totals = {(d, k): 0 for d in DIRECTIONS for k in KINDS}
    for record in state["loop"]["ledger"]["records"]:
        for kind, n in record["bytes_by_kind"].items():
            totals[(record["direction"], kind)] += n
    return totals


def phone(run: Path) -> dict:
    """The slowest client's device, its memory at its last cut, and its predicted round."""
    cfg = Config.from_toml(run / "config.toml")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cuts = rows[-1]["cuts"]
    timer = RoundTimer(cfg, model_config(cfg), model_config(cfg).num_hidden_layers)
    i = min(range(len(timer.devices)), key=lambda c: timer.devices[c].flops)
    tail, lora = timer.tails[i], cfg.lora
    params = client_lora_params(timer.shape, cuts[i], lora.r_others, lora.client_cut_rank, tail=tail)
    memory = client_memory_bytes(
        timer.shape, cuts[i], cfg.train.batch_size, cfg.data.max_length, params, tail, cfg.loss_chunk
    )
    predicted = timer.predict(cuts)
    return {
        "device": timer.devices[i],
        "cut": cuts[i],
        "tail": tail,
        "memory_mb": memory / MB,
        "round_s": predicted.per_client_s[i],
        "compute_s": predicted.breakdown[i].compute_s,
        "comm_s": predicted.breakdown[i].comm_s,
        "server_s": predicted.breakdown[i].server_s + predicted.breakdown[i].wait_s,
    }


def report(root: Path) -> str:
    runs = {label: root / label for label in SHAPES}
    missing = [str(p) for p in runs.values() if not (p / "summary.json").exists()]
    if missing:
        raise SystemExit(f"error: no finished run at {', '.join(missing)}")
    summaries = {label: json.loads((p / "summary.json").read_text()) for label, p in runs.items()}
    flows = {label: bytes_by_direction(p) for label, p in runs.items()}
    phones = {label: phone(p) for label, p in runs.items()}
    head = "| | " + " | ".join(SHAPES.values()) + " |"
    lines = [head, "|---" * (len(SHAPES) + 1) + "|"]

    def add(name: str, values: dict[str, str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values[label] for label in SHAPES) + " |")

    for direction in DIRECTIONS:
        for kind in KINDS:
            add(f"MB {kind} {direction}", {k: f"{flows[k][(direction, kind)] / MB:.3f}" for k in SHAPES})
    add("MB total", {k: f"{(s['bytes_up'] + s['bytes_down']) / MB:.2f}" for k, s in summaries.items()})
    add("virtual s / round", {k: f"{s['virtual_s'] / s['rounds']:.3f}" for k, s in summaries.items()})
    add("final test perplexity", {k: f"{s['final_test_ppl']:.2f}" for k, s in summaries.items()})
    name = phones["vanilla"]["device"].name
    add(f"{name}: cut, tail", {k: f"{p['cut']}, {p['tail']}" for k, p in phones.items()})
    add(f"{name}: training memory MB", {k: f"{p['memory_mb']:.1f}" for k, p in phones.items()})
    add(
        f"{name}: predicted round s (its compute + its transfers + server and queue)",
        {
            k: f"{p['round_s']:.3f} ({p['compute_s']:.3f} + {p['comm_s']:.3f} + {p['server_s']:.3f})"
            for k, p in phones.items()
        },
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(report(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
