"""`splitft bench --quick` end to end: the JSON it writes holds every measurement, and they add up."""

from __future__ import annotations

import json

import pytest
import torch

from splitft.cli import main
from splitft.wire.codec import WIRE_DTYPES


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    # One thread here and in the probes: on a small shared machine, intra-op threads waiting on
    # each other make the tiny model's many small ops several times slower.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            # A short batch keeps the tiny model's step (dominated by its 49k-token head) fast.
            argv = ["bench", "--quick", "--batch-size", "2", "--length", "32", "--out", str(out)]
            assert main(argv) == 0
        finally:
            torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_json_has_every_section(results: dict) -> None:
    assert set(results) >= {"machine", "settings", "step", "bytes", "memory"}
    assert results["machine"]["torch_threads"] >= 1 and results["machine"]["cpu_count"] >= 1
    assert results["settings"]["model"] == "tiny:llama" and results["settings"]["repeats"] == 2
    assert results["settings"]["tokens_per_step"] == 2 * 32


def test_step_times_are_positive(results: dict) -> None:
    step = results["step"]
    assert len(step["unsplit_s"]) == len(step["split_s"]) == 2
    assert all(t > 0 for t in step["unsplit_s"] + step["split_s"])
    assert step["ratio"] == pytest.approx(step["split_median_s"] / step["unsplit_median_s"])
    assert step["ratio"] > 0 and step["split_tokens_per_s"] > 0 and step["unsplit_tokens_per_s"] > 0
    assert step["pending_graph_mb"] > 0 and step["codec_fp32_s"] > 0


def test_bytes_per_step_match_the_tensor_size(results: dict) -> None:
    b, t, d = 2, 32, results["settings"]["dim"]
    assert set(results["bytes"]) == set(WIRE_DTYPES)
    for name, dtype in WIRE_DTYPES.items():
        wire = results["bytes"][name]
        header = wire["expected_payload"] - b * t * d * dtype.itemsize
        assert header == 11 + 8 * 3  # fixed tensor header + three uint64 dims
        assert wire["activation_payload"] == wire["gradient_payload"] == wire["expected_payload"]
        assert wire["exact"]
        assert wire["activation_msg"] == wire["activation_payload"] + wire["overhead_up"]
        assert wire["per_step"] == wire["activation_msg"] + wire["gradient_msg"]
        assert 0 < wire["overhead_down"] < 100  # framing and the control record only


def test_memory_probes_report_a_peak(results: dict) -> None:
    mem = results["memory"]
    assert [run["clients"] for run in mem["runs"]] == [4, 8]
    assert all(run["maxrss_mb"] > 0 and run["setup_s"] > 0 and run["round_s"] > 0 for run in mem["runs"])
    assert mem["adapter_params_per_client"] > 0
    assert mem["state_per_client_mb"] == pytest.approx(mem["adapter_params_per_client"] * 12 / 1e6)


def test_codec_formats_are_timed_and_smaller_than_fp32(results: dict) -> None:
    rows = results["codec_formats"]
    fp32 = rows["fp32"]["bytes_up"] + rows["fp32"]["bytes_down"]
    # One entry "hidden": message head 17 + name length 2 + name 6 + entry head 10 + CRC 4.
    assert rows["fp32"]["bytes_up"] == results["bytes"]["fp32"]["activation_payload"] + 39
    for row in rows.values():
        assert row["codec_s"] > 0
        assert row["ratio_to_fp32"] == pytest.approx(fp32 / (row["bytes_up"] + row["bytes_down"]))
    assert rows["int8"]["ratio_to_fp32"] > 3.5 and rows["int4"]["ratio_to_fp32"] > 6
    assert rows["topk:0.01"]["ratio_to_fp32"] > 40  # headers weigh more on the tiny model


def test_every_kind_of_step_in_both_precisions(results: dict) -> None:
    precisions = results["precisions"]
    assert set(precisions) == {"fp32", "bf16"}
    assert (precisions["fp32"]["compute_dtype"], precisions["fp32"]["loss_chunk"]) == ("fp32", 0)
    assert precisions["bf16"]["compute_dtype"] == "bf16" and precisions["bf16"]["loss_chunk"] > 0
    for p in precisions.values():
        assert p["matmul_peak_flops"] > 0
        for kind in ("peft", "unsplit", "split"):
            step = p[kind]
            assert len(step["s"]) == 2 and all(t > 0 for t in step["s"])
            assert step["tokens_per_s"] == pytest.approx(2 * 32 / step["median_s"])
            assert step["share_of_peak"] == pytest.approx(
                step["flops"] / step["median_s"] / p["matmul_peak_flops"]
            )
            assert 0 < step["share_of_peak"] < 1.5  # a step cannot beat the measured peak by much
        assert p["split_vs_unsplit"] == pytest.approx(p["split"]["median_s"] / p["unsplit"]["median_s"])
    # The split step does the same arithmetic as the unsplit one, minus the cut's rank reduction.
    assert precisions["fp32"]["split"]["flops"] <= precisions["fp32"]["unsplit"]["flops"]
    assert precisions["fp32"]["peft"]["flops"] == precisions["fp32"]["unsplit"]["flops"]
    speedup = results["speedup_vs_fp32"]["bf16"]
    for kind in ("peft", "unsplit", "split"):
        fp32, bf16 = precisions["fp32"][kind]["median_s"], precisions["bf16"][kind]["median_s"]
        assert speedup[kind] == pytest.approx(fp32 / bf16)
    # The same again on this process's CPU time, for a machine shared with other jobs.
    for p in precisions.values():
        cpu = p["cpu"]
        assert cpu["matmul_peak_flops"] > 0
        for kind in ("peft", "unsplit", "split"):
            assert len(cpu[kind]["s"]) == 2 and all(t > 0 for t in cpu[kind]["s"])
            assert cpu[kind]["tokens_per_s"] == pytest.approx(2 * 32 / cpu[kind]["median_s"])
        assert results["speedup_vs_fp32_cpu"]["bf16"]["split"] == pytest.approx(
            precisions["fp32"]["cpu"]["split"]["median_s"] / precisions["bf16"]["cpu"]["split"]["median_s"]
        )
    # The fp32 view is today's: the same times as the fp32 precision's unsplit and split steps.
    assert results["step"]["unsplit_s"] == precisions["fp32"]["unsplit"]["s"]


def test_memory_probes_run_in_the_fast_mode_too(results: dict) -> None:
    fast = results["memory_fast"]
    assert fast["compute_dtype"] == "bf16" and results["memory"]["compute_dtype"] == "fp32"
    assert [run["clients"] for run in fast["runs"]] == [4, 8]
    assert all(run["maxrss_mb"] > 0 and run["round_s"] > 0 for run in fast["runs"])
    # Same adapters in every precision: fp32 LoRA and AdamW state.
    assert fast["state_per_client_mb"] == results["memory"]["state_per_client_mb"]
