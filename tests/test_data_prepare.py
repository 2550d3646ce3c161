"""prepare_data: the data entry point of a run, on tiny corpora with a stand-in tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitft.config import DataConfig
from splitft.data import PreparedData, TokenizedDataset, WhitespaceTokenizer, collate, prepare_data
from splitft.errors import ConfigError, DataError


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
        ({"partition": "dirichlet"}, 2, 0, "data.partition must be one of iid, length-dirichlet"),
        ({"validation_fraction": 1.0}, 2, 0, r"data.validation_fraction must be in \[0, 1\)"),
        ({"validation_fraction": 0.6, "test_fraction": 0.5}, 2, 0, "must be < 1"),
        ({"max_length": 1}, 2, 0, "data.max_length"),
        ({"max_samples": -1}, 2, 0, "data.max_samples"),
        ({"partition": "length-dirichlet", "alpha": 0.0}, 2, 0, "data.alpha"),
        ({"partition": "length-dirichlet", "bins": 0}, 2, 0, "data.bins"),
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
