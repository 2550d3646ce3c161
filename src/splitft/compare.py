"""``splitft compare``: several runs on the same data, partition and seed, one report.

    splitft compare --vary method=centralized,fedlora,sfl-fixed,splitft --out runs/cmp
    splitft compare --vary split.cuts=2,4 --vary lora.r_cut=4,8 --out runs/grid   # 4 runs
    splitft compare --preset configs/cpu/table1.toml --out runs/table1

Each run gets its own directory ``OUT/<label>`` (a run already complete there is kept, an
interrupted one is resumed from its checkpoint), then
:func:`splitft.report.compare.compare_runs` writes the comparison table and overlay plots into
``OUT``. Every config is built and checked before the first run starts, so a bad value costs
nothing.

A **preset** is a config file with a ``[compare]`` table naming its runs: ``vary`` (a list of
``"field=v1,v2"`` axes, crossed) and/or ``[compare.runs.<label>]`` tables of overrides, and
optionally ``target_ppl``. ``splitft train --config PRESET`` trains its base config alone.
"""

from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitft.config import Config, load_toml
from splitft.errors import ConfigError
from splitft.report.compare import compare_runs
from splitft.report.rundir import RunDirectory


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``"lora.r_cut=1,2,4"`` -> ``("lora.r_cut", ["1", "2", "4"])``."""
    name, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name.strip() or len(items) < 2:
        raise ConfigError(f"--vary {spec!r}: expected FIELD=VALUE1,VALUE2[,...] with at least two values")
    return name.strip(), items


@dataclass
class Plan:
    """The runs of one comparison: a label and the overrides of the base config for each."""

    runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    target_ppl: float | None = None
    description: str = ""


def plan_from_vary(specs: list[str]) -> Plan:
    """The cross product of ``--vary`` axes; labels like ``split.cuts=2,lora.r_cut=4``."""
    axes = [parse_vary(spec) for spec in specs]
    names = [name for name, _ in axes]
    if len(set(names)) != len(names):
        raise ConfigError(f"--vary names a field twice: {', '.join(names)}")
    runs = []
    for values in itertools.product(*(vals for _, vals in axes)):
        overrides = dict(zip(names, values, strict=True))
        runs.append((",".join(f"{k}={v}" for k, v in overrides.items()), overrides))
    return Plan(runs)


def load_preset(path: str | Path) -> tuple[Config, Plan]:
    """A preset file: its base config and the runs its ``[compare]`` table names."""
    data = load_toml(path)
    table = data.get("compare")
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: no [compare] table; a preset names its runs there (see configs/README.md)"
        )
    unknown = set(table) - {"vary", "runs", "target_ppl"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys in [compare]: {', '.join(sorted(unknown))}; allowed: vary, runs, target_ppl"
        )
    plan = plan_from_vary(list(table["vary"])) if table.get("vary") else Plan()
    for label, overrides in table.get("runs", {}).items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: [compare.runs.{label}] must be a table of field = value")
        plan.runs.append((label, _flatten(overrides)))
    if not plan.runs:
        raise ConfigError(f"{path}: [compare] names no runs (give vary or [compare.runs.<label>] tables)")
    plan.target_ppl = table.get("target_ppl")
    plan.description = str(data.get("description", ""))
    return Config.from_toml(path), plan


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r_cut": 4}, "method": "x"}`` -> ``{"lora.r_cut": 4, "method": "x"}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def folder_name(label: str) -> str:
    """A run label as a folder name (``/`` and spaces are not welcome in paths)."""
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", label)


def find_run(config: Config, folder: Path) -> Path | None:
    """A complete run under ``folder`` trained with exactly ``config`` (threads aside)."""
    wanted = config.with_overrides({"threads": 0}).to_dict()
    for config_file in sorted(folder.glob("**/config.toml")):
        run = config_file.parent
        if not (run / "summary.json").exists():
            continue
        try:
            found = Config.from_toml(config_file).with_overrides({"threads": 0}).to_dict()
        except ConfigError:
            continue  # a folder of an older version: not a match
        if found == wanted:
            return run
    return None


def compare(
    base: Config,
    plan: Plan,
    out_dir: str | Path,
    target_ppl: float | None = None,
    reuse: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train (or keep, or resume) every run of ``plan`` and compare them in ``out_dir``.

    With ``reuse``, a run whose exact config already finished somewhere under that folder
    (another preset's run, say) is copied instead of trained again.
    """
    from splitft.train import resume, train

    out = Path(out_dir)
    labels = [label for label, _ in plan.runs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two runs share a label: {', '.join(labels)}")
    configs = []
    for label, overrides in plan.runs:
        try:
            cfg = base.with_overrides(overrides)
            cfg.validate()
        except ConfigError as err:
            raise ConfigError(f"run {label!r}: {err}") from None
        configs.append((label, cfg))
    run_dirs = []
    for number, (label, cfg) in enumerate(configs, 1):
        run_dir = out / folder_name(label)
        print(f"[{number}/{len(configs)}] {label}")
        if (run_dir / "summary.json").exists():
            print(f"{run_dir}: complete, kept")
        elif RunDirectory(run_dir).folder("checkpoint").exists():
            resume(run_dir, progress=True)
        elif reuse is not None and (same := find_run(cfg, Path(reuse))) is not None:
            shutil.copytree(same, run_dir, dirs_exist_ok=True)
            print(f"{run_dir}: same config as {same}, copied")
        else:
            train(cfg, run_dir, progress=True)
        run_dirs.append(run_dir)
    target = target_ppl if target_ppl is not None else plan.target_ppl
    return compare_runs(run_dirs, out, target, labels)
