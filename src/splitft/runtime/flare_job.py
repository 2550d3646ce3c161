"""Launching SplitFT as an NVIDIA FLARE job: simulation, POC rehearsal, production.

``splitft train --runtime flare-sim|flare-poc|flare-prod`` lands in :func:`run_job`, which
builds a Collab recipe (one :class:`~splitft.runtime.flare.SplitFTServer`, one
:class:`~splitft.runtime.flare.SplitFTSite` per site), runs it in FLARE's SimEnv, PocEnv or
ProdEnv, waits for it, and reads the run directory the server wrote. :func:`project_yml`
writes the FLARE project for a production deployment (``scripts/flare_project.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from splitft.config import Config
from splitft.errors import ConfigError, SplitFTError
from splitft.recipes.train import RunResult, resume_config
from splitft.registry import METHODS
from splitft.report.rundir import RunDirectory

JOB_NAME = "splitft"
DATA_FILES = ("data.train", "data.test", "data.validation")
START_TIMEOUT_S = 600.0  # how long the server waits for every site to join (model loading included)


def _nvflare() -> tuple[Any, Any, Any]:
    """FLARE's recipe and our job objects, or a clear message when the extra is missing."""
    try:
        from nvflare.collab import CollabRecipe

        from splitft.runtime import flare
    except ImportError as err:
        raise ConfigError(
            f"runtime = 'flare-*' needs NVIDIA FLARE 2.9: pip install 'splitft[flare]' ({err})"
        ) from None
    return CollabRecipe, flare.SplitFTServer, flare.SplitFTSite


def check(cfg: Config) -> None:
    """What a FLARE run needs beyond :meth:`Config.validate`."""
    able = [name for name in METHODS.names() if cfg.runtime in METHODS.get(name).runtimes]
    if cfg.method not in able:
        raise ConfigError(
            f"runtime = '{cfg.runtime}' runs the methods {', '.join(able)}; "
            f"method = '{cfg.method}' runs with runtime = 'inprocess'"
        )
    sites = cfg.flare.site_configs
    if cfg.runtime in ("flare-sim", "flare-poc") and sites and len(sites) != cfg.federation.num_clients:
        raise ConfigError(
            f"flare.site_configs has {len(sites)} files; give one per client (num_clients = "
            f"{cfg.federation.num_clients}) or none"
        )
    if cfg.runtime == "flare-prod" and not cfg.flare.startup_kit:
        raise ConfigError("runtime = 'flare-prod' needs flare.startup_kit (the admin's startup kit folder)")


def make_recipe(cfg: Config, run_dir: Path, resume: bool = False, overrides: dict | None = None) -> Any:
    """The Collab recipe of one SplitFT run (sites ``site-1`` .. ``site-N``)."""
    recipe_cls, server_cls, site_cls = _nvflare()
    from splitft.runtime.flare import read_site_config, site_name

    n = cfg.federation.num_clients
    config = cfg.to_dict()
    recipe = recipe_cls(
        job_name=JOB_NAME,
        server=server_cls(str(run_dir), config, resume, dict(overrides or {})),
        client=site_cls(config),
        min_clients=n,
        sync_task_timeout=max(START_TIMEOUT_S, cfg.call_timeout_s),
    )
    if cfg.runtime in ("flare-sim", "flare-poc"):
        files = cfg.flare.site_configs
        recipe.set_per_site_config(
            {site_name(i): read_site_config(files[i]) if files else {} for i in range(n)}
        )
    return recipe


def make_env(cfg: Config, workspace: Path) -> Any:
    """FLARE's execution environment for ``cfg.runtime``."""
    from splitft.runtime.flare import site_name

    sites = [site_name(i) for i in range(cfg.federation.num_clients)]
    if cfg.runtime == "flare-sim":
        from nvflare.recipe import SimEnv

        return SimEnv(clients=sites, workspace_root=str(workspace))
    if cfg.runtime == "flare-poc":
        from nvflare.recipe import PocEnv

        os.environ["NVFLARE_POC_WORKSPACE"] = str(workspace)  # PocEnv reads it when built
        return PocEnv(clients=sites)
    from nvflare.recipe import ProdEnv

    return ProdEnv(startup_kit_location=cfg.flare.startup_kit, username=cfg.flare.username)


def run_job(cfg: Config, out_dir: str | Path, resume_overrides: dict | None = None):
    """Run (or, with ``resume_overrides``, resume) the run in ``out_dir`` as a FLARE job.

    The FLARE server writes the run directory (on its host: with flare-prod, ``out_dir`` is a
    path on the server host). Returns the run's :class:`~splitft.recipes.train.RunResult`.
    """
    cfg.validate()
    check(cfg)
    _nvflare()  # the install hint before anything else
    # FLARE's processes run in their own folders: local files must be named absolutely.
    given = {key: getattr(cfg.data, key.split(".")[1]) for key in DATA_FILES}
    cfg = cfg.with_overrides({k: str(Path(v).resolve()) for k, v in given.items() if v and Path(v).is_file()})
    resume = resume_overrides is not None
    run_dir = Path(out_dir).resolve()
    if not resume:
        RunDirectory.create(run_dir).path.rmdir()  # the same check as in-process; the server creates it
    recipe = make_recipe(cfg, run_dir, resume, resume_overrides)
    temporary = not cfg.flare.workspace and cfg.runtime != "flare-prod"
    workspace = Path(
        cfg.flare.workspace or cfg.flare.startup_kit or tempfile.mkdtemp(prefix="splitft-flare-")
    )
    error, where = "", None
    try:
        run = recipe.run(make_env(cfg, workspace.resolve()))
        # Waits for the job to finish (and stops POC); the workspace stays for its logs.
        where = run.get_result(clean_up=False)
    except Exception as err:  # the server's own reason, if it got to write one, is in FAILED
        error = f"{type(err).__name__}: {err}"
    if cfg.runtime == "flare-prod" and not run_dir.exists() and not error:
        note = f"the run directory is on the FLARE server host; job result {where}"
        return RunResult(run_dir, {"note": note}, [])
    failed = run_dir / "FAILED"
    if error or failed.exists() or not (run_dir / "summary.json").exists():
        reason = failed.read_text().strip() if failed.exists() else error or "no summary.json was written"
        raise SplitFTError(f"the FLARE job failed: {reason} (FLARE logs under {where or workspace})")
    if temporary:
        shutil.rmtree(workspace, ignore_errors=True)
    run = RunDirectory(run_dir)
    return RunResult(run_dir, json.loads((run_dir / "summary.json").read_text()), run.read_metrics())


class FlareLauncher:
    """The runtime registry's entry for ``flare-sim``, ``flare-poc`` and ``flare-prod``."""

    def train(self, cfg: Config, out_dir: str | Path, progress: bool = False) -> RunResult:
        return run_job(cfg, out_dir)

    def resume(self, run_dir: str | Path, overrides: dict, progress: bool = False) -> RunResult:
        return run_job(resume_config(run_dir, overrides), run_dir, resume_overrides=overrides)


FLARE = FlareLauncher()


def project_yml(
    server_host: str, num_sites: int, name: str = "splitft", admin: str = "admin@nvidia.com"
) -> str:
    """A FLARE project for ``nvflare provision -p project.yml``: the server on ``server_host``
    and sites ``site-1`` .. ``site-N`` (the names SplitFT maps to clients 0 .. N-1)."""
    if num_sites < 1:
        raise ConfigError("a FLARE project needs at least one site")
    sites = "".join(
        f"  - name: site-{i}\n    type: client\n    org: nvidia\n" for i in range(1, num_sites + 1)
    )
    return f"""api_version: 3
name: {name}
description: SplitFT federated split fine-tuning, {num_sites} client sites

participants:
  - name: {server_host}
    type: server
    org: nvidia
    fed_learn_port: 8002
{sites}  - name: {admin}
    type: admin
    org: nvidia
    role: project_admin

builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
    args:
      template_file:
        - master_template.yml
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""


def probe_calls(cfg: Config, sizes: list[int], count: int) -> dict[str, float]:
    """Seconds per call of the FLARE transport alone (echo of ``size`` bytes) on ``cfg.runtime``."""
    from splitft.runtime.flare import CallProbe

    recipe_cls, _, site_cls = _nvflare()
    cfg = cfg.with_overrides({"flare.site_configs": []})
    with tempfile.TemporaryDirectory(prefix="splitft-probe-") as tmp:
        out = Path(tmp) / "calls.json"
        recipe = recipe_cls(
            job_name="splitft-probe",
            server=CallProbe(str(out), list(sizes), count),
            client=site_cls(cfg.to_dict()),
            min_clients=cfg.federation.num_clients,
            sync_task_timeout=START_TIMEOUT_S,
        )
        recipe.run(make_env(cfg, Path(tmp) / "flare")).get_result(clean_up=False)
        return json.loads(out.read_text())
