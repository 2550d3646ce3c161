"""``splitft compare``: the same data and seed, several values of one config field, one report.

    splitft compare --vary policy.name=fixed,resource,splitft --out runs/cmp [--section.field VALUE ...]

Each value gets its own run directory ``OUT/<field>=<value>`` (a run already complete there is
kept, an interrupted one is resumed), then :func:`splitft.report.compare.compare_runs` writes
the comparison table and overlay plots into ``OUT``. Every config is built and checked before
the first run starts, so a bad value costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitft.config import Config
from splitft.errors import ConfigError
from splitft.report.compare import compare_runs


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``"lora.r_cut=1,2,4"`` -> ``("lora.r_cut", ["1", "2", "4"])``."""
    field, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not field.strip() or len(items) < 2:
        raise ConfigError(f"--vary {spec!r}: expected FIELD=VALUE1,VALUE2[,...] with at least two values")
    return field.strip(), items


def compare(
    base: Config, field: str, values: list[str], out_dir: str | Path, target_ppl: float | None = None
) -> list[dict[str, Any]]:
    """Train one run per value of ``field`` (same data and seed) and compare them."""
    from splitft.train import resume, train

    out = Path(out_dir)
    configs = []
    for value in values:
        cfg = base.with_overrides({field: value})
        cfg.validate()
        configs.append((value, cfg))
    run_dirs = []
    for value, cfg in configs:
        run_dir = out / f"{field}={value}"
        if (run_dir / "summary.json").exists():
            print(f"{run_dir}: complete, kept")
        elif (run_dir / "checkpoint").exists():
            resume(run_dir, progress=True)
        else:
            train(cfg, run_dir, progress=True)
        run_dirs.append(run_dir)
    return compare_runs(run_dirs, out, target_ppl, [f"{field}={v}" for v in values])
