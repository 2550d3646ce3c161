"""`splitft compare`: one run per value of a field on the same data and seed, one report."""

from __future__ import annotations

import json

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
