"""Step timing for ``splitft bench``: split vs unsplit vs plain PEFT, in each compute precision.

Every kind of step trains the same LoRA (r_others on the family's attention projections) on the
same model and batch:

* ``peft``: the reference, plain PEFT as a user would write it: ``model(ids, mask, labels=...)``
  (Hugging Face's own loss), ``backward``, ``torch.optim.AdamW`` over the PEFT LoRA weights;
* ``unsplit``: SplitFT's whole-model step (``functional_call`` with an adapter dict, our loss,
  gradient clipping, :class:`AdapterOptimizer`);
* ``split``: the real split step (``Client.forward_step`` -> ``MainServer.train_step`` ->
  ``Client.backward_step``: codec messages both ways, one AdamW per side), cut in the middle.

Precisions are interleaved (each repeat runs every kind in every precision), so a bf16/fp32
ratio compares steps measured under the same machine load. Each is also put against the
machine's measured matrix-product peak in that dtype (best of several square products):
``share of peak = step FLOPs (sim/costs.py's count) / step time / peak``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import timeit
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from splitft.algorithms.optim import AdapterOptimizer
from splitft.config import Config
from splitft.data.tokenize import TokenizedDataset, collate, pad_id_of
from splitft.model.loading import load_model, load_tokenizer
from splitft.model.lora import AdapterLayout, attach_lora, copy_ranks, initial_adapters
from splitft.model.precision import hold_base_in, resolve_compute_dtype
from splitft.model.split import SplitModel
from splitft.recipes.experiment import resolve_device
from splitft.roles.client import Client
from splitft.roles.main_server import MainServer
from splitft.sim.costs import ModelShape, block_ranks, unsplit_step_flops
from splitft.wire.codec import Entry, encode_message
from splitft.wire.messages import adapter_entries, control

KINDS = ("peft", "unsplit", "split")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    dtype: torch.dtype,
    n: int,
    device: torch.device,
    repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """FLOP/s of this machine's best ``n x n`` matrix product in ``dtype`` (best of ``repeats``),
    timed by ``clock`` (wall time, or this process's CPU time: see :func:`time_precisions`)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))

    def product() -> None:
        a @ b
        sync(device)

    product()  # warm-up: the library picks its kernel on first use
    return 2 * n**3 / min(timeit.repeat(product, number=1, repeat=repeats, timer=clock))


@contextlib.contextmanager
def saved_storages(out: dict[int, int], exclude: set[int]) -> Iterator[None]:
    """Record (in ``out``) the distinct storages autograd saves for backward, less ``exclude``."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            out[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class StepBench:
    """One frozen model with LoRA in one precision, a fixed batch, and the three ways to train on it."""

    def __init__(
        self,
        model_name: str,
        batch_size: int,
        length: int,
        compute_dtype: str = "fp32",
        loss_chunk: int = 0,
        device: str = "cpu",
    ) -> None:
        self.device = resolve_device(device)
        tokenizer = load_tokenizer(model_name)
        base = load_model(model_name, vocab_size=len(tokenizer))
        overrides = {"model.name": model_name, "train.batch_size": batch_size}
        self.cfg = Config().with_overrides(
            overrides | {"compute_dtype": compute_dtype, "loss_chunk": loss_chunk}
        )
        lora = self.cfg.lora
        self.peft_model = attach_lora(
            base, SplitModel(base).family, lora.r_others, lora.alpha, seed=self.cfg.seed
        )
        self.peft_model.to(self.device)
        causal_lm = self.peft_model.base_model.model
        self.adapters = initial_adapters(causal_lm)  # before the cast, as a run draws them
        hold_base_in(causal_lm, resolve_compute_dtype(compute_dtype, self.device), self.device)
        self.model = SplitModel(causal_lm, loss_chunk=loss_chunk)
        self.layout = AdapterLayout.of(causal_lm, self.model.family)
        self.cut = self.model.num_blocks // 2
        self.dim = causal_lm.config.hidden_size  # width at the cut (OPT's embeddings can be narrower)
        # Random ids of full length: every token is real, so tokens per step = B * T.
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, len(tokenizer), (batch_size, length), generator=gen)
        self.data = TokenizedDataset(ids.tolist(), [0] * batch_size, [{} for _ in range(batch_size)])
        self.pad_id = pad_id_of(tokenizer)
        self.total_steps = self.cfg.federation.rounds * self.cfg.federation.local_steps
        shape, m = ModelShape.from_hf_config(causal_lm.config), self.model.num_blocks
        split_ranks = block_ranks(m, self.cut, lora.r_others, lora.client_cut_rank, lora.server_cut_rank)
        self.flops = {
            "peft": unsplit_step_flops(shape, batch_size, length, [lora.r_others] * m),
            "unsplit": unsplit_step_flops(shape, batch_size, length, [lora.r_others] * m),
            "split": unsplit_step_flops(shape, batch_size, length, split_ranks),
        }

    def _batch(self) -> dict[str, torch.Tensor]:
        batch = collate([self.data[i] for i in range(len(self.data))], self.pad_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def peft_step(self) -> Callable[[int], None]:
        """Plain PEFT: its own LoRA weights (fp32 in every precision), HF's loss, torch's AdamW."""
        slots = [p for n, p in self.peft_model.named_parameters() if ".lora_" in n]
        for p in slots:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(slots, lr=self.cfg.train.lr)

        def step(_i: int) -> None:
            batch = self._batch()
            self.peft_model(**batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def unsplit_step(self) -> Callable[[int], None]:
        params = {n: t.clone().requires_grad_(True) for n, t in self.adapters.items()}
        optimizer = AdapterOptimizer(params, self.cfg.train, self.total_steps)

        def step(i: int) -> None:
            batch = self._batch()  # the client collates in its step too
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
            step(0, saved_storages(storages, {p.untyped_storage().data_ptr() for p in weights}))
            return sum(storages.values())

        return step, probe


def _gpu_peak(device: torch.device, warm_up: Callable[[], object]) -> int:
    """Peak GPU memory (bytes) allocated while ``warm_up`` runs (0 on a CPU: the probes measure RSS)."""
    if device.type != "cuda":
        warm_up()
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    warm_up()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def time_precisions(
    benches: dict[str, StepBench], repeats: int
) -> tuple[dict[str, dict[str, dict[str, list[float]]]], int, dict[str, dict[str, int]]]:
    """Step times (``{"wall": ..., "cpu": ...}``, then per precision and kind), interleaved after
    one warm-up of each; the client's pending-graph bytes of the first precision's split step
    (its warm-up); and, on a GPU, the peak memory of each warm-up.

    ``cpu`` is this process's CPU time: with one torch thread on a CPU it is the step's compute
    time even when other jobs share the cores (wall time then includes waiting for a core)."""
    steps: dict[str, dict[str, Callable[[int], None]]] = {}
    pending: list[int] = []
    gpu_peak: dict[str, dict[str, int]] = {}
    for dtype, bench in benches.items():
        split, probe = bench.split_step()
        steps[dtype] = {"peft": bench.peft_step(), "unsplit": bench.unsplit_step(), "split": split}
        gpu_peak[dtype] = {
            "peft": _gpu_peak(bench.device, lambda s=steps[dtype]: s["peft"](0)),
            "unsplit": _gpu_peak(bench.device, lambda s=steps[dtype]: s["unsplit"](0)),
            "split": _gpu_peak(bench.device, lambda p=probe: pending.append(p())),  # the split warm-up
        }
    times = {c: {dtype: {kind: [] for kind in KINDS} for dtype in benches} for c in ("wall", "cpu")}
    for r in tqdm(range(1, repeats + 1), desc="steps (every kind and precision)", unit="repeat"):
        for dtype, kinds in steps.items():
            for kind, fn in kinds.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(r)
                sync(benches[dtype].device)
                times["wall"][dtype][kind].append(time.perf_counter() - start)
                times["cpu"][dtype][kind].append(time.process_time() - start_cpu)
    return times, pending[0], gpu_peak


def summarise(
    times: dict[str, list[float]], tokens: int, flops: dict[str, int], peak: float
) -> dict[str, Any]:
    """Median time, tokens/s and share of the matrix-product peak of each kind; split vs unsplit."""
    out: dict[str, Any] = {}
    for kind, ts in times.items():
        med = statistics.median(ts)
        out[kind] = {
            "s": ts,
            "median_s": med,
            "tokens_per_s": tokens / med,
            "flops": flops[kind],
            "share_of_peak": flops[kind] / med / peak,
        }
    out["split_vs_unsplit"] = out["split"]["median_s"] / out["unsplit"]["median_s"]
    out["split_vs_unsplit_pair_median"] = statistics.median(
        s / u for s, u in zip(times["split"], times["unsplit"], strict=True)
    )
    out["split_vs_peft"] = out["split"]["median_s"] / out["peft"]["median_s"]
    return out
