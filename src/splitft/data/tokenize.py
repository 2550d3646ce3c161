"""Tokenization, padding and batch order.

* :func:`tokenize` turns samples into a :class:`TokenizedDataset` (token ids, the offset where
  the loss starts, metadata) with any tokenizer that has the Hugging Face call interface
  ``tok(text, truncation=True, max_length=n)["input_ids"]``.
* :func:`pack` concatenates the samples of a dataset (EOS between them) into chunks of
  ``max_length`` tokens, for corpora of short samples.
* :func:`collate` pads a list of items into ``input_ids`` / ``attention_mask`` / ``labels``
  tensors. Padding is marked by the attention mask only, never recognised by token id (the pad
  id may equal the EOS id), and labels are ``-100`` on padding and on the prompt part.
* :func:`batches` is the endless, reproducible per-client order of training mini-batches.
* :class:`WhitespaceTokenizer` is a tiny stand-in tokenizer for tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from splitft.data.samples import Sample

__all__ = [
    "IGNORE_INDEX",
    "TokenizedDataset",
    "WhitespaceTokenizer",
    "batches",
    "collate",
    "pack",
    "pad_id_of",
    "tokenize",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss skips (padding and prompt tokens)."""
_BATCH = 512  # texts per batched tokenizer call


@dataclass
class TokenizedDataset:
    """Token ids per sample, the position where the loss starts, and the sample metadata.

    ``loss_start[i]`` is the first position whose token is a training target (0 = all of
    them; a prompt/response sample starts at its first response token). Items
    (``dataset[i]``) are dicts with ``input_ids``, ``loss_start`` and ``meta``: what
    :func:`collate` takes.
    """

    input_ids: list[list[int]] = field(default_factory=list)
    loss_start: list[int] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    """Samples :func:`tokenize` dropped (fewer than 2 tokens, or no response token left)."""
    _keys: list[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.input_ids) == len(self.loss_start) == len(self.meta):
            raise ValueError(
                f"TokenizedDataset: input_ids ({len(self.input_ids)}), loss_start ({len(self.loss_start)}) "
                f"and meta ({len(self.meta)}) must have the same length"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "loss_start": self.loss_start[index],
            "meta": self.meta[index],
        }

    @property
    def lengths(self) -> list[int]:
        """Token count of every sample."""
        return [len(ids) for ids in self.input_ids]

    @property
    def num_tokens(self) -> int:
        """Tokens over all samples."""
        return sum(len(ids) for ids in self.input_ids)

    @property
    def num_target_tokens(self) -> int:
        """Tokens that are loss targets (the first token of a sample never is: nothing predicts it)."""
        return sum(
            len(ids) - max(start, 1) for ids, start in zip(self.input_ids, self.loss_start, strict=True)
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able size facts: samples, tokens, mean and median sample length (0.0 when empty)."""
        lengths = self.lengths
        return {
            "samples": len(lengths),
            "tokens": sum(lengths),
            "mean_length": round(float(np.mean(lengths)), 3) if lengths else 0.0,
            "median_length": float(np.median(lengths)) if lengths else 0.0,
        }

    def subset(self, indices: Sequence[int]) -> TokenizedDataset:
        """A new dataset holding the given samples, in the given order."""
        return TokenizedDataset(
            [self.input_ids[i] for i in indices],
            [self.loss_start[i] for i in indices],
            [self.meta[i] for i in indices],
        )

    def content_key(self, index: int) -> bytes:
        """A stable digest of sample ``index`` (ids and loss start), independent of its position."""
        data = array("q", self.input_ids[index]).tobytes() + str(self.loss_start[index]).encode()
        return hashlib.blake2b(data, digest_size=16).digest()

    def content_keys(self) -> list[bytes]:
        """:meth:`content_key` of every sample, computed once (treat a built dataset as read-only)."""
        if self._keys is None or len(self._keys) != len(self.input_ids):
            self._keys = [self.content_key(i) for i in range(len(self.input_ids))]
        return self._keys


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is masked, so any id works)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _ids(result: Any) -> Any:
    return result["input_ids"] if not isinstance(result, list) else result


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) for t in value)


def _encode(tokenizer: Any, texts: list[str], max_length: int | None) -> list[list[int]]:
    """Token ids of ``texts``: batched calls when the tokenizer takes a list, else one by one."""
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length else {}
    out: list[list[int]] = []
    batched = True
    for start in range(0, len(texts), _BATCH):
        chunk = texts[start : start + _BATCH]
        if batched:
            try:
                ids = _ids(tokenizer(chunk, **kwargs))
                if isinstance(ids, list) and len(ids) == len(chunk) and all(_is_id_list(x) for x in ids):
                    out.extend(list(x) for x in ids)
                    continue
            except (TypeError, AttributeError, ValueError, KeyError):
                pass
            batched = False  # the tokenizer takes one text at a time
        for text in chunk:
            ids = _ids(tokenizer(text, **kwargs))
            if hasattr(ids, "tolist"):
                ids = ids.tolist()
            if not _is_id_list(list(ids)):
                raise TypeError(
                    f"tokenizer returned {type(ids).__name__} for one text; expected a list of token ids"
                )
            out.append(list(ids))
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize(
    samples: Sequence[Sample], tokenizer: Any, max_length: int, response_only: bool = False
) -> TokenizedDataset:
    """Tokenize ``samples`` (truncated to ``max_length`` tokens) into a :class:`TokenizedDataset`.

    The tokenizer adds whatever special tokens it adds by default. With ``response_only``, a
    sample whose meta has ``prompt_chars`` gets ``loss_start`` = the number of leading tokens
    it shares with its tokenized prompt (robust to merges across the prompt/response boundary);
    samples without ``prompt_chars`` train on every token. Samples left with fewer than 2
    tokens, or (``response_only``) with no response token inside ``max_length``, are dropped;
    ``TokenizedDataset.dropped`` counts them.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    samples = list(samples)
    ids = _encode(tokenizer, [s.text for s in samples], max_length)
    starts = [0] * len(samples)
    if response_only:
        prompted = [i for i, s in enumerate(samples) if "prompt_chars" in s.meta]
        prompts = [samples[i].text[: int(samples[i].meta["prompt_chars"])] for i in prompted]
        for i, prompt_ids in zip(prompted, _encode(tokenizer, prompts, None), strict=True):
            starts[i] = _common_prefix(ids[i], prompt_ids)
    out = TokenizedDataset()
    for sample, sample_ids, start in zip(samples, ids, starts, strict=True):
        if len(sample_ids) < 2 or start >= len(sample_ids):
            out.dropped += 1
            continue
        out.input_ids.append(sample_ids)
        out.loss_start.append(start)
        out.meta.append(sample.meta)
    if out.dropped:
        log.info(
            "tokenize: dropped %d of %d samples (too short or no response token)", out.dropped, len(samples)
        )
    return out


def pack(dataset: TokenizedDataset, max_length: int, eos_id: int) -> TokenizedDataset:
    """Concatenate the samples of ``dataset`` in order, ``eos_id`` between consecutive ones, and
    cut that stream into chunks of ``max_length`` tokens.

    Every chunk but the last is full, and a sample may run on from one chunk into the next (as
    in GPT-style pre-training), so the chunks hold every token of the samples plus
    ``len(dataset) - 1`` separators; only a last chunk of a single token is dropped (nothing
    to predict from it) and counted in ``dropped``. Every token of a chunk is a loss target, so
    samples with a prompt (``loss_start > 0``) are refused. Chunk ``k`` has meta ``{"chunk": k}``.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if any(dataset.loss_start):
        raise ValueError(
            "pack: samples with a prompt (loss_start > 0) cannot be packed, a chunk keeps no per-sample "
            "prompt mask; tokenize them with response_only=False first"
        )
    stream: list[int] = []
    for k, ids in enumerate(dataset.input_ids):
        if k:
            stream.append(eos_id)
        stream.extend(ids)
    out = TokenizedDataset()
    for start in range(0, len(stream), max_length):
        chunk = stream[start : start + max_length]
        if len(chunk) < 2:
            out.dropped += 1
            continue
        out.input_ids.append(chunk)
        out.loss_start.append(0)
        out.meta.append({"chunk": len(out.meta)})
    return out


def collate(
    items: Sequence[dict[str, Any] | Sequence[int]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``items`` (dataset items, or plain token-id lists) into a batch.

    Returns ``input_ids`` (long), ``attention_mask`` (long, 1 = real token) and ``labels``
    (the input ids, ``-100`` where the mask is 0 and before each item's ``loss_start``).
    ``padding_side`` is ``"right"`` or ``"left"``.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not items:
        raise ValueError("collate needs at least one item")
    rows = [
        (list(it["input_ids"]), int(it.get("loss_start", 0))) if isinstance(it, dict) else (list(it), 0)
        for it in items
    ]
    width = max(len(ids) for ids, _ in rows)
    if width == 0:
        raise ValueError("collate: every item is empty")
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, start) in enumerate(rows):
        n = len(ids)
        offset = 0 if padding_side == "right" else width - n
        tensor = torch.tensor(ids, dtype=torch.long)
        input_ids[row, offset : offset + n] = tensor
        attention_mask[row, offset : offset + n] = 1
        labels[row, offset + start : offset + n] = tensor[start:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _check_count(name: str, value: int, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def batches(
    dataset_len: int,
    batch_size: int,
    seed: int,
    epoch_shuffle: bool = True,
    client_id: int = 0,
    drop_last: bool = False,
) -> Iterator[list[int]]:
    """Endless mini-batches of indices into a dataset of ``dataset_len`` samples.

    Each epoch visits every index once, in an order drawn from ``(seed, client_id, epoch)``
    (the same arguments always give the same stream; ``epoch_shuffle=False`` keeps
    0..n-1 order). The last batch of an epoch is shorter when ``batch_size`` does not divide
    ``dataset_len``, unless ``drop_last``; a batch never spans two epochs. A batch size above
    ``dataset_len`` gives whole-dataset batches.
    """
    _check_count("dataset_len", dataset_len, 1)
    _check_count("batch_size", batch_size, 1)
    _check_count("seed", seed, 0)
    _check_count("client_id", client_id, 0)
    size = min(batch_size, dataset_len)
    epoch = 0
    while True:
        if epoch_shuffle:
            order = np.random.default_rng([seed, client_id, epoch]).permutation(dataset_len)
        else:
            order = np.arange(dataset_len)
        stop = dataset_len - dataset_len % size if drop_last else dataset_len
        for start in range(0, stop, size):
            yield order[start : start + size].tolist()
        epoch += 1


class WhitespaceTokenizer:
    """A stand-in tokenizer with the Hugging Face call interface: one id per whitespace word.

    Ids are a stable hash of the word in ``[2, vocab_size)``; 0 is the pad id and 1 the EOS
    id (``pad_equals_eos=True`` makes both 1, as for many causal LMs). It accepts one text or a
    list of texts and never adds special tokens.
    """

    def __init__(self, vocab_size: int = 50_000, pad_equals_eos: bool = False) -> None:
        _check_count("vocab_size", vocab_size, 3)
        self.vocab_size = vocab_size
        self.eos_token_id = 1
        self.pad_token_id = 1 if pad_equals_eos else 0
        self._cache: dict[str, int] = {}

    def _word_id(self, word: str) -> int:
        word_id = self._cache.get(word)
        if word_id is None:
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            word_id = self._cache[word] = 2 + int.from_bytes(digest, "little") % (self.vocab_size - 2)
        return word_id

    def _one(self, text: str, truncation: bool, max_length: int | None) -> list[int]:
        ids = [self._word_id(w) for w in text.split()]
        return ids[:max_length] if truncation and max_length else ids

    def __call__(
        self, text: str | list[str], truncation: bool = False, max_length: int | None = None, **_: Any
    ) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self._one(text, truncation, max_length)}
        return {"input_ids": [self._one(t, truncation, max_length) for t in text]}


class BatchStream:
    """One client's endless stream of collated mini-batches (:func:`batches` over ``data``)
    that counts how many it has given, so a resumed run can skip to the same place."""

    def __init__(
        self, data: TokenizedDataset, batch_size: int, seed: int, client_id: int, pad_id: int
    ) -> None:
        self.data = data
        self.pad_id = pad_id
        self._indices = batches(len(data), batch_size, seed=seed, client_id=client_id)
        self.taken = 0

    def next(self) -> dict[str, torch.Tensor]:
        """The next mini-batch, collated (``input_ids``, ``attention_mask``, ``labels``)."""
        self.taken += 1
        return collate([self.data[i] for i in next(self._indices)], self.pad_id)

    def skip_to(self, count: int) -> None:
        """Advance past the first ``count`` batches (no-op for those already taken)."""
        for _ in range(count - self.taken):
            next(self._indices)
        self.taken = max(self.taken, count)
