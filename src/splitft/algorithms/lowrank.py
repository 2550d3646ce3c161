"""Low-rank algebra on LoRA factors (docs/architecture.md, D3-D4).

A LoRA update is ``B @ A`` (``B``: out x r, ``A``: r x in). Its factors are defined only up to
an r x r change of basis, so two things need a fixed basis:

* **canonical form**: ``A = c * V^T``, ``B = U * S / c`` where ``B @ A = U S V^T`` with singular
  values in decreasing order. The first ``k`` components are then the best rank-``k``
  approximation, ``c`` is the row norm LoRA's initialisation gives ``A`` (so training speed
  does not change), and signs are fixed (the largest entry of each ``V`` column is positive).
  A component with a zero singular value keeps an orthonormal row in ``A`` (from the
  orthogonal complement) and a zero column in ``B``: two zero factors would never train.
* **svd merge**: the weighted mean of several updates, truncated to rank ``r``.

Both use the cheap route: QR of the tall factors, then the SVD of a small core, never an
out x in matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# LoRA initialises A with kaiming_uniform(a=sqrt(5)): entries ~ U(-1/sqrt(in), 1/sqrt(in)),
# so the expected squared norm of a row is in * (1/in) / 3 = 1/3, independent of `in`.
LORA_ROW_NORM = 1.0 / math.sqrt(3.0)


def factored_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``left @ right`` (out x K times K x in) without forming it: ``U, S, V``.

    Returns ``U`` (out x K), ``S`` (K, decreasing) and ``V`` (in x K) with orthonormal columns.
    """
    dtype = left.dtype
    q_left, r_left = torch.linalg.qr(left.double())
    q_right, r_right = torch.linalg.qr(right.double().T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    return (q_left @ u).to(dtype), s.to(dtype), (q_right @ vh.T).to(dtype)


def _fix_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (u_j, v_j) pair so that v_j's largest-magnitude entry is positive."""
    idx = v.abs().argmax(dim=0)
    signs = torch.sign(v[idx, torch.arange(v.shape[1])])
    signs[signs == 0] = 1
    return u * signs, v * signs


def canonical_factors(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, rank: int, c: float = LORA_ROW_NORM
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of rank ``rank`` from an SVD: ``A = c V^T``, ``B = U S / c``."""
    u, v = _fix_signs(u[:, :rank], v[:, :rank])
    s = s[:rank]
    if v.shape[1] < rank:  # fewer directions than rows: fill A from the orthogonal complement
        full_q, _ = torch.linalg.qr(v.double(), mode="complete")
        extra = full_q[:, v.shape[1] : rank].to(v.dtype)
        v = torch.cat([v, extra], dim=1)
        u = torch.cat([u, u.new_zeros(u.shape[0], rank - u.shape[1])], dim=1)
        s = torch.cat([s, s.new_zeros(rank - s.shape[0])])
    return c * v.T.contiguous(), (u * (s / c)).contiguous()


def canonicalize(
    a: torch.Tensor, b: torch.Tensor, c: float = LORA_ROW_NORM
) -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical form of one LoRA pair; ``B @ A`` is unchanged."""
    u, s, v = factored_svd(b, a)
    return canonical_factors(u, s, v, a.shape[0], c)


def svd_merge(
    start: tuple[torch.Tensor, torch.Tensor],
    updates: Sequence[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    rank: int,
    c: float = LORA_ROW_NORM,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Add the weighted mean change of ``B @ A`` to ``start`` and keep the best rank ``rank``.

    ``start = (A0, B0)``; each update is ``(weight, A_i, B_i, A_i_start, B_i_start)``: a
    client's trained pair and the pair it started from (its rank-``r_cut`` copy of the start,
    for a cut block). Returns ``(A, B, truncation_error)`` where the error is the Frobenius
    norm of the dropped singular values.
    """
    a0, b0 = start
    total = sum(w for w, *_ in updates)
    lefts, rights = [b0], [a0]
    for w, a, b, a_start, b_start in updates:
        f = w / total
        lefts += [f * b, -f * b_start]
        rights += [a, a_start]
    u, s, v = factored_svd(torch.cat(lefts, dim=1), torch.cat(rights, dim=0))
    error = float(s[rank:].double().pow(2).sum().sqrt())
    a_new, b_new = canonical_factors(u, s, v, rank, c)
    return a_new, b_new, error
