"""``setup``: check everything and build the server side of a run; building a client alone.

Roles build alone (docs/architecture.md, "Roles and where they run"):

* :func:`setup` (the server side) validates the config, loads the tokenizer, the data and the
  model, resolves the starting cuts and the devices, runs the method's own checks and builds
  the method's server-side role. It builds no client.
* :func:`build_client` builds one client from the config, its index and its own data, on the
  model this process holds. In one process :func:`local_runtime` builds every client that way
  and serves them in-process; a FLARE site builds only its own (``runtime/flare.py``).

Everything that can be wrong with the input is checked in ``setup`` before the run directory
is created, so a bad run leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoConfig

from splitft.algorithms.policy import resolve_cuts
from splitft.config import Config
from splitft.data.prepare import PreparedData, prepare_data
from splitft.data.tokenize import TokenizedDataset, pad_id_of
from splitft.errors import ConfigError, ModelError
from splitft.methods.base import Experiment, SharedModel
from splitft.model.loading import SMOLLM2, SMOLLM2_ARCH, TINY_CONFIGS, load_model, load_tokenizer
from splitft.model.lora import AdapterLayout, attach_lora, initial_adapters
from splitft.model.precision import hold_base_in, resolve_compute_dtype
from splitft.model.segments import check_tail_length, check_tails
from splitft.model.split import SplitModel
from splitft.registry import METHODS, POLICIES
from splitft.runtime.inprocess import InProcessRuntime
from splitft.sim.timing import RoundTimer
from splitft.wire.calls import client_role


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def model_depth(name: str) -> int | None:
    """Decoder blocks of model ``name`` from its config alone (None when that needs the
    network or the name is bad: loading then reports it)."""
    if name == SMOLLM2:
        return SMOLLM2_ARCH["num_hidden_layers"]
    try:
        if name.startswith("tiny:"):
            kwargs = dict(TINY_CONFIGS[name.removeprefix("tiny:")])
            return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs).num_hidden_layers
        return AutoConfig.from_pretrained(name, local_files_only=True).num_hidden_layers
    except Exception:  # noqa: BLE001 - any failure: the model load gives the precise error
        return None


def check_model_shape(cfg: Config) -> None:
    """``model.keep_layers`` and ``split.cuts`` against the model's depth, before anything slow
    loads (so their error is the first and only line; the load checks them again)."""
    depth = model_depth(cfg.model.name)
    if depth is None:
        return
    keep = cfg.model.keep_layers
    if keep and not 2 <= keep <= depth:
        raise ModelError(f"model.keep_layers={keep} is outside 2..{depth} (the model has {depth} blocks)")
    start_cuts(cfg, keep or depth)


def start_cuts(cfg: Config, num_blocks: int) -> list[int]:
    """Every client's starting cut from ``split.cuts`` (empty: spread evenly over the cuts that
    leave the longest tail's blocks to the client), checked against its tail."""
    tails = [cfg.split.tail_of(i) for i in range(cfg.federation.num_clients)]
    check_tail_length(tails, num_blocks)
    spread_over = num_blocks - (0 if cfg.split.cuts else max(tails))
    cuts = resolve_cuts(cfg.split.cuts, cfg.federation.num_clients, spread_over)
    check_tails(cuts, tails, num_blocks)
    return cuts


def load_shared_model(cfg: Config, tokenizer: Any) -> SharedModel:
    """Load ``cfg.model``, inject LoRA at ``r_others`` (seeded), move it to ``cfg.device`` and
    hold its frozen base in ``cfg.compute_dtype`` (the adapters stay fp32)."""
    device = resolve_device(cfg.device)
    dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    base = load_model(
        cfg.model.name, vocab_size=len(tokenizer), seed=cfg.seed, keep_layers=cfg.model.keep_layers
    )
    family = SplitModel(base).family
    peft_model = attach_lora(
        base, family, cfg.lora.r_others, cfg.lora.alpha, cfg.lora.target_modules, cfg.seed
    )
    peft_model.to(device)
    causal_lm = peft_model.base_model.model
    initial = initial_adapters(causal_lm)  # drawn on the fp32 model: the same in every precision
    hold_base_in(causal_lm, dtype, device)
    model = SplitModel(causal_lm, loss_chunk=cfg.loss_chunk)
    layout = AdapterLayout.of(causal_lm, model.family)
    return SharedModel(peft_model, model, layout, initial, pad_id_of(tokenizer))


def build_client(
    cfg: Config, index: int, train: TokenizedDataset, heldout: TokenizedDataset, shared: SharedModel
):
    """Client ``index`` of ``cfg.method`` from its own data (the same on any runtime)."""
    return METHODS.get(cfg.method).build_client(cfg, index, train, heldout, shared)


def setup(cfg: Config, prepare: Callable[[Any], PreparedData] | None = None) -> Experiment:
    """Validate ``cfg``, load tokenizer, data and model, and build the server side.

    ``prepare``: given the tokenizer, the data to use instead of ``cfg.data`` split
    ``federation.num_clients`` ways.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolve_compute_dtype(cfg.compute_dtype, resolve_device(cfg.device))  # before anything slow
    check_model_shape(cfg)
    method = METHODS.get(cfg.method)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    if prepare is None:
        data = prepare_data(cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed)
    else:
        data = prepare(tokenizer)
    shared = load_shared_model(cfg, tokenizer)
    model = shared.model
    cuts = start_cuts(cfg, model.num_blocks)
    uses_accuracy = method.splits and POLICIES.get(cfg.policy.name).uses_accuracy
    heldout = cfg.policy.heldout_samples if uses_accuracy and cfg.policy.signal == "heldout" else 0
    timer = RoundTimer(cfg, model.model.config, model.num_blocks, method.splits, heldout)
    exp = Experiment(cfg, method, tokenizer, shared, data, cuts, timer)
    method.check(exp)
    exp.server = method.build_server(exp)
    return exp


def local_runtime(exp: Experiment) -> InProcessRuntime | None:
    """Every client of ``exp`` built here, on its own data, served in this process (None for a
    method without clients)."""
    if not exp.method.uses_clients():
        return None
    data, shared = exp.data, exp.shared
    clients = {
        client_role(i): build_client(exp.cfg, i, data.clients[i], data.heldout[i], shared)
        for i in range(exp.cfg.federation.num_clients)
    }
    return InProcessRuntime(clients)
