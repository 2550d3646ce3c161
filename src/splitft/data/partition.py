"""Partitioners that spread a dataset's samples over federated clients (flwr-datasets style).

A partitioner is given a dataset once (``partitioner.dataset = ds``) and answers
``load_partition(i)`` with the indices of client ``i``'s samples. The assignment is computed
lazily, once, from ``seed``, and it does not depend on the order of the input rows: rows are
first put in a canonical order (by partition value, then a stable digest of their content), so
a shuffled copy of a dataset gives every client the same samples.

* :class:`IidPartitioner`: a shuffled, equal split (sizes differ by at most one).
* :class:`LengthDirichletPartitioner`: label-skew over length classes. Samples are binned into
  ``num_bins`` length quantiles; for each bin a share vector ``p ~ Dirichlet(alpha)`` gives
  client ``i`` ``floor(p_i * n_bin)`` samples, and the bin's floor remainder (fewer than
  ``num_partitions`` samples) goes one sample each to the clients with the largest fractional
  parts ``p_i * n_bin - floor(p_i * n_bin)`` (ties: lower client id). So, without a cap, every
  sample is assigned exactly once.

Helpers: :func:`length_bins` and :func:`heldout_split`; the skew measures (histograms, JS
divergence) are in :mod:`splitft.data.partition_stats`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["IidPartitioner", "LengthDirichletPartitioner", "Partitioner", "heldout_split", "length_bins"]


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int when it is an integer in [low, high]; else ValueError naming ``name``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def _content_key(dataset: Any, index: int) -> bytes:
    """A digest of row ``index`` that does not depend on where the row sits in the dataset."""
    if hasattr(dataset, "content_key"):
        return dataset.content_key(index)
    item = dataset[index]
    text = getattr(item, "text", None)
    data = text if isinstance(text, str) else repr(item)
    return hashlib.blake2b(data.encode("utf-8"), digest_size=16).digest()


def _row_meta(dataset: Any, index: int) -> dict[str, Any] | None:
    meta_list = getattr(dataset, "meta", None)
    if isinstance(meta_list, list):
        return meta_list[index]
    meta = getattr(dataset[index], "meta", None)
    if isinstance(meta, dict):
        return meta
    item = dataset[index]
    return item.get("meta") if isinstance(item, dict) else None


class Partitioner(ABC):
    """Base class: holds the dataset (set once) and the lazily computed assignment."""

    def __init__(self, num_partitions: int, seed: int = 42) -> None:
        self._num_partitions = check_int("num_partitions", num_partitions, 1)
        self._seed = check_int("seed", seed, 0)
        self._dataset: Any = None
        self._partitions: list[list[int]] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            raise ValueError(f"{type(self).__name__}.dataset is not set; assign it before loading partitions")
        return self._dataset

    @dataset.setter
    def dataset(self, value: Any) -> None:
        if self._dataset is not None:
            raise ValueError(f"{type(self).__name__}.dataset can be set only once; create a new partitioner")
        if value is None or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            raise ValueError(f"dataset must be a sized, indexable collection, got {type(value).__name__}")
        if self._num_partitions > len(value):
            raise ValueError(
                f"num_partitions must be in [1, {len(value)}] (the dataset's sample count), got {self._num_partitions}"
            )
        self._dataset = value
        try:
            self._check_dataset(value)
        except ValueError:
            self._dataset = None
            raise

    def _check_dataset(self, value: Any) -> None:  # noqa: B027 - an optional hook
        """Subclass hook: raise ValueError when ``value`` cannot be partitioned (it is set already)."""

    def load_partition(self, partition_id: int) -> list[int]:
        """Sorted indices (into :attr:`dataset`) of partition ``partition_id``."""
        check_int("partition_id", partition_id, 0, self._num_partitions - 1)
        return list(self.partitions()[partition_id])

    def partitions(self) -> list[list[int]]:
        """All partitions (computed on first use)."""
        if self._partitions is None:
            parts = self._assign(self.dataset)
            self._partitions = [sorted(int(i) for i in part) for part in parts]
        return self._partitions

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the partitioner's settings."""
        return {"kind": type(self).__name__, "num_partitions": self._num_partitions, "seed": self._seed}

    def _canonical_order(self, primary: np.ndarray | None = None) -> np.ndarray:
        """Row indices sorted by (``primary``, content digest): the same rows give the same order."""
        ds = self.dataset
        if hasattr(ds, "content_keys"):
            keys = np.array(ds.content_keys())
        else:
            keys = np.array([_content_key(ds, i) for i in range(len(ds))])
        if primary is None:
            return np.argsort(keys, kind="stable").astype(np.int64)
        return np.lexsort((keys, primary)).astype(np.int64)

    @abstractmethod
    def _assign(self, dataset: Any) -> list[list[int]]:
        """The index lists of every partition."""


class IidPartitioner(Partitioner):
    """A shuffled equal split: partition sizes differ by at most one, every sample is used."""

    def _assign(self, dataset: Any) -> list[list[int]]:
        order = self._canonical_order()
        order = order[np.random.default_rng(self._seed).permutation(len(order))]
        return [part.tolist() for part in np.array_split(order, self._num_partitions)]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "iid",
            "num_partitions": self._num_partitions,
            "alpha": None,
            "num_bins": None,
            "seed": self._seed,
        }


def length_bins(values: Sequence[float], num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile bins of numeric ``values``: ``(bin index per value, inner edges)``.

    The edges are the ``k/num_bins`` quantiles (k = 1..num_bins-1, "inverted CDF" method, so
    each edge is a data value) without duplicates and without the maximum; bin ``k`` holds
    ``edge_{k-1} < v <= edge_k``. Many equal values therefore give fewer, never empty, bins.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    qs = np.quantile(arr, np.linspace(0.0, 1.0, num_bins + 1)[1:-1], method="inverted_cdf")
    edges = np.unique(qs)
    edges = edges[edges < arr.max()]  # an edge at the maximum would leave the top bin empty
    return np.searchsorted(edges, arr, side="left").astype(np.int64), edges


class LengthDirichletPartitioner(Partitioner):
    """Non-IID split over length classes with per-class Dirichlet client shares.

    ``partition_by`` is ``"length"`` (the dataset's ``lengths``, e.g. token counts), a meta
    column name, or a callable taking a dataset item. Numeric values are binned into
    ``num_bins`` quantile classes; non-numeric ones (e.g. ``"genre"``) are their own classes.
    For every class ``p ~ Dirichlet(alpha)`` (``alpha`` scalar or one value per client) and
    client ``i`` gets ``floor(p_i * n_class)`` samples; the floor remainders go one each to the
    clients with the largest fractional parts (ties: lower client id), so every sample is
    assigned. With ``shuffle`` the samples inside a class are shuffled first, else they are
    dealt in canonical (value, content digest) order. All classes are redrawn (at most
    ``max_redraws`` more times) until every client has ``min_partition_size`` samples, else
    ValueError. ``max_samples_per_partition`` then caps each client with a seeded random
    subset; the excess samples are left out of every partition.
    """

    def __init__(
        self,
        num_partitions: int,
        alpha: float | Sequence[float],
        num_bins: int = 10,
        partition_by: str | Callable[[Any], Any] = "length",
        min_partition_size: int = 1,
        seed: int = 42,
        shuffle: bool = True,
        max_samples_per_partition: int | None = None,
        max_redraws: int = 10,
    ) -> None:
        super().__init__(num_partitions, seed)
        self._alpha = self._check_alpha(alpha, num_partitions)
        self._num_bins = check_int("num_bins", num_bins, 1)
        if not (callable(partition_by) or isinstance(partition_by, str)):
            raise ValueError(
                f"partition_by must be 'length', a meta column name or a callable, got {partition_by!r}"
            )
        self._partition_by = partition_by
        self._min_partition_size = check_int("min_partition_size", min_partition_size, 0)
        self._shuffle = bool(shuffle)
        if max_samples_per_partition is not None:
            check_int(
                "max_samples_per_partition", max_samples_per_partition, max(1, self._min_partition_size)
            )
        self._max_samples = max_samples_per_partition
        self._max_redraws = check_int("max_redraws", max_redraws, 0)
        self._row_values: list[Any] | None = None
        self._classes: np.ndarray | None = None
        self._edges: np.ndarray | None = None

    @staticmethod
    def _check_alpha(alpha: float | Sequence[float], num_partitions: int) -> np.ndarray:
        scalar = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
        arr = np.full(num_partitions, float(alpha)) if scalar else np.asarray(alpha, dtype=np.float64)
        if arr.shape != (num_partitions,):
            raise ValueError(
                f"alpha must be a number > 0 or a list of num_partitions={num_partitions} numbers > 0, got {alpha!r}"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"alpha must be > 0 and finite (0 < alpha < inf), got {alpha!r}")
        return arr

    def _check_dataset(self, value: Any) -> None:
        if self._min_partition_size * self._num_partitions > len(value):
            raise ValueError(
                f"min_partition_size must be in [0, {len(value) // self._num_partitions}] for "
                f"{len(value)} samples over num_partitions={self._num_partitions}, got {self._min_partition_size}"
            )
        self._values()  # fail early on an unknown column

    @property
    def alpha(self) -> list[float]:
        return self._alpha.tolist()

    def _values(self) -> list[Any]:
        """The partition value of every row (computed once)."""
        if self._row_values is None:
            self._row_values = self._compute_values(self.dataset)
        return self._row_values

    def _compute_values(self, ds: Any) -> list[Any]:
        by = self._partition_by
        if callable(by):
            return [by(ds[i]) for i in range(len(ds))]
        if by == "length":
            if not hasattr(ds, "lengths"):
                raise ValueError(
                    "partition_by='length' needs a dataset with a 'lengths' property (e.g. a TokenizedDataset); "
                    "pass a meta column name or a callable instead"
                )
            return list(ds.lengths)
        values = []
        for i in range(len(ds)):
            meta = _row_meta(ds, i)
            if meta is None or by not in meta:
                columns = ", ".join(sorted(meta or {})) or "none"
                raise ValueError(
                    f"partition_by={by!r} is not a column of row {i} (allowed: 'length', a callable, or one of: {columns})"
                )
            values.append(meta[by])
        return values

    def class_of_rows(self) -> np.ndarray:
        """The class (length bin or category index) of every row, in dataset order."""
        if self._classes is None:
            values = self._values()
            if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
                self._classes, self._edges = length_bins(values, self._num_bins)
            else:
                categories = sorted({str(v) for v in values})
                lookup = {c: k for k, c in enumerate(categories)}
                self._classes = np.array([lookup[str(v)] for v in values], dtype=np.int64)
                self._edges = None
        return self._classes

    def _split_class(self, members: np.ndarray, p: np.ndarray) -> list[np.ndarray]:
        exact = p * len(members)
        counts = np.floor(exact).astype(np.int64)
        remainder = len(members) - int(counts.sum())
        if remainder:
            # largest fractional part first; stable sort keeps lower client ids first on ties
            order = np.argsort(-(exact - counts), kind="stable")
            counts[order[:remainder]] += 1
        return np.split(members, np.cumsum(counts)[:-1])

    def _assign(self, dataset: Any) -> list[list[int]]:
        classes = self.class_of_rows()
        values = self._values()
        numeric = self._edges is not None
        order = self._canonical_order(np.asarray(values, dtype=np.float64) if numeric else classes)
        rng = np.random.default_rng(self._seed)
        class_members = [order[classes[order] == c] for c in np.unique(classes)]
        smallest = 0
        for _attempt in range(self._max_redraws + 1):
            parts: list[list[int]] = [[] for _ in range(self._num_partitions)]
            for members in class_members:
                members = rng.permutation(members) if self._shuffle else members
                p = rng.dirichlet(self._alpha)
                for client, chunk in enumerate(self._split_class(members, p)):
                    parts[client].extend(chunk.tolist())
            smallest = min(len(part) for part in parts)
            if smallest >= self._min_partition_size:
                break
        else:
            raise ValueError(
                f"LengthDirichletPartitioner: after {self._max_redraws + 1} draws a partition still has "
                f"{smallest} < min_partition_size={self._min_partition_size} samples; lower num_partitions "
                f"(now {self._num_partitions}) or min_partition_size, raise alpha (now {self.alpha}) "
                f"or max_redraws (now {self._max_redraws})"
            )
        if self._max_samples is not None:
            parts = [
                part
                if len(part) <= self._max_samples
                else rng.choice(part, self._max_samples, replace=False).tolist()
                for part in parts
            ]
        return parts

    def describe(self) -> dict[str, Any]:
        alpha = self.alpha
        return {
            "kind": "length-dirichlet",
            "num_partitions": self._num_partitions,
            "alpha": alpha[0] if len(set(alpha)) == 1 else alpha,
            "num_bins": self._num_bins,
            "partition_by": self._partition_by if isinstance(self._partition_by, str) else "callable",
            "min_partition_size": self._min_partition_size,
            "max_samples_per_partition": self._max_samples,
            "seed": self._seed,
        }


def heldout_split(
    indices: Sequence[int], fraction: float, seed: int | Sequence[int]
) -> tuple[list[int], list[int]]:
    """Split ``indices`` into ``(train, heldout)``; heldout gets ``round(fraction * n)`` of them.

    The draw depends only on the set of indices and ``seed`` (an integer >= 0, or a sequence
    of them such as ``(run_seed, client_id)``); indices are sorted first. At least one index
    stays in train when there is any; both lists come back sorted.
    """
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    for part in [seed] if isinstance(seed, numbers.Integral) else seed:
        check_int("seed", part, 0)
    items = sorted(int(i) for i in indices)
    n_held = min(int(math.floor(fraction * len(items) + 0.5)), max(len(items) - 1, 0))
    chosen = set(np.random.default_rng(seed).permutation(len(items))[:n_held].tolist())
    train = [x for k, x in enumerate(items) if k not in chosen]
    held = [x for k, x in enumerate(items) if k in chosen]
    return train, held
