"""FedAvg of changes (docs/architecture.md, D3): weighted, per component, nothing decays."""

from __future__ import annotations

import torch

from splitft.algorithms.aggregation import ChangeAccumulator

A = "model.layers.0.self_attn.q_proj.lora_A.default.weight"  # (r, in)
B = "model.layers.0.self_attn.q_proj.lora_B.default.weight"  # (out, r)


def test_weighted_mean_of_changes_is_added_to_the_start():
    start = {A: torch.randn(4, 6, generator=torch.Generator().manual_seed(0))}
    one, two = start[A] + 1.0, start[A] - 2.0
    acc = ChangeAccumulator()
    acc.add(A, start[A], one, rank=4, weight=3.0)
    acc.add(A, start[A], two, rank=4, weight=1.0)
    merged = acc.apply(start)
    # (start + 1) - start is 1 only to float rounding: compare to that rounding, not bit for bit
    assert torch.allclose(merged[A], start[A] + (3 * 1.0 + 1 * -2.0) / 4, atol=1e-6)


def test_rank_cut_copy_changes_only_its_components_and_nothing_decays():
    """A rank-2 copy of a rank-4 tensor: its zeroed components are 'not trained', not 'set to 0'."""
    start = {A: torch.randn(4, 6), B: torch.randn(5, 4)}
    copy_a = start[A].clone()
    copy_a[2:] = 0  # how a rank-2 copy holds the tensor
    copy_a[:2] += 0.5  # what it trained
    copy_b = start[B].clone()
    copy_b[:, 2:] = 0
    copy_b[:, :2] -= 0.25
    acc = ChangeAccumulator()
    acc.add(A, start[A], copy_a, rank=2, weight=1.0)
    acc.add(B, start[B], copy_b, rank=2, weight=1.0)
    merged = acc.apply(start)
    assert torch.allclose(merged[A][:2], start[A][:2] + 0.5)
    assert torch.equal(merged[A][2:], start[A][2:])
    assert torch.allclose(merged[B][:, :2], start[B][:, :2] - 0.25)
    assert torch.equal(merged[B][:, 2:], start[B][:, 2:])


def test_each_component_is_normalised_over_the_clients_that_trained_it():
    start = {A: torch.zeros(4, 3)}
    full = torch.ones(4, 3)  # rank 4, weight 1: change +1 everywhere
    partial = torch.zeros(4, 3)
    partial[:2] = 3.0  # rank 2, weight 1: change +3 on the first two rows only
    acc = ChangeAccumulator()
    acc.add(A, start[A], full, rank=4, weight=1.0)
    acc.add(A, start[A], partial, rank=2, weight=1.0)
    merged = acc.apply(start)[A]
    assert torch.allclose(merged[:2], torch.full((2, 3), 2.0))  # (1 + 3) / 2
    assert torch.allclose(merged[2:], torch.full((2, 3), 1.0))  # only the rank-4 copy trained these


def test_client_and_server_sides_merge_with_one_normalisation():
    """Fed server (client-side copies) and main server (server-side copies) sum, then divide once."""
    start = {A: torch.zeros(2, 2)}
    fed, main = ChangeAccumulator(), ChangeAccumulator()
    fed.add(A, start[A], torch.full((2, 2), 4.0), rank=2, weight=1.0)
    main.add(A, start[A], torch.full((2, 2), 1.0), rank=2, weight=3.0)
    merged = fed.merge(main).apply(start)[A]
    assert torch.allclose(merged, torch.full((2, 2), (4.0 + 3.0) / 4.0))


def test_untrained_tensor_keeps_its_value():
    start = {A: torch.randn(4, 6), B: torch.randn(5, 4)}
    acc = ChangeAccumulator()
    acc.add(A, start[A], start[A] + 1, rank=4, weight=1.0)
    merged = acc.apply(start)
    assert torch.equal(merged[B], start[B])


def test_fed_server_folding_uploads_as_they_arrive_equals_merging_them_at_once():
    """FedServer.receive keeps one upload at a time (fedavg) or all of them (svd); either way
    the merge is bit-identical to merging the whole list."""
    from splitft.model.lora import copy_ranks, full_ranks
    from splitft.roles.fed_server import FedServer
    from splitft.wire.codec import Entry, encode_message
    from splitft.wire.messages import adapter_entries

    from _models import tiny_split

    model, layout, start = tiny_split("llama")
    gen = torch.Generator().manual_seed(3)
    uploads = []
    for i, cut in enumerate((1, 2, 3)):
        ranks = copy_ranks(layout, range(cut), cut - 1, 8)
        trained = {n: start[n] + 0.01 * torch.randn(start[n].shape, generator=gen) for n in ranks}
        entries = [*adapter_entries(trained, ranks), Entry("control", "control", {"samples": 10 + i})]
        uploads.append((encode_message(entries).data, ranks))
    server_side = [
        FedServer(layout, start, "fedavg").contribution(
            encode_message(
                [*adapter_entries(start, full_ranks(layout)), Entry("control", "control", {"samples": 5})]
            ).data,
            full_ranks(layout),
        )
    ]
    for mode in ("fedavg", "svd"):
        streamed, listed = FedServer(layout, dict(start), mode), FedServer(layout, dict(start), mode)
        weights = [streamed.receive(payload, ranks) for payload, ranks in uploads]
        assert weights == [10.0, 11.0, 12.0]
        streamed.merge(server_side=server_side)
        listed.merge([listed.contribution(payload, ranks) for payload, ranks in uploads], server_side)
        assert streamed.global_adapters.keys() == listed.global_adapters.keys()
        assert all(torch.equal(streamed.global_adapters[n], listed.global_adapters[n]) for n in start)
        assert any(not torch.equal(streamed.global_adapters[n], start[n]) for n in start)  # it merged
        assert streamed._held == [] and streamed._received.weighted == {}  # nothing kept for the next round
