"""The data entry point of a run: config -> per-client tokenized training data.

:func:`prepare_data` loads ``cfg.train``, settles the validation and test sets, caps the
training samples, tokenizes everything, partitions the training samples over the clients, caps
every client at ``cfg.samples_per_client``, keeps a small held-out part of every client's
partition back and (``cfg.pack``) packs each client's training samples into full-length chunks.
Every random choice is drawn from ``seed``, so the same config, tokenizer and seed give the
same data. :func:`partition_data` is the stage up to the per-client cap; ``splitft partition``
reports on it, so it shows exactly the partition a run with the same options trains on.

Where validation/test come from, in order: an explicit ``cfg.validation`` / ``cfg.test``
(a file or a corpus name: its own split of that name, else its train split), the training
corpus' own split, else a ``cfg.validation_fraction`` / ``cfg.test_fraction`` share of the
training samples, held out before ``cfg.max_samples`` and partitioning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitft.config import DataConfig, check_data
from splitft.data.corpora import load_corpus
from splitft.data.partition import (
    IidPartitioner,
    LengthDirichletPartitioner,
    Partitioner,
    heldout_split,
)
from splitft.data.partition_stats import mean_js_to_global
from splitft.data.samples import Corpus, Sample
from splitft.data.tokenize import TokenizedDataset, pack, tokenize
from splitft.errors import ConfigError, DataError

__all__ = ["PartitionedData", "PreparedData", "partition_data", "prepare_client_data", "prepare_data"]

log = logging.getLogger("splitft.data")

# Stream tags so that each random choice has its own generator derived from the run seed.
_TAG_VALIDATION, _TAG_TEST, _TAG_MAX_SAMPLES, _TAG_HELDOUT, _TAG_CAP = 1, 2, 3, 4, 5


@dataclass
class PartitionedData:
    """The partition stage of :func:`prepare_data`: tokenized splits and who holds which sample."""

    corpus: Corpus
    train: TokenizedDataset
    """Tokenized training samples (validation/test carved out, ``max_samples`` applied)."""
    validation: TokenizedDataset
    test: TokenizedDataset
    sources: dict[str, str]
    """Where each split came from: the ``data.train`` spec, ``corpus``, ``file:...`` or ``fraction:...``."""
    partitioner: Partitioner
    parts: list[list[int]]
    """Sorted indices into :attr:`train` of each client's samples, after the ``samples_per_client`` cap."""
    response_only: bool
    """Whether the loss skips prompts (``data.response_only`` and the corpus has prompts)."""
    test_samples: list[Sample] = field(default_factory=list)
    """The test split as text, before tokenization (what generation prompts are drawn from)."""


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
    test_samples: list[Sample] = field(default_factory=list)
    """The test split as text (prompts and references of generation metrics)."""


def _carve(
    samples: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``round(fraction * n)`` samples (kept in corpus order); returns (rest, held)."""
    n_held = int(math.floor(fraction * len(samples) + 0.5))
    held = set(rng.permutation(len(samples))[:n_held].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [
        s for i, s in enumerate(samples) if i in held
    ]


def _cap(part: list[int], limit: int, seed: tuple[int, ...]) -> list[int]:
    """At most ``limit`` of ``part`` (0 = all), a seeded random subset, sorted."""
    if not limit or len(part) <= limit:
        return part
    keep = np.random.default_rng(seed).choice(len(part), limit, replace=False)
    return sorted(part[i] for i in keep.tolist())


def _explicit_split(spec: str, split: str, cfg: DataConfig) -> list[Sample]:
    corpus = load_corpus(spec, field=cfg.field, keep_headings=cfg.keep_headings)
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
    return LengthDirichletPartitioner(
        num_clients, alpha=cfg.alpha, num_bins=cfg.bins, partition_by=cfg.partition_by, seed=seed
    )


def partition_data(cfg: DataConfig, tokenizer: Any, num_clients: int, seed: int) -> PartitionedData:
    """Load, split, tokenize and partition the data of a run, up to the per-client cap.

    Logs one INFO line per split (``splitft.data``). Raises DataError for unusable data
    (including more clients than training samples, or a partition that comes out empty) and
    ConfigError for the values :meth:`~splitft.config.Config.validate` rejects (checked first,
    by :func:`~splitft.config.check_data`) and for a partitioner's refusal of its arguments
    (e.g. a ``partition_by`` column the samples lack).
    """
    check_data(cfg, num_clients, seed)
    corpus: Corpus = load_corpus(cfg.train, field=cfg.field, keep_headings=cfg.keep_headings)
    train, splits, sources = _select_samples(cfg, corpus, num_clients, seed)

    response_only = cfg.response_only and any("prompt_chars" in s.meta for s in train)
    train_ds = tokenize(train, tokenizer, cfg.max_length, response_only=response_only)
    validation = tokenize(splits["validation"], tokenizer, cfg.max_length, response_only=response_only)
    test = tokenize(splits["test"], tokenizer, cfg.max_length, response_only=response_only)
    for split, ds in (("train", train_ds), ("validation", validation), ("test", test)):
        counts = f"{len(ds)} samples, {ds.num_tokens} tokens, {ds.dropped} dropped"
        log.info("%s %s (%s): %s", corpus.name, split, sources[split], counts)
    if len(train_ds) < num_clients:
        raise DataError(
            f"data.train has {len(train_ds)} samples after tokenization ({train_ds.dropped} dropped as too "
            f"short), fewer than federation.num_clients={num_clients}"
        )
    partitioner, parts = _partition(cfg, train_ds, num_clients, seed)
    return PartitionedData(
        corpus, train_ds, validation, test, sources, partitioner, parts, response_only, splits["test"]
    )


def _select_samples(
    cfg: DataConfig, corpus: Corpus, num_clients: int, seed: int
) -> tuple[list[Sample], dict[str, list[Sample]], dict[str, str]]:
    """The training samples (validation/test carved out, ``max_samples`` applied), the
    validation and test samples, and where each split came from."""
    train = list(corpus.train)
    sources: dict[str, str] = {}
    splits: dict[str, list[Sample]] = {}
    for split, explicit, own, fraction, tag in (
        ("validation", cfg.validation, corpus.validation, cfg.validation_fraction, _TAG_VALIDATION),
        ("test", cfg.test, corpus.test, cfg.test_fraction, _TAG_TEST),
    ):
        if explicit:
            splits[split], sources[split] = _explicit_split(explicit, split, cfg), f"file:{explicit}"
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
    return train, splits, {"train": cfg.train, **sources}


def _partition(
    cfg: DataConfig, train: TokenizedDataset, num_clients: int, seed: int
) -> tuple[Partitioner, list[list[int]]]:
    """The partitioner over ``train`` and every client's sorted indices, capped at
    ``samples_per_client``."""
    try:
        partitioner = _make_partitioner(cfg, num_clients, seed)
        partitioner.dataset = train
    except ValueError as e:  # the partitioner's arguments do not fit: the config is at fault
        raise ConfigError(str(e)) from e
    try:
        parts = partitioner.partitions()
    except ValueError as e:
        raise DataError(f"data.partition={cfg.partition!r} cannot split data.train: {e}") from e
    empty = [i for i, part in enumerate(parts) if not part]
    if empty:
        raise DataError(
            f"data.partition={cfg.partition!r} left client(s) {empty} without samples; "
            "lower federation.num_clients or raise data.alpha"
        )
    return partitioner, [
        _cap(part, cfg.samples_per_client, (seed, _TAG_CAP, i)) for i, part in enumerate(parts)
    ]


def _eos_for_packing(tokenizer: Any, response_only: bool) -> int:
    if response_only:
        raise ConfigError(
            "data.pack cannot keep the prompt mask of a prompt/response corpus (a chunk mixes samples); "
            "set data.response_only = false to pack it, or data.pack = false"
        )
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int):
        raise ConfigError("data.pack needs a tokenizer with an EOS token (the separator between samples)")
    return eos


def _client_part(
    staged: PartitionedData, cfg: DataConfig, seed: int, client: int, eos: int | None
) -> tuple[TokenizedDataset, TokenizedDataset, TokenizedDataset]:
    """Client ``client``'s samples, what it trains on (packed when ``eos`` is given) and its
    held-out part."""
    keep, held = heldout_split(staged.parts[client], cfg.heldout_fraction, seed=(seed, _TAG_HELDOUT, client))
    own, held_ds = staged.train.subset(keep), staged.train.subset(held)
    return own, (own if eos is None else pack(own, cfg.max_length, eos)), held_ds


def prepare_client_data(
    cfg: DataConfig, tokenizer: Any, num_clients: int, seed: int, client: int
) -> tuple[TokenizedDataset, TokenizedDataset]:
    """What :func:`prepare_data` gives client ``client`` (its training data, its held-out part),
    building no other client's: a FLARE site that simulates a share of one corpus. The
    partition itself is computed over the whole training set, as it depends on every sample."""
    staged = partition_data(cfg, tokenizer, num_clients, seed)
    eos = _eos_for_packing(tokenizer, staged.response_only) if cfg.pack else None
    _, trains_on, held_ds = _client_part(staged, cfg, seed, client, eos)
    return trains_on, held_ds


def prepare_data(cfg: DataConfig, tokenizer: Any, num_clients: int, seed: int) -> PreparedData:
    """Load, split, tokenize, partition and (``cfg.pack``) pack the data of a run.

    See the module docstring and :func:`partition_data`, whose errors it raises; packing a
    prompt/response corpus with ``response_only`` is a ConfigError.
    """
    staged = partition_data(cfg, tokenizer, num_clients, seed)
    eos = _eos_for_packing(tokenizer, staged.response_only) if cfg.pack else None
    clients, heldout, client_facts = [], [], []
    for client in range(num_clients):
        own, trains_on, held_ds = _client_part(staged, cfg, seed, client, eos)
        clients.append(trains_on)
        heldout.append(held_ds)
        client_facts.append(
            {
                **trains_on.summary(),  # of the packed chunks when packing
                **({"source_samples": len(own)} if eos is not None else {}),
                "heldout_samples": len(held_ds),
                "heldout_tokens": held_ds.num_tokens,
            }
        )

    partition: dict[str, Any] = {
        **staged.partitioner.describe(),
        "assigned_samples": sum(len(part) for part in staged.parts),
        # JS of the partition itself, before the per-client cap (a random subset keeps its shape)
        "length_js_mean": round(mean_js_to_global(staged.partitioner, cfg.bins), 6),
    }
    if cfg.partition != "iid" and cfg.partition_by != "length":
        partition["class_js_mean"] = round(mean_js_to_global(staged.partitioner), 6)
    facts: dict[str, Any] = {
        "corpus": staged.corpus.describe(),
        "max_length": cfg.max_length,
        "response_only": staged.response_only,
        "keep_headings": cfg.keep_headings,
        "pack": cfg.pack,
        "samples_per_client": cfg.samples_per_client,
        "sources": staged.sources,
        "train": _split_facts(staged.train),
        "validation": _split_facts(staged.validation),
        "test": _split_facts(staged.test),
        "partition": partition,
        "clients": client_facts,
        "seed": seed,
    }
    return PreparedData(clients, heldout, staged.validation, staged.test, facts, staged.test_samples)
