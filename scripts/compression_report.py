"""The compression trade-off table and Pareto plot of docs/results.md ("Compression").

    python scripts/compression_report.py runs/cpu/compression [docs/img/compression-pareto.png] [LABEL=MB ...]
        [--baseline fp32] [--names fp32,int4,...]

Reads every ``<setting>-s<seed>/summary.json`` that scripts/compression_runs.sh wrote and
prints one Markdown row per setting: final test perplexity (mean and spread over the seeds
run), MB by kind, the ratios to fp32, and the mean virtual round time; then plots final
perplexity against total MB, marking the Pareto front. ``LABEL=MB`` marks a setting whose
traffic is known but whose perplexity was not measured, as a vertical line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from splitft.report.seeds import load_seeded_runs, spread  # noqa: E402

LABELS = {
    "fp32": "fp32 (everything)",
    "rcut1": "fp32, r_cut = 1 (the paper's lever)",
    "int8": "int8 act / int8+EF grad / delta-int8 adapters",
    "int4": "int4 act / topk:0.05+EF grad / delta-int4 adapters",
    "int2": "int4 act / topk:0.02+EF grad / delta-int2 adapters",
}
MB = 1e6


def row(name: str, runs: list[dict], fp32: dict) -> dict:
    ppl, half_range = spread([r["final_test_ppl"] for r in runs])
    kinds = runs[0]["bytes_by_kind"]
    total = runs[0]["bytes_up"] + runs[0]["bytes_down"]
    cut = kinds["activations"] + kinds["gradients"]
    base_total = fp32["bytes_up"] + fp32["bytes_down"]
    base_cut = fp32["bytes_by_kind"]["activations"] + fp32["bytes_by_kind"]["gradients"]
    return {
        "name": name,
        "seeds": len(runs),
        "ppl": ppl,
        "spread": half_range,
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
            f"| {LABELS.get(r['name'], r['name'])} | {r['seeds']} | {r['ppl']:,.2f} ± {r['spread']:,.2f} "
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder of <setting>-s<seed> runs")
    parser.add_argument("png", type=Path, nargs="?", help="plot file (default ROOT/compression-pareto.png)")
    parser.add_argument(
        "marks", nargs="*", help="LABEL=MB: a setting's traffic without a measured perplexity"
    )
    parser.add_argument("--baseline", default="fp32", help="the setting the ratios compare against")
    parser.add_argument("--names", default="", help="comma-separated settings to include (default: all)")
    args = parser.parse_args(argv)
    runs = load_seeded_runs(args.root, args.names.split(",") if args.names else None)
    if args.baseline not in runs:
        print(f"error: no {args.baseline} runs under {args.root}", file=sys.stderr)
        return 2
    order = [args.baseline] + [n for n in LABELS if n in runs and n != args.baseline]
    order += sorted(set(runs) - set(order))
    rows = [row(n, runs[n], runs[args.baseline][0]) for n in order]
    print(table(rows, rows[0]["ppl"]))
    for r in rows:
        seeds = [round(s["final_test_ppl"], 3) for s in runs[r["name"]]]
        print(f"{r['name']}: per seed {seeds}; bytes equal over seeds: {r['same_bytes']}")
    marks = {label: float(mb) for label, _, mb in (m.rpartition("=") for m in args.marks)}
    plot(rows, args.png or args.root / "compression-pareto.png", marks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
