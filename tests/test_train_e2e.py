"""The real CLI end to end on a 2-layer model: every file and field of a run directory."""

from __future__ import annotations

import json
import random

import pytest
import torch
from peft import PeftModel

from splitft.cli import main
from splitft.config import Config
from splitft.data.prepare import prepare_data
from splitft.data.tokenize import collate, pad_id_of
from splitft.model.loading import load_model
from splitft.model.split import token_stats

from _models import tokenizer

ROUND_FIELDS = {
    "round", "train_loss", "val_loss", "test_ppl", "test_acc", "cuts", "clients",
    "bytes_up", "bytes_down", "bytes_by_kind", "wall_s",
}  # fmt: skip
SUMMARY_FIELDS = {
    "final_test_ppl", "best_test_ppl", "final_test_acc", "best_test_acc", "best_round", "bytes_up",
    "bytes_down", "bytes_by_kind", "trainable_params_client", "trainable_params_server", "wall_s",
    "model", "data",
}  # fmt: skip
KINDS = {"activations", "gradients", "labels", "adapters", "control"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = [
        "the",
        "king",
        "queen",
        "lord",
        "lady",
        "sword",
        "crown",
        "love",
        "death",
        "night",
        "day",
        "speak",
        "hear",
        "thou",
        "thee",
        "fair",
        "foul",
    ]
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(4, 30))) for _ in range(120)) + "\n")
    return path


def tiny_args(corpus, out, *extra):
    return [
        "train", "--model.name", "tiny:llama", "--model.keep_layers", "2", "--data.train", str(corpus),
        "--federation.num_clients", "2", "--federation.rounds", "2", "--eval.every", "1",
        "--eval.max_samples", "8", "--train.lr", "0.01", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(tiny_args(corpus, out)) == 0
    return out


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_has_every_file(run_dir):
    for name in (
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "test_ppl.png",
        "traffic.png",
        "cuts.png",
        "ppl_vs_virtual_time.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    for folder in ("adapter", "adapter-best"):
        assert (run_dir / folder / "adapter_config.json").exists()
        assert (run_dir / folder / "adapter_model.safetensors").exists()
    assert not (run_dir / "FAILED").exists()
    cfg = Config.from_toml(run_dir / "config.toml")
    assert cfg.model.keep_layers == 2 and cfg.federation.rounds == 2


def test_metrics_rows_have_the_documented_fields(run_dir):
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row.keys() >= ROUND_FIELDS
        assert row["cuts"] == [1, 1] and row["clients"] == [0, 1]
        assert set(row["bytes_by_kind"]) == KINDS
        assert sum(row["bytes_by_kind"].values()) == row["bytes_up"] + row["bytes_down"]
        assert row["bytes_by_kind"]["activations"] > 0 and row["bytes_by_kind"]["adapters"] > 0
        assert row["test_ppl"] > 1 and 0 <= row["test_acc"] <= 1 and row["val_loss"] > 0
    assert rows[1]["wall_s"] >= rows[0]["wall_s"]


def test_summary_has_the_documented_fields(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["final_test_ppl"] == rows[-1]["test_ppl"]
    assert summary["best_test_ppl"] == min(r["test_ppl"] for r in rows)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["bytes_by_kind"]["activations"] == sum(r["bytes_by_kind"]["activations"] for r in rows)
    assert summary["best_round"] in (1, 2)
    # cut 1 of 2 blocks: each side holds one block, the cut block at rank r_cut = 8
    assert summary["trainable_params_client"] == summary["trainable_params_server"] > 0


def test_stock_peft_load_reproduces_the_reported_test_loss(run_dir):
    """`PeftModel.from_pretrained` on the unsplit model gives the reported final test loss."""
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = Config.from_toml(run_dir / "config.toml")
    tok = tokenizer()
    data = prepare_data(cfg.data, tok, cfg.federation.num_clients, cfg.seed)
    base = load_model("tiny:llama", vocab_size=len(tok), seed=cfg.seed, keep_layers=2)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    n = min(cfg.eval.max_samples, len(data.test))
    b = collate([data.test[i] for i in range(n)], pad_id_of(tok))
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    nll, tokens, _ = token_stats(logits, b["labels"])
    assert abs(float(nll) / tokens - summary["final_test_loss"]) < 1e-5


def test_eval_command_scores_the_saved_adapter(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert main(["eval", "--adapter", str(run_dir / "adapter")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["loss"] - summary["final_test_loss"]) < 1e-5


def test_same_config_and_seed_give_identical_metrics(corpus, run_dir, tmp_path):
    assert main(tiny_args(corpus, tmp_path / "again")) == 0
    first, second = read_metrics(run_dir), read_metrics(tmp_path / "again")
    for row in first + second:
        row.pop("wall_s")
    assert first == second


def test_training_moves_the_loss(corpus, tmp_path):
    out = tmp_path / "longer"
    assert main(tiny_args(corpus, out, "--federation.rounds", "6", "--eval.every", "6")) == 0
    rows = read_metrics(out)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
