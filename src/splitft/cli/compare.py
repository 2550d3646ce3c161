"""``splitft compare``: several runs on the same data, partition and seed, one report.

    splitft compare --vary method=centralized,fedlora,sfl-fixed,splitft --out runs/cmp
    splitft compare --vary split.cuts=2,4 --vary lora.r_cut=4,8 --out runs/grid   # 4 runs
    splitft compare --preset configs/cpu/table1.toml --out runs/table1

Each run gets its own directory ``OUT/<label>`` (a run already complete there is kept, an
interrupted one is resumed from its checkpoint, one stopped before its first checkpoint is
started again; a run there whose config differs only in fields a resume may change, e.g.
``federation.rounds``, is continued with the new values), then
:func:`splitft.report.compare.compare_runs` writes the comparison table and plots into
``OUT``. Every config, the target perplexity and every run folder already in ``OUT`` are
checked before the first run starts, so a bad value costs nothing.

A **preset** is a config file with a ``[compare]`` table naming its runs: ``vary`` (a list of
``"field=v1,v2"`` axes, crossed) and/or ``[compare.runs.<label>]`` tables of overrides, and
optionally ``target_ppl``. ``splitft train --config PRESET`` trains its base config alone.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitft.config import Config, load_toml
from splitft.errors import ConfigError
from splitft.launch import resume, train
from splitft.recipes.train import RESUME_OVERRIDES
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
    vary, runs = table.get("vary", []), table.get("runs", {})
    if not isinstance(vary, list) or not all(isinstance(v, str) for v in vary):
        raise ConfigError(f'{path}: [compare] vary must be a list of "field=v1,v2" strings, got {vary!r}')
    if not isinstance(runs, dict):
        raise ConfigError(f"{path}: [compare] runs must be tables [compare.runs.<label>], got {runs!r}")
    plan = plan_from_vary(vary) if vary else Plan()
    for label, overrides in runs.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: [compare.runs.{label}] must be a table of field = value")
        plan.runs.append((label, _flatten(overrides)))
    if not plan.runs:
        raise ConfigError(f"{path}: [compare] names no runs (give vary or [compare.runs.<label>] tables)")
    plan.target_ppl = check_target(table.get("target_ppl"), f"{path}: [compare] target_ppl")
    plan.description = str(data.get("description", ""))
    return Config.from_toml(path), plan


def check_target(value: Any, what: str = "the target perplexity") -> float | None:
    """A target perplexity: None (none given) or a positive finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return float(value)


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


def _fields(config: Config) -> dict[str, Any]:
    """Every field of ``config`` by dotted name, as runs are matched: ``threads`` aside (how
    many cores trained a run does not change it)."""
    return _flatten(config.with_overrides({"threads": 0}).to_dict())


def config_changes(stored: Config, planned: Config) -> dict[str, Any]:
    """The fields where ``planned`` differs from ``stored``, with the planned values."""
    old, new = _fields(stored), _fields(planned)
    return {key: new.get(key) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)}


def find_run(config: Config, folder: Path) -> Path | None:
    """A complete run under ``folder`` trained with exactly ``config`` (threads aside)."""
    for config_file in sorted(folder.glob("**/config.toml")):
        run = config_file.parent
        if not (run / "summary.json").exists():
            continue
        try:
            found = Config.from_toml(config_file)
        except ConfigError:
            continue  # a folder of an older version: not a match
        if not config_changes(found, config):
            return run
    return None


def _existing_changes(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """What must change in the run already in ``run_dir`` to make it ``cfg``'s run ({} when it
    is that run or there is none); a ConfigError when a resume cannot make that change."""
    stored = run_dir / "config.toml"
    if not stored.is_file():
        return {}
    try:
        changes = config_changes(Config.from_toml(stored), cfg)
    except ConfigError as err:
        raise ConfigError(
            f"{run_dir} holds a run this version cannot read ({err}); use another --out"
        ) from None
    fixed = [key for key in changes if key not in RESUME_OVERRIDES]
    if fixed or (changes and not RunDirectory(run_dir).folder("checkpoint").exists()):
        shown = ", ".join(f"{key}={changes[key]!r}" for key in (fixed or list(changes))[:4])
        raise ConfigError(
            f"{run_dir} holds a run of another config (planned: {shown}"
            f"{', ...' if len(fixed or changes) > 4 else ''}); use another --out or remove that folder "
            "(nothing was changed)"
        )
    return changes


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
    out = Path(out_dir)
    labels = [label for label, _ in plan.runs]
    folders = [folder_name(label) for label in labels]
    shared = sorted({f for f in folders if folders.count(f) > 1})
    if shared:
        clash = [label for label in labels if folder_name(label) in shared]
        raise ConfigError(f"runs {', '.join(map(repr, clash))} would share the folder(s) {', '.join(shared)}")
    target = check_target(target_ppl if target_ppl is not None else plan.target_ppl)
    configs = []
    for label, overrides in plan.runs:
        try:
            cfg = base.with_overrides(overrides)
            cfg.validate()
        except ConfigError as err:
            raise ConfigError(f"run {label!r}: {err}") from None
        configs.append((label, cfg))
    changes = [_existing_changes(out / folder_name(label), cfg) for label, cfg in configs]
    run_dirs = []
    for number, ((label, cfg), change) in enumerate(zip(configs, changes, strict=True), 1):
        run_dir = out / folder_name(label)
        print(f"[{number}/{len(configs)}] {label}")
        if change:
            print(f"{run_dir}: continued with {', '.join(f'{k}={v!r}' for k, v in change.items())}")
            resume(run_dir, change, progress=True)
        elif (run_dir / "summary.json").exists():
            print(f"{run_dir}: complete, kept")
        elif RunDirectory(run_dir).folder("checkpoint").exists():
            resume(run_dir, progress=True)
        elif run_dir.exists():  # stopped before its first round was saved: nothing to resume
            print(f"{run_dir}: stopped before its first checkpoint, started again")
            shutil.rmtree(run_dir)
            train(cfg, run_dir, progress=True)
        elif reuse is not None and (same := find_run(cfg, Path(reuse))) is not None:
            shutil.copytree(same, run_dir, dirs_exist_ok=True)
            print(f"{run_dir}: same config as {same}, copied")
        else:
            train(cfg, run_dir, progress=True)
        run_dirs.append(run_dir)
    return compare_runs(run_dirs, out, target, labels)
