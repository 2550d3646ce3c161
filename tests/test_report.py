"""`splitft report`: the comparison rows, the table files, the overlay plots and one-line errors.

No model is trained: every run directory is written by :func:`_make_run` with a few rounds of
hand-made metrics, so the expected numbers can be worked out by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from splitft.cli import main
from splitft.config import Config
from splitft.errors import DataError
from splitft.report.compare import compare_runs, summary_bars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# bytes of every kind in every round: 2.0 MB activations+gradients, 0.5 MB adapters
ROUND_BYTES = {"activations": 1_200_000, "gradients": 800_000, "labels": 10_000, "adapters": 500_000}
ROUND_UP, ROUND_DOWN = 1_460_000, 1_050_000  # their sum is that of ROUND_BYTES


def _make_run(
    root: Path,
    name: str,
    ppls: list[float | None],
    round_s: float,
    cuts: list[list[int]],
    policy: str = "fixed",
    complete: bool = True,
) -> Path:
    """A run directory of ``len(ppls)`` rounds (None = not evaluated) of ``round_s`` virtual s each."""
    path = root / name
    path.mkdir()
    overrides = {"policy.name": policy, "federation.num_clients": 3, "federation.local_steps": 2}
    Config().with_overrides(overrides).to_toml(path / "config.toml")
    rows = []
    for r, (ppl, cut) in enumerate(zip(ppls, cuts, strict=True), start=1):
        rows.append(
            {
                "round": r,
                "train_loss": 4.0 - 0.1 * r,
                "val_loss": None if ppl is None else 3.0,
                "test_ppl": ppl,
                "test_acc": None if ppl is None else 0.1 + 0.01 * r,
                "test_loss": None if ppl is None else 3.0,
                "cuts": cut,
                "clients": [0, 1, 2],
                "policy": ["fixed"] * 3,
                "acc_by_client": {},
                "w_by_client": {},
                "virtual_s": round_s * r,
                "round_virtual_s": round_s,
                "server_busy_share": 0.5,
                "bytes_up": ROUND_UP,
                "bytes_down": ROUND_DOWN,
                "bytes_by_kind": {**ROUND_BYTES, "control": 0},
                "wall_s": 2.0 * r,
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if complete:
        evaluated = [row for row in rows if row["test_ppl"] is not None]
        n = len(rows)
        summary = {
            "final_test_ppl": evaluated[-1]["test_ppl"],
            "best_test_ppl": min(row["test_ppl"] for row in evaluated),
            "final_test_acc": evaluated[-1]["test_acc"],
            "best_test_acc": max(row["test_acc"] for row in evaluated),
            "best_round": evaluated[-1]["round"],
            "bytes_up": n * ROUND_UP,
            "bytes_down": n * ROUND_DOWN,
            "bytes_by_kind": {kind: n * count for kind, count in ROUND_BYTES.items()},
            "trainable_params_client": 1000,
            "trainable_params_server": 3000,
            "wall_s": 2.0 * n + 0.5,
            "virtual_s": round_s * n,
            "rounds": n,
            "policy": policy,
        }
        (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """base: 10 s rounds, evaluated every round; adaptive: 5 s rounds, evaluated every 2, cuts rising."""
    a = _make_run(tmp_path, "base", [50.0, 30.0, 20.0, 15.0], 10.0, [[1, 2, 3]] * 4)
    b = _make_run(
        tmp_path,
        "adaptive",
        [None, 40.0, None, 25.0],
        5.0,
        [[1, 2, 3], [2, 2, 2], [3, 3, 3], [3, 3, 3]],
        "splitft",
    )
    return [a, b]


def test_rows_time_to_target_speedup_and_traffic(runs: list[Path]) -> None:
    base, adaptive = compare_runs(runs, None, None, None)
    # default target: the largest final ppl (25); base reaches it at round 3, adaptive at round 4
    assert base["target_ppl"] == adaptive["target_ppl"] == 25.0
    assert (base["label"], base["policy"], adaptive["policy"]) == ("base", "fixed", "splitft")
    assert base["time_to_target_s"] == 30.0 and adaptive["time_to_target_s"] == 20.0
    assert base["speedup"] == 1.0 and adaptive["speedup"] == pytest.approx(1.5)
    assert (base["final_test_ppl"], base["best_test_ppl"], adaptive["best_test_acc"]) == (15.0, 15.0, 0.14)
    assert (base["rounds"], base["virtual_s"], adaptive["virtual_s"], base["wall_s"]) == (4, 40.0, 20.0, 8.5)
    assert (base["round_s"], adaptive["round_s"]) == (10.0, 5.0)
    assert base["mb_up"] == pytest.approx(5.84) and base["mb_down"] == pytest.approx(4.2)
    assert base["mb_activations"] + base["mb_gradients"] == pytest.approx(8.0)
    assert base["mb_adapters"] == pytest.approx(2.0)
    assert (base["params_client"], base["params_server"]) == (1000, 3000)
    assert base["mean_cut"] == 2.0 and adaptive["mean_cut"] == pytest.approx((2 + 2 + 3 + 3) / 4)


def test_given_target_not_reached_and_labels(runs: list[Path], tmp_path: Path) -> None:
    rows = compare_runs(runs, tmp_path / "out", 18.0, ["A", "B"])
    assert [r["label"] for r in rows] == ["A", "B"]
    assert rows[0]["time_to_target_s"] == 40.0 and rows[0]["speedup"] == 1.0
    assert rows[1]["time_to_target_s"] is None and rows[1]["speedup"] is None
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "Target test perplexity: 18.000 (--target-ppl)" in table
    assert "virtual time to ppl 18.000 (s)" in table
    b_line = next(line for line in table.splitlines() if line.startswith("| B |"))
    assert "not reached" in b_line
    with open(tmp_path / "out" / "comparison.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert csv_rows[0]["time_to_target_s"] == "40.0" and csv_rows[1]["time_to_target_s"] == ""
    assert csv_rows[0]["speedup"] == "1.0" and csv_rows[1]["speedup"] == ""
    assert csv_rows[1]["target_ppl"] == "18.0" and csv_rows[1]["label"] == "B"
    assert float(csv_rows[0]["mb_up"]) == rows[0]["mb_up"]  # not rounded


def test_incomplete_run_from_its_metrics(runs: list[Path], tmp_path: Path) -> None:
    partial = _make_run(tmp_path, "partial", [None, 45.0, None], 8.0, [[2, 2, 2]] * 3, complete=False)
    rows = compare_runs([*runs, partial], None, None, None, allow_incomplete=True)
    assert rows[2]["target_ppl"] == 45.0  # the partial run's last evaluated ppl is the largest
    assert not rows[2]["complete"] and rows[2]["time_to_target_s"] == 16.0
    assert rows[2]["mb_up"] == pytest.approx(3 * 1.46) and rows[2]["wall_s"] == 6.0
    assert rows[2]["params_client"] is None and rows[2]["mean_cut"] == 2.0
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == pytest.approx(20.0 / 16.0)


def test_cli_writes_table_and_plots(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert err == ""
    assert "Target test perplexity: 25.000 (the largest final test ppl among the runs)" in printed
    assert "| base | splitft | fixed | 15.000 |" in printed
    assert (out / "comparison.md").read_text() in printed
    assert len((out / "comparison.csv").read_text().splitlines()) == 3
    for name in ("ppl_vs_virtual_time.png", "ppl_vs_samples.png", "cuts_over_rounds.png", "summary_bars.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC) and (out / name).stat().st_size > 1000


def test_summary_bars_show_each_runs_numbers(runs: list[Path], tmp_path: Path) -> None:
    partial = _make_run(tmp_path, "partial", [None, None, None], 8.0, [[2, 2, 2]] * 3, complete=False)
    rows = compare_runs([*runs, partial], None, None, None, allow_incomplete=True)
    fig = summary_bars(rows)
    try:
        ppl_ax, time_ax, mb_ax = fig.axes
        assert [p.get_width() for p in ppl_ax.patches] == [
            rows[0]["final_test_ppl"],
            rows[1]["final_test_ppl"],
            0.0,
        ]
        assert [p.get_width() for p in time_ax.patches] == [r["virtual_s"] for r in rows]
        assert [p.get_width() for p in mb_ax.patches] == pytest.approx(
            [r["mb_up"] + r["mb_down"] for r in rows]
        )
        assert [t.get_text() for t in ppl_ax.get_yticklabels()] == ["base", "adaptive", "partial"]
        assert len(ppl_ax.texts) == 2  # the run that was never evaluated has no number
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("incomplete", "is incomplete (no summary.json"),
        ("no-metrics", "has no metrics.jsonl"),
        ("labels", "--labels gives 1 labels for 2 runs"),
        ("target", "--target-ppl must be a number"),
    ],
)
def test_cli_errors_are_one_line(
    case: str, message: str, runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["report", str(runs[0])]
    if case == "missing":
        args.append(str(tmp_path / "nope"))
    elif case == "incomplete":
        args.append(str(_make_run(tmp_path, "half", [None, 40.0], 5.0, [[1, 1, 1]] * 2, complete=False)))
    elif case == "no-metrics":
        (runs[1] / "metrics.jsonl").unlink()
        args.append(str(runs[1]))
    else:
        args += [str(runs[1]), *(["--labels", "x"] if case == "labels" else ["--target-ppl", "abc"])]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err
    if case in ("missing", "incomplete", "no-metrics"):
        assert Path(args[-1]).name in err


def test_write_folder_survives_a_crash_between_its_two_renames(tmp_path: Path) -> None:
    from splitft.report.rundir import RunDirectory

    run = RunDirectory(tmp_path)
    run.write_folder("checkpoint", lambda p: (p / "state.json").write_text("1"))
    # a crash after the old folder was moved aside, before the new one took its place
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")
    assert (run.folder("checkpoint") / "state.json").read_text() == "1"
    run.write_folder("checkpoint", lambda p: (p / "state.json").write_text("2"))
    assert (run.folder("checkpoint") / "state.json").read_text() == "2"
    assert not (tmp_path / ".checkpoint.old").exists()
    # a crash after the swap, before the clean-up: the next write still succeeds
    (tmp_path / ".checkpoint.old").mkdir()
    (tmp_path / ".checkpoint.old" / "state.json").write_text("stale")
    run.write_folder("checkpoint", lambda p: (p / "state.json").write_text("3"))
    assert (run.folder("checkpoint") / "state.json").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_summary_of_an_older_version_falls_back_to_the_metrics(runs: list[Path]) -> None:
    summary_path = runs[0] / "summary.json"
    summary = json.loads(summary_path.read_text())
    for key in ("bytes_by_kind", "trainable_params_client", "trainable_params_server"):
        del summary[key]
    summary_path.write_text(json.dumps(summary))
    row = compare_runs(runs, None, None, None)[0]
    assert row["mb_activations"] == pytest.approx(4 * 1.2) and row["mb_adapters"] == pytest.approx(4 * 0.5)
    assert row["mb_other"] == pytest.approx(4 * 0.01)  # labels; this run sent no control bytes
    kinds = ("mb_activations", "mb_gradients", "mb_adapters", "mb_other")
    assert sum(row[k] for k in kinds) == pytest.approx(row["mb_up"] + row["mb_down"])  # every byte
    assert row["params_client"] is None and row["final_test_ppl"] == 15.0


def test_an_empty_failed_marker_still_gives_a_clear_error(runs: list[Path]) -> None:
    (runs[1] / "summary.json").unlink()
    (runs[1] / "FAILED").write_text("")
    with pytest.raises(DataError, match="is incomplete .*it failed"):
        compare_runs(runs, None, None, None)


def test_seeded_runs_are_grouped_by_setting_in_seed_order_and_unfinished_runs_left_out(tmp_path):
    import json

    from splitft.report.seeds import load_seeded_runs, seeds_of, spread

    for name, seed, ppl in [("a", 10, 3.0), ("a", 2, 1.0), ("b-c8", 0, 5.0), ("a", 1, 2.0)]:
        run = tmp_path / f"{name}-s{seed}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"final_test_ppl": ppl}))
    (tmp_path / "a-s3").mkdir()  # unfinished: no summary.json
    (tmp_path / "notes-sX").mkdir()
    runs = load_seeded_runs(tmp_path)
    assert {k: [r["final_test_ppl"] for r in v] for k, v in runs.items()} == {
        "a": [2.0, 1.0, 3.0],
        "b-c8": [5.0],
    }
    assert list(load_seeded_runs(tmp_path, ["b-c8"])) == ["b-c8"]
    assert seeds_of(tmp_path, "a") == [1, 2, 10]
    assert spread([2.0, 1.0, 3.0]) == (2.0, 1.0)
    with pytest.raises(ValueError):
        spread([])
