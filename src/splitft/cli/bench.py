"""``splitft bench``: step speed in fp32 and bf16, bytes at the cut and memory per client, in one run.

    splitft bench                        # smollm2-135m, batch 4 x 128 tokens; probes 10/100 (fp32), 10/100/500 (bf16)
    OMP_NUM_THREADS=1 splitft bench      # on a small shared machine (docs/benchmarks.md says why)
    splitft bench --quick --out b.json   # tiny:llama, 2 repeats, 4 vs 8 clients per mode: a smoke run
    splitft bench --device cuda --length 512 --no-memory   # on a GPU (scripts/gpu_check.sh)
    python -c "import splitft.cli.bench as b; print(b.child_probe('tiny:llama', 4, 'lines.txt'))"  # one probe

Two modes, measured interleaved in one process so that their ratio sees the same machine load:
``fp32`` (today: fp32 base, whole-logits loss) and the fast mode (``bf16`` base with the
memory-light ``loss_chunk`` loss; LoRA, AdamW and the loss stay fp32).

1. Step time (``bench_steps.py``): plain PEFT (the reference), SplitFT's unsplit step and the
   real split step in each mode; tokens/s and the share of the machine's measured matrix-product
   peak in that dtype. Also the codec's share and the activation memory a client holds between
   its forward and its backward (its pending graph), in fp32.
2. Bytes per step at the cut per wire dtype, checked against ``B*T*d*itemsize + header``.
3. Memory: one child process per client count, one at a time, builds the system with
   ``splitft.recipes.experiment.setup`` and runs one round, then reports ``ru_maxrss``. Its batches are 1 x 4
   tokens so the round's activations stay small next to the state every client adds (adapters
   + AdamW moments on both sides of its cut), which is what the difference of two counts shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from splitft.cli.bench_codec import codec_formats, report_lines
from splitft.cli.bench_steps import KINDS, StepBench, matmul_peak, summarise, time_precisions
from splitft.config import Config
from splitft.errors import ConfigError
from splitft.model.lora import AdapterLayout
from splitft.model.precision import TORCH_DTYPES
from splitft.wire import codec
from splitft.wire.codec import Entry, encode_message

MB = 1e6
_CHILD_LENGTH = 4  # tokens per sample in the memory probes (see the module docstring)


def machine() -> dict[str, Any]:
    return {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy it was
    }


# -- 1. step time ------------------------------------------------------------------------------


def time_steps(benches: dict[str, StepBench], repeats: int, peak_n: int) -> dict[str, Any]:
    """Every kind of step in every precision (``precisions``), and today's fp32 view (``step``)."""
    times, pending, gpu_peak = time_precisions(benches, repeats)
    first = next(iter(benches.values()))
    tokens = sum(len(ids) for ids in first.data.input_ids)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    precisions = {}
    for name, b in benches.items():
        dtype = TORCH_DTYPES[b.cfg.compute_dtype]
        peaks = {c: matmul_peak(dtype, peak_n, b.device, clock=clock) for c, clock in clocks.items()}
        precisions[name] = {
            "compute_dtype": b.cfg.compute_dtype,
            "loss_chunk": b.cfg.loss_chunk,
            "matmul_peak_flops": peaks["wall"],
            "gpu_peak_mb": {kind: x / MB for kind, x in gpu_peak[name].items()},
            **summarise(times["wall"][name], tokens, b.flops, peaks["wall"]),
            # The same on this process's CPU time (see time_precisions), with the peak on that clock.
            "cpu": {
                "matmul_peak_flops": peaks["cpu"],
                **summarise(times["cpu"][name], tokens, b.flops, peaks["cpu"]),
            },
        }
    base, *others = benches
    speedups = {
        f"speedup_vs_{base}{suffix}": {
            name: {k: statistics.median(t[base][k]) / statistics.median(t[name][k]) for k in KINDS}
            for name in others
        }
        for suffix, t in (("", times["wall"]), ("_cpu", times["cpu"]))
    }
    ts = times["wall"][base]
    med = {k: statistics.median(ts[k]) for k in ("unsplit", "split")}
    hidden = torch.randn(len(first.data), len(first.data.input_ids[0]), first.dim)
    step = {
        "unsplit_s": ts["unsplit"],
        "split_s": ts["split"],
        "unsplit_median_s": med["unsplit"],
        "split_median_s": med["split"],
        "ratio": med["split"] / med["unsplit"],
        # Noise on a shared machine only adds time: the best and the per-pair view resist it better.
        "ratio_of_min": min(ts["split"]) / min(ts["unsplit"]),
        "ratio_pair_median": statistics.median(
            s / u for s, u in zip(ts["split"], ts["unsplit"], strict=True)
        ),
        "unsplit_tokens_per_s": tokens / med["unsplit"],
        "split_tokens_per_s": tokens / med["split"],
        "codec_fp32_s": statistics.median(timeit.repeat(lambda: _round_trips(hidden), number=1, repeat=5)),
        "pending_graph_mb": pending / MB,
    }
    return {"step": step, "precisions": precisions, **speedups}


# -- 2. bytes at the cut -----------------------------------------------------------------------


def _messages(hidden: torch.Tensor, dtype: str) -> tuple[codec.EncodedMessage, codec.EncodedMessage]:
    """The activation message (up) and gradient message (down) of one step, as the roles build them."""
    b, t, _ = hidden.shape
    up = encode_message(
        [
            Entry("hidden", "activations", hidden, wire_dtype=dtype),
            Entry("labels", "labels", torch.zeros(b, t, dtype=torch.int32)),
            Entry("attention_mask", "labels", torch.ones(b, t, dtype=torch.uint8)),
        ]
    )
    down = encode_message(
        [
            Entry("grad", "gradients", hidden, wire_dtype=dtype, scaled=dtype == "fp16"),
            Entry("control", "control", {"step": 0}),
        ]
    )
    return up, down


def _round_trips(hidden: torch.Tensor) -> None:
    for message in _messages(hidden, "fp32"):
        codec.decode_message(message.data)


def wire_bytes(batch_size: int, length: int, dim: int) -> dict[str, dict[str, Any]]:
    out, hidden = {}, torch.randn(batch_size, length, dim)
    for name, dtype in codec.WIRE_DTYPES.items():
        up, down = _messages(hidden, name)
        expected = batch_size * length * dim * dtype.itemsize + codec.tensor_header_size(3)
        act, grad = up.bytes_by_kind["activations"], down.bytes_by_kind["gradients"]
        out[name] = {
            "activation_msg": len(up.data),
            "gradient_msg": len(down.data),
            "per_step": len(up.data) + len(down.data),
            "activation_payload": act,
            "gradient_payload": grad,
            "expected_payload": expected,
            "exact": act == expected == grad,
            # labels, attention mask, control record and message framing
            "overhead_up": len(up.data) - act,
            "overhead_down": len(down.data) - grad,
        }
    return out


# -- 3. memory per client ------------------------------------------------------------------------


def child_probe(
    model_name: str, clients: int, corpus: str, compute_dtype: str = "fp32", loss_chunk: int = 0
) -> dict[str, Any]:
    """In a fresh process: build ``clients`` clients and the server, run one round, report the peak."""
    # Imported here: only the probe needs the training stack (data preparation, plots).
    from splitft.recipes.experiment import local_runtime, setup

    overrides = {"model.name": model_name, "federation.num_clients": clients, "federation.rounds": 1}
    overrides |= {"data.train": corpus, "data.max_length": _CHILD_LENGTH, "train.batch_size": 1}
    overrides |= {"compute_dtype": compute_dtype, "loss_chunk": loss_chunk}
    cfg = Config().with_overrides(overrides)
    start = time.perf_counter()
    exp = setup(cfg)
    loop = exp.method.make_loop(exp, local_runtime(exp))
    built = time.perf_counter()
    result = loop.run_round(1)
    if result.dropped:
        raise RuntimeError(f"clients dropped during the probe round: {result.dropped}")
    return {
        "clients": clients,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,  # KiB on Linux
        "setup_s": built - start,
        "round_s": time.perf_counter() - built,
    }


def _run_child(model_name: str, clients: int, corpus: Path, mode: tuple[str, int]) -> dict[str, Any]:
    src = str(Path(__file__).resolve().parents[1])  # so the child imports this very package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    call = f"b.child_probe({model_name!r}, {clients}, {str(corpus)!r}, {mode[0]!r}, {mode[1]})"
    code = f"import json, splitft.cli.bench as b; print(json.dumps({call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe with {clients} clients failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(
    model_name: str, counts: tuple[int, ...], layout: AdapterLayout, mode: tuple[str, int] = ("fp32", 0)
) -> dict[str, Any]:
    """Peak RSS after one round with each of ``counts`` clients (``mode``: compute dtype, loss
    chunk); the growth per client between the last two counts (with few clients the peak is the
    model load's, which reads fp32 weights before any cast, not the clients')."""
    with tempfile.TemporaryDirectory(prefix="splitft-bench-") as tmp:
        corpus = Path(tmp) / "bench.txt"
        # Enough lines that every client keeps a sample after the validation/test hold-outs.
        corpus.write_text("".join(f"benchmark line {i} of the corpus\n" for i in range(2 * max(counts) + 20)))
        desc = f"memory probes ({mode[0]})"
        runs = [_run_child(model_name, n, corpus, mode) for n in tqdm(counts, desc=desc, unit="probe")]
    (*_, lo, hi), params = runs, sum(shape.numel() for shape in layout.shapes.values())
    return {
        "compute_dtype": mode[0],
        "runs": runs,
        "per_client_mb": (hi["maxrss_mb"] - lo["maxrss_mb"]) / (hi["clients"] - lo["clients"]),
        # Client + server copy together span every block at full shape: param, exp_avg, exp_avg_sq.
        "adapter_params_per_client": params,
        "state_per_client_mb": params * 4 * 3 / MB,
    }


# -- report --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]


def _precision_lines(r: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{name} {kind}",
            f"{p[kind]['median_s']:.3f}",
            f"{p[kind]['tokens_per_s']:.0f}",
            f"{p[kind]['share_of_peak']:.1%}",
            f"{p['cpu'][kind]['median_s']:.3f}",
            f"{p['cpu'][kind]['tokens_per_s']:.0f}",
            f"{p['cpu'][kind]['share_of_peak']:.1%}",
            f"{p['gpu_peak_mb'][kind]:.0f}" if p["gpu_peak_mb"][kind] else "-",
        ]
        for name, p in r["precisions"].items()
        for kind in KINDS
    ]
    header = ["step", "wall s", "tokens/s", "of peak", "CPU s", "tokens/CPU s", "of CPU peak", "GPU MB"]
    lines = [*_table(header, rows)]
    for name, p in r["precisions"].items():
        for label, q in (("wall", p), ("CPU", p["cpu"])):
            lines.append(
                f"{name} ({label} time; compute {p['compute_dtype']}, loss_chunk {p['loss_chunk']}): matmul peak "
                f"{q['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; split/unsplit {q['split_vs_unsplit']:.3f}x (medians), "
                f"{q['split_vs_unsplit_pair_median']:.3f}x (median of pairs); split/peft {q['split_vs_peft']:.3f}x"
            )
    for key, by_name in ((k, v) for k, v in r.items() if k.startswith("speedup_vs_")):
        for name, by_kind in by_name.items():
            ratios = ", ".join(f"{kind} {x:.2f}x" for kind, x in by_kind.items())
            lines.append(f"{name} {key.replace('_', ' ')}: {ratios}")
    return lines


def _memory_lines(mem: dict[str, Any]) -> list[str]:
    runs = [
        [str(x["clients"]), f"{x['maxrss_mb']:.0f}", f"{x['setup_s']:.2f}", f"{x['round_s']:.2f}"]
        for x in mem["runs"]
    ]
    return [
        f"memory, compute {mem['compute_dtype']}:",
        *_table(["clients", "peak RSS MB", "setup s", "round s"], runs),
        f"per extra client: {mem['per_client_mb']:.2f} MB measured, {mem['state_per_client_mb']:.2f} MB "
        f"adapters + AdamW state ({mem['adapter_params_per_client']} params)",
    ]


def report(r: dict[str, Any]) -> str:
    """The results as aligned plain text."""
    m, s, st = r["machine"], r["settings"], r["step"]
    wire = [
        [k, *(str(b[f]) for f in ("activation_msg", "gradient_msg", "per_step", "exact"))]
        for k, b in r["bytes"].items()
    ]
    memories = [
        line for key in ("memory", "memory_fast") if key in r for line in ["", *_memory_lines(r[key])]
    ]
    return "\n".join(
        [
            f"machine: torch {m['torch_version']}, {m['torch_threads']} threads, {m['cpu_count']} CPUs, "
            f"load {m['load_avg_1m']} -> {r['load_avg_1m_end']}, device {s['device']}",
            f"model {s['model']}: {s['blocks']} blocks, d={s['dim']}, cut {s['cut']}, batch {s['batch_size']}"
            f" x {s['length']} = {s['tokens_per_step']} tokens, {s['repeats']} interleaved repeats",
            "",
            *_precision_lines(r),
            f"fp32 split/unsplit: {st['ratio']:.3f}x (medians), {st['ratio_of_min']:.3f}x (best), "
            f"{st['ratio_pair_median']:.3f}x (median of pairs)",
            f"fp32 codec, both messages: {st['codec_fp32_s']:.4f} s; client graph held from forward to "
            f"backward: {st['pending_graph_mb']:.1f} MB",
            "",
            *_table(["wire", "activation msg", "gradient msg", "bytes/step", "= B*T*d*size+hdr"], wire),
            "",
            *report_lines(r["codec_formats"]),
            *memories,
        ]
    )


@dataclass(frozen=True)
class BenchPlan:
    """What one ``splitft bench`` run measures."""

    model: str = "smollm2-135m"
    batch_size: int = 4
    length: int = 128
    repeats: int = 5
    counts: tuple[int, ...] = (10, 100)
    """Client counts of the fp32 memory probes (today's mode)."""
    fast_counts: tuple[int, ...] = (10, 100, 500)
    """Client counts of the probes in the fast mode (() = none)."""
    loss_chunk: int = 128
    """The fast mode's loss chunk."""
    fast_dtype: str = "bf16"
    device: str = "cpu"
    peak_n: int = 1024
    """Side of the square matrix product that measures the peak."""


def run(plan: BenchPlan) -> dict[str, Any]:
    """Every measurement, as one JSON-able dict: fp32 as today vs the fast mode (``plan.fast_dtype``
    with ``plan.loss_chunk``), measured interleaved in one process."""
    if plan.batch_size < 1 or plan.length < 2 or plan.repeats < 1:
        raise ConfigError(
            f"need batch size >= 1, length >= 2, repeats >= 1; got {plan.batch_size, plan.length, plan.repeats}"
        )
    start_facts = machine()
    modes = {"fp32": ("fp32", 0), plan.fast_dtype: (plan.fast_dtype, plan.loss_chunk)}
    benches = {
        name: StepBench(plan.model, plan.batch_size, plan.length, dtype, chunk, plan.device)
        for name, (dtype, chunk) in modes.items()
    }
    bench = benches["fp32"]
    layout = bench.layout  # adapter shapes only, for the probes' state count
    settings = {
        "model": plan.model,
        "blocks": bench.model.num_blocks,
        "dim": bench.dim,
        "device": str(bench.device),
    }
    settings |= {
        "cut": bench.cut,
        "batch_size": plan.batch_size,
        "length": plan.length,
        "repeats": plan.repeats,
    }
    settings["tokens_per_step"] = plan.batch_size * plan.length
    out = {"machine": start_facts, "settings": settings, **time_steps(benches, plan.repeats, plan.peak_n)}
    out["bytes"] = wire_bytes(plan.batch_size, plan.length, bench.dim)
    out["codec_formats"] = codec_formats(plan.batch_size, plan.length, bench.dim, max(plan.repeats, 3))
    del benches, bench  # the probes run in child processes: free this one's models first
    if plan.counts:
        out["memory"] = memory(plan.model, plan.counts, layout, ("fp32", 0))
    if plan.fast_counts:
        out["memory_fast"] = memory(plan.model, plan.fast_counts, layout, modes[plan.fast_dtype])
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return out


def main(ns: argparse.Namespace) -> int:
    plan = BenchPlan(
        model=ns.model,
        batch_size=ns.batch_size,
        length=ns.length,
        repeats=ns.repeats,
        loss_chunk=ns.loss_chunk,
        device=ns.device,
        counts=() if ns.no_memory else (10, 100),
        fast_counts=() if ns.no_memory else tuple(ns.clients),
    )
    if ns.quick:
        plan = replace(plan, model="tiny:llama", repeats=2, counts=(4, 8), fast_counts=(4, 8), peak_n=256)
    results = run(plan)
    print(report(results))
    if ns.out:
        Path(ns.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
