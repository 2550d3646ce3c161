"""Partitioners: disjointness, coverage, determinism, order independence, errors, and skew vs alpha."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitft.data.partition import (
    IidPartitioner,
    LengthDirichletPartitioner,
    Partitioner,
    heldout_split,
    length_bins,
)
from splitft.data.partition_stats import (
    global_length_histogram,
    js_divergence,
    length_bin_histograms,
    mean_js_to_global,
)
from splitft.data.samples import Sample
from splitft.data.tokenize import TokenizedDataset, WhitespaceTokenizer, tokenize
from splitft.data.wikitext import load_wikitext2

from conftest import need_path


def _dataset(n: int, seed: int = 0) -> TokenizedDataset:
    """n distinct samples with lengths 2..60 (token ids encode the row so contents differ)."""
    rng = random.Random(seed)
    ids = [[i, *range(1000, 1000 + rng.randint(1, 59))] for i in range(n)]
    return TokenizedDataset(ids, [0] * n, [{"row": i, "group": "ab"[i % 2]} for i in range(n)])


def _contents(ds: TokenizedDataset, parts: list[list[int]]) -> list[set[tuple[int, ...]]]:
    return [{tuple(ds.input_ids[i]) for i in part} for part in parts]


def _assigned(partitioner: Partitioner, ds: TokenizedDataset) -> Partitioner:
    partitioner.dataset = ds
    return partitioner


def _sizes(partitioner: Partitioner) -> list[int]:
    return [len(part) for part in partitioner.partitions()]


def _make(kind: str, n_parts: int, seed: int = 42, **kwargs: object) -> Partitioner:
    if kind == "iid":
        return IidPartitioner(n_parts, seed=seed)
    return LengthDirichletPartitioner(n_parts, alpha=kwargs.pop("alpha", 0.5), seed=seed, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- structure


def test_iid_is_an_equal_disjoint_cover() -> None:
    ds = _dataset(103)
    p = _assigned(IidPartitioner(10, seed=1), ds)
    parts = [p.load_partition(i) for i in range(10)]
    assert sorted(len(x) for x in parts) == [10] * 7 + [11] * 3
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(103))  # disjoint and complete
    assert all(part == sorted(part) for part in parts)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 5.0, [0.2, 1.0, 3.0, 0.7]])
def test_length_dirichlet_assigns_every_sample_exactly_once(alpha: float | list[float]) -> None:
    """Documented remainder rule: floor(p_i * n_bin) each, the remainder by largest fractional part."""
    ds = _dataset(500)
    p = _assigned(LengthDirichletPartitioner(4, alpha=alpha, num_bins=7, seed=3, min_partition_size=0), ds)
    flat = [i for part in p.partitions() for i in part]
    assert sorted(flat) == list(range(500))


def test_remainder_goes_to_largest_fractional_parts() -> None:
    p = LengthDirichletPartitioner(3, alpha=1.0)
    members = np.arange(4)
    # shares 0.25, 2.25, 1.5 -> floors 0, 2, 1 -> the one left over goes to client 2 (fraction 0.5)
    chunks = p._split_class(members, np.array([0.0625, 0.5625, 0.375]))
    assert [len(c) for c in chunks] == [0, 2, 2]
    assert np.concatenate(chunks).tolist() == members.tolist()
    # shares 1.5, 1.5, 1.0 -> floors 1, 1, 1 -> a tie on the fraction goes to the lower client id
    assert [len(c) for c in p._split_class(members, np.array([0.375, 0.375, 0.25]))] == [2, 1, 1]


@pytest.mark.parametrize("kind", ["iid", "length-dirichlet"])
def test_same_seed_same_partition_other_seed_differs(kind: str) -> None:
    ds = _dataset(300)
    a = _assigned(_make(kind, 5, seed=7), ds).partitions()
    b = _assigned(_make(kind, 5, seed=7), ds).partitions()
    c = _assigned(_make(kind, 5, seed=8), ds).partitions()
    assert a == b and a != c


@pytest.mark.parametrize("kind", ["iid", "length-dirichlet"])
def test_reordering_rows_does_not_change_who_gets_what(kind: str) -> None:
    ds = _dataset(400)
    order = list(range(400))
    random.Random(5).shuffle(order)
    shuffled = ds.subset(order)
    original = _contents(ds, _assigned(_make(kind, 6, num_bins=5), ds).partitions())
    reordered = _contents(shuffled, _assigned(_make(kind, 6, num_bins=5), shuffled).partitions())
    assert original == reordered


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 40), min_size=12, max_size=80),
    n_parts=st.integers(1, 4),
    alpha=st.floats(0.05, 50.0),
    bins=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    perm_seed=st.integers(0, 2**16),
)
def test_partition_properties(
    lengths: list[int], n_parts: int, alpha: float, bins: int, seed: int, perm_seed: int
) -> None:
    ds = TokenizedDataset([[i] * n for i, n in enumerate(lengths)], [0] * len(lengths), [{}] * len(lengths))
    p = _assigned(LengthDirichletPartitioner(n_parts, alpha, bins, seed=seed, min_partition_size=0), ds)
    parts = p.partitions()
    assert sorted(i for part in parts for i in part) == list(range(len(lengths)))
    order = list(range(len(lengths)))
    random.Random(perm_seed).shuffle(order)
    shuffled = ds.subset(order)
    q = _assigned(LengthDirichletPartitioner(n_parts, alpha, bins, seed=seed, min_partition_size=0), shuffled)
    assert _contents(ds, parts) == _contents(shuffled, q.partitions())


def test_partition_by_meta_column_and_callable() -> None:
    ds = _dataset(200)
    by_group = _assigned(LengthDirichletPartitioner(2, alpha=0.1, partition_by="group", seed=0), ds)
    assert sorted(i for part in by_group.partitions() for i in part) == list(range(200))
    assert sorted(set(by_group.class_of_rows().tolist())) == [0, 1]  # categorical: one class per group
    by_row = _assigned(
        LengthDirichletPartitioner(3, alpha=1.0, partition_by=lambda item: item["meta"]["row"]), ds
    )
    assert len(set(by_row.class_of_rows().tolist())) == 10  # numeric: num_bins quantile classes
    samples = [Sample(f"text {i}", {"n": i % 7}) for i in range(50)]  # a plain list of samples works too
    plain = _assigned(LengthDirichletPartitioner(2, alpha=1.0, partition_by="n", num_bins=3), samples)
    assert sum(_sizes(plain)) == 50


def test_min_partition_size_is_honoured_or_explained() -> None:
    ds = _dataset(300)
    p = _assigned(LengthDirichletPartitioner(5, alpha=0.3, min_partition_size=25, seed=1), ds)
    assert min(_sizes(p)) >= 25
    impossible = _assigned(
        LengthDirichletPartitioner(10, alpha=0.01, num_bins=1, min_partition_size=20, seed=1, max_redraws=3),
        ds,
    )
    with pytest.raises(ValueError, match="min_partition_size=20") as info:
        impossible.partitions()
    assert "lower num_partitions" in str(info.value) and "raise alpha" in str(info.value)
    with pytest.raises(ValueError, match=r"min_partition_size must be in \[0, 30\]"):
        _assigned(LengthDirichletPartitioner(10, alpha=1.0, min_partition_size=31), ds)


def test_cap_per_partition_drops_the_excess() -> None:
    ds = _dataset(300)
    p = _assigned(LengthDirichletPartitioner(3, alpha=0.2, seed=2, max_samples_per_partition=40), ds)
    sizes = _sizes(p)
    assert max(sizes) <= 40
    flat = [i for part in p.partitions() for i in part]
    assert len(flat) == len(set(flat)) == sum(sizes)


def test_dataset_can_be_set_only_once_and_is_needed() -> None:
    p = IidPartitioner(2)
    with pytest.raises(ValueError, match="not set"):
        p.load_partition(0)
    p.dataset = _dataset(10)
    with pytest.raises(ValueError, match="only once"):
        p.dataset = _dataset(10)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: LengthDirichletPartitioner(3, alpha=0), "alpha"),
        (lambda: LengthDirichletPartitioner(3, alpha=-1.0), "alpha"),
        (lambda: LengthDirichletPartitioner(3, alpha=float("inf")), "alpha"),
        (lambda: LengthDirichletPartitioner(3, alpha=[1.0, 2.0]), "alpha"),
        (lambda: LengthDirichletPartitioner(3, alpha=1.0, num_bins=0), "num_bins"),
        (lambda: LengthDirichletPartitioner(0, alpha=1.0), "num_partitions"),
        (lambda: IidPartitioner(0), "num_partitions"),
        (lambda: IidPartitioner(2, seed=-1), "seed"),
        (lambda: LengthDirichletPartitioner(2, alpha=1.0, min_partition_size=-1), "min_partition_size"),
        (
            lambda: LengthDirichletPartitioner(2, alpha=1.0, max_samples_per_partition=0),
            "max_samples_per_partition",
        ),
        (lambda: LengthDirichletPartitioner(2, alpha=1.0, max_redraws=-1), "max_redraws"),
    ],
)
def test_bad_constructor_arguments_name_themselves(make, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=name):
        make()


def test_bad_dataset_dependent_arguments() -> None:
    ds = _dataset(20)
    with pytest.raises(ValueError, match=r"num_partitions must be in \[1, 20\]"):
        IidPartitioner(21).dataset = ds
    with pytest.raises(ValueError, match=r"partition_by='genre'.*group, row"):
        LengthDirichletPartitioner(2, alpha=1.0, partition_by="genre").dataset = ds
    with pytest.raises(ValueError, match="partition_by='length' needs"):
        LengthDirichletPartitioner(2, alpha=1.0).dataset = [Sample("a b")] * 5
    p = _assigned(IidPartitioner(4), ds)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=r"partition_id must be an integer in \[0, 3\]"):
            p.load_partition(bad)


# --------------------------------------------------------------------------- helpers


def test_length_bins_are_quantiles() -> None:
    bins, edges = length_bins(list(range(100)), 4)
    assert edges.tolist() == [24, 49, 74]
    assert np.bincount(bins).tolist() == [25, 25, 25, 25]
    ties, tie_edges = length_bins([5] * 50 + [9] * 50, 10)  # duplicate quantiles collapse
    assert np.bincount(ties).tolist() == [50, 50] and tie_edges.tolist() == [5.0]


def test_js_divergence_bounds() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([0.2, 0.8], [2, 8]) == pytest.approx(0.0)
    assert 0 < js_divergence([0.5, 0.5], [0.9, 0.1]) < 1
    assert js_divergence([1, 2, 3], [3, 2, 1]) == pytest.approx(js_divergence([3, 2, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        js_divergence([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive sum"):
        js_divergence([0, 0], [1, 1])


@settings(max_examples=50, deadline=None)
@given(
    p=st.lists(st.floats(0, 10), min_size=3, max_size=3).filter(lambda v: sum(v) > 1e-6),
    q=st.lists(st.floats(0, 10), min_size=3, max_size=3).filter(lambda v: sum(v) > 1e-6),
)
def test_js_divergence_in_unit_interval(p: list[float], q: list[float]) -> None:
    assert 0.0 <= js_divergence(p, q) <= 1.0


def test_histograms_are_normalised_over_global_bins() -> None:
    ds = _dataset(400)
    p = _assigned(LengthDirichletPartitioner(4, alpha=0.3, num_bins=6, seed=0), ds)
    hists = length_bin_histograms(p)
    assert hists.shape == (4, 6)
    assert np.allclose(hists.sum(1), 1.0)
    weights = np.array(_sizes(p)) / 400
    assert np.allclose(weights @ hists, global_length_histogram(p))  # no cap: clients make up the whole


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_heldout_split(fraction: float) -> None:
    indices = list(range(100, 140))
    train, held = heldout_split(indices, fraction, seed=3)
    assert len(held) == round(fraction * 40)
    assert sorted(train + held) == indices and not set(train) & set(held)
    assert heldout_split(list(reversed(indices)), fraction, seed=3) == (train, held)
    assert heldout_split([7], 0.9, seed=0) == ([7], [])  # one sample stays in train
    with pytest.raises(ValueError, match="fraction"):
        heldout_split(indices, 1.0, seed=0)


# --------------------------------------------------------------------------- skew vs alpha on real data

ALPHAS = (0.1, 0.9, 10.0, 100.0)
SEEDS = range(5)


@pytest.fixture(scope="module")
def wikitext_train(shared_data: Path) -> TokenizedDataset:
    """WikiText-2 train (17.5k paragraphs), word counts as lengths (whitespace tokenizer)."""
    corpus = load_wikitext2(need_path(shared_data / "wikitext-2", "WikiText-2"))
    return tokenize(corpus.train, WhitespaceTokenizer(), max_length=100_000)


def test_length_skew_falls_as_alpha_grows_and_iid_is_lowest(wikitext_train: TokenizedDataset) -> None:
    def mean_js(make) -> float:  # type: ignore[no-untyped-def]
        return float(np.mean([mean_js_to_global(_assigned(make(seed), wikitext_train)) for seed in SEEDS]))

    dirichlet = [
        mean_js(lambda seed, a=a: LengthDirichletPartitioner(10, alpha=a, num_bins=10, seed=seed))
        for a in ALPHAS
    ]
    iid = mean_js(lambda seed: IidPartitioner(10, seed=seed))
    assert all(x > y for x, y in zip(dirichlet, dirichlet[1:], strict=False)), dirichlet
    assert iid < dirichlet[-1], (iid, dirichlet)
    assert dirichlet[0] > 0.3 and iid < 0.01  # strongly skewed vs near-identical histograms
