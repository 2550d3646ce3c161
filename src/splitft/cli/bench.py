"""``splitft bench``: what splitting costs in step time, bytes at the cut and memory per client.

    splitft bench                        # smollm2-135m, batch 4 x 128 tokens, 10 vs 100 clients
    OMP_NUM_THREADS=1 splitft bench      # on a small shared machine (docs/benchmarks.md says why)
    splitft bench --quick --out b.json   # tiny:llama, 2 repeats, 4 vs 8 clients: a smoke run
    python -c "import splitft.cli.bench as b; print(b.child_probe('tiny:llama', 4, 'lines.txt'))"  # one probe

1. Step time, interleaved after one warm-up of each: the unsplit LoRA step (whole model, loss,
   backward, one AdamW over every adapter) vs the real split step (``Client.forward_step`` ->
   ``MainServer.train_step`` -> ``Client.backward_step``: fp32 codec messages both ways, one
   AdamW per side), cut in the middle. Also the codec's share and the activation memory a
   client holds between its forward and its backward (its pending graph).
2. Bytes per step at the cut per wire dtype, checked against ``B*T*d*itemsize + header``.
3. Memory: one child process per client count, one at a time, builds the system with
   ``splitft.recipes.experiment.setup`` and runs one round, then reports ``ru_maxrss``. Its batches are 1 x 4
   tokens so the round's activations stay small next to the state every client adds (adapters
   + AdamW moments on both sides of its cut), which is what the difference of two counts shows.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from splitft.algorithms.optim import AdapterOptimizer
from splitft.config import Config
from splitft.data.tokenize import TokenizedDataset, collate, pad_id_of
from splitft.errors import ConfigError
from splitft.model.loading import load_model, load_tokenizer
from splitft.model.lora import AdapterLayout, attach_lora, copy_ranks, initial_adapters
from splitft.model.split import SplitModel
from splitft.roles.client import Client
from splitft.roles.main_server import MainServer
from splitft.wire import codec
from splitft.wire.codec import Entry, encode_message
from splitft.wire.messages import adapter_entries, control

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


@contextlib.contextmanager
def _saved_storages(out: dict[int, int], exclude: set[int]) -> Iterator[None]:
    """Record (in ``out``) the distinct storages autograd saves for backward, less ``exclude``."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            out[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class StepBench:
    """One frozen model with LoRA, a fixed batch, and the two ways to train on it."""

    def __init__(self, model_name: str, batch_size: int, length: int) -> None:
        tokenizer = load_tokenizer(model_name)
        base = load_model(model_name, vocab_size=len(tokenizer))
        self.cfg = Config().with_overrides({"model.name": model_name, "train.batch_size": batch_size})
        lora = self.cfg.lora
        peft_model = attach_lora(base, SplitModel(base).family, lora.r_others, lora.alpha, seed=self.cfg.seed)
        causal_lm = peft_model.base_model.model
        self.model = SplitModel(causal_lm)
        self.layout = AdapterLayout.of(causal_lm, self.model.family)
        self.cut = self.model.num_blocks // 2
        self.dim = causal_lm.config.hidden_size  # width at the cut (OPT's embeddings can be narrower)
        self.adapters = initial_adapters(causal_lm)
        # Random ids of full length: every token is real, so tokens per step = B * T.
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, len(tokenizer), (batch_size, length), generator=gen)
        self.data = TokenizedDataset(ids.tolist(), [0] * batch_size, [{} for _ in range(batch_size)])
        self.pad_id = pad_id_of(tokenizer)
        self.total_steps = self.cfg.federation.rounds * self.cfg.federation.local_steps

    def unsplit_step(self) -> Callable[[int], None]:
        params = {n: t.clone().requires_grad_(True) for n, t in self.adapters.items()}
        optimizer = AdapterOptimizer(params, self.cfg.train, self.total_steps)
        items = [self.data[i] for i in range(len(self.data))]

        def step(i: int) -> None:
            batch = collate(items, self.pad_id)  # the client collates in its step too
            nll, tokens, _ = self.model.full_stats(
                batch["input_ids"], batch["attention_mask"], batch["labels"], params
            )
            (nll / tokens).backward()
            optimizer.step(i)

        return step

    def split_step(self) -> tuple[Callable[[int], None], Callable[[], int]]:
        """The split step, and a probe that runs one and returns the client's pending-graph bytes."""
        server = MainServer(self.model, self.layout, self.cfg)
        client = Client(0, self.model, self.layout, self.data, self.cfg, self.pad_id)
        ranks = copy_ranks(self.layout, range(self.cut), self.cut - 1, self.cfg.lora.client_cut_rank)
        entries = adapter_entries({n: self.adapters[n] for n in ranks}, ranks)
        server.begin_round(0, self.cut, self.adapters)
        client.begin_round(encode_message([*entries, Entry("control", "control", {"cut": self.cut})]).data)

        def step(i: int, during_forward: contextlib.AbstractContextManager | None = None) -> None:
            with during_forward or contextlib.nullcontext():
                smashed = client.forward_step(control(step=i))
            grad, _ = server.train_step(0, smashed, i)
            client.backward_step(grad)

        def probe() -> int:
            weights = [*self.model.model.parameters(), *client.params.values()]  # not per step
            storages: dict[int, int] = {}
            step(0, _saved_storages(storages, {p.untyped_storage().data_ptr() for p in weights}))
            return sum(storages.values())

        return step, probe


def time_steps(bench: StepBench, repeats: int) -> dict[str, Any]:
    unsplit, (split, probe) = bench.unsplit_step(), bench.split_step()
    unsplit(0)
    pending = probe()  # also the split warm-up
    times: dict[str, list[float]] = {"unsplit": [], "split": []}
    for r in tqdm(range(1, repeats + 1), desc="steps (unsplit, split)", unit="pair"):
        for name, fn in (("unsplit", unsplit), ("split", split)):
            start = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(ids) for ids in bench.data.input_ids)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    hidden = torch.randn(len(bench.data), len(bench.data.input_ids[0]), bench.dim)
    return {
        "unsplit_s": times["unsplit"],
        "split_s": times["split"],
        "unsplit_median_s": med["unsplit"],
        "split_median_s": med["split"],
        "ratio": med["split"] / med["unsplit"],
        # Noise on a shared machine only adds time: the best and the per-pair view resist it better.
        "ratio_of_min": min(times["split"]) / min(times["unsplit"]),
        "ratio_pair_median": statistics.median(
            s / u for s, u in zip(times["split"], times["unsplit"], strict=True)
        ),
        "unsplit_tokens_per_s": tokens / med["unsplit"],
        "split_tokens_per_s": tokens / med["split"],
        "codec_fp32_s": statistics.median(timeit.repeat(lambda: _round_trips(hidden), number=1, repeat=5)),
        "pending_graph_mb": pending / MB,
    }


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


def child_probe(model_name: str, clients: int, corpus: str) -> dict[str, Any]:
    """In a fresh process: build ``clients`` clients and the server, run one round, report the peak."""
    # Imported here: only the probe needs the training stack (data preparation, plots).
    from splitft.recipes.experiment import local_runtime, setup

    overrides = {"model.name": model_name, "federation.num_clients": clients, "federation.rounds": 1}
    overrides |= {"data.train": corpus, "data.max_length": _CHILD_LENGTH, "train.batch_size": 1}
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


def _run_child(model_name: str, clients: int, corpus: Path) -> dict[str, Any]:
    src = str(Path(__file__).resolve().parents[1])  # so the child imports this very package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    call = f"b.child_probe({model_name!r}, {clients}, {str(corpus)!r})"
    code = f"import json, splitft.cli.bench as b; print(json.dumps({call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe with {clients} clients failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(model_name: str, counts: tuple[int, int], layout: AdapterLayout) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="splitft-bench-") as tmp:
        corpus = Path(tmp) / "bench.txt"
        # Enough lines that every client keeps a sample after the validation/test hold-outs.
        corpus.write_text("".join(f"benchmark line {i} of the corpus\n" for i in range(2 * max(counts) + 20)))
        runs = [_run_child(model_name, n, corpus) for n in tqdm(counts, desc="memory probes", unit="probe")]
    (lo, hi), params = runs, sum(shape.numel() for shape in layout.shapes.values())
    return {
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


def report(r: dict[str, Any]) -> str:
    """The results as aligned plain text."""
    m, s, st, mem = r["machine"], r["settings"], r["step"], r["memory"]
    steps = [
        [k, f"{st[k + '_median_s']:.3f}", f"{st[k + '_tokens_per_s']:.0f}"] for k in ("unsplit", "split")
    ]
    wire = [
        [k, *(str(b[f]) for f in ("activation_msg", "gradient_msg", "per_step", "exact"))]
        for k, b in r["bytes"].items()
    ]
    runs = [
        [str(x["clients"]), f"{x['maxrss_mb']:.0f}", f"{x['setup_s']:.2f}", f"{x['round_s']:.2f}"]
        for x in mem["runs"]
    ]
    return "\n".join(
        [
            f"machine: torch {m['torch_version']}, {m['torch_threads']} threads, {m['cpu_count']} CPUs, "
            f"load {m['load_avg_1m']} -> {r['load_avg_1m_end']}",
            f"model {s['model']}: {s['blocks']} blocks, d={s['dim']}, cut {s['cut']}, batch {s['batch_size']}"
            f" x {s['length']} = {s['tokens_per_step']} tokens, {s['repeats']} interleaved repeats",
            "",
            *_table(["step", "median s", "tokens/s"], steps),
            f"split/unsplit: {st['ratio']:.3f}x (medians), {st['ratio_of_min']:.3f}x (best), "
            f"{st['ratio_pair_median']:.3f}x (median of pairs)",
            f"fp32 codec, both messages: {st['codec_fp32_s']:.4f} s; client graph held from forward to "
            f"backward: {st['pending_graph_mb']:.1f} MB",
            "",
            *_table(["wire", "activation msg", "gradient msg", "bytes/step", "= B*T*d*size+hdr"], wire),
            "",
            *_table(["clients", "peak RSS MB", "setup s", "round s"], runs),
            f"per extra client: {mem['per_client_mb']:.2f} MB measured, {mem['state_per_client_mb']:.2f} MB "
            f"adapters + AdamW state ({mem['adapter_params_per_client']} params)",
        ]
    )


def run(
    model_name: str, batch_size: int, length: int, repeats: int, counts: tuple[int, int]
) -> dict[str, Any]:
    """Every measurement, as one JSON-able dict."""
    if batch_size < 1 or length < 2 or repeats < 1:
        raise ConfigError(
            f"need batch size >= 1, length >= 2, repeats >= 1; got {batch_size, length, repeats}"
        )
    start_facts = machine()
    bench = StepBench(model_name, batch_size, length)
    settings = {"model": model_name, "blocks": bench.model.num_blocks, "dim": bench.dim}
    settings |= {"cut": bench.cut, "batch_size": batch_size, "length": length, "repeats": repeats}
    settings["tokens_per_step"] = batch_size * length
    return {
        "machine": start_facts,
        "settings": settings,
        "step": time_steps(bench, repeats),
        "bytes": wire_bytes(batch_size, length, bench.dim),
        "memory": memory(model_name, counts, bench.layout),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }


def main(ns: argparse.Namespace) -> int:
    if ns.quick:
        results = run("tiny:llama", ns.batch_size, ns.length, 2, (4, 8))
    else:
        results = run(ns.model, ns.batch_size, ns.length, ns.repeats, (10, 100))
    print(report(results))
    if ns.out:
        Path(ns.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
