"""Scores of generated text against references, from maintained libraries (none hand-written).

Each metric takes the generated texts and, per text, its list of references (E2E has several
per meaning representation) and returns one corpus-level number:

* ``bleu``: sacreBLEU's corpus BLEU (0-100), its default 13a tokenisation, every reference used.
* ``chrf``: sacreBLEU's chrF (0-100).
* ``nist``: NLTK's corpus NIST (n = 5, as the E2E challenge), on lower-cased whitespace tokens.
* ``rouge_l``: Google's rouge-score ROUGE-L F1 (0-100), the best reference per text, averaged.
* ``exact_match``: GSM8K-style share (0-100) of texts whose final number equals the
  reference's (the number after ``####``, else the last number in it).

METEOR and CIDEr, also reported by SplitLoRA, are left out: NLTK's METEOR needs the WordNet
corpus downloaded at run time, and the maintained CIDEr (pycocoevalcap) ships Java tools;
neither fits an offline install.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import sacrebleu
from nltk.translate.nist_score import corpus_nist
from rouge_score import rouge_scorer

from splitft.choices import GENERATION_METRICS
from splitft.errors import ConfigError

References = Sequence[Sequence[str]]


def _ref_streams(refs: References) -> list[list[str]]:
    """sacreBLEU wants one stream per reference position; texts with fewer references are
    padded with None (sacreBLEU skips those)."""
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def bleu(hyps: Sequence[str], refs: References) -> float:
    return float(sacrebleu.corpus_bleu(list(hyps), _ref_streams(refs)).score)


def chrf(hyps: Sequence[str], refs: References) -> float:
    return float(sacrebleu.corpus_chrf(list(hyps), _ref_streams(refs)).score)


def nist(hyps: Sequence[str], refs: References) -> float:
    tokens = [h.lower().split() for h in hyps]
    if not any(tokens):
        return 0.0
    return float(corpus_nist([[r.lower().split() for r in rs] for rs in refs], tokens, n=5))


def rouge_l(hyps: Sequence[str], refs: References) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score_multi(list(rs), h)["rougeL"].fmeasure for h, rs in zip(hyps, refs, strict=True)]
    return 100.0 * sum(scores) / len(scores)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer a GSM8K text gives: the number after ``####`` if any, else its last number."""
    tail = text.split("####")[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    return found[-1].replace(",", "").rstrip(".") if found else None


def exact_match(hyps: Sequence[str], refs: References) -> float:
    hits = [
        final_number(h) is not None and final_number(h) == final_number(rs[0])
        for h, rs in zip(hyps, refs, strict=True)
    ]
    return 100.0 * sum(hits) / len(hits)


METRICS: dict[str, Callable[[Sequence[str], References], float]] = dict(
    zip(GENERATION_METRICS, (bleu, chrf, nist, rouge_l, exact_match), strict=True)
)


def score(names: Sequence[str], hyps: Sequence[str], refs: References) -> dict[str, float]:
    """``{name: value}`` of the metrics ``names`` over ``hyps`` against ``refs``."""
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"{len(hyps)} generated texts for {len(refs)} reference lists")
    if any(not rs for rs in refs):
        raise ValueError("every generated text needs at least one reference")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown generation metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    return {name: round(METRICS[name](hyps, refs), 4) for name in names}
