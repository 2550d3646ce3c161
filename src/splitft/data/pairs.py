"""Prompt/response corpora: ``e2e`` (E2E NLG) and ``gsm8k`` (GSM8K), rendered with a template.

``meta["prompt_chars"]`` marks where the response starts, so that with ``data.response_only``
the loss skips the prompt (:func:`splitft.data.tokenize.tokenize`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from splitft.data.samples import (
    Corpus,
    Sample,
    find_data_dir,
    jsonl_records,
    missing_dir_error,
    read_text,
    require_samples,
    string_field,
)
from splitft.errors import DataError

__all__ = ["E2E_TEMPLATE", "GSM8K_TEMPLATE", "load_e2e", "load_gsm8k", "pair_sample"]

E2E_TEMPLATE = "Meaning representation: {mr}\nDescription: "
"""Prompt of an E2E sample; the reference text follows it."""
GSM8K_TEMPLATE = "Question: {question}\nAnswer: "
"""Prompt of a GSM8K sample; the worked answer follows it."""


def pair_sample(prompt: str, response: str, **meta: Any) -> Sample:
    """A prompt/response sample: text = prompt + response, ``meta["prompt_chars"] = len(prompt)``."""
    return Sample(prompt + response, {"prompt_chars": len(prompt), **meta})


def _e2e_csv(path: Path, template: str) -> list[Sample]:
    what = "an E2E CSV with columns mr,ref"
    rows = csv.DictReader(read_text(path, what).lstrip("\ufeff").splitlines())
    if rows.fieldnames is None or not {"mr", "ref"} <= set(rows.fieldnames):
        raise DataError(f"{path} has columns {rows.fieldnames}, expected {what}")
    samples = [
        pair_sample(template.format(mr=row["mr"]), row["ref"], row=number)
        for number, row in enumerate(rows, start=1)
        if row["mr"] and row["ref"]
    ]
    return require_samples(samples, path, what)


def load_e2e(path: str | os.PathLike[str] | None = None, template: str = E2E_TEMPLATE) -> Corpus:
    """E2E NLG: meaning representation -> reference, rendered with ``template`` (field ``{mr}``).

    train = ``trainset.csv`` when present, else ``devset.csv`` (the shared copy has no train
    file; ``Corpus.notes`` says so and validation is then None); validation = ``devset.csv``
    next to a train file; test = ``testset_w_refs.csv``.
    """
    root = find_data_dir("e2e-nlg", path)
    if root is None:
        raise missing_dir_error("e2e-nlg", "put devset.csv and testset_w_refs.csv there or pass a path")
    notes = []
    if (root / "trainset.csv").is_file():
        train, validation = _e2e_csv(root / "trainset.csv", template), _e2e_csv(root / "devset.csv", template)
    else:
        train, validation = _e2e_csv(root / "devset.csv", template), None
        notes.append("no trainset.csv: train is devset.csv")
    return Corpus("e2e", train, validation, _e2e_csv(root / "testset_w_refs.csv", template), notes)


def _gsm8k_jsonl(path: Path, template: str) -> list[Sample]:
    what = "GSM8K JSON Lines with fields question, answer"
    samples = [
        pair_sample(
            template.format(question=string_field(r, "question", path, n)),
            string_field(r, "answer", path, n),
            line=n,
        )
        for n, r in jsonl_records(path, what)
    ]
    return require_samples(samples, path, what)


def load_gsm8k(path: str | os.PathLike[str] | None = None, template: str = GSM8K_TEMPLATE) -> Corpus:
    """GSM8K: question -> worked answer, rendered with ``template`` (field ``{question}``).

    train = ``train.jsonl``, test = ``test.jsonl``; there is no validation split.
    """
    root = find_data_dir("gsm8k", path)
    if root is None:
        raise missing_dir_error("gsm8k", "put train.jsonl and test.jsonl there or pass a path")
    return Corpus(
        "gsm8k",
        _gsm8k_jsonl(root / "train.jsonl", template),
        None,
        _gsm8k_jsonl(root / "test.jsonl", template),
    )
