"""Scoring an adapter set on held-out text (docs/architecture.md, D9), and ``splitft eval`` of a saved adapter.

Perplexity is ``exp(sum of token NLL / number of scored tokens)`` over the whole evaluated
set, each sample scored on its own (no sliding window), padding excluded through the attention
mask; accuracy is the share of scored next tokens predicted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from splitft.config import Config
from splitft.data.prepare import prepare_data
from splitft.data.tokenize import TokenizedDataset, collate, pad_id_of
from splitft.errors import ConfigError, DataError
from splitft.files import READ_ERRORS, read_json_object
from splitft.model.loading import load_model, load_tokenizer
from splitft.model.precision import hold_base_in, resolve_compute_dtype
from splitft.model.split import SplitModel


@dataclass(frozen=True)
class EvalResult:
    loss: float
    """Mean NLL per scored token."""
    ppl: float
    acc: float
    tokens: int

    @classmethod
    def from_sums(cls, loss_sum: float, tokens: int, correct: int) -> EvalResult:
        loss = loss_sum / max(tokens, 1)
        return cls(loss, math.exp(min(loss, 700.0)), correct / max(tokens, 1), tokens)


@torch.no_grad()
def evaluate(
    model: SplitModel,
    adapters: Mapping[str, torch.Tensor] | None,
    data: TokenizedDataset,
    pad_id: int,
    batch_size: int,
    max_samples: int,
) -> EvalResult:
    """Score the unsplit model with ``adapters`` on the first ``max_samples`` samples of ``data``."""
    n = min(len(data), max_samples)
    # Batches of similar lengths waste little compute on padding; every sample is scored on
    # its own (padding is masked), so the order does not change the result.
    order = sorted(range(n), key=lambda i: len(data[i]["input_ids"]))
    loss_sum, tokens, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        batch = collate([data[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        s, t, c = model.full_stats(batch["input_ids"], batch["attention_mask"], batch["labels"], adapters)
        loss_sum, tokens, correct = loss_sum + float(s), tokens + t, correct + c
    return EvalResult.from_sums(loss_sum, tokens, correct)


def _adapter_facts(path: Path) -> dict[str, Any]:
    """``splitft.json`` of an adapter folder: what rebuilds its base model, checked."""
    facts = read_json_object(path, "adapter file", keys=("model", "keep_layers", "tokenizer", "seed"))
    kinds = {"model": str, "keep_layers": int, "tokenizer": str, "seed": int}
    for key, kind in kinds.items():
        if type(facts[key]) is not kind or (kind is int and facts[key] < 0):
            raise DataError(
                f"adapter file {path} is damaged: {key} = {facts[key]!r}, expected {kind.__name__}"
            )
    return facts


@dataclass
class SavedAdapter:
    """A run's saved adapter on its base model, with the run's config (what ``splitft eval`` and
    ``splitft generate`` work from)."""

    model: PeftModel
    tokenizer: Any
    cfg: Config


def load_adapter(adapter: str | Path, overrides: dict[str, object] | None = None) -> SavedAdapter:
    """Stock ``PeftModel.from_pretrained`` on the base model named in ``splitft.json``; the
    config is the run's ``config.toml`` next to the folder (or the defaults) with ``overrides``."""
    folder = Path(adapter)
    facts_file = folder / "splitft.json"
    if not (folder / "adapter_config.json").exists() or not facts_file.exists():
        raise ConfigError(f"--adapter {folder} is not an adapter folder written by `splitft train`")
    facts = _adapter_facts(facts_file)
    run_config = folder.parent / "config.toml"
    cfg = (Config.from_toml(run_config) if run_config.exists() else Config()).with_overrides(overrides or {})
    tokenizer = load_tokenizer(facts["tokenizer"] or facts["model"])
    base = load_model(
        facts["model"], vocab_size=len(tokenizer), seed=facts["seed"], keep_layers=facts["keep_layers"]
    )
    try:
        model = PeftModel.from_pretrained(base, str(folder))
    except READ_ERRORS as err:
        raise DataError(
            f"--adapter {folder}: the adapter cannot be loaded: {str(err).splitlines()[0]}"
        ) from None
    # The run's precision (on the CPU, where fp16 is refused).
    cpu = torch.device("cpu")
    hold_base_in(model.base_model.model, resolve_compute_dtype(cfg.compute_dtype, cpu), cpu)
    return SavedAdapter(model, tokenizer, cfg)


def evaluate_adapter(
    adapter: str | Path,
    data: str = "",
    split: str = "test",
    max_samples: int = 0,
    max_length: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loss, perplexity and accuracy of ``adapter`` on the ``split`` of ``data``, with the data
    split rebuilt from the run's config (so the test set is the one the run reported on)."""
    for option, value, low in (
        ("--batch-size", batch_size, 1),
        ("--max-samples", max_samples, 0),
        ("--max-length", max_length, 0),
    ):
        if value < low:
            raise ConfigError(f"{option} = {value}: must be >= {low}")
    overrides: dict[str, object] = {}
    if data:
        overrides["data.train"] = data
    if max_length:
        overrides["data.max_length"] = max_length
    saved = load_adapter(adapter, overrides)
    cfg = saved.cfg
    prepared = prepare_data(cfg.data, saved.tokenizer, cfg.federation.num_clients, cfg.seed)
    dataset = prepared.test if split == "test" else prepared.validation
    model = SplitModel(saved.model.base_model.model, loss_chunk=cfg.loss_chunk)
    result = evaluate(
        model, None, dataset, pad_id_of(saved.tokenizer), batch_size, max_samples or cfg.eval.max_samples
    )
    return {
        "adapter": str(adapter),
        "split": split,
        "loss": result.loss,
        "ppl": result.ppl,
        "acc": result.acc,
        "tokens": result.tokens,
    }
