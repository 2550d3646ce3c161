"""prepare_data: the data entry point of a run, on tiny corpora with a stand-in tokenizer."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from splitft.config import Config, DataConfig
from splitft.data.prepare import PreparedData, prepare_data
from splitft.data.tokenize import TokenizedDataset, WhitespaceTokenizer, collate
from splitft.errors import ConfigError, DataError

from _models import tokenizer
from conftest import need_path


def _write_txt(path: Path, n: int) -> Path:
    path.write_text("\n".join(" ".join(f"w{i}_{k}" for k in range(2 + i % 9)) for i in range(n)) + "\n")
    return path


def _flat(data: PreparedData) -> list[tuple[int, ...]]:
    return [tuple(ids) for ds in data.clients + data.heldout for ids in ds.input_ids]


def test_shapes_and_facts_on_a_txt_corpus(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 200)), max_length=6, heldout_fraction=0.2)
    data = prepare_data(cfg, WhitespaceTokenizer(), num_clients=4, seed=0)
    assert len(data.clients) == len(data.heldout) == 4
    assert (len(data.validation), len(data.test)) == (10, 10)  # 5 % each of 200, held out before partitioning
    assert sum(len(c) + len(h) for c, h in zip(data.clients, data.heldout, strict=True)) == 180
    assert all(
        len(h) == round(0.2 * (len(c) + len(h))) for c, h in zip(data.clients, data.heldout, strict=True)
    )
    assert all(max(ds.lengths) <= 6 and min(ds.lengths) >= 2 for ds in data.clients)
    train = set(_flat(data))
    assert len(train) == 180  # no sample twice ...
    assert not train & {tuple(x) for x in data.validation.input_ids + data.test.input_ids}  # ... nor in eval
    facts = json.loads(json.dumps(data.facts))  # JSON-able
    assert facts["corpus"]["train_samples"] == 200
    assert facts["train"]["samples"] == 180 and facts["sources"]["validation"] == "fraction:0.05"
    assert facts["partition"]["kind"] == "iid"
    assert [c["samples"] + c["heldout_samples"] for c in facts["clients"]] == [45] * 4
    batch = collate([data.clients[0][i] for i in range(3)], pad_id=0)
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= 6


def test_same_seed_same_data_other_seed_differs(tmp_path: Path) -> None:
    cfg = DataConfig(
        train=str(_write_txt(tmp_path / "c.txt", 120)), partition="length-dirichlet", alpha=0.5, bins=4
    )
    tok = WhitespaceTokenizer()
    a, b = prepare_data(cfg, tok, 3, seed=5), prepare_data(cfg, tok, 3, seed=5)
    assert [ds.input_ids for ds in a.clients] == [ds.input_ids for ds in b.clients]
    assert a.validation.input_ids == b.validation.input_ids and a.facts == b.facts
    c = prepare_data(cfg, tok, 3, seed=6)
    assert [ds.input_ids for ds in a.clients] != [ds.input_ids for ds in c.clients]
    assert a.facts["partition"]["kind"] == "length-dirichlet" and a.facts["partition"]["alpha"] == 0.5


def test_jsonl_with_explicit_validation_and_test_files(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        "\n".join(json.dumps({"body": f"sample {i} " + "x " * (i % 5)}) for i in range(40)) + "\n"
    )
    valid = _write_txt(tmp_path / "valid.txt", 7)
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"body": "one test sample"}) + "\n")
    cfg = DataConfig(
        train=str(train), field="body", validation=str(valid), test=str(test), heldout_fraction=0.0
    )
    data = prepare_data(cfg, WhitespaceTokenizer(), num_clients=2, seed=1)
    assert (len(data.validation), len(data.test)) == (7, 1)
    assert sum(len(c) for c in data.clients) == 40  # nothing carved out of train
    assert all(len(h) == 0 and isinstance(h, TokenizedDataset) for h in data.heldout)
    assert data.facts["sources"]["test"] == f"file:{test}"


def test_max_samples_caps_training_deterministically(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 300)), max_samples=50, heldout_fraction=0.0)
    tok = WhitespaceTokenizer()
    first, again = prepare_data(cfg, tok, 5, seed=2), prepare_data(cfg, tok, 5, seed=2)
    assert sum(len(c) for c in first.clients) == 50
    assert _flat(first) == _flat(again)
    assert len(first.validation) == 15  # eval sets come from the full corpus, before the cap


def test_prompt_response_corpus_trains_on_the_response_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    rows = [{"question": f"what is {i} plus {i} ?", "answer": f"it is {2 * i}"} for i in range(12)]
    for name in ("train.jsonl", "test.jsonl"):
        (gsm / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setenv("SPLITFT_DATA_DIR", str(tmp_path))  # found before ../shared/data
    cfg = DataConfig(train="gsm8k", max_length=32, heldout_fraction=0.0, validation_fraction=0.25)
    data = prepare_data(cfg, WhitespaceTokenizer(), num_clients=2, seed=0)
    assert data.facts["response_only"] is True
    assert (len(data.validation), len(data.test)) == (3, 12)
    item = data.clients[0][0]
    assert item["loss_start"] == 8  # "Question: what is i plus i ? Answer:" = 8 words
    labels = collate([item], pad_id=0)["labels"][0].tolist()
    assert labels[:8] == [-100] * 8 and labels[8:] == item["input_ids"][8:] and len(labels) == 11


@pytest.mark.parametrize(
    ("corpus", "folder", "prompt_head", "prompt_tail"),
    [
        ("e2e", "e2e-nlg", "Meaning representation:", "Description:"),
        ("gsm8k", "gsm8k", "Question:", "Answer:"),
    ],
)
def test_shared_prompt_response_corpora_train_on_the_response(
    shared_data: Path, corpus: str, folder: str, prompt_head: str, prompt_tail: str
) -> None:
    """`--data.train e2e` / `gsm8k` with SmolLM2's tokenizer: the labels mask each prompt."""
    need_path(shared_data / folder, corpus)
    overrides = {"data.train": corpus, "data.max_samples": "12", "data.max_length": "256"}
    cfg = Config().with_overrides({**overrides, "data.heldout_fraction": "0"})
    cfg.validate()
    tok = tokenizer()
    data = prepare_data(cfg.data, tok, num_clients=2, seed=0)
    assert data.facts["corpus"]["name"] == corpus and data.facts["response_only"] is True
    assert sum(len(client) for client in data.clients) == 12 and len(data.validation) > 0
    for client in data.clients:
        for i in range(len(client)):
            item = client[i]
            ids, start = item["input_ids"], item["loss_start"]
            labels = collate([item], pad_id=0)["labels"][0].tolist()
            assert 0 < start < len(ids)
            assert labels[:start] == [-100] * start and labels[start:] == ids[start:]
            prompt, response = tok.decode(ids[:start]), tok.decode(ids[start:])
            assert prompt.startswith(prompt_head) and prompt.rstrip().endswith(prompt_tail)
            assert prompt_head not in response and response.strip()


def test_more_clients_than_samples_is_a_data_error(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 10)))
    with pytest.raises(DataError, match=r"data.train has 9 samples, fewer than federation.num_clients=12"):
        prepare_data(cfg, WhitespaceTokenizer(), num_clients=12, seed=0)


def test_too_short_samples_count_after_tokenization(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("one\ntwo\nthree four\nfive\nsix seven\n")
    cfg = DataConfig(train=str(path), validation_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match=r"has 2 samples after tokenization \(3 dropped"):
        prepare_data(cfg, WhitespaceTokenizer(), num_clients=3, seed=0)


def test_unsplittable_partition_is_a_clear_data_error(tmp_path: Path) -> None:
    path = tmp_path / "same.txt"
    path.write_text("\n".join(f"a b c {i}" for i in range(12)) + "\n")  # one length class only
    cfg = DataConfig(train=str(path), partition="length-dirichlet", alpha=0.001, bins=1, heldout_fraction=0.0)
    with pytest.raises(
        DataError, match=r"data.partition='length-dirichlet' cannot split data.train.*raise alpha"
    ):
        prepare_data(cfg, WhitespaceTokenizer(), num_clients=6, seed=0)


@pytest.mark.parametrize(
    ("override", "num_clients", "seed", "match"),
    [
        (
            {"partition": "dirichlet"},
            2,
            0,
            "data.partition = 'dirichlet': must be one of iid, length-dirichlet",
        ),
        ({"validation_fraction": 1.0}, 2, 0, r"data.validation_fraction = 1.0: must be in \[0, 1\)"),
        ({"validation_fraction": 0.6, "test_fraction": 0.5}, 2, 0, "must be < 1"),
        ({"max_length": 1}, 2, 0, "data.max_length"),
        ({"max_samples": -1}, 2, 0, "data.max_samples"),
        ({"partition": "length-dirichlet", "alpha": 0.0}, 2, 0, "data.alpha"),
        ({"partition": "length-dirichlet", "bins": 0}, 2, 0, "data.bins"),
        (
            {"partition": "length-dirichlet", "alpha": float("inf")},
            2,
            0,
            "data.alpha = inf: must be > 0 and finite",
        ),
        ({}, 0, 0, "federation.num_clients"),
        ({}, 2, -1, "seed"),
    ],
)
def test_bad_config_values(tmp_path: Path, override: dict, num_clients: int, seed: int, match: str) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 20)), **override)
    with pytest.raises(ConfigError, match=match):
        prepare_data(cfg, WhitespaceTokenizer(), num_clients=num_clients, seed=seed)


def test_missing_training_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(DataConfig(train=str(tmp_path / "none.txt")), WhitespaceTokenizer(), 2, 0)


# --------------------------------------------------------------------------- the DataConfig switches


def _write_gsm8k(root: Path, n: int = 12) -> None:
    gsm = root / "gsm8k"
    gsm.mkdir()
    rows = [{"question": f"what is {i} plus {i} ?", "answer": f"it is {2 * i}"} for i in range(n)]
    for name in ("train.jsonl", "test.jsonl"):
        (gsm / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_pack_fills_chunks_and_keeps_eval_data_per_sample(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 200)), max_length=8, heldout_fraction=0.1)
    tok = WhitespaceTokenizer()
    plain = prepare_data(cfg, tok, num_clients=3, seed=0)
    packed = prepare_data(replace(cfg, pack=True), tok, num_clients=3, seed=0)
    assert [c.lengths for c in packed.clients] != [c.lengths for c in plain.clients]  # the clients' rows ...
    assert [h.input_ids for h in packed.heldout] == [h.input_ids for h in plain.heldout]  # ... the rest not
    assert packed.validation.input_ids == plain.validation.input_ids
    for before, after, facts in zip(plain.clients, packed.clients, packed.facts["clients"], strict=True):
        assert all(n <= 8 for n in after.lengths) and all(n == 8 for n in after.lengths[:-1])
        # every token of the client's samples, plus one EOS between consecutive samples
        separators = len(before) - 1
        assert after.num_tokens + after.dropped == before.num_tokens + separators
        stream = [t for ids in before.input_ids for t in (*ids, tok.eos_token_id)][:-1]
        assert [t for ids in after.input_ids for t in ids] == stream[: after.num_tokens]  # in order
        assert facts["samples"] == len(after) and facts["source_samples"] == len(before)
    again = prepare_data(replace(cfg, pack=True), tok, num_clients=3, seed=0)
    assert [c.input_ids for c in again.clients] == [c.input_ids for c in packed.clients]
    assert packed.facts["pack"] is True and "source_samples" not in plain.facts["clients"][0]


def test_response_only_switch_and_packing_a_prompt_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_gsm8k(tmp_path)
    monkeypatch.setenv("SPLITFT_DATA_DIR", str(tmp_path))
    cfg = DataConfig(train="gsm8k", max_length=32, heldout_fraction=0.0, validation_fraction=0.25)
    tok = WhitespaceTokenizer()
    everything = prepare_data(replace(cfg, response_only=False), tok, num_clients=2, seed=0)
    assert everything.facts["response_only"] is False
    assert all(start == 0 for ds in everything.clients for start in ds.loss_start)
    assert all(start == 0 for start in everything.test.loss_start)
    with pytest.raises(
        ConfigError, match="data.pack cannot keep the prompt mask.*data.response_only = false"
    ):
        prepare_data(replace(cfg, pack=True), tok, num_clients=2, seed=0)
    packed = prepare_data(replace(cfg, pack=True, response_only=False), tok, num_clients=2, seed=0)
    assert all(n <= 32 for ds in packed.clients for n in ds.lengths)


def test_response_only_has_no_effect_on_plain_text(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 60)))
    on = prepare_data(cfg, WhitespaceTokenizer(), 2, seed=0)
    off = prepare_data(replace(cfg, response_only=False), WhitespaceTokenizer(), 2, seed=0)
    assert _flat(on) == _flat(off) and on.facts["response_only"] is off.facts["response_only"] is False


def test_pack_needs_an_eos_token(tmp_path: Path) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 40)), pack=True)
    tok = WhitespaceTokenizer()
    tok.eos_token_id = None  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="data.pack needs a tokenizer with an EOS token"):
        prepare_data(cfg, tok, 2, seed=0)


def _rows(*datasets: TokenizedDataset) -> set[tuple[int, ...]]:
    return {tuple(ids) for ds in datasets for ids in ds.input_ids}


@pytest.mark.parametrize("partition", ["iid", "length-dirichlet"])
def test_samples_per_client_caps_each_partition(tmp_path: Path, partition: str) -> None:
    cfg = DataConfig(
        train=str(_write_txt(tmp_path / "c.txt", 400)), heldout_fraction=0.25, partition=partition, alpha=1.0
    )
    tok = WhitespaceTokenizer()
    full = prepare_data(cfg, tok, num_clients=4, seed=3)
    capped = prepare_data(replace(cfg, samples_per_client=40), tok, num_clients=4, seed=3)
    sizes = [c["samples"] + c["heldout_samples"] for c in full.facts["clients"]]
    assert [c["samples"] + c["heldout_samples"] for c in capped.facts["clients"]] == [
        min(n, 40) for n in sizes
    ]
    assert capped.facts["partition"]["assigned_samples"] == sum(min(n, 40) for n in sizes)
    for i in range(4):  # a subset of the client's own partition; the held-out share is of the capped one
        assert _rows(capped.clients[i], capped.heldout[i]) <= _rows(full.clients[i], full.heldout[i])
        assert len(capped.heldout[i]) == round(0.25 * min(sizes[i], 40))
    assert capped.facts["samples_per_client"] == 40
    assert _flat(prepare_data(replace(cfg, samples_per_client=40), tok, num_clients=4, seed=3)) == _flat(
        capped
    )
    loose = prepare_data(replace(cfg, samples_per_client=1000), tok, num_clients=4, seed=3)
    assert _flat(loose) == _flat(full)  # a cap above every partition changes nothing


def _write_genres(path: Path, per_genre: int = 40) -> Path:
    genres = ["comedy", "tragedy", "history", "romance", "problem", "roman", "sonnet", "poem"]
    rows = [
        {"text": " ".join(f"{g}{i}_{k}" for k in range(2 + (i * 7) % 13)), "genre": g}
        for g in genres
        for i in range(per_genre)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_partition_by_a_meta_column_gives_each_client_few_values(tmp_path: Path) -> None:
    cfg = DataConfig(
        train=str(_write_genres(tmp_path / "g.jsonl")),
        partition="length-dirichlet",
        partition_by="genre",
        alpha=0.05,
        heldout_fraction=0.0,
    )
    tok = WhitespaceTokenizer()
    skewed = prepare_data(cfg, tok, num_clients=4, seed=0)
    spread = prepare_data(replace(cfg, alpha=100.0), tok, num_clients=4, seed=0)

    def values(data: PreparedData) -> list[int]:
        return [len({m["genre"] for m in ds.meta}) for ds in data.clients]

    assert sum(values(skewed)) / 4 <= 3 < sum(values(spread)) / 4  # 8 genres in all
    assert values(spread) == [8] * 4
    assert skewed.facts["partition"]["partition_by"] == "genre"
    assert skewed.facts["partition"]["class_js_mean"] > spread.facts["partition"]["class_js_mean"] + 0.3
    iid = prepare_data(replace(cfg, partition="iid"), tok, num_clients=4, seed=0)  # iid ignores it
    assert "class_js_mean" not in iid.facts["partition"] and values(iid) == [8] * 4


def test_partition_by_an_unknown_column_is_a_config_error(tmp_path: Path) -> None:
    cfg = DataConfig(
        train=str(_write_genres(tmp_path / "g.jsonl")), partition="length-dirichlet", partition_by="play"
    )
    with pytest.raises(ConfigError, match=r"^partition_by='play' is not a column of row 0 .*genre, line"):
        prepare_data(cfg, WhitespaceTokenizer(), 2, seed=0)


def test_keep_headings_reaches_the_wikitext_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "wikitext-2" / "tokens"
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        text = "".join(f" = Title {k} = \n Text {k} of {split} here . \n" for k in range(6))
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    monkeypatch.setenv("SPLITFT_DATA_DIR", str(tmp_path))
    cfg = DataConfig(train="wikitext-2", heldout_fraction=0.0)
    tok = WhitespaceTokenizer()
    dropped = prepare_data(cfg, tok, 2, seed=0)
    kept = prepare_data(replace(cfg, keep_headings=True), tok, 2, seed=0)
    assert (dropped.facts["train"]["samples"], kept.facts["train"]["samples"]) == (6, 12)
    assert (len(dropped.test), len(kept.test)) == (6, 12)  # the corpus' own splits too
    assert kept.facts["keep_headings"] is True
    txt = replace(cfg, train=str(_write_txt(tmp_path / "c.txt", 30)), keep_headings=True)
    assert prepare_data(txt, tok, 2, seed=0).facts["train"]["samples"] == 27  # other corpora ignore it


def test_loaders_log_what_they_produced_and_facts_describe_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 100)), heldout_fraction=0.0)
    with caplog.at_level(logging.INFO, logger="splitft.data"):
        data = prepare_data(cfg, WhitespaceTokenizer(), num_clients=2, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "splitft.data"]
    assert len(lines) == 3
    train = data.facts["train"]
    assert lines[0].endswith(
        f"train ({cfg.train}): {train['samples']} samples, {train['tokens']} tokens, 0 dropped"
    )
    assert "validation (fraction:0.05): 5 samples" in lines[1] and "test (fraction:0.05)" in lines[2]
    for client, facts in zip(data.clients, data.facts["clients"], strict=True):
        lengths = sorted(client.lengths)
        assert facts["samples"] == len(client) and facts["tokens"] == sum(lengths)
        assert facts["mean_length"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-3)
        assert facts["median_length"] == float(np.median(lengths))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"samples_per_client": -1}, "data.samples_per_client = -1: must be >= 0"),
        ({"partition_by": ""}, "data.partition_by = '': must be 'length' or a meta column name"),
        ({"partition_by": " genre"}, "data.partition_by = ' genre': must be"),
        ({"pack": "false"}, r"data.pack: expected a boolean \(true/false/1/0/yes/no\), got 'false'"),
        ({"response_only": 1}, "data.response_only: expected a boolean .*got 1"),
        ({"keep_headings": None}, "data.keep_headings: expected a boolean .*got None"),
    ],
)
def test_bad_new_field_values(tmp_path: Path, override: dict, match: str) -> None:
    cfg = DataConfig(train=str(_write_txt(tmp_path / "c.txt", 20)), **override)
    with pytest.raises(ConfigError, match=match):
        prepare_data(cfg, WhitespaceTokenizer(), num_clients=2, seed=0)
