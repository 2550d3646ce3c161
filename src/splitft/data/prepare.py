"""The data entry point of a run: config -> per-client tokenized training data.

:func:`prepare_data` loads ``cfg.train``, settles the validation and test sets, caps the
training samples, tokenizes everything, partitions the training samples over the clients and
keeps a small held-out part of every client's partition back. Every random choice is drawn from
``seed``, so the same config, tokenizer and seed give the same data.

Where validation/test come from, in order: an explicit ``cfg.validation`` / ``cfg.test``
(a file or a corpus name: its own split of that name, else its train split), the training
corpus' own split, else a ``cfg.validation_fraction`` / ``cfg.test_fraction`` share of the
training samples, held out before ``cfg.max_samples`` and partitioning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitft.config import DataConfig
from splitft.data.corpora import Corpus, Sample, load_corpus
from splitft.data.partition import (
    IidPartitioner,
    LengthDirichletPartitioner,
    Partitioner,
    heldout_split,
    mean_js_to_global,
)
from splitft.data.tokenize import TokenizedDataset, tokenize
from splitft.errors import ConfigError, DataError

__all__ = ["PARTITIONS", "PreparedData", "prepare_data"]

PARTITIONS = ("iid", "length-dirichlet")
# Stream tags so that each random choice has its own generator derived from the run seed.
_TAG_VALIDATION, _TAG_TEST, _TAG_MAX_SAMPLES, _TAG_HELDOUT = 1, 2, 3, 4


@dataclass
class PreparedData:
    """Everything the round loop needs from the data layer."""

    clients: list[TokenizedDataset]
    """Training part of each client's partition."""
    heldout: list[TokenizedDataset]
    """Small held-out part of each client's partition (empty when heldout_fraction is 0)."""
    validation: TokenizedDataset
    test: TokenizedDataset
    facts: dict[str, Any] = field(default_factory=dict)
    """JSON-able summary: corpus, samples and tokens per split and per client, partition."""


def _check_config(cfg: DataConfig, num_clients: int, seed: int) -> None:
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"federation.num_clients must be an integer >= 1, got {num_clients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if cfg.partition not in PARTITIONS:
        raise ConfigError(f"data.partition must be one of {', '.join(PARTITIONS)}, got {cfg.partition!r}")
    if cfg.max_length < 2:
        raise ConfigError(f"data.max_length must be >= 2, got {cfg.max_length}")
    if cfg.max_samples < 0:
        raise ConfigError(f"data.max_samples must be >= 0 (0 = all), got {cfg.max_samples}")
    for name in ("validation_fraction", "test_fraction", "heldout_fraction"):
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {value}")
    if cfg.validation_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError(
            "data.validation_fraction + data.test_fraction must be < 1, got "
            f"{cfg.validation_fraction} + {cfg.test_fraction}"
        )
    if cfg.partition == "length-dirichlet":
        if not cfg.alpha > 0 or not math.isfinite(cfg.alpha):
            raise ConfigError(f"data.alpha must be > 0, got {cfg.alpha}")
        if cfg.bins < 1:
            raise ConfigError(f"data.bins must be >= 1, got {cfg.bins}")


def _carve(
    samples: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``round(fraction * n)`` samples (kept in corpus order); returns (rest, held)."""
    n_held = int(math.floor(fraction * len(samples) + 0.5))
    held = set(rng.permutation(len(samples))[:n_held].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [
        s for i, s in enumerate(samples) if i in held
    ]


def _explicit_split(spec: str, split: str, field_name: str) -> list[Sample]:
    corpus = load_corpus(spec, field=field_name)
    own = corpus.validation if split == "validation" else corpus.test
    return own if own is not None else corpus.train


def _split_facts(ds: TokenizedDataset) -> dict[str, int]:
    return {
        "samples": len(ds),
        "tokens": ds.num_tokens,
        "target_tokens": ds.num_target_tokens,
        "dropped": ds.dropped,
    }


def _make_partitioner(cfg: DataConfig, num_clients: int, seed: int) -> Partitioner:
    if cfg.partition == "iid":
        return IidPartitioner(num_clients, seed=seed)
    return LengthDirichletPartitioner(num_clients, alpha=cfg.alpha, num_bins=cfg.bins, seed=seed)


def prepare_data(cfg: DataConfig, tokenizer: Any, num_clients: int, seed: int) -> PreparedData:
    """Load, split, tokenize and partition the data of a run (see the module docstring).

    Raises DataError for unusable data (including more clients than training samples, or a
    partition that comes out empty) and ConfigError for out-of-range config values.
    """
    _check_config(cfg, num_clients, seed)
    corpus: Corpus = load_corpus(cfg.train, field=cfg.field)
    train = list(corpus.train)
    sources: dict[str, str] = {}
    splits: dict[str, list[Sample]] = {}
    for split, explicit, own, fraction, tag in (
        ("validation", cfg.validation, corpus.validation, cfg.validation_fraction, _TAG_VALIDATION),
        ("test", cfg.test, corpus.test, cfg.test_fraction, _TAG_TEST),
    ):
        if explicit:
            splits[split], sources[split] = _explicit_split(explicit, split, cfg.field), f"file:{explicit}"
        elif own is not None:
            splits[split], sources[split] = list(own), "corpus"
        else:
            train, splits[split] = _carve(train, fraction, np.random.default_rng([seed, tag]))
            sources[split] = f"fraction:{fraction}"
    if cfg.max_samples and len(train) > cfg.max_samples:
        keep = np.random.default_rng([seed, _TAG_MAX_SAMPLES]).permutation(len(train))[: cfg.max_samples]
        train = [train[i] for i in sorted(keep.tolist())]
    if len(train) < num_clients:
        raise DataError(
            f"data.train has {len(train)} samples, fewer than federation.num_clients={num_clients}"
        )

    response_only = any("prompt_chars" in s.meta for s in train)
    train_ds = tokenize(train, tokenizer, cfg.max_length, response_only=response_only)
    validation = tokenize(splits["validation"], tokenizer, cfg.max_length, response_only=response_only)
    test = tokenize(splits["test"], tokenizer, cfg.max_length, response_only=response_only)
    if len(train_ds) < num_clients:
        raise DataError(
            f"data.train has {len(train_ds)} samples after tokenization ({train_ds.dropped} dropped as too "
            f"short), fewer than federation.num_clients={num_clients}"
        )

    partitioner = _make_partitioner(cfg, num_clients, seed)
    try:
        partitioner.dataset = train_ds
        parts = partitioner.partitions()
    except ValueError as e:
        raise DataError(f"data.partition={cfg.partition!r} cannot split data.train: {e}") from e
    empty = [i for i, part in enumerate(parts) if not part]
    if empty:
        raise DataError(
            f"data.partition={cfg.partition!r} left client(s) {empty} without samples; "
            "lower federation.num_clients or raise data.alpha"
        )

    clients, heldout = [], []
    for client, part in enumerate(parts):
        keep, held = heldout_split(part, cfg.heldout_fraction, seed=(seed, _TAG_HELDOUT, client))
        clients.append(train_ds.subset(keep))
        heldout.append(train_ds.subset(held))

    facts: dict[str, Any] = {
        "corpus": corpus.describe(),
        "max_length": cfg.max_length,
        "response_only": response_only,
        "sources": {"train": cfg.train, **sources},
        "train": _split_facts(train_ds),
        "validation": _split_facts(validation),
        "test": _split_facts(test),
        "partition": {**partitioner.describe(), "length_js_mean": round(mean_js_to_global(partitioner), 6)},
        "clients": [
            {
                "samples": len(c),
                "tokens": c.num_tokens,
                "heldout_samples": len(h),
                "heldout_tokens": h.num_tokens,
            }
            for c, h in zip(clients, heldout, strict=True)
        ],
        "seed": seed,
    }
    return PreparedData(clients, heldout, validation, test, facts)
