"""Checkpoint and resume: 4 rounds straight equal 2 rounds + resume + 2 rounds, exactly."""

from __future__ import annotations

import json

import pytest

from splitft.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"line {i} " + "thou art fair " * (1 + i % 9) for i in range(90)) + "\n")
    return path


def args(corpus, rounds, *extra):
    return [
        "--model.name", "tiny:llama", "--data.train", str(corpus), "--federation.num_clients", "3",
        "--federation.rounds", str(rounds), "--eval.every", "2", "--eval.max_samples", "8",
        "--policy.name", "splitft", "--devices.preset", "hetero", "--devices.server", "busy",
        "--train.lr", "0.01", "--lora.r_cut", "4", *extra,
    ]  # fmt: skip


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.mark.parametrize("aggregation", ["fedavg", "svd"])
def test_two_plus_two_rounds_equal_four(corpus, tmp_path, aggregation):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(["train", *args(corpus, 4, "--aggregation", aggregation), "--out", str(straight)]) == 0
    assert main(["train", *args(corpus, 2, "--aggregation", aggregation), "--out", str(halves)]) == 0
    assert (halves / "checkpoint" / "state.json").exists()
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    first, second = metrics(straight), metrics(halves)
    # The truncation error is a sum of SVD tails: BLAS may order that sum differently.
    errors = [
        (a.pop("svd_truncation_error"), b.pop("svd_truncation_error"))
        for a, b in zip(first, second, strict=True)
    ]
    assert first == second
    assert all(a == pytest.approx(b, rel=1e-9) for a, b in errors)
    one, two = (json.loads((d / "summary.json").read_text()) for d in (straight, halves))
    for key in ("final_test_ppl", "best_round", "bytes_up", "bytes_down", "virtual_s", "initial_test_ppl"):
        assert one[key] == two[key], key


def test_resume_drops_rounds_after_the_checkpoint_and_clears_failure(corpus, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *args(corpus, 2), "--out", str(run)]) == 0
    with open(run / "metrics.jsonl", "a") as handle:  # a round that finished after the checkpoint
        handle.write(json.dumps({"round": 3, "stale": True}) + "\n")
    (run / "FAILED").write_text("killed\n")
    assert main(["train", "--resume", str(run), "--federation.rounds", "3"]) == 0
    rows = metrics(run)
    assert [r["round"] for r in rows] == [1, 2, 3] and "stale" not in rows[-1]
    assert not (run / "FAILED").exists()


def test_resume_of_a_folder_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.toml" in capsys.readouterr().err


def test_resume_refuses_to_change_what_the_checkpoint_depends_on(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *args(corpus, 1), "--out", str(run)]) == 0
    before = (run / "config.toml").read_text()
    assert main(["train", "--resume", str(run), "--lora.r_others", "32"]) == 2
    assert "cannot change lora.r_others" in capsys.readouterr().err
    assert (run / "config.toml").read_text() == before
