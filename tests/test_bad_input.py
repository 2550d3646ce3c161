"""Bad input: one clear line naming the value and what is allowed, exit 2, nothing written."""

from __future__ import annotations

import pytest

from splitft.cli import main

BASE = ["--model.name", "tiny:llama", "--model.keep_layers", "2", "--federation.rounds", "1"]


@pytest.fixture()
def lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"line number {i} of a small corpus" for i in range(40)) + "\n")
    return path


# columns: extra CLI arguments, a substring the error must contain
CASES = [
    (["--lora.rcut", "4"], "did you mean 'lora.r_cut'"),
    (["--train.batch_size", "four"], "train.batch_size: expected an integer, got 'four'"),
    (["--split.cuts", "5"], "split.cuts value 5 is outside 1..1"),
    (
        ["--split.cuts", "1,1,1", "--federation.num_clients", "2"],
        "split.cuts = [1, 1, 1]: must hold 0, 1 or num_clients=2 values",
    ),
    (["--lora.r_cut", "0"], "lora.r_cut"),
    (["--lora.r_cut", "32"], "must be <= lora.r_others"),
    (["--federation.num_clients", "0"], "federation.num_clients"),
    (["--federation.num_clients", "500"], "federation.num_clients"),
    (["--model.name", "no-such/model-anywhere"], "no-such/model-anywhere"),
    (["--model.name", "tiny:mamba"], "allowed: gpt2, opt, gpt-neo, llama, qwen2"),
    (["--compute_dtype", "fp8"], "compute_dtype = 'fp8': must be one of fp32, bf16, fp16"),
    (["--compute_dtype", "fp16", "--device", "cpu"], "'fp16' needs a CUDA device"),
    (["--loss_chunk", "-1"], "loss_chunk = -1: must be >= 0"),
]


@pytest.mark.parametrize("extra, message", CASES)
def test_bad_value_is_one_clear_line(extra, message, lines, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--data.train", str(lines), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err
    assert not out.exists(), "a failed set-up must not leave a run directory"


def test_missing_empty_and_unreadable_data(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    for path in (tmp_path / "missing.txt", empty, binary):
        out = tmp_path / f"run-{path.stem}"
        assert main(["train", *BASE, "--data.train", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and str(path) in err and "\n" not in err
        assert not out.exists()


def test_existing_run_directory_is_never_overwritten(lines, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    assert main(["train", *BASE, "--data.train", str(lines), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_bad_config_file_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[train]\nbatch_size = "4"\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and str(cfg) in err
