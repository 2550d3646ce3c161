"""What a partition gives each client: a table, ``partition.json`` and ``partition.png``.

:func:`partition_report` runs the partition stage of a run (:func:`splitft.data.prepare.partition_data`,
so the numbers are those of ``splitft train`` with the same data options and seed) and
measures every client: samples, tokens, mean and median length, its shares of the global
length bins and the Jensen-Shannon divergence (bits, in [0, 1]) of those shares to the global
ones. A partition by a meta column (``partition_by='genre'``) is also measured over that
column's classes. ``splitft partition`` prints :meth:`PartitionReport.table` and writes
:func:`write_report`'s files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from splitft.config import DataConfig
from splitft.data.partition import length_bins
from splitft.data.partition_stats import (
    global_length_histogram,
    js_divergence,
    length_bin_histograms,
    mean_js_to_global,
)
from splitft.data.prepare import partition_data
from splitft.data.tokenize import WhitespaceTokenizer
from splitft.errors import ConfigError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "WHITESPACE",
    "PartitionReport",
    "load_report_tokenizer",
    "partition_report",
    "plot_partition",
    "write_report",
]

WHITESPACE = "whitespace"
"""Tokenizer name of :class:`~splitft.data.tokenize.WhitespaceTokenizer`: one token per word, no model
files, fast on huge corpora (lengths are then in words)."""
_MAX_TICK_LABELS = 40  # more clients than this: no per-bar tick labels (they would overlap)


@dataclass
class PartitionReport:
    """Per-client facts of one partition; :meth:`to_dict` is the content of ``partition.json``."""

    data: str
    tokenizer: str
    max_length: int
    seed: int
    partition: dict[str, Any]
    """The partitioner's settings (kind, alpha, num_bins, partition_by, ...)."""
    train: dict[str, Any]
    """All partitioned training samples: samples, tokens, mean_length, median_length."""
    assigned_samples: int
    """Samples some client holds: the sum of the clients' samples."""
    bin_edges: list[int]
    """Inner edges of the length bins: bin k holds lengths in (edge[k-1], edge[k]]."""
    bin_labels: list[str]
    """Token range of every bin, e.g. '7-12'."""
    global_shares: list[float]
    """Share of all training samples in every length bin."""
    clients: list[dict[str, Any]]
    """Per client: samples, tokens, mean_length, median_length, shares (per length bin), js
    (to global_shares); for a column partition also classes (distinct classes held) and
    class_js (JS over the column's classes)."""
    mean_js: float
    """Mean of the clients' js."""
    class_js_mean: float | None = None
    """Mean of the clients' class_js (None unless partitioned by a meta column)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The report as text: a header, one row per client, a row of all samples, the mean JS."""
        p = self.partition
        by = p.get("partition_by")  # None for iid, which ignores it
        settings = f" by {by}, alpha {p['alpha']}" if by is not None else ""
        shares_head = f"% per bin b0..b{len(self.bin_labels) - 1} (. = none)"
        width = max(len(shares_head), 3 * len(self.bin_labels))
        by_column = self.class_js_mean is not None
        lines = [
            f"{self.data}: {self.train['samples']} training samples, {self.train['tokens']} tokens "
            f"(max_length {self.max_length}, tokenizer {self.tokenizer})",
            f"{p['kind']} partition{settings}, {len(self.clients)} clients, seed {self.seed}: "
            f"{self.assigned_samples} samples assigned",
            "length bins (tokens): " + ", ".join(f"b{k} {lab}" for k, lab in enumerate(self.bin_labels)),
            f"{'client':>6} {'samples':>8} {'tokens':>9} {'mean':>6} {'median':>6}  {shares_head:<{width}} "
            f"{'JS':>6}" + (f" {'classes':>7} {'JS ' + by:>10}" if by_column else ""),
        ]

        def row(name: str, stats: dict[str, Any], shares: list[float], js: str) -> str:
            # a share that rounds to 0 % still shows 0; "." marks a bin the client has no sample of
            cells = "".join(f"{round(100 * s):>3}" if s > 0 else "  ." for s in shares)
            return (
                f"{name:>6} {stats['samples']:>8} {stats['tokens']:>9} {stats['mean_length']:>6.1f} "
                f"{stats['median_length']:>6.1f}  {cells:<{width}} {js:>6}"
            )

        for i, c in enumerate(self.clients):
            extra = f" {c['classes']:>7} {c['class_js']:>10.3f}" if by_column else ""
            lines.append(row(str(i), c, c["shares"], f"{c['js']:.3f}") + extra)
        lines.append(row("all", self.train, self.global_shares, "-"))
        summary = f"mean JS to the global length bins: {self.mean_js:.3f}"
        lines.append(summary + (f"; over {by}: {self.class_js_mean:.3f}" if by_column else ""))
        return "\n".join(lines)


def load_report_tokenizer(name: str) -> Any:
    """:data:`WHITESPACE` (one token per word, fast) or a model's tokenizer (``load_tokenizer``)."""
    if name == WHITESPACE:
        return WhitespaceTokenizer()
    from splitft.model.loading import load_tokenizer  # imports transformers: only when needed

    return load_tokenizer(name)


def _bin_labels(lengths: list[int], edges: np.ndarray) -> list[str]:
    """'low-high' token range of every bin (lengths are integers, so bin k starts at edge + 1)."""
    lows = [min(lengths), *(int(e) + 1 for e in edges)]
    highs = [*(int(e) for e in edges), max(lengths)]
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in zip(lows, highs, strict=True)]


def _shares(hist: np.ndarray) -> list[float]:
    return [round(float(x), 4) for x in hist]


def partition_report(
    cfg: DataConfig, tokenizer: Any, num_clients: int, seed: int, tokenizer_name: str = ""
) -> PartitionReport:
    """Partition ``cfg.train`` as a run would and measure every client (see the module docstring).

    Sample and token counts are those of the clients' final samples; the shares and JS values
    describe the partition before a ``cfg.samples_per_client`` cap (a random subset keeps its
    shape). Raises what :func:`splitft.data.prepare.partition_data` raises (ConfigError, DataError).
    """
    staged = partition_data(cfg, tokenizer, num_clients, seed)
    partitioner, lengths = staged.partitioner, staged.train.lengths
    # cfg.bins quantile bins: the very classes a length-Dirichlet partition draws its shares over
    hists = length_bin_histograms(partitioner, cfg.bins)
    reference = global_length_histogram(partitioner, cfg.bins)
    edges = length_bins(lengths, cfg.bins)[1]
    by_column = cfg.partition != "iid" and cfg.partition_by != "length"
    if by_column:  # the partitioner's own classes are the column's values
        class_of_row = partitioner.class_of_rows()
        class_hists, class_reference = (
            length_bin_histograms(partitioner),
            global_length_histogram(partitioner),
        )
    clients = []
    for i, part in enumerate(staged.parts):
        client = {
            **staged.train.subset(part).summary(),
            "shares": _shares(hists[i]),
            "js": round(js_divergence(hists[i], reference), 6),
        }
        if by_column:
            client["classes"] = len(set(class_of_row[part].tolist()))
            client["class_js"] = round(js_divergence(class_hists[i], class_reference), 6)
        clients.append(client)
    return PartitionReport(
        data=cfg.train,
        tokenizer=tokenizer_name,
        max_length=cfg.max_length,
        seed=seed,
        partition=partitioner.describe(),
        train=staged.train.summary(),
        assigned_samples=sum(len(part) for part in staged.parts),
        bin_edges=[int(e) for e in edges],
        bin_labels=_bin_labels(lengths, edges),
        global_shares=_shares(reference),
        clients=clients,
        mean_js=round(mean_js_to_global(partitioner, cfg.bins), 6),
        class_js_mean=round(mean_js_to_global(partitioner), 6) if by_column else None,
    )


def plot_partition(report: PartitionReport, path: str | Path) -> Path:
    """Stacked bars of every client's length-bin shares (one bar per client), like flwr-datasets."""
    shares = np.array([c["shares"] for c in report.clients])
    num_clients, num_bins = shares.shape
    fig, ax = plt.subplots(figsize=(min(4 + 0.4 * num_clients, 16), 4.5))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 1.0, num_bins))  # ordered bins, ordered colours
    x, bottom = np.arange(num_clients), np.zeros(num_clients)
    for k in range(num_bins):
        ax.bar(x, shares[:, k], bottom=bottom, width=0.85, color=colors[k], label=report.bin_labels[k])
        bottom += shares[:, k]
    if num_clients <= _MAX_TICK_LABELS:
        ax.set_xticks(x, [f"{i}\nJS {c['js']:.2f}" for i, c in enumerate(report.clients)], fontsize="small")
    p = report.partition
    alpha = f", alpha {p['alpha']}" if p.get("alpha") is not None else ""
    ax.set(
        xlabel="client",
        ylabel="share of the client's samples",
        ylim=(0, 1),
        title=f"Length-bin shares per client ({p['kind']}{alpha}; mean JS {report.mean_js:.3f})",
    )
    handles, labels = ax.get_legend_handles_labels()
    # reversed, so the legend lists the bins top to bottom as they are stacked
    ax.legend(
        handles[::-1],
        labels[::-1],
        title="length (tokens)",
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight" keeps the outside legend in the image
    plt.close(fig)
    return path


def write_report(report: PartitionReport, out_dir: str | Path) -> list[Path]:
    """Write ``partition.json`` and ``partition.png`` into ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "partition.json"
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        return [json_path, plot_partition(report, out / "partition.png")]
    except OSError as e:
        raise ConfigError(f"cannot write the partition report to {out}: {e.strerror or e}") from e
