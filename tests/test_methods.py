"""The four methods (centralized, fedlora, sfl-fixed, splitft) and where the cut rank applies."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from splitft.cli import main
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.roles.trainer import WholeModelTrainer
from splitft.wire.messages import read as proto_read

from _models import tiny_split

METHODS = ("centralized", "fedlora", "sfl-fixed", "splitft")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(f"speech {i} " + "my good lord " * (1 + i % 7) for i in range(80)) + "\n")
    return path


def args(corpus, out, *extra):
    return [
        "train", "--model.name", "tiny:llama", "--model.keep_layers", "3", "--data.train", str(corpus),
        "--federation.num_clients", "2", "--federation.rounds", "2", "--eval.every", "1",
        "--eval.max_samples", "8", "--train.lr", "0.01", "--split.cuts", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def read(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    for method in METHODS:
        assert main(args(corpus, root / method, "--method", method)) == 0
    return {method: read(root / method) for method in METHODS}


def per_rank() -> int:
    """LoRA parameters of one tiny llama block per unit of rank (A and B of every adapted module)."""
    _, layout, _ = tiny_split("llama")
    return sum(layout.num_params(name, 1) for name in layout.names([0]))


def all_adapter_params() -> int:
    """LoRA parameters of all 3 kept blocks at r_others = 16."""
    return 3 * 16 * per_rank()


def test_every_method_runs_end_to_end_with_its_accounting(runs):
    for method, (summary, metrics) in runs.items():
        assert summary["method"] == method and summary["rounds"] == 2
        assert summary["final_test_ppl"] < summary["initial_test_ppl"], method
        assert sum(m["samples"] for m in metrics) == summary["samples_seen"] > 0
        assert summary["virtual_s"] > 0
    everything = all_adapter_params()
    central, central_rows = runs["centralized"]
    # nothing crosses a boundary; all parameters train on the server; every client's share of samples
    assert central["bytes_up"] == central["bytes_down"] == 0
    assert (central["trainable_params_client"], central["trainable_params_server"]) == (0, everything)
    assert central_rows[0]["cuts"] == [0, 0] and central_rows[0]["clients"] == [0]
    fed, fed_rows = runs["fedlora"]
    # whole-model adapters travel both ways, never activations or gradients
    kinds = fed["bytes_by_kind"]
    assert kinds["activations"] == kinds["gradients"] == kinds["labels"] == 0 and kinds["adapters"] > 0
    adapters_per_round = 2 * 2 * everything * 4  # 2 clients, down + up, fp32
    # each tensor entry also carries its header (name, dtype, shape): well under 100 bytes
    assert 2 * adapters_per_round < kinds["adapters"] < 2 * adapters_per_round + 8 * 24 * 100
    assert (fed["trainable_params_client"], fed["trainable_params_server"]) == (2 * everything, 0)
    assert fed_rows[0]["cuts"] == [3, 3] and fed["infeasible_clients"] == []
    split, _ = runs["sfl-fixed"]
    assert split["bytes_by_kind"]["activations"] > 0 and split["bytes_by_kind"]["gradients"] > 0
    # rounds mean the same samples in every method
    assert len({s["samples_seen"] for s, _ in runs.values()}) == 1


def test_sfl_fixed_equals_splitft_with_equal_cuts_and_a_frozen_policy(runs):
    (a, rows_a), (b, rows_b) = runs["sfl-fixed"], runs["splitft"]
    for row in (*rows_a, *rows_b):
        row.pop("wall_s")
    assert rows_a == rows_b
    for key in ("final_test_ppl", "bytes_up", "bytes_down", "virtual_s", "trainable_params_client"):
        assert a[key] == b[key], key


def test_fedlora_with_one_client_and_one_round_equals_centralized(corpus, tmp_path):
    one = ["--federation.num_clients", "1", "--federation.rounds", "1", "--federation.local_steps", "3"]
    for method in ("fedlora", "centralized"):
        assert main(args(corpus, tmp_path / method, "--method", method, *one)) == 0
    fed, central = (
        load_file(str(tmp_path / m / "adapter" / "adapter_model.safetensors"))
        for m in ("fedlora", "centralized")
    )
    assert fed.keys() == central.keys()
    for name in fed:
        assert (fed[name] - central[name]).abs().max() < 1e-6, name
    (s_fed, m_fed), (s_central, m_central) = read(tmp_path / "fedlora"), read(tmp_path / "centralized")
    assert m_fed[0]["train_loss"] == pytest.approx(m_central[0]["train_loss"], abs=1e-6)
    assert s_fed["final_test_ppl"] == pytest.approx(s_central["final_test_ppl"], rel=1e-5)


def test_fedlora_reports_clients_that_cannot_hold_the_model(corpus, tmp_path):
    # batch 4 x 512 tokens: the logits alone need ~800 MB, more than a 256 MiB phone has
    extra = ["--method", "fedlora", "--devices.clients", "phone-low,laptop", "--data.max_length", "512"]
    assert main(args(corpus, tmp_path / "run", *extra)) == 0
    summary, metrics = read(tmp_path / "run")
    assert summary["infeasible_clients"] == [0]
    assert summary["trainable_params_by_client"]["client"] == [0, all_adapter_params()]
    assert all(m["clients"] == [1] for m in metrics)
    assert metrics[0]["policy"][0].startswith("infeasible")
    assert summary["bytes_by_kind"]["adapters"] > 0


def test_fedlora_with_no_feasible_client_is_a_clear_error(corpus, tmp_path, capsys):
    extra = ["--method", "fedlora", "--devices.clients", "phone-low", "--data.max_length", "512"]
    assert main(args(corpus, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert "method = 'fedlora': no client's device can train the whole model" in err and "splitft" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sides", "client_last", "server_first"), [("both", 4, 4), ("client", 4, 16), ("none", 16, 16)]
)
def test_cut_rank_sides_says_where_the_reduced_rank_trains(
    corpus, tmp_path, sides, client_last, server_first
):
    extra = [
        "--method",
        "sfl-fixed",
        "--lora.r_cut",
        "4",
        "--lora.cut_rank_sides",
        sides,
        "--federation.rounds",
        "1",
    ]
    assert main(args(corpus, tmp_path / sides, *extra)) == 0
    summary, metrics = read(tmp_path / sides)
    per_block = per_rank()
    # 2 clients at cut 1 of 3 blocks: the client holds block 0, the server blocks 1 and 2
    assert summary["trainable_params_client"] == 2 * client_last * per_block
    assert summary["trainable_params_server"] == 2 * (server_first + 16) * per_block
    # the uploaded adapters travel at the trained rank: 2 clients x block 0, down and up
    adapters = metrics[0]["bytes_by_kind"]["adapters"]
    payload = 2 * 2 * client_last * per_block * 4
    assert payload < adapters < payload + 4 * 8 * 100  # 4 messages of 8 tensors, headers < 100 B


def test_sfl_fixed_needs_one_fixed_cut():
    cfg = Config().with_overrides({"method": "sfl-fixed", "policy.name": "splitft", "split.cuts": "2"})
    with pytest.raises(
        ConfigError, match=r"policy.name = 'splitft': must be 'fixed' with method = 'sfl-fixed'"
    ):
        cfg.validate()
    cfg = Config().with_overrides({"method": "sfl-fixed", "split.cuts": "1,2,3,4,5"})
    with pytest.raises(
        ConfigError, match=r"split.cuts = \[1, 2, 3, 4, 5\]: must give one cut for every client"
    ):
        cfg.validate()
    with pytest.raises(
        ConfigError, match="method = 'fedsgd': must be one of splitft, sfl-fixed, fedlora, centralized"
    ):
        Config().with_overrides({"method": "fedsgd"}).validate()
    with pytest.raises(
        ConfigError, match="lora.cut_rank_sides = 'server': must be one of none, client, both"
    ):
        Config().with_overrides({"lora.cut_rank_sides": "server"}).validate()


@pytest.mark.parametrize("method", ["fedlora", "centralized"])
def test_whole_model_methods_resume_exactly(corpus, tmp_path, method):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    rounds = lambda n: ["--federation.rounds", str(n), "--federation.local_steps", "2"]  # noqa: E731
    assert main(args(corpus, straight, "--method", method, *rounds(4))) == 0
    assert main(args(corpus, halves, "--method", method, *rounds(2))) == 0
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    (a, rows_a), (b, rows_b) = read(straight), read(halves)
    for row in (*rows_a, *rows_b):
        row.pop("wall_s")
    assert rows_a == rows_b
    assert a["final_test_ppl"] == b["final_test_ppl"] and a["bytes_up"] == b["bytes_up"]


def test_fedlora_resume_keeps_a_dropped_client_dropped(corpus, tmp_path, monkeypatch):
    """Client 1 fails in round 2 and is dropped for good; a run resumed after round 2 must not
    call it again (the checkpoint holds the dropped set)."""
    original = WholeModelTrainer.train

    def flaky(self, payload):
        if self.client_id == 1 and proto_read(payload)["control"]["first_step"] == 1:
            raise RuntimeError("injected")
        return original(self, payload)

    monkeypatch.setattr(WholeModelTrainer, "train", flaky)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(args(corpus, straight, "--method", "fedlora", "--federation.rounds", "4")) == 0
    assert main(args(corpus, halves, "--method", "fedlora", "--federation.rounds", "2")) == 0
    assert main(["train", "--resume", str(halves), "--federation.rounds", "4"]) == 0
    (a, rows_a), (b, rows_b) = read(straight), read(halves)
    for row in (*rows_a, *rows_b):
        row.pop("wall_s")
    assert [r["clients"] for r in rows_a] == [[0, 1], [0], [0], [0]]
    assert rows_a == rows_b and a["bytes_up"] == b["bytes_up"]


def test_fedlora_svd_merge_resets_adamw_and_reports_its_truncation(corpus, tmp_path):
    assert main(args(corpus, tmp_path / "svd", "--method", "fedlora", "--aggregation", "svd")) == 0
    summary, metrics = read(tmp_path / "svd")
    # two clients' rank-16 updates summed exceed rank 16 in general: the truncation is not free
    assert all(m["svd_truncation_error"] > 0 for m in metrics)
    assert math.isfinite(summary["final_test_ppl"])
