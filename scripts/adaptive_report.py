"""The adaptive-cuts matrix of docs/results.md ("Adaptive cuts that pay off"): table, goals, plots.

    python scripts/adaptive_report.py runs/cpu/adaptive [--target-ppl CELL=PPL ...] [--img docs/img/adaptive-matrix]

Reads every ``<cell>/<method>-s<seed>/`` that scripts/adaptive_runs.sh wrote (finished runs only)
and prints, per cell, one Markdown row per method: seeds, virtual time to the cell's target
perplexity and final test perplexity (mean and spread = half the range over seeds), mean
predicted-round-time error, and the speed-up to target against ``sfl-fixed`` and ``resource``
(ratio of the mean times). The target of a cell is the largest final perplexity of its runs
(every run reaches it) unless ``--target-ppl CELL=PPL`` sets it. Then it checks the issue's
goals and writes two plots: ``<img>-curves.png`` (test perplexity vs virtual time, every run,
one panel per cell) and ``<img>-cuts.png`` (splitft's cuts per client over rounds in the
changing cells, first seed, rounds a client sat out marked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

from splitft.report.compare import compare_runs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("sfl-fixed", "resource", "splitft")
COLORS = dict(zip(METHODS, ("tab:grey", "tab:blue", "tab:red"), strict=True))


def find_runs(root: Path) -> dict[str, dict[str, list[Path]]]:
    """cell -> method -> finished run folders (seed order)."""
    cells: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for summary in sorted(root.glob("*/*-s*/summary.json")):
        run = summary.parent
        method = run.name.rsplit("-s", 1)[0]
        cells[run.parent.name][method].append(run)
    return cells


def mean_spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and half the range; None when a run has no value (e.g. never reached the target)."""
    if not values or any(v is None for v in values):
        return None, None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def cell_rows(runs: dict[str, list[Path]], target: float | None) -> tuple[float, dict[str, dict]]:
    """The cell's target and, per method, its rows from splitft's own comparison."""
    order = [(m, p) for m in METHODS for p in runs.get(m, [])]
    rows = compare_runs([p for _, p in order], None, target, [p.name for _, p in order])
    by_method: dict[str, list[dict]] = defaultdict(list)
    for (method, path), row in zip(order, rows, strict=True):
        row["prediction_error"] = _prediction_error(path)
        by_method[method].append(row)
    out = {}
    for method, method_rows in by_method.items():
        time, time_spread = mean_spread([r["time_to_target_s"] for r in method_rows])
        ppl, ppl_spread = mean_spread([r["final_test_ppl"] for r in method_rows])
        errors = [r["prediction_error"] for r in method_rows if r["prediction_error"] is not None]
        out[method] = {
            "seeds": len(method_rows),
            "time": time,
            "time_spread": time_spread,
            "ppl": ppl,
            "ppl_spread": ppl_spread,
            "ppls": [r["final_test_ppl"] for r in method_rows],
            "error": statistics.fmean(errors) if errors else None,
            "paths": [Path(r["run_dir"]) for r in method_rows],
        }
    return rows[0]["target_ppl"], out


def _prediction_error(path: Path) -> float | None:
    summary = json.loads((path / "summary.json").read_text())
    error = summary.get("prediction_error")
    return error["mean_abs_rel"] if error else None


def fmt(value: float | None, spread: float | None, digits: int) -> str:
    if value is None:
        return "not reached"
    return f"{value:.{digits}f} ± {spread:.{digits}f}" if spread else f"{value:.{digits}f}"


def ratio(a: dict | None, b: dict | None) -> float | None:
    """How many times faster ``b`` reaches the target than ``a`` (mean times)."""
    return a["time"] / b["time"] if a and b and a["time"] and b["time"] else None


def table(cells: dict[str, tuple[float, dict[str, dict]]]) -> str:
    lines = [
        "| cell | method | seeds | virtual s to target | final test ppl | prediction error | "
        "speed-up vs sfl-fixed | speed-up vs resource |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell, (target, methods) in cells.items():
        for method in METHODS:
            m = methods.get(method)
            if m is None:
                continue
            vs_fixed, vs_resource = ratio(methods.get("sfl-fixed"), m), ratio(methods.get("resource"), m)
            error = f"{100 * m['error']:.1f} %" if m["error"] is not None else "-"
            lines.append(
                f"| {cell} (ppl {target:.2f}) | `{method}` | {m['seeds']} | {fmt(m['time'], m['time_spread'], 1)} | "
                f"{fmt(m['ppl'], m['ppl_spread'], 2)} | {error} | "
                f"{f'{vs_fixed:.2f}x' if vs_fixed else '-'} | {f'{vs_resource:.2f}x' if vs_resource else '-'} |"
            )
    return "\n".join(lines)


def goals(cells: dict[str, tuple[float, dict[str, dict]]]) -> list[str]:
    """The issue's goals, each with its verdict and the numbers."""
    out = []
    for cell, (_, m) in cells.items():
        fixed, resource, adaptive = m.get("sfl-fixed"), m.get("resource"), m.get("splitft")
        if not (fixed and adaptive):
            continue
        speedup = ratio(fixed, adaptive)
        if cell.startswith("hetero"):
            out.append(_verdict(f"{cell}: splitft >= 1.5x faster than sfl-fixed", speedup, 1.5))
        if "changing" in cell and resource:
            out.append(
                _verdict(f"{cell}: splitft >= 1.2x faster than resource", ratio(resource, adaptive), 1.2)
            )
        out.append(_verdict(f"{cell}: splitft at most 2 % slower than sfl-fixed", speedup, 1 / 1.02))
        low, high = min(fixed["ppls"]), max(fixed["ppls"])
        if len(fixed["ppls"]) < 2:
            out.append(
                f"one seed: {cell}: final ppl splitft {adaptive['ppl']:.3f} vs sfl-fixed {low:.3f} (no spread)"
            )
            continue
        within = adaptive["ppl"] is not None and low - 1e-9 <= adaptive["ppl"] <= high + 1e-9
        spread = f"splitft {adaptive['ppl']:.3f} vs sfl-fixed seeds {low:.3f}..{high:.3f}"
        out.append(f"{'met' if within else 'NOT met'}: {cell}: final ppl within sfl-fixed's seeds ({spread})")
    return out


def _verdict(goal: str, value: float | None, threshold: float) -> str:
    if value is None:
        return f"unknown: {goal} (a run did not reach the target)"
    return f"{'met' if value >= threshold else 'NOT met'}: {goal} ({value:.2f}x)"


def plot_curves(cells: dict[str, tuple[float, dict[str, dict]]], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), squeeze=False)
    for ax, (cell, (target, methods)) in zip(axes.flat, sorted(cells.items()), strict=False):
        for method, m in methods.items():
            for k, run in enumerate(m["paths"]):
                rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                points = [(r["virtual_s"], r["test_ppl"]) for r in rows if r["test_ppl"] is not None]
                ax.plot(
                    *zip(*points, strict=True),
                    color=COLORS.get(method),
                    lw=1,
                    label=method if k == 0 else None,
                )
        ax.axhline(target, color="black", ls=":", lw=1)
        ax.set(title=cell, xlabel="virtual time (s)", ylabel="test perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cuts(cells: dict[str, tuple[float, dict[str, dict]]], path: Path) -> None:
    changing = [
        (cell, m["splitft"]["paths"][0])
        for cell, (_, m) in sorted(cells.items())
        if "changing" in cell and "splitft" in m
    ]
    if not changing:
        return
    fig, axes = plt.subplots(1, len(changing), figsize=(6 * len(changing), 4), squeeze=False)
    for ax, (cell, run) in zip(axes.flat, changing, strict=True):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rounds = [r["round"] for r in rows]
        for client in range(len(rows[0]["cuts"])):
            line = ax.step(rounds, [r["cuts"][client] for r in rows], where="mid", label=f"client {client}")[
                0
            ]
            away = [(r["round"], r["cuts"][client]) for r in rows if client in r.get("sat_out", [])]
            if away:
                ax.plot(*zip(*away, strict=True), "x", color=line.get_color())
        ax.set(title=f"splitft cuts, {cell} ({run.name}; x = sat out)", xlabel="round", ylabel="cut")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--target-ppl", action="append", default=[], metavar="CELL=PPL")
    parser.add_argument("--img", default="docs/img/adaptive-matrix", help="plot path prefix")
    ns = parser.parse_args(argv)
    targets = {cell: float(ppl) for cell, _, ppl in (t.partition("=") for t in ns.target_ppl)}
    found = find_runs(ns.root)
    if not found:
        print(f"no finished runs under {ns.root}", file=sys.stderr)
        return 1
    cells = {cell: cell_rows(runs, targets.get(cell)) for cell, runs in sorted(found.items())}
    print(table(cells))
    print()
    print("\n".join(f"* {line}" for line in goals(cells)))
    plot_curves(cells, Path(f"{ns.img}-curves.png"))
    plot_cuts(cells, Path(f"{ns.img}-cuts.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
