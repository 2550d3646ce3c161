"""`splitft compare`: one run per value of a field on the same data and seed, one report."""

from __future__ import annotations

import json
import shutil

import pytest

from splitft.cli import main


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"speech {i} " + "my lord " * (1 + i % 7) for i in range(60)) + "\n")
    return path


def test_compare_runs_each_value_and_writes_the_report(corpus, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare", "--vary", "lora.r_cut=2,8", "--out", str(out), "--model.name", "tiny:llama",
        "--model.keep_layers", "2", "--data.train", str(corpus), "--federation.num_clients", "2",
        "--federation.rounds", "2", "--eval.every", "2", "--eval.max_samples", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    for value in ("2", "8"):
        summary = json.loads((out / f"lora.r_cut={value}" / "summary.json").read_text())
        assert summary["rounds"] == 2
    low, high = (json.loads((out / f"lora.r_cut={v}" / "summary.json").read_text()) for v in ("2", "8"))
    assert low["trainable_params_client"] < high["trainable_params_client"]  # r_cut shrinks the cut block
    assert low["data"] == high["data"]  # same data and partition
    table = (out / "comparison.md").read_text()
    assert "lora.r_cut=2" in table and "lora.r_cut=8" in table
    assert (out / "ppl_vs_virtual_time.png").stat().st_size > 0
    # a second call keeps complete runs instead of training again
    capsys.readouterr()
    assert main(argv) == 0
    assert "complete, kept" in capsys.readouterr().out


@pytest.mark.parametrize(
    "vary, message",  # --vary value, expected error text
    [
        ("lora.r_cut", "FIELD=VALUE1,VALUE2"),
        ("lora.r_cut=4", "at least two"),
        ("lora.rcut=1,2", "did you mean"),
    ],
)
def test_bad_vary_is_a_clear_error(vary, message, tmp_path, capsys):
    assert main(["compare", "--vary", vary, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()


def _tiny(corpus, out, *extra):
    return [
        "compare", "--vary", "lora.r_cut=2,8", "--out", str(out), "--model.name", "tiny:llama",
        "--model.keep_layers", "2", "--data.train", str(corpus), "--federation.num_clients", "2",
        "--federation.rounds", "1", "--eval.every", "1", "--eval.max_samples", "4", *extra,
    ]  # fmt: skip


def test_a_run_folder_of_another_config_is_refused_before_anything_runs(corpus, tmp_path, capsys):
    out = tmp_path / "cmp"
    (out / "lora.r_cut=8").mkdir(parents=True)
    (out / "lora.r_cut=8" / "config.toml").write_text('[train]\nlr = 0.5\n[model]\nname = "tiny:llama"\n')
    assert main(_tiny(corpus, out)) == 2
    err = capsys.readouterr().err
    assert "lora.r_cut=8 holds a run of another config" in err and "train.lr=" in err
    assert sorted(p.name for p in out.iterdir()) == ["lora.r_cut=8"]  # r_cut=2 was not trained either
    assert (out / "lora.r_cut=8" / "config.toml").read_text().startswith("[train]")  # untouched


def test_compare_restarts_a_run_stopped_before_its_first_checkpoint_and_extends_finished_ones(
    corpus, tmp_path, capsys
):
    out = tmp_path / "cmp"
    assert main(_tiny(corpus, out)) == 0
    # r_cut=2 as if killed during its first round: config and FAILED, no checkpoint
    stopped = out / "lora.r_cut=2"
    config = (stopped / "config.toml").read_text()
    for child in stopped.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    (stopped / "config.toml").write_text(config)
    (stopped / "FAILED").write_text("KeyboardInterrupt: \n")
    capsys.readouterr()
    assert main(_tiny(corpus, out)) == 0
    printed = capsys.readouterr().out
    assert "stopped before its first checkpoint, started again" in printed and "complete, kept" in printed
    assert json.loads((stopped / "summary.json").read_text())["rounds"] == 1
    # more rounds: a field a resume may change, so both runs continue from their checkpoints
    assert main(_tiny(corpus, out, "--federation.rounds", "2")) == 0
    assert capsys.readouterr().out.count("continued with federation.rounds=2") == 2
    for value in ("2", "8"):
        metrics = (out / f"lora.r_cut={value}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in metrics] == [1, 2]
