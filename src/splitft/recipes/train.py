"""The training recipe: ``setup`` (check everything, build the server side) -> ``fit`` (rounds).

This module runs a run in *this* process, whatever reaches the clients: ``connect`` turns the
experiment into the runtime its loop calls (in-process clients by default). Choosing a runtime
by name is the layer above (:mod:`splitft.launch`), which is also the Python API::

    from splitft.config import Config
    from splitft.launch import train

    cfg = Config().with_overrides({"model.name": "tiny:llama", "federation.rounds": 2})
    result = train(cfg, "runs/demo")
    print(result.summary["final_test_ppl"], result.run_dir)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from splitft.config import Config
from splitft.errors import ConfigError, DataError, DivergenceError, SplitFTError
from splitft.methods.base import RoundLoop
from splitft.recipes import checkpoint
from splitft.recipes.evaluate import EvalResult, evaluate
from splitft.recipes.experiment import Experiment, local_runtime, setup
from splitft.recipes.generate import score_generation
from splitft.recipes.outputs import export_run_adapters, metrics_row, summarize
from splitft.report.plots import plot_run
from splitft.report.rundir import RunDirectory
from splitft.report.tensorboard import TensorBoardLog
from splitft.runtime.base import Runtime

Connect = Callable[[Experiment], Runtime | None]
"""How the server side reaches the clients: builds (or connects to) them, returns the runtime."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


@dataclass
class Progress:
    """What ``fit`` carries across rounds besides the loop: part of the checkpoint."""

    initial: EvalResult
    """The base model's test score, before training."""
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": None, "round": None})
    final_test: EvalResult | None = None
    wall_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "initial": asdict(self.initial),
            "final_test": asdict(self.final_test) if self.final_test else None,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Progress:
        final = EvalResult(**state["final_test"]) if state["final_test"] else None
        return cls(EvalResult(**state["initial"]), state["best"], final, state["wall_s"])


def _score(exp: Experiment, adapters: dict, data: Any) -> EvalResult:
    return evaluate(exp.model, adapters, data, exp.pad_id, exp.cfg.eval.batch_size, exp.cfg.eval.max_samples)


def _evaluate_round(
    exp: Experiment, loop: RoundLoop, run: RunDirectory, row: dict, progress: Progress
) -> None:
    """Score the global set on validation and test; keep the adapters of the best validation loss."""
    adapters = loop.global_adapters
    val = _score(exp, adapters, exp.data.validation)
    test = _score(exp, adapters, exp.data.test)
    row.update(val_loss=val.loss, test_ppl=test.ppl, test_acc=test.acc, test_loss=test.loss)
    progress.final_test = test
    if progress.best["val_loss"] is None or val.loss < progress.best["val_loss"]:
        progress.best = {"val_loss": val.loss, "round": row["round"]}
        run.write_folder("adapter-best", lambda p: export_run_adapters(exp, adapters, p))


def fit(
    exp: Experiment,
    loop: RoundLoop,
    run: RunDirectory,
    progress_bar: bool = True,
    resume: bool = False,
    on_resumed: Callable[[], None] | None = None,
    start: tuple[int, Progress] | None = None,
) -> RunResult:
    """Run every round, evaluate, and write metrics, plots, adapters, checkpoints and the summary.

    With ``resume``, the loop is first restored from the run's checkpoint and continues with
    the next round (metrics of rounds after the checkpoint, if any, are dropped); ``start``
    is what :func:`_restore` already returned.
    """
    cfg = exp.cfg
    if resume and start is None:
        start = _restore(run, loop, on_resumed)
    if start is not None:
        first, progress = start
    else:
        first, progress = 1, Progress(_score(exp, exp.initial, exp.data.test))  # the base model
    wall_offset, started = progress.wall_s, time.perf_counter()
    board = TensorBoardLog(run.path) if cfg.eval.tensorboard else None
    rounds = cfg.federation.rounds
    bar = tqdm(range(first, rounds + 1), desc="rounds", unit="round", disable=not progress_bar)
    for round_number in bar:
        try:
            result = loop.run_round(round_number)
        except DivergenceError as err:  # stop: the checkpoint of the last round is the last good state
            raise DivergenceError(f"round {round_number}: {err}") from None
        row = metrics_row(exp, result)
        postfix = {"loss": "-" if result.train_loss is None else f"{result.train_loss:.3f}"}
        if round_number % cfg.eval.every == 0 or round_number == rounds:
            _evaluate_round(exp, loop, run, row, progress)
            postfix["test_ppl"] = f"{row['test_ppl']:.2f}"
        bar.set_postfix(postfix)
        row["wall_s"] = progress.wall_s = round(wall_offset + time.perf_counter() - started, 3)
        run.append_metrics(row)
        if board is not None:
            board.log(row)
        checkpoint.save(run, {"round": round_number, "loop": loop.state_dict(), "fit": progress.state_dict()})
    if board is not None:
        board.close()
    run.write_folder("adapter", lambda p: export_run_adapters(exp, loop.global_adapters, p))
    metrics = run.read_metrics()
    plot_run(metrics, run.path)
    wall_s = wall_offset + time.perf_counter() - started
    summary = summarize(exp, metrics, progress.final_test, progress.best["round"], wall_s)
    summary.update(initial_test_ppl=progress.initial.ppl, initial_test_acc=progress.initial.acc)
    if cfg.eval.generation_metrics:
        summary["generation"] = _generation(exp, loop, run)
    run.write_json("summary.json", summary)
    return RunResult(run.path, summary, metrics)


def _generation(exp: Experiment, loop: RoundLoop, run: RunDirectory) -> dict[str, Any]:
    """Generation metrics of the final global adapters on the seeded test-prompt subset."""
    e = exp.cfg.eval
    return score_generation(
        exp.peft_model,
        loop.global_adapters,
        exp.tokenizer,
        exp.data.test_samples,
        e.generation_metrics,
        e.generation_samples,
        e.max_new_tokens,
        exp.cfg.seed,
        e.batch_size,
        run.path / "generations.jsonl",
    )


def _restore(
    run: RunDirectory, loop: RoundLoop, on_resumed: Callable[[], None] | None
) -> tuple[int, Progress]:
    """Load the checkpoint into ``loop``; the first round to run and the fit's progress.

    Everything is read and checked before anything on disk changes: a damaged checkpoint or
    metrics file is one DataError and leaves the run as it was.
    """
    state = checkpoint.load(run)
    rows = run.read_metrics(drop_partial_last=True)  # a row cut short belongs to an unsaved round
    try:
        loop.load_state_dict(state["loop"])
        progress = Progress.from_state_dict(state["fit"])
    except SplitFTError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        folder = run.folder(checkpoint.FOLDER)
        raise DataError(f"checkpoint {folder} is damaged: {type(err).__name__}: {err}") from None
    if on_resumed:
        on_resumed()  # e.g. record the new round count, only once the checkpoint loaded
    run.write_metrics([row for row in rows if row["round"] <= state["round"]])
    return state["round"] + 1, progress


@contextlib.contextmanager
def _failure_marker(run: RunDirectory) -> Iterator[None]:
    """Write ``FAILED`` with the reason when the run stops on an error (if the folder still
    takes writes: a read-only folder or a full disk may be the error itself)."""
    try:
        yield
    except BaseException as err:
        run.mark_failed(f"{type(err).__name__}: {err}")
        raise


def train(
    cfg: Config, out_dir: str | Path, progress: bool = False, connect: Connect = local_runtime
) -> RunResult:
    """Set up, create ``out_dir`` (must be new or empty), write the config and run all rounds."""
    exp = setup(cfg)
    loop = exp.method.make_loop(exp, connect(exp))
    run = RunDirectory.create(out_dir)
    cfg.to_toml(run.path / "config.toml")
    with _failure_marker(run):
        return fit(exp, loop, run, progress_bar=progress)


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


def resume_config(run_dir: str | Path, overrides: dict[str, object] | None = None) -> Config:
    """The config of the run in ``run_dir`` with ``overrides`` of :data:`RESUME_OVERRIDES` only."""
    config_file = Path(run_dir) / "config.toml"
    if not config_file.exists():
        raise ConfigError(f"--resume {run_dir}: no config.toml there; is it a run directory?")
    for key in overrides or {}:
        if key not in RESUME_OVERRIDES:
            raise ConfigError(
                f"--resume cannot change {key} (the checkpoint was made with the old value); "
                f"allowed: {', '.join(RESUME_OVERRIDES)}"
            )
    return Config.from_toml(config_file).with_overrides(overrides or {})


def resume(
    run_dir: str | Path,
    overrides: dict[str, object] | None = None,
    progress: bool = False,
    connect: Connect = local_runtime,
) -> RunResult:
    """Continue the run in ``run_dir`` from its last complete round; ``overrides`` may change
    only :data:`RESUME_OVERRIDES` (e.g. ``{"federation.rounds": 60}``). In-process and FLARE
    runs resume from the same checkpoint, so a run may continue on another runtime."""
    run = RunDirectory(run_dir)
    cfg = resume_config(run_dir, overrides)
    exp = setup(cfg)
    loop = exp.method.make_loop(exp, connect(exp))

    def resumed() -> None:
        cfg.to_toml(run.path / "config.toml")
        run.clear_failure()

    if checkpoint.exists(run):
        start = _restore(run, loop, resumed)
    else:  # killed before its first checkpoint: the run starts again, in place
        resumed()
        run.write_metrics([])
        start = None
    with _failure_marker(run):
        return fit(exp, loop, run, progress_bar=progress, start=start)
