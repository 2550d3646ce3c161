"""Kill -9 a real ``splitft train`` process at several moments, resume, and get the very run
an uninterrupted one gives (metrics, summary and adapters identical, wall time aside).

The moments: in round 1 before any checkpoint (the run restarts in place), in the middle of
writing a checkpoint (its tensors written, its state not: a temporary folder is left), and in
the middle of writing a metrics row (half a line is left). The kill is a real SIGKILL of the
process; a small wrapper picks the moment by sending it from inside the call named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from splitft.cli import main

KILLER = r"""
import os, signal, sys
from splitft.cli import main
from splitft.recipes import checkpoint
from splitft.report.rundir import RunDirectory
from splitft.roles.main_server import MainServer

moment, nth = sys.argv[1], int(sys.argv[2])
calls = 0

def die_on_nth(owner, name, before=None, after=False):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            if before:
                before(*args)
            result = real(*args, **kwargs) if after else None
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(owner, name, wrapped)

def half_row(run, row):
    import json
    with open(run.metrics_path, "a") as handle:
        handle.write(json.dumps(row)[:40])

if moment == "first-step":
    die_on_nth(MainServer, "train_step")
elif moment == "mid-checkpoint":
    die_on_nth(checkpoint, "save_file", after=True)
elif moment == "mid-metrics-row":
    die_on_nth(RunDirectory, "append_metrics", before=half_row)
sys.exit(main(sys.argv[3:]))
"""

ARGS = [
    "--model.name", "tiny:llama", "--model.keep_layers", "3", "--federation.num_clients", "2",
    "--federation.rounds", "4", "--eval.every", "1", "--eval.max_samples", "8", "--policy.name", "splitft",
    "--threads", "1",
]  # fmt: skip


def killed(moment: str, nth: int, *argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, moment, str(nth), *argv], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(x).items() if k != "wall_s"}
        for x in (run / "metrics.jsonl").read_text().splitlines()
    ]


def outputs(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_s")
    files = {
        f"{d}/{p.name}": p.read_bytes()
        for d in ("adapter", "adapter-best")
        for p in sorted((run / d).iterdir())
    }
    return {"metrics": rows(run), "summary": summary, "files": files}


def test_killed_at_any_moment_resumes_to_the_same_run(tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line {i} " + "thou art fair " * (1 + i % 7) + "\n" for i in range(60)))
    args = [*ARGS, "--data.train", str(corpus)]
    straight, run = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", *args, "--out", str(straight)]) == 0

    killed("first-step", 1, "train", *args, "--out", str(run))  # round 1, nothing saved yet
    assert (run / "config.toml").exists() and not (run / "checkpoint").exists()

    killed("mid-checkpoint", 2, "train", "--resume", str(run))  # restarts; dies saving round 2
    assert [r["round"] for r in rows(run)] == [1, 2]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["round"] == 1
    assert list(run.glob(".checkpoint.tmp*")), "the kill should have hit a checkpoint being written"

    killed("mid-metrics-row", 2, "train", "--resume", str(run))  # from round 2; dies writing round 3's row
    assert not (run / "metrics.jsonl").read_text().endswith("\n")
    assert not list(run.glob(".checkpoint.tmp*")), "the next checkpoint write removes the leftover"

    assert main(["train", "--resume", str(run)]) == 0
    assert outputs(run) == outputs(straight)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
