"""The tables and plot of docs/results.md ("A shared server-side adapter set").

    python scripts/shared_report.py runs/cpu/shared [docs/img/shared-cut.png]

Reads the ``<setting>-s<seed>`` runs that ``scripts/run_matrix.sh`` wrote with
``configs/cpu/shared-runs.txt`` and prints (1) the four methods at cut 2: final test
perplexity, mean ± half-range over the seeds, each seed, the gap to centralized LoRA; (2)
Table I, perplexity against the cut with one shared server set (seed 0, which every cut has,
and the mean of the seeds run); then plots (2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from splitft.report.seeds import load_seeded_runs, spread  # noqa: E402

METHODS = {
    "centralized": "centralized LoRA (pooled data)",
    "per-client": "split, per-client server copies (SplitFed V1)",
    "shared": "split, one shared server set (SplitFed V2)",
    "fedlora": "FedLoRA (whole model per client)",
}
CUTS = (2, 8, 15, 22, 28)


def _setting(mode: str, cut: int) -> str:
    return mode if cut == 2 else f"{mode}-c{cut}"


def methods_table(runs: dict[str, list[dict]]) -> str:
    base = spread([r["final_test_ppl"] for r in runs["centralized"]])[0] if "centralized" in runs else None
    lines = [
        "| method | seeds | final test ppl (mean ± half-range) | per seed | vs centralized | final test acc |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in METHODS.items():
        if name not in runs:
            continue
        ppl = [r["final_test_ppl"] for r in runs[name]]
        mean, half = spread(ppl)
        acc = spread([r["final_test_acc"] for r in runs[name]])[0]
        gap = f"{100 * (mean / base - 1):+.1f} %" if base else "-"
        seeds = " / ".join(f"{p:.2f}" for p in ppl)
        lines.append(f"| {label} | {len(ppl)} | {mean:.2f} ± {half:.2f} | {seeds} | {gap} | {acc:.4f} |")
    return "\n".join(lines)


def cut_rows(runs: dict[str, list[dict]], mode: str) -> list[tuple[int, float, float, int]]:
    """(cut, mean ppl, half-range, seeds) for every cut measured in ``mode``."""
    rows = []
    for cut in CUTS:
        found = runs.get(_setting(mode, cut))
        if found:
            rows.append((cut, *spread([r["final_test_ppl"] for r in found]), len(found)))
    return rows


def seed0(runs: dict[str, list[dict]], mode: str) -> dict[int, float]:
    """Seed 0's final perplexity per cut in ``mode`` (the one seed every cut has)."""
    return {c: runs[_setting(mode, c)][0]["final_test_ppl"] for c in CUTS if runs.get(_setting(mode, c))}


def cut_table(runs: dict[str, list[dict]]) -> str:
    shared = {c: (m, h, n) for c, m, h, n in cut_rows(runs, "shared")}
    first = seed0(runs, "shared")
    lines = [
        "| cut (blocks on the client) | shared, seed 0: final test ppl | vs cut 2 "
        "| shared, all seeds run: mean ± half-range | seeds |",
        "|---|---|---|---|---|",
    ]
    for cut in first:
        m, h, n = shared[cut]
        gap = 100 * (first[cut] / first[CUTS[0]] - 1)
        lines.append(f"| {cut} | {first[cut]:.2f} | {gap:+.1f} % | {m:.2f} ± {h:.2f} | {n} |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    first = seed0(runs, "shared")
    ax.plot(list(first), list(first.values()), "o-", label=METHODS["shared"] + ", seed 0")
    rows = cut_rows(runs, "shared")
    xs, means, halves = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    ax.errorbar(xs, means, yerr=halves, fmt="s", capsize=4, label="mean of the seeds run (bars: half-range)")
    if "centralized" in runs:
        ax.axhline(
            spread([r["final_test_ppl"] for r in runs["centralized"]])[0],
            ls="--",
            color="grey",
            label=METHODS["centralized"],
        )
    ax.set_xlabel("cut (blocks each client keeps)")
    ax.set_ylabel("final test perplexity")
    ax.set_title("Table I with one shared server-side set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    runs = load_seeded_runs(root)
    print(methods_table(runs), end="\n\n")
    print(cut_table(runs))
    plot(runs, Path(argv[1]) if len(argv) > 1 else root / "shared-cut.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
