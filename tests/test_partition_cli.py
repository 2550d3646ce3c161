"""`splitft partition`: the per-client table, partition.json / partition.png, and one-line errors.

The CLI runs in-process on small files; ``--tokenizer whitespace`` keeps it fast (one token per
word). One slow test uses the default tokenizer (SmolLM2's).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from splitft.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 lines of 1 to 60 words (distinct texts), skewed towards short lines like speeches."""
    rng = random.Random(0)
    lines = [
        " ".join(f"w{i}_{k}" for k in range(min(60, int(rng.expovariate(1 / 12)) + 1))) for i in range(400)
    ]
    path = tmp_path_factory.mktemp("data") / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["partition", "--tokenizer", "whitespace", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _report(capsys: pytest.CaptureFixture[str], out_dir: Path, *args: str) -> dict:
    code, _, err = _run(capsys, *args, "--out", str(out_dir))
    assert code == 0, err
    return json.loads((out_dir / "partition.json").read_text())


def test_table_json_and_png(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys,
        "--data",
        str(corpus),
        "--clients",
        "5",
        "--alpha",
        "0.1",
        "--bins",
        "6",
        "--out",
        str(tmp_path),
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]  # one row per client
    assert any(line.split()[0] == "all" for line in lines if line.strip())
    assert "mean JS to the global length bins" in lines[-3]
    assert lines[-2:] == [f"wrote {tmp_path / 'partition.json'}", f"wrote {tmp_path / 'partition.png'}"]

    report = json.loads((tmp_path / "partition.json").read_text())
    clients = report["clients"]
    assert len(clients) == 5
    assert sum(c["samples"] for c in clients) == report["assigned_samples"] == report["train"]["samples"]
    assert sum(c["tokens"] for c in clients) == report["train"]["tokens"]
    assert [int(r[1]) for r in rows] == [c["samples"] for c in clients]  # the table shows the JSON numbers
    assert all(0.0 <= c["js"] <= 1.0 for c in clients)
    assert report["mean_js"] == pytest.approx(sum(c["js"] for c in clients) / 5, abs=1e-5)
    assert f"{report['mean_js']:.3f}" in lines[-3]
    num_bins = len(report["bin_labels"])
    assert 1 < num_bins <= 6 and len(report["bin_edges"]) == num_bins - 1
    for shares in [report["global_shares"], *(c["shares"] for c in clients)]:
        assert len(shares) == num_bins and sum(shares) == pytest.approx(1.0, abs=1e-3)
    for c in clients:
        assert c["mean_length"] == pytest.approx(c["tokens"] / c["samples"], abs=1e-3)
        assert 1 <= c["median_length"] <= report["max_length"]
    assert (
        report["partition"] | {"kind": "length-dirichlet", "alpha": 0.1, "num_bins": 6} == report["partition"]
    )

    png = (tmp_path / "partition.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000


def test_lower_alpha_gives_higher_mean_js(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("--data", str(corpus), "--clients", "4", "--bins", "5", "--seed", "3")
    skewed = _report(capsys, tmp_path / "a", *common, "--alpha", "0.05")
    mild = _report(capsys, tmp_path / "b", *common, "--alpha", "1")
    near_iid = _report(capsys, tmp_path / "c", *common, "--alpha", "1000")
    iid = _report(capsys, tmp_path / "d", *common, "--partition", "iid")
    assert skewed["mean_js"] > mild["mean_js"] > near_iid["mean_js"]
    assert skewed["mean_js"] > 0.2 and iid["mean_js"] < 0.05
    sizes = [c["samples"] for c in iid["clients"]]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == iid["train"]["samples"]
    again = _report(capsys, tmp_path / "e", *common, "--alpha", "0.05")
    assert again == skewed  # the same options and seed give the same partition


def test_partition_by_a_meta_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plays.jsonl"
    rows = [
        {"text": " ".join(["word"] * (2 + i % 17)) + f" {play}{i}", "play": play}
        for play in ("hamlet", "lear", "macbeth", "othello", "tempest", "twelfth")
        for i in range(50)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = ("--data", str(path), "--clients", "3", "--partition-by", "play")
    skewed = _report(capsys, tmp_path / "a", *common, "--alpha", "0.05")
    spread = _report(capsys, tmp_path / "b", *common, "--alpha", "1000")
    assert skewed["partition"]["partition_by"] == "play"
    assert sum(c["classes"] for c in skewed["clients"]) < sum(c["classes"] for c in spread["clients"]) == 18
    assert skewed["class_js_mean"] > spread["class_js_mean"]
    assert all(0 <= c["class_js"] <= 1 for c in skewed["clients"])
    _, out, _ = _run(capsys, *common, "--alpha", "0.05")
    assert "JS play" in out and "over play:" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "-1"], "error: data.alpha = -1.0: must be > 0"),
        (["--alpha", "abc"], "error: data.alpha: expected a number, got 'abc'"),
        (["--alpha", "0"], "error: data.alpha = 0.0: must be > 0"),
        (["--bins", "0"], "error: data.bins = 0: must be >= 1"),
        (["--clients", "0"], "error: federation.num_clients = 0: must be >= 1"),
        (
            ["--partition", "dirichlet"],
            "error: data.partition = 'dirichlet': must be one of iid, length-dirichlet",
        ),
        (["--data", "no-such-corpus"], "error: unknown corpus 'no-such-corpus'"),
        (["--data", "MISSING/none.txt"], "does not exist"),
        (["--partition-by", "genre"], "error: partition_by='genre' is not a column of row 0"),
        (["--clients", "100000"], "fewer than federation.num_clients=100000"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [a.replace("MISSING", str(tmp_path)) for a in args]
    data = [] if "--data" in args else ["--data", str(corpus)]
    code, out, err = _run(capsys, *data, *args, "--out", str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_folder_is_one_error_line(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run(capsys, "--data", str(corpus), "--out", str(blocker / "sub"))
    assert (
        code == 2 and err.startswith("error: cannot write the partition report to") and err.count("\n") == 1
    )


@pytest.mark.slow
def test_default_tokenizer(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["partition", "--data", str(corpus), "--clients", "3", "--max-length", "32"])
    out, err = capsys.readouterr()
    if code == 2 and "cannot be loaded" in err:
        pytest.skip(f"SmolLM2's tokenizer is not available: {err.strip()}")
    assert code == 0, err
    assert (
        "tokenizer smollm2-135m" in out
        and sum(line.split()[0].isdigit() for line in out.splitlines() if line.strip()) == 3
    )
