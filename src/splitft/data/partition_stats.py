"""How skewed a partition is: per-client length histograms and Jensen-Shannon divergence.

:func:`length_bin_histograms` and :func:`global_length_histogram` count samples over the same
length bins (a :class:`~splitft.data.partition.LengthDirichletPartitioner`'s own classes, or
quantile bins of the dataset's ``lengths``); :func:`js_divergence` compares two histograms and
:func:`mean_js_to_global` sums a partition up in one number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from splitft.data.partition import LengthDirichletPartitioner, Partitioner, check_int, length_bins

__all__ = ["global_length_histogram", "js_divergence", "length_bin_histograms", "mean_js_to_global"]


def _length_classes(partitioner: Partitioner, num_bins: int | None) -> np.ndarray:
    if isinstance(partitioner, LengthDirichletPartitioner) and num_bins is None:
        return partitioner.class_of_rows()
    ds = partitioner.dataset
    if not hasattr(ds, "lengths"):
        raise ValueError("length histograms need a dataset with a 'lengths' property")
    return length_bins(list(ds.lengths), 10 if num_bins is None else check_int("num_bins", num_bins, 1))[0]


def length_bin_histograms(partitioner: Partitioner, num_bins: int | None = None) -> np.ndarray:
    """Per-client normalised histograms over the global length bins, shape (clients, bins).

    The bins are the partitioner's own classes for a :class:`LengthDirichletPartitioner`
    (unless ``num_bins`` is given), else ``num_bins`` (default 10) quantile bins of the
    dataset's ``lengths``. An empty partition gives a row of zeros.
    """
    classes = _length_classes(partitioner, num_bins)
    width = int(classes.max()) + 1 if classes.size else 0
    hists = np.zeros((partitioner.num_partitions, width))
    for client, part in enumerate(partitioner.partitions()):
        counts = np.bincount(classes[part], minlength=width).astype(np.float64)
        hists[client] = counts / counts.sum() if counts.sum() else counts
    return hists


def global_length_histogram(partitioner: Partitioner, num_bins: int | None = None) -> np.ndarray:
    """Normalised histogram of the whole dataset over the same bins as :func:`length_bin_histograms`."""
    classes = _length_classes(partitioner, num_bins)
    counts = np.bincount(classes).astype(np.float64)
    return counts / counts.sum()


def js_divergence(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Jensen-Shannon divergence of two histograms in bits (base 2), in [0, 1].

    Inputs are normalised first; they must be non-negative, of the same shape, with a
    positive sum.
    """
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"p and q must be 1-D of the same length, got shapes {a.shape} and {b.shape}")
    for name, arr in (("p", a), ("q", b)):
        if np.any(arr < 0) or not np.all(np.isfinite(arr)) or arr.sum() <= 0:
            raise ValueError(f"{name} must be non-negative and finite with a positive sum")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return float(min(1.0, max(0.0, (kl(a) + kl(b)) / 2)))


def mean_js_to_global(partitioner: Partitioner, num_bins: int | None = None) -> float:
    """Mean JS divergence between each non-empty client's length histogram and the global one."""
    hists = length_bin_histograms(partitioner, num_bins)
    reference = global_length_histogram(partitioner, num_bins)
    values = [js_divergence(h, reference) for h in hists if h.sum() > 0]
    return float(np.mean(values)) if values else 0.0
