"""Compare finished runs: a table (``comparison.md``/``.csv``) and overlay plots.

:func:`compare_runs` reads run directories written by ``splitft train`` and returns one row
per run: final and best test perplexity, virtual and wall time, the virtual time at which the
run first reached a target perplexity and its speed-up over the first run there, traffic
(MB up/down, by kind), trainable parameters and the mean cut. With an output folder it also
writes the table, ``ppl_vs_virtual_time.png``, ``ppl_vs_samples.png``,
``cuts_over_rounds.png`` and ``summary_bars.png`` (final perplexity, virtual time and MB per
run side by side: the plot to read when there are too many runs for overlaid curves).
``splitft report`` prints the table.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from splitft.config import Config
from splitft.errors import ConfigError, DataError
from splitft.files import read_json_object
from splitft.registry import METHODS
from splitft.report.rundir import RunDirectory

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["compare_runs", "format_table", "summary_bars"]

NOT_REACHED = "not reached"
# (row key, column header, cell format); the target column's header names the target
COLUMNS = (
    ("label", "run", "{}"),
    ("method", "method", "{}"),
    ("policy", "policy", "{}"),
    ("final_test_ppl", "final test ppl", "{:.3f}"),
    ("best_test_ppl", "best test ppl", "{:.3f}"),
    ("best_test_acc", "best test acc", "{:.4f}"),
    ("rounds", "rounds", "{}"),
    ("virtual_s", "virtual time (s)", "{:.1f}"),
    ("round_s", "virtual s per round", "{:.2f}"),
    ("time_to_target_s", "virtual time to target (s)", "{:.1f}"),
    ("speedup", "speed-up vs first", "{:.2f}x"),
    ("wall_s", "wall time (s)", "{:.1f}"),
    ("mb_up", "MB up", "{:.2f}"),
    ("mb_down", "MB down", "{:.2f}"),
    ("mb_activations", "MB activations", "{:.2f}"),
    ("mb_gradients", "MB gradients", "{:.2f}"),
    ("mb_adapters", "MB adapters", "{:.2f}"),
    ("mb_other", "MB labels + control", "{:.2f}"),
    ("params_client", "trainable params client", "{}"),
    ("params_server", "trainable params server", "{}"),
    ("mean_cut", "mean cut", "{:.2f}"),
)


CSV_FIELDS = (*(key for key, _, _ in COLUMNS), "target_ppl", "complete", "run_dir")
"""Columns of ``comparison.csv``: the row keys (stable names, unrounded values)."""


@dataclass
class _Run:
    path: Path
    config: Config
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if m.get("test_ppl") is not None]

    def fact(self, key: str, from_metrics: Any) -> Any:
        """``summary.json``'s value of ``key``; for an incomplete run (or a summary written
        before that key existed) the one the metrics give."""
        return self.summary.get(key, from_metrics) if self.summary is not None else from_metrics


def _read_run(path: Path, allow_incomplete: bool) -> _Run:
    if not path.is_dir():
        raise ConfigError(f"run folder {path} does not exist")
    run = RunDirectory(path)
    if not run.metrics_path.is_file():
        raise DataError(f"{path} has no metrics.jsonl: not a run directory of `splitft train`")
    # A damaged line is a DataError naming it; a run still going (or killed) may be mid-row.
    metrics = run.read_metrics(drop_partial_last=allow_incomplete)
    if not metrics:
        raise DataError(f"{run.metrics_path} holds no rounds")
    summary_path = path / "summary.json"
    if summary_path.is_file():
        summary = read_json_object(summary_path, "summary file")
    elif allow_incomplete:
        summary = None
    else:
        failed = path / "FAILED"
        reason = failed.read_text().strip().splitlines() if failed.is_file() else []
        why = f"it failed: {reason[0]}" if reason else "it failed" if failed.is_file() else "still running?"
        raise DataError(
            f"{path} is incomplete (no summary.json; {why}); pass --allow-incomplete to report its metrics"
        )
    return _Run(path, Config.from_toml(path / "config.toml"), metrics, summary)


def _time_to(run: _Run, target: float | None) -> float | None:
    """Virtual seconds at the first evaluated round with test ppl <= target (None: never)."""
    if target is None:
        return None
    return next((m["virtual_s"] for m in run.evaluated if m["test_ppl"] <= target), None)


def _row(run: _Run, label: str) -> dict[str, Any]:
    m, ev = run.metrics, run.evaluated
    by_kind = run.fact("bytes_by_kind", _sum_kinds(m))
    return {
        "label": label,
        "run_dir": str(run.path),
        "complete": run.summary is not None,
        "method": run.config.method,
        "policy": run.config.policy.name if METHODS.get(run.config.method).splits else "-",
        "final_test_ppl": run.fact("final_test_ppl", ev[-1]["test_ppl"] if ev else None),
        "best_test_ppl": run.fact("best_test_ppl", min((e["test_ppl"] for e in ev), default=None)),
        "best_test_acc": run.fact("best_test_acc", max((e["test_acc"] for e in ev), default=None)),
        "rounds": len(m),
        "virtual_s": m[-1]["virtual_s"],
        "round_s": m[-1]["virtual_s"] / len(m),
        "wall_s": run.fact("wall_s", m[-1]["wall_s"]),
        "mb_up": run.fact("bytes_up", sum(r["bytes_up"] for r in m)) / 1e6,
        "mb_down": run.fact("bytes_down", sum(r["bytes_down"] for r in m)) / 1e6,
        "mb_activations": by_kind.get("activations", 0) / 1e6,
        "mb_gradients": by_kind.get("gradients", 0) / 1e6,
        "mb_adapters": by_kind.get("adapters", 0) / 1e6,
        "mb_other": (by_kind.get("labels", 0) + by_kind.get("control", 0)) / 1e6,
        "params_client": run.fact("trainable_params_client", None),
        "params_server": run.fact("trainable_params_server", None),
        "mean_cut": statistics.fmean(statistics.fmean(r["cuts"]) for r in m),
    }


def _sum_kinds(metrics: list[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for m in metrics:
        for kind, count in m.get("bytes_by_kind", {}).items():
            totals[kind] = totals.get(kind, 0) + count
    return totals


def compare_runs(
    run_dirs: list[Path],
    out_dir: Path | None,
    target_ppl: float | None,
    labels: list[str] | None,
    allow_incomplete: bool = False,
) -> list[dict[str, Any]]:
    """One row per run: the keys of :data:`COLUMNS`, run_dir, complete, target_ppl, target_given.

    ``target_ppl`` None: the largest final test ppl among the runs, which every run reaches.
    ``speedup`` is the first run's time to the target over this run's (None where either run
    never reached it). With ``out_dir``, write ``comparison.md``, ``comparison.csv`` and the
    four plots there. Raises ConfigError/DataError naming a bad run folder.
    """
    if not run_dirs:
        raise ConfigError("no run directories to compare")
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"--labels gives {len(labels)} labels for {len(run_dirs)} runs")
    if target_ppl is not None and not 0 < target_ppl < math.inf:
        raise ConfigError(f"the target perplexity must be a positive number, got {target_ppl}")
    runs = [_read_run(Path(p), allow_incomplete) for p in run_dirs]
    rows = [_row(run, label) for run, label in zip(runs, labels or [r.path.name for r in runs], strict=True)]
    given = target_ppl is not None
    if not given:
        target_ppl = max((r["final_test_ppl"] for r in rows if r["final_test_ppl"] is not None), default=None)
    times = [_time_to(run, target_ppl) for run in runs]
    for row, time in zip(rows, times, strict=True):
        row["target_ppl"], row["target_given"] = target_ppl, given
        row["time_to_target_s"] = time
        row["speedup"] = times[0] / time if times[0] is not None and time else None
    if out_dir is not None:
        _write(runs, rows, Path(out_dir))
    return rows


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    target = rows[0]["target_ppl"]
    at = f"virtual time to ppl {target:.3f} (s)" if target is not None else "virtual time to target (s)"
    return [at if key == "time_to_target_s" else head for key, head, _ in COLUMNS]


def _cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for key, _, fmt in COLUMNS:
        value = row[key]
        cells.append(fmt.format(value) if value is not None else "-")
    if row["time_to_target_s"] is None:
        cells[[k for k, _, _ in COLUMNS].index("time_to_target_s")] = NOT_REACHED
    return cells


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table under a line that names the target perplexity."""
    target = rows[0]["target_ppl"]
    source = "--target-ppl" if rows[0]["target_given"] else "the largest final test ppl among the runs"
    head = f"Target test perplexity: {target:.3f} ({source})" if target is not None else "No target"
    lines = [head, "", "| " + " | ".join(_headers(rows)) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write(runs: list[_Run], rows: list[dict[str, Any]], out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(format_table(rows), encoding="utf-8")
        with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()  # raw values for programs (the table rounds them); blank = none
            writer.writerows(rows)
        _plot(runs, rows, out)
    except OSError as e:
        raise ConfigError(f"cannot write the comparison to {out}: {e.strerror or e}") from e


def _samples_seen(run: _Run) -> list[int]:
    """Training samples taken up to each round (runs before the ``samples`` field: estimated
    from the config as full batches)."""
    fed = run.config.federation
    per_round = (fed.clients_per_round or fed.num_clients) * fed.local_steps * run.config.train.batch_size
    total, out = 0, []
    for m in run.metrics:
        total += m.get("samples", per_round)
        out.append(total)
    return out


def _plot(runs: list[_Run], rows: list[dict[str, Any]], out: Path) -> None:
    """The overlay plots: test ppl vs virtual time and vs samples seen, mean cut per round."""
    target = rows[0]["target_ppl"]
    fig_t, ax_t = plt.subplots(figsize=(6, 4))
    fig_s, ax_s = plt.subplots(figsize=(6, 4))
    fig_c, ax_c = plt.subplots(figsize=(6, 4))
    for run, row in zip(runs, rows, strict=True):
        ev = run.evaluated
        seen = dict(zip((m["round"] for m in run.metrics), _samples_seen(run), strict=True))
        ppl = [m["test_ppl"] for m in ev]
        ax_t.plot([m["virtual_s"] for m in ev], ppl, marker="o", label=row["label"])
        ax_s.plot([seen[m["round"]] for m in ev], ppl, marker="o", label=row["label"])
        rounds = [m["round"] for m in run.metrics]
        cuts = [statistics.fmean(m["cuts"]) for m in run.metrics]
        ax_c.step(rounds, cuts, where="mid", label=row["label"])
    if target is not None:
        ax_t.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
    ax_t.set(xlabel="virtual time (s)", ylabel="test perplexity", title="Test perplexity vs virtual time")
    ax_s.set(xlabel="samples seen", ylabel="test perplexity", title="Test perplexity vs samples seen")
    ax_c.set(xlabel="round", ylabel="mean cut across clients", title="Mean cut per round")
    for fig, ax, name in (
        (fig_t, ax_t, "ppl_vs_virtual_time.png"),
        (fig_s, ax_s, "ppl_vs_samples.png"),
        (fig_c, ax_c, "cuts_over_rounds.png"),
    ):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    fig = summary_bars(rows)
    fig.savefig(out / "summary_bars.png", dpi=100)
    plt.close(fig)


# (row key, panel title) of the bar chart; MB is up + down
BAR_PANELS = (
    ("final_test_ppl", "final test perplexity"),
    ("virtual_s", "virtual time (s)"),
    ("mb_total", "MB up + down"),
)


def summary_bars(rows: list[dict[str, Any]]) -> plt.Figure:
    """One horizontal bar per run in each panel of :data:`BAR_PANELS` (a run without a value,
    e.g. an incomplete run's final perplexity, gets no bar); the caller saves and closes it."""
    labels = [row["label"] for row in rows]
    fig, axes = plt.subplots(1, len(BAR_PANELS), figsize=(11, 1.2 + 0.35 * len(rows)), sharey=True)
    for ax, (key, title) in zip(axes, BAR_PANELS, strict=True):
        values = [row["mb_up"] + row["mb_down"] if key == "mb_total" else row[key] for row in rows]
        ax.barh(range(len(rows)), [v if v is not None else 0.0 for v in values], color="tab:blue")
        for y, v in enumerate(values):
            if v is not None:
                ax.annotate(
                    f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}",
                    (v, y),
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
        ax.set_title(title, fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.2)
    axes[0].set_yticks(range(len(rows)), labels, fontsize="small")
    axes[0].invert_yaxis()  # first run on top, as in the table
    fig.tight_layout()
    return fig
