"""The training recipe: ``setup`` (check everything, build the roles) -> ``fit`` (the rounds).

Python API::

    from splitft.config import Config
    from splitft.recipes.train import train

    cfg = Config().with_overrides({"model.name": "tiny:llama", "federation.rounds": 2})
    result = train(cfg, "runs/demo")
    print(result.summary["final_test_ppl"], result.run_dir)

Everything that can be wrong with the input (config, model, data, cuts) is checked in
``setup`` before the run directory is created, so a bad run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from splitft.algorithms.policy import make_policy, resolve_cuts
from splitft.config import Config
from splitft.data.prepare import PreparedData, prepare_data
from splitft.data.tokenize import pad_id_of
from splitft.errors import ConfigError
from splitft.methods.split_loop import RoundLoop, client_role
from splitft.methods.whole_model import WholeModelLoop, WholeModelTrainer, pool
from splitft.model.loading import load_model, load_tokenizer
from splitft.model.lora import (
    AdapterLayout,
    Adapters,
    attach_lora,
    copy_ranks,
    export_adapters,
    initial_adapters,
)
from splitft.model.split import SplitModel
from splitft.recipes import checkpoint
from splitft.recipes.evaluate import EvalResult, evaluate
from splitft.report.plots import plot_run
from splitft.report.rundir import RunDirectory
from splitft.roles.client import Client
from splitft.roles.main_server import MainServer
from splitft.runtime import InProcessRuntime, Runtime
from splitft.sim.timing import RoundTimer
from splitft.wire.codec import ByteLedger

SPLIT_METHODS = ("splitft", "sfl-fixed")
"""Methods that split the model (the others train it whole: fedlora, centralized)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything a run needs, built and checked by :func:`setup`."""

    cfg: Config
    tokenizer: Any
    peft_model: PeftModel
    model: SplitModel
    layout: AdapterLayout
    data: PreparedData
    cuts: list[int]
    timer: RoundTimer
    clients: list[Client] | list[WholeModelTrainer]
    main_server: MainServer | None
    runtime: Runtime | None
    ledger: ByteLedger = field(default_factory=ByteLedger)
    initial: Adapters = field(default_factory=dict)
    """The freshly initialised global adapter set."""
    trainer: WholeModelTrainer | None = None
    """method 'centralized': the one trainer of the pooled data."""

    @property
    def pad_id(self) -> int:
        return pad_id_of(self.tokenizer)


def setup(cfg: Config, prepare: Callable[[Any], PreparedData] | None = None) -> Experiment:
    """Validate ``cfg``, load tokenizer, data and model, and build the roles.

    ``prepare``: given the tokenizer, the data to use instead of ``cfg.data`` split
    ``federation.num_clients`` ways (a FLARE site's own file, say).
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    if prepare is None:
        data = prepare_data(cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed)
    else:
        data = prepare(tokenizer)
    base = load_model(
        cfg.model.name, vocab_size=len(tokenizer), seed=cfg.seed, keep_layers=cfg.model.keep_layers
    )
    probe = SplitModel(base)  # the family and depth, before LoRA is injected
    cuts = resolve_cuts(cfg.split.cuts, cfg.federation.num_clients, probe.num_blocks)
    timer = RoundTimer(cfg, base.config, probe.num_blocks)
    if cfg.method == "fedlora" and not any(timer.whole_model_fits):
        raise ConfigError(
            f"method = 'fedlora': no client's device can train the whole model (it needs "
            f"{timer.whole_model_bytes / 1e6:.0f} MB at batch {cfg.train.batch_size} x {cfg.data.max_length} "
            f"tokens; devices: {', '.join(d.name for d in timer.devices)}); that is what split learning "
            "is for: use method = 'splitft' or 'sfl-fixed', or larger devices"
        )
    for i, (cut, most) in enumerate(zip(cuts, timer.max_cut, strict=True)):
        if cut > most and cfg.method in SPLIT_METHODS:
            raise ConfigError(
                f"split.cuts gives client {i} cut {cut}, but its device ({timer.devices[i].name}) holds at most "
                f"{most} blocks at batch {cfg.train.batch_size} x {cfg.data.max_length} tokens; use a cut <= {most}"
            )
    peft_model = attach_lora(
        base, probe.family, cfg.lora.r_others, cfg.lora.alpha, cfg.lora.target_modules, cfg.seed
    )
    peft_model.to(device)
    causal_lm = peft_model.base_model.model
    model = SplitModel(causal_lm)
    layout = AdapterLayout.of(causal_lm, model.family)
    initial = initial_adapters(causal_lm)
    pad_id = pad_id_of(tokenizer)
    if cfg.method not in SPLIT_METHODS:
        return _setup_whole_model(cfg, tokenizer, peft_model, model, layout, data, cuts, timer, initial)
    main_server = MainServer(model, layout, cfg, initial)
    clients = [
        Client(i, model, layout, data.clients[i], cfg, pad_id, data.heldout[i])
        for i in range(cfg.federation.num_clients)
    ]
    runtime = InProcessRuntime({client_role(c.client_id): c for c in clients})
    return Experiment(
        cfg,
        tokenizer,
        peft_model,
        model,
        layout,
        data,
        cuts,
        timer,
        clients,
        main_server,
        runtime,
        initial=initial,
    )


def _setup_whole_model(
    cfg: Config,
    tokenizer: Any,
    peft_model: PeftModel,
    model: SplitModel,
    layout: AdapterLayout,
    data: PreparedData,
    cuts: list[int],
    timer: RoundTimer,
    initial: Adapters,
) -> Experiment:
    """The roles of fedlora (a whole-model trainer per client) or centralized (one trainer)."""
    fed = cfg.federation
    pad_id = pad_id_of(tokenizer)
    exp = Experiment(
        cfg, tokenizer, peft_model, model, layout, data, cuts, timer, [], None, None, initial=initial
    )
    if cfg.method == "centralized":
        steps = fed.rounds * (fed.clients_per_round or fed.num_clients) * fed.local_steps
        exp.trainer = WholeModelTrainer(0, model, layout, pool(data.clients), cfg, pad_id, steps)
        return exp
    exp.clients = [
        WholeModelTrainer(i, model, layout, data.clients[i], cfg, pad_id, fed.rounds * fed.local_steps)
        for i in range(fed.num_clients)
    ]
    exp.runtime = InProcessRuntime({client_role(c.client_id): c for c in exp.clients})
    return exp


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


def trainable_params(exp: Experiment, cuts: list[int]) -> tuple[list[int], list[int]]:
    """LoRA parameters each client trains, and the server trains for it, at the rank trained
    (fedlora: all of them on the client; centralized: all of them on the server, once)."""
    lora, layout, m = exp.cfg.lora, exp.layout, exp.model.num_blocks
    everything = sum(layout.num_params(name, layout.rank) for name in layout.shapes)
    if exp.cfg.method == "fedlora":  # a client that cannot hold the model trains nothing
        return [everything if fits else 0 for fits in exp.timer.whole_model_fits], [0] * len(cuts)
    if exp.cfg.method == "centralized":
        return [0] * len(cuts), [everything]
    client, server = [], []
    for cut in cuts:
        sides = (
            (range(cut), cut - 1, lora.client_cut_rank, client),
            (range(cut, m), cut, lora.server_cut_rank, server),
        )
        for blocks, cut_block, r_cut, out in sides:
            ranks = copy_ranks(layout, blocks, cut_block, r_cut)
            out.append(sum(layout.num_params(name, rank) for name, rank in ranks.items()))
    return client, server


def make_loop(exp: Experiment) -> RoundLoop | WholeModelLoop:
    """The round loop of ``exp``: split learning with the configured allocation policy, or the
    whole-model loop of fedlora / centralized."""
    if exp.cfg.method not in SPLIT_METHODS:
        fits = exp.timer.whole_model_fits if exp.cfg.method == "fedlora" else [True] * len(exp.cuts)
        return WholeModelLoop(
            exp.cfg,
            exp.layout,
            exp.runtime,
            dict(exp.initial),
            exp.ledger,
            exp.timer,
            exp.model.num_blocks,
            fits,
            exp.trainer,
        )
    p = exp.cfg.policy
    policy = make_policy(p.name, exp.cuts, p.gamma, p.tolerance, p.slack)
    return RoundLoop(
        exp.cfg, exp.layout, exp.runtime, exp.main_server, policy, exp.ledger, exp.timer, exp.cuts
    )


def fit(
    exp: Experiment,
    run: RunDirectory,
    progress: bool = True,
    resume: bool = False,
    on_resumed: Callable[[], None] | None = None,
) -> RunResult:
    """Run every round, evaluate, and write metrics, plots, adapters, checkpoints and the summary.

    With ``resume``, the loop is first restored from the run's checkpoint and continues with
    the next round (metrics of rounds after the checkpoint, if any, are dropped).
    """
    cfg = exp.cfg
    loop = make_loop(exp)
    if resume:
        state = checkpoint.load(run, loop)
        if on_resumed:
            on_resumed()  # e.g. record the new round count, only once the checkpoint loaded
        run.keep_metrics_until(state["round"])
        first, best, initial = state["round"] + 1, state["best"], EvalResult(**state["initial"])
        final_test = EvalResult(**state["final_test"]) if state["final_test"] else None
        wall_offset = state["wall_s"]
    else:
        first, best, final_test, wall_offset = 1, {"val_loss": None, "round": None}, None, 0.0
        initial = _score(exp, exp.initial, exp.data.test)  # the base model, before training
    started = time.perf_counter()
    rounds = cfg.federation.rounds
    bar = tqdm(range(first, rounds + 1), desc="rounds", unit="round", disable=not progress)
    for round_number in bar:
        result = loop.run_round(round_number)
        row: dict[str, Any] = {
            "round": round_number,
            "train_loss": result.train_loss,
            "samples": result.samples,
            "val_loss": None,
            "test_ppl": None,
            "test_acc": None,
            "test_loss": None,
            "cuts": result.cuts,
            "clients": result.clients,
            "policy": [d.reason for d in result.decisions],
            "acc_by_client": {str(i): a for i, a in result.accuracy.items()},
            "w_by_client": {str(i): w for i, w in result.weights.items()},
            "virtual_s": result.virtual_s,
            "round_virtual_s": result.timing.makespan_s,
            "server_busy_share": result.timing.server_busy_share,
            "canonicalized_blocks": result.canonicalized,
            "svd_truncation_error": result.truncation_error,
            "dropped": result.dropped,
            **exp.ledger.round_totals(round_number),
        }
        if round_number % cfg.eval.every == 0 or round_number == rounds:
            adapters = loop.global_adapters
            val = _score(exp, adapters, exp.data.validation)
            test = _score(exp, adapters, exp.data.test)
            row.update(val_loss=val.loss, test_ppl=test.ppl, test_acc=test.acc, test_loss=test.loss)
            final_test = test
            if best["val_loss"] is None or val.loss < best["val_loss"]:
                best = {"val_loss": val.loss, "round": round_number}
                run.write_folder("adapter-best", lambda p, a=adapters: _export(exp, a, p))
            bar.set_postfix(loss=_fmt(result.train_loss), test_ppl=f"{test.ppl:.2f}")
        else:
            bar.set_postfix(loss=_fmt(result.train_loss))
        row["wall_s"] = round(wall_offset + time.perf_counter() - started, 3)
        run.append_metrics(row)
        extra = {
            "best": best,
            "initial": asdict(initial),
            "final_test": asdict(final_test) if final_test else None,
            "wall_s": row["wall_s"],
        }
        checkpoint.save(run, loop, round_number, extra)

    run.write_folder("adapter", lambda p: _export(exp, loop.global_adapters, p))
    metrics = run.read_metrics()
    plot_run(metrics, run.path)
    summary = _summary(exp, metrics, final_test, best["round"], wall_offset + time.perf_counter() - started)
    summary.update(initial_test_ppl=initial.ppl, initial_test_acc=initial.acc)
    run.write_json("summary.json", summary)
    return RunResult(run.path, summary, metrics)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _score(exp: Experiment, adapters: dict[str, torch.Tensor], data) -> EvalResult:
    return evaluate(exp.model, adapters, data, exp.pad_id, exp.cfg.eval.batch_size, exp.cfg.eval.max_samples)


def _export(exp: Experiment, adapters: dict[str, torch.Tensor], folder: Path) -> None:
    export_adapters(exp.peft_model, adapters, folder)
    # What `splitft eval` needs to rebuild the base model the adapter belongs to.
    model_cfg = exp.cfg.model
    facts = {"model": model_cfg.name, "keep_layers": model_cfg.keep_layers, "tokenizer": model_cfg.tokenizer}
    facts["seed"] = exp.cfg.seed  # the weights of a tiny random model depend on it
    (folder / "splitft.json").write_text(json.dumps(facts, indent=2) + "\n")


def _summary(
    exp: Experiment, metrics: list[dict], final: EvalResult | None, best_round: int | None, wall_s: float
) -> dict[str, Any]:
    evaluated = [m for m in metrics if m["test_ppl"] is not None]
    client_params, server_params = trainable_params(exp, metrics[-1]["cuts"])
    totals = exp.ledger.totals()
    best = next((m for m in evaluated if m["round"] == best_round), None)
    return {
        "final_test_ppl": final.ppl if final else None,
        "final_test_acc": final.acc if final else None,
        "final_test_loss": final.loss if final else None,
        "best_test_ppl": min((m["test_ppl"] for m in evaluated), default=None),
        "best_test_acc": max((m["test_acc"] for m in evaluated), default=None),
        "best_round": best_round,
        "best_round_test_ppl": best["test_ppl"] if best else None,
        "bytes_up": totals["bytes_up"],
        "bytes_down": totals["bytes_down"],
        "bytes_by_kind": totals["bytes_by_kind"],
        "trainable_params_client": sum(client_params),
        "trainable_params_server": sum(server_params),
        "trainable_params_by_client": {"client": client_params, "server": server_params},
        "wall_s": round(wall_s, 3),
        "virtual_s": metrics[-1]["virtual_s"],
        "rounds": len(metrics),
        "samples_seen": sum(m.get("samples", 0) for m in metrics),
        "method": exp.cfg.method,
        "policy": exp.cfg.policy.name,
        "infeasible_clients": [i for i, ok in enumerate(exp.timer.whole_model_fits) if not ok]
        if exp.cfg.method == "fedlora"
        else [],
        "devices": {
            "clients": [d.to_dict() for d in exp.timer.devices],
            "server": exp.timer.server.to_dict(),
            "order": exp.cfg.devices.order,
            "max_cut": exp.timer.max_cut,
        },
        "dropped_clients": sorted({d["client"] for m in metrics for d in m["dropped"]}),
        "model": {
            "name": exp.cfg.model.name,
            "family": exp.model.family.name,
            "blocks": exp.model.num_blocks,
            "parameters": sum(p.numel() for p in exp.peft_model.parameters() if p.dtype.is_floating_point)
            - sum(exp.layout.num_params(n, exp.layout.rank) for n in exp.layout.shapes),
        },
        "data": exp.data.facts,
    }


@contextlib.contextmanager
def _failure_marker(run: RunDirectory) -> Iterator[None]:
    try:
        yield
    except BaseException as err:
        run.mark_failed(f"{type(err).__name__}: {err}")
        raise


def train(
    cfg: Config, out_dir: str | Path, progress: bool = False, runtime: Runtime | None = None
) -> RunResult:
    """Set up, create ``out_dir`` (must be new or empty), write the config and run.

    With ``cfg.runtime`` a FLARE runtime, the run happens inside a FLARE job whose server calls
    this again with its ``runtime`` (calls to the client sites) in place of the in-process one.
    """
    if runtime is None and cfg.runtime != "inprocess":
        from splitft.runtime.flare_job import run_job

        return run_job(cfg, out_dir)
    exp = setup(cfg)
    if runtime is not None:
        exp.runtime = runtime
    run = RunDirectory.create(out_dir)
    cfg.to_toml(run.path / "config.toml")
    with _failure_marker(run):
        return fit(exp, run, progress=progress)


# Fields a resumed run may change: they do not alter the state the checkpoint holds.
RESUME_OVERRIDES = (
    "federation.rounds",
    "eval.every",
    "eval.max_samples",
    "eval.batch_size",
    "threads",
    "device",
    "runtime",
    "call_timeout_s",
    "flare.workspace",
    "flare.site_configs",
    "flare.startup_kit",
    "flare.username",
)


def resume(
    run_dir: str | Path,
    overrides: dict[str, object] | None = None,
    progress: bool = False,
    runtime: Runtime | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its last complete round; ``overrides`` may change
    only :data:`RESUME_OVERRIDES` (e.g. ``{"federation.rounds": 60}``). A run may continue on
    another runtime: in-process and FLARE runs resume from the same checkpoint."""
    run = RunDirectory(run_dir)
    config_file = run.path / "config.toml"
    if not config_file.exists():
        raise ConfigError(f"--resume {run.path}: no config.toml there; is it a run directory?")
    overrides = overrides or {}
    for key in overrides:
        if key not in RESUME_OVERRIDES:
            raise ConfigError(
                f"--resume cannot change {key} (the checkpoint was made with the old value); "
                f"allowed: {', '.join(RESUME_OVERRIDES)}"
            )
    cfg = Config.from_toml(config_file).with_overrides(overrides)
    if runtime is None and cfg.runtime != "inprocess":
        from splitft.runtime.flare_job import run_job

        return run_job(cfg, run.path, resume_overrides=overrides)
    exp = setup(cfg)
    if runtime is not None:
        exp.runtime = runtime
    run.clear_failure()
    with _failure_marker(run):
        result = fit(exp, run, progress=progress, resume=True, on_resumed=lambda: cfg.to_toml(config_file))
    return result
