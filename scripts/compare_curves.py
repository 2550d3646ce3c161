"""Compare the fp32 and bf16 runs of scripts/precision_curves.sh: train loss per round and test
perplexity, the bf16-vs-fp32 gap of each seed against the spread of fp32 over the seeds.

    python scripts/compare_curves.py runs/precision-curves
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main(out: Path) -> None:
    runs = {p.name: _rows(p) for p in sorted(out.iterdir()) if (p / "summary.json").exists()}
    seeds = sorted({name.split("-s")[1] for name in runs if name.startswith("fp32-")})
    fp32 = [runs[f"fp32-s{s}"] for s in seeds]
    fast = {s: runs[f"bf16-s{s}"] for s in seeds if f"bf16-s{s}" in runs}
    print(f"fp32 seeds {seeds}; bf16 seeds {sorted(fast)}")
    print("round  fp32 min..max (spread)   " + "  ".join(f"bf16-s{s} (gap to fp32-s{s})" for s in fast))
    inside, gaps, spreads = 0, [], []
    for r in range(len(fp32[0])):
        losses = [rows[r]["train_loss"] for rows in fp32]
        lo, hi = min(losses), max(losses)
        spreads.append(hi - lo)
        cells = []
        for s, rows in fast.items():
            value, gap = rows[r]["train_loss"], rows[r]["train_loss"] - runs[f"fp32-s{s}"][r]["train_loss"]
            gaps.append(abs(gap))
            inside += lo <= value <= hi
            cells.append(f"{value:.4f} ({gap:+.4f})")
        print(f"{r + 1:5d}  {lo:.4f}..{hi:.4f} ({hi - lo:.4f})   " + "  ".join(cells))
    print(
        f"mean |bf16 - fp32| of the same seed: {statistics.mean(gaps):.4f}; mean fp32 spread over seeds: "
        f"{statistics.mean(spreads):.4f}; bf16 points inside the fp32 band: {inside}/{len(gaps)}"
    )
    for name, rows in runs.items():
        ppl = [(row["round"], round(row["test_ppl"], 2)) for row in rows if row.get("test_ppl") is not None]
        print(f"{name}: test ppl {ppl}, wall {rows[-1]['wall_s']:.0f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
