"""PNG plots of a run's ``metrics.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KIND_ORDER = ("activations", "gradients", "labels", "adapters", "control")


def plot_run(metrics: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``test_ppl.png``, ``traffic.png``, ``ppl_vs_virtual_time.png`` and ``cuts.png``."""
    out_dir = Path(out_dir)
    rounds = [m["round"] for m in metrics]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    evaluated = [(m["round"], m["test_ppl"]) for m in metrics if m.get("test_ppl") is not None]
    if evaluated:
        ax.plot(*zip(*evaluated, strict=True), marker="o", label="test")
    validated = [(m["round"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    if validated:
        import math

        ax.plot(
            [r for r, _ in validated],
            [math.exp(v) for _, v in validated],
            marker=".",
            ls="--",
            label="validation",
        )
    ax.set(xlabel="round", ylabel="perplexity", title="Perplexity of the global adapters")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir / "test_ppl.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in KIND_ORDER:
        total, series = 0, []
        for m in metrics:
            total += m["bytes_by_kind"].get(kind, 0)
            series.append(total / 1e6)
        if total:
            ax.plot(rounds, series, label=kind)
    ax.set(xlabel="round", ylabel="cumulative MB (up + down)", title="Traffic by kind")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # centralized runs send nothing
        ax.legend()
    paths.append(_save(fig, out_dir / "traffic.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    timed = [
        (m["virtual_s"], m["test_ppl"]) for m in metrics if m.get("test_ppl") is not None and "virtual_s" in m
    ]
    if timed:
        ax.plot(*zip(*timed, strict=True), marker="o")
    ax.set(xlabel="virtual time (s)", ylabel="test perplexity", title="Test perplexity vs virtual time")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir / "ppl_vs_virtual_time.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    num_clients = len(metrics[0]["cuts"]) if metrics else 0
    for client in range(num_clients):
        ax.step(rounds, [m["cuts"][client] for m in metrics], where="mid", label=f"client {client}")
    ax.set(xlabel="round", ylabel="cut layer (client blocks)", title="Cut per client")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    paths.append(_save(fig, out_dir / "cuts.png"))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
