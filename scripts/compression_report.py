"""The compression trade-off table and Pareto plot of docs/results.md ("Compression").

    python scripts/compression_report.py runs/cpu/compression [docs/img/compression-pareto.png] [LABEL=MB ...]

Reads every ``<setting>-s<seed>/summary.json`` that scripts/compression_runs.sh wrote and
prints one Markdown row per setting: final test perplexity (mean and spread over the seeds
run), MB by kind, the ratios to fp32, and the mean virtual round time; then plots final
perplexity against total MB, marking the Pareto front. ``LABEL=MB`` marks a setting whose
traffic is known but whose perplexity was not measured, as a vertical line.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "fp32": "fp32 (everything)",
    "rcut1": "fp32, r_cut = 1 (the paper's lever)",
    "int8": "int8 act / int8+EF grad / delta-int8 adapters",
    "int4": "int4 act / topk:0.05+EF grad / delta-int4 adapters",
    "int2": "int4 act / topk:0.02+EF grad / delta-int2 adapters",
}
MB = 1e6


def load(root: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    for summary in sorted(root.glob("*-s*/summary.json")):
        name = summary.parent.name.rsplit("-s", 1)[0]
        runs[name].append(json.loads(summary.read_text()))
    return runs


def row(name: str, runs: list[dict], fp32: dict) -> dict:
    ppl = [r["final_test_ppl"] for r in runs]
    kinds = runs[0]["bytes_by_kind"]
    total = runs[0]["bytes_up"] + runs[0]["bytes_down"]
    cut = kinds["activations"] + kinds["gradients"]
    base_total = fp32["bytes_up"] + fp32["bytes_down"]
    base_cut = fp32["bytes_by_kind"]["activations"] + fp32["bytes_by_kind"]["gradients"]
    return {
        "name": name,
        "seeds": len(runs),
        "ppl": statistics.mean(ppl),
        "spread": (max(ppl) - min(ppl)) / 2,
        "total_mb": total / MB,
        "kinds": {k: v / MB for k, v in kinds.items()},
        "x_total": base_total / total,
        "x_cut": base_cut / cut,
        "round_s": statistics.mean(r["virtual_s"] / r["rounds"] for r in runs),
        "same_bytes": all(r["bytes_by_kind"] == kinds for r in runs),
    }


def table(rows: list[dict], fp32_ppl: float) -> str:
    lines = [
        "| setting | seeds | final test ppl (mean ± half-range) | vs fp32 | activations MB | gradients MB "
        "| adapters MB | labels+control MB | total MB | total x smaller | act+grad x smaller | virtual s/round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = r["kinds"]
        lines.append(
            f"| {LABELS.get(r['name'], r['name'])} | {r['seeds']} | {r['ppl']:,.0f} ± {r['spread']:,.0f} "
            f"| {100 * (r['ppl'] / fp32_ppl - 1):+.2f} % | {k['activations']:.2f} | {k['gradients']:.2f} "
            f"| {k['adapters']:.2f} | {k['labels'] + k['control']:.2f} | {r['total_mb']:.2f} "
            f"| {r['x_total']:.2f} | {r['x_cut']:.2f} | {r['round_s']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, marks: dict[str, float]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = sorted(rows, key=lambda r: r["total_mb"])
    best, pareto = float("inf"), []
    for r in front:
        if r["ppl"] < best:
            best = r["ppl"]
            pareto.append(r)
    ax.plot(
        [r["total_mb"] for r in pareto], [r["ppl"] for r in pareto], "--", color="grey", label="Pareto front"
    )
    for r in rows:
        ax.errorbar(
            r["total_mb"],
            r["ppl"],
            yerr=r["spread"],
            fmt="o",
            capsize=4,
            label=LABELS.get(r["name"], r["name"]),
        )
    for label, mb in marks.items():
        ax.axvline(mb, linestyle=":", color="black", label=f"{label}: {mb:.1f} MB (ppl not measured)")
    ax.set_xscale("log")
    ax.set_xlabel("total MB over the run (both directions, every kind)")
    ax.set_ylabel("final test perplexity (mean of seeds)")
    ax.set_title("Compression: final perplexity vs traffic")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    runs = load(root)
    if "fp32" not in runs:
        print(f"error: no fp32 runs under {root}", file=sys.stderr)
        return 2
    order = [n for n in LABELS if n in runs] + sorted(set(runs) - set(LABELS))
    rows = [row(n, runs[n], runs["fp32"][0]) for n in order]
    print(table(rows, rows[0]["ppl"]))
    for r in rows:
        seeds = [round(s["final_test_ppl"]) for s in runs[r["name"]]]
        print(f"{r['name']}: per seed {seeds}; bytes equal over seeds: {r['same_bytes']}")
    marks = {label: float(mb) for label, _, mb in (m.rpartition("=") for m in argv[2:])}
    plot(rows, Path(argv[1]) if len(argv) > 1 else root / "compression-pareto.png", marks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
