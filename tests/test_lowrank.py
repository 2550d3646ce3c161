"""Canonical LoRA form and the svd merge (docs/architecture.md, D3-D4)."""

from __future__ import annotations

import pytest
import torch

from splitft.algorithms.lowrank import LORA_ROW_NORM, canonicalize, factored_svd, svd_merge


def pair(rank=6, out=20, inp=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rank, inp, generator=gen, dtype=torch.float64), torch.randn(
        out, rank, generator=gen, dtype=torch.float64
    )


def test_canonicalize_keeps_the_update_and_fixes_the_scale():
    a, b = pair()
    ca, cb = canonicalize(a, b)
    assert torch.allclose(cb @ ca, b @ a, atol=1e-10)
    assert torch.allclose(ca.norm(dim=1), torch.full((6,), LORA_ROW_NORM, dtype=torch.float64))
    assert torch.allclose(ca @ ca.T, LORA_ROW_NORM**2 * torch.eye(6, dtype=torch.float64), atol=1e-12)


def test_canonical_form_does_not_depend_on_the_basis():
    """Two factorisations of one update (A, B) and (M A, B M^-1) have one canonical form."""
    a, b = pair()
    m = torch.randn(6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 3 * torch.eye(6)
    first = canonicalize(a, b)
    second = canonicalize(m @ a, b @ torch.linalg.inv(m))
    assert torch.allclose(first[0], second[0], atol=1e-8)
    assert torch.allclose(first[1], second[1], atol=1e-8)
    again = canonicalize(a, b)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_first_components_are_the_best_low_rank_approximation():
    a, b = pair()
    ca, cb = canonicalize(a, b)
    s = torch.linalg.svdvals(b @ a)
    for k in range(1, 6):
        err = torch.linalg.norm(b @ a - cb[:, :k] @ ca[:k])
        assert err == pytest.approx(float(s[k:].pow(2).sum().sqrt()), rel=1e-8)


def test_rank_deficient_update_fills_a_from_the_complement_with_zero_b():
    """A fresh LoRA pair (B = 0): A keeps orthonormal rows at init scale, B stays zero."""
    a, _ = pair()
    b = torch.zeros(20, 6, dtype=torch.float64)
    ca, cb = canonicalize(a, b)
    assert torch.equal(cb, torch.zeros_like(cb))
    assert torch.allclose(ca @ ca.T, LORA_ROW_NORM**2 * torch.eye(6, dtype=torch.float64), atol=1e-12)


def test_factored_svd_matches_the_dense_svd():
    a, b = pair(rank=4)
    u, s, v = factored_svd(b, a)
    assert torch.allclose(u @ torch.diag(s) @ v.T, b @ a, atol=1e-10)
    assert torch.allclose(s, torch.linalg.svdvals(b @ a)[:4], atol=1e-10)


def test_svd_merge_is_the_best_rank_r_approximation_of_the_weighted_mean_update():
    a0, b0 = pair(seed=1)
    updates = []
    dense_change = torch.zeros(20, 12, dtype=torch.float64)
    weights = [3.0, 1.0, 2.0]
    for i, w in enumerate(weights):
        a, b = pair(seed=10 + i)
        rank = 6 if i != 1 else 3  # client 1 trained a rank-3 copy of this block
        a_start, b_start = a0.clone(), b0.clone()
        a_start[rank:], b_start[:, rank:] = 0, 0
        a[rank:], b[:, rank:] = 0, 0
        updates.append((w, a, b, a_start, b_start))
        dense_change += w * (b @ a - b_start @ a_start)
    target = b0 @ a0 + dense_change / sum(weights)
    new_a, new_b, error = svd_merge((a0, b0), updates, rank=6)
    u, s, vh = torch.linalg.svd(target)
    best = u[:, :6] @ torch.diag(s[:6]) @ vh[:6]
    assert torch.allclose(new_b @ new_a, best, atol=1e-8)
    assert error == pytest.approx(float(s[6:].pow(2).sum().sqrt()), rel=1e-8)
    assert torch.allclose(new_a.norm(dim=1), torch.full((6,), LORA_ROW_NORM, dtype=torch.float64))
