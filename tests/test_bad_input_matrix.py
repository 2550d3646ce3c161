"""The bad-input matrix: every subcommand, fed broken config, data, models, checkpoints,
adapters, metrics and options, answers with ONE line on stderr that starts with ``error:``,
exits 2, prints no traceback and changes nothing on disk (every file and folder under the
test's folder, the damaged run included, keeps its size, time and mode).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from splitft.cli import main

TINY = ["--model.name", "tiny:llama", "--model.keep_layers", "2", "--threads", "1"]
SMALL = [*TINY, "--federation.num_clients", "2", "--eval.max_samples", "8"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-round run (checkpoint, metrics, summary, adapters) to damage copies of."""
    root = tmp_path_factory.mktemp("finished")
    corpus = root / "lines.txt"
    corpus.write_text("".join(f"line {i} " + "thou art fair " * (1 + i % 5) + "\n" for i in range(40)))
    out = root / "run"
    assert (
        main(["train", *SMALL, "--data.train", str(corpus), "--federation.rounds", "2", "--out", str(out)])
        == 0
    )
    return out


def deep(n: int) -> str:
    return "[" * n + "]" * n


def copy_run(tmp: Path, run: Path, damage: Callable[[Path], None] | None = None) -> Path:
    """A copy of the finished run (its data file included) with ``damage`` applied."""
    target = tmp / "copy"
    shutil.copytree(run, target)
    shutil.copy(run.parent / "lines.txt", tmp / "lines.txt")
    cfg = (target / "config.toml").read_text().replace(str(run.parent / "lines.txt"), str(tmp / "lines.txt"))
    (target / "config.toml").write_text(cfg)
    if damage:
        damage(target)
    return target


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def lines(tmp: Path) -> str:
    return str(write(tmp / "lines.txt", "".join(f"line {i} of a small corpus\n" for i in range(40))))


def train(tmp: Path, *extra: str) -> list[str]:
    return ["train", *SMALL, "--data.train", lines(tmp), "--out", str(tmp / "out"), *extra]


def resume(damage: Callable[[Path], None], *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["train", "--resume", str(copy_run(tmp, run, damage)), *extra]


def evaluate(damage: Callable[[Path], None] | None, *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["eval", "--adapter", str(copy_run(tmp, run, damage) / "adapter"), *extra]


def report(damage: Callable[[Path], None], *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, run: ["report", str(copy_run(tmp, run, damage)), "--out", str(tmp / "rep"), *extra]


def on(name: str, data: str | bytes) -> Callable[[Path], None]:
    return lambda folder: write(folder / name, data)


def truncate(name: str, keep: float) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return cut


def model_folder(tmp: Path) -> str:
    """A local model folder whose config is fine and whose weights are garbage."""
    config = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
              "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 64}  # fmt: skip
    write(tmp / "model" / "config.json", json.dumps(config))
    write(tmp / "model" / "model.safetensors", struct.pack("<Q", 10**6) + b"{not json")
    return str(tmp / "model")


# (case id, argv builder (tmp folder, finished run), a substring the error line must hold)
CASES: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    # config values and files
    ("config-lr-inf", lambda t, r: train(t, "--train.lr", "inf"), "train.lr = inf: must be a finite number"),
    ("config-lr-nan", lambda t, r: train(t, "--train.lr", "nan"), "train.lr = nan"),
    (
        "config-gamma-inf",
        lambda t, r: train(t, "--policy.gamma=-inf"),
        "policy.gamma = -inf: must be a finite",
    ),
    ("config-timeout-inf", lambda t, r: train(t, "--call_timeout_s", "inf"), "call_timeout_s = inf"),
    ("config-fraction-nan", lambda t, r: train(t, "--data.test_fraction", "nan"), "data.test_fraction = nan"),
    (
        "config-rounds-zero",
        lambda t, r: train(t, "--federation.rounds", "0"),
        "federation.rounds = 0: must be >= 1",
    ),
    (
        "config-batch-float",
        lambda t, r: train(t, "--train.batch_size", "1.5"),
        "train.batch_size: expected an integer",
    ),
    ("config-unknown-field", lambda t, r: train(t, "--lora.rcut", "4"), "did you mean 'lora.r_cut'"),
    ("config-missing", lambda t, r: ["train", "--config", str(t / "no.toml")], "config file not found"),
    (
        "config-binary",
        lambda t, r: ["train", "--config", str(write(t / "b.toml", b"\xff\xfe\x00" * 9))],
        "not UTF-8",
    ),
    (
        "config-deep",
        lambda t, r: ["train", "--config", str(write(t / "d.toml", f"a = {deep(5000)}\n"))],
        "d.toml",
    ),
    (
        "config-type",
        lambda t, r: ["train", "--config", str(write(t / "t.toml", "[train]\nlr = 'x'\n"))],
        "train.lr",
    ),
    ("config-folder", lambda t, r: ["train", "--config", str(t)], "is a directory"),
    (
        "out-not-empty",
        lambda t, r: train(t) + ["--out", str(write(t / "full" / "x", "keep").parent)],
        "already exists",
    ),
    ("out-under-file", lambda t, r: train(t) + ["--out", str(write(t / "afile", "x") / "run")], "afile"),
    # data
    ("data-missing", lambda t, r: train(t, "--data.train", str(t / "none.txt")), "none.txt does not exist"),
    ("data-empty", lambda t, r: train(t, "--data.train", str(write(t / "e.txt", "\n\n"))), "e.txt"),
    (
        "data-binary",
        lambda t, r: train(t, "--data.train", str(write(t / "b.txt", b"\xff\x00" * 40))),
        "not UTF-8",
    ),
    ("data-folder", lambda t, r: train(t, "--data.train", str(t)), "not in the WikiText-2 layout"),
    (
        "data-jsonl-deep",
        lambda t, r: train(t, "--data.train", str(write(t / "d.jsonl", deep(100_000) + "\n"))),
        "line 1",
    ),
    (
        "data-jsonl-bad",
        lambda t, r: train(t, "--data.train", str(write(t / "j.jsonl", '{"text": "a"}\n{oops\n'))),
        "line 2",
    ),
    # models
    ("model-family", lambda t, r: train(t, "--model.name", "tiny:mamba"), "allowed: gpt2"),
    ("model-missing", lambda t, r: train(t, "--model.name", str(t / "nomodel")), "cannot be loaded"),
    (
        "model-weights",
        lambda t, r: train(t, "--model.name", model_folder(t), "--model.tokenizer", "smollm2-135m"),
        "damaged",
    ),
    ("model-cut", lambda t, r: train(t, "--split.cuts", "9"), "split.cuts value 9 is outside 1..1"),
    ("model-keep", lambda t, r: train(t, "--model.keep_layers", "9"), "model.keep_layers=9 is outside 2..4"),
    # checked before the 135M model loads: no progress bar or warning before the error line
    (
        "model-cut-smollm2",
        lambda t, r: train(t, "--model.name", "smollm2-135m", "--split.cuts", "40"),
        "outside 1..1",
    ),
    # command lines
    ("cli-command", lambda t, r: ["trian"], "invalid choice: 'trian'"),
    ("cli-eval-split", lambda t, r: ["eval", "--adapter", str(t), "--split", "train"], "argument --split"),
    ("cli-eval-int", lambda t, r: ["eval", "--adapter", str(t), "--batch-size", "x"], "invalid int value"),
    ("cli-eval-unknown", lambda t, r: ["eval", "--adapter", str(t), "--bogus"], "unrecognized arguments"),
    ("cli-report-none", lambda t, r: ["report"], "RUN_DIR"),
    # checkpoints and resumed runs
    ("resume-missing", lambda t, r: ["train", "--resume", str(t / "none")], "no config.toml"),
    ("resume-state-cut", resume(truncate("checkpoint/state.json", 0.5)), "state.json is not valid JSON"),
    ("resume-state-keys", resume(on("checkpoint/state.json", '{"round": 2}')), "lacks loop, fit"),
    ("resume-state-deep", resume(on("checkpoint/state.json", deep(100_000))), "nested too deeply"),
    (
        "resume-state-inner",
        resume(on("checkpoint/state.json", '{"round": 2, "loop": {}, "fit": {}}')),
        "damaged",
    ),
    (
        "resume-tensors-random",
        resume(on("checkpoint/tensors.safetensors", b"\x07" * 64)),
        "tensors.safetensors",
    ),
    ("resume-tensors-cut", resume(truncate("checkpoint/tensors.safetensors", 0.6)), "tensors.safetensors"),
    ("resume-metrics-line", resume(on("metrics.jsonl", "{}\n{oops\n")), "line 1 is not a round"),
    ("resume-metrics-deep", resume(on("metrics.jsonl", deep(100_000) + "\n")), "line 1"),
    ("resume-config", resume(on("config.toml", "[lora\n")), "invalid TOML"),
    ("resume-locked-field", resume(None, "--lora.r_cut", "2"), "--resume cannot change lora.r_cut"),
    (
        "resume-and-out",
        lambda t, r: ["train", "--resume", str(t), "--out", str(t / "x")],
        "drop --config and --out",
    ),
    # eval
    ("eval-missing", lambda t, r: ["eval", "--adapter", str(t / "none")], "is not an adapter folder"),
    ("eval-batch-zero", evaluate(None, "--batch-size", "0"), "--batch-size = 0: must be >= 1"),
    ("eval-samples-negative", evaluate(None, "--max-samples", "-1"), "--max-samples = -1"),
    ("eval-facts-json", evaluate(on("adapter/splitft.json", "{oops")), "splitft.json is not valid JSON"),
    ("eval-facts-keys", evaluate(on("adapter/splitft.json", '{"model": "tiny:llama"}')), "lacks keep_layers"),
    (
        "eval-facts-type",
        evaluate(on("adapter/splitft.json", '{"model": 3, "keep_layers": 0, "tokenizer": "", "seed": 0}')),
        "model = 3",
    ),
    ("eval-weights", evaluate(on("adapter/adapter_model.safetensors", b"\x01" * 99)), "cannot be loaded"),
    ("eval-data", evaluate(None, "--data", "/no/such/corpus.txt"), "corpus.txt does not exist"),
    # bench
    ("bench-batch", lambda t, r: ["bench", "--quick", "--batch-size", "0"], "need batch size >= 1"),
    ("bench-length", lambda t, r: ["bench", "--quick", "--length", "1"], "length >= 2"),
    (
        "bench-model",
        lambda t, r: ["bench", "--model", "tiny:mamba", "--repeats", "1"],
        "unknown tiny model family",
    ),
    # partition
    (
        "partition-clients",
        lambda t, r: ["partition", "--data", lines(t), "--clients", "0", "--tokenizer", "whitespace"],
        "federation.num_clients",
    ),
    (
        "partition-alpha",
        lambda t, r: ["partition", "--data", lines(t), "--alpha", "nan", "--tokenizer", "whitespace"],
        "data.alpha = nan",
    ),
    (
        "partition-data",
        lambda t, r: ["partition", "--data", str(t / "none.txt"), "--tokenizer", "whitespace"],
        "does not exist",
    ),
    # report
    ("report-missing", lambda t, r: ["report", str(t / "none")], "does not exist"),
    (
        "report-metrics-line-4",
        report(on("metrics.jsonl", '{"round": 1}\n' * 3 + "{oops\n")),
        "metrics.jsonl: line 4",
    ),
    ("report-metrics-deep", report(on("metrics.jsonl", deep(100_000) + "\n")), "line 1"),
    ("report-summary", report(on("summary.json", "{oops")), "summary.json is not valid JSON"),
    ("report-config", report(on("config.toml", b"\xff\xfe")), "not UTF-8"),
    (
        "report-target",
        lambda t, r: ["report", str(r), "--target-ppl", "abc"],
        "--target-ppl must be a number",
    ),
    # compare
    ("compare-nothing", lambda t, r: ["compare", "--out", str(t / "cmp")], "needs --vary"),
    ("compare-field", lambda t, r: ["compare", "--vary", "bogus=1,2", "--out", str(t / "cmp")], "bogus"),
    (
        "compare-preset",
        lambda t, r: ["compare", "--preset", str(t / "none.toml"), "--out", str(t / "cmp")],
        "none.toml",
    ),
    (
        "compare-value",
        lambda t, r: ["compare", "--vary", "train.lr=0.1,inf", "--out", str(t / "cmp"), *TINY],
        "train.lr = inf",
    ),
]


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: (size, modification time, mode)."""
    seen = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            seen[str(path)] = (st.st_size if path.is_file() else 0, st.st_mtime_ns, st.st_mode)
    return seen


def test_the_matrix_is_large_and_covers_every_subcommand():
    assert len(CASES) >= 40 and len({case for case, _, _ in CASES}) == len(CASES)
    groups = {case.split("-")[0] for case, _, _ in CASES}
    subcommands = {"train", "resume", "eval", "bench", "partition", "report", "compare"}
    assert subcommands | {"config", "data", "model", "out"} <= groups | {"train"}


@pytest.mark.parametrize("build, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(
    build, message, finished, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a default output folder would land here
    argv = build(tmp_path, finished)
    before = snapshot(tmp_path, finished.parent)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert snapshot(tmp_path, finished.parent) == before, "a bad input must change nothing on disk"
