"""Where a run executes: the runtime registry's launchers, and the Python API.

``splitft train`` and ``splitft compare`` call :func:`train` / :func:`resume`, which pick the
launcher of ``cfg.runtime`` from :data:`splitft.registry.RUNTIMES`: in-process (this module)
or NVIDIA FLARE (``runtime/flare_job.py``), which runs the same recipe inside a FLARE job.
This layer sits above the recipe, so the recipe never imports a runtime engine::

    from splitft.config import Config
    from splitft.launch import train

    result = train(Config().with_overrides({"model.name": "tiny:llama", "federation.rounds": 2}), "runs/demo")
"""

from __future__ import annotations

from pathlib import Path

from splitft.config import Config
from splitft.recipes import train as recipe
from splitft.recipes.train import RunResult, resume_config
from splitft.registry import RUNTIMES


class InProcess:
    """Every role in this process (the default)."""

    def train(self, cfg: Config, out_dir: str | Path, progress: bool = False) -> RunResult:
        return recipe.train(cfg, out_dir, progress)

    def resume(self, run_dir: str | Path, overrides: dict, progress: bool = False) -> RunResult:
        return recipe.resume(run_dir, overrides, progress)


INPROCESS = InProcess()


def train(cfg: Config, out_dir: str | Path, progress: bool = False) -> RunResult:
    """Run ``cfg`` into the new folder ``out_dir`` on the runtime ``cfg.runtime`` names."""
    cfg.validate()
    return RUNTIMES.get(cfg.runtime).train(cfg, out_dir, progress)


def resume(run_dir: str | Path, overrides: dict | None = None, progress: bool = False) -> RunResult:
    """Continue the run in ``run_dir`` (on its runtime, or the one ``overrides`` names)."""
    cfg = resume_config(run_dir, overrides)
    return RUNTIMES.get(cfg.runtime).resume(run_dir, overrides or {}, progress)
