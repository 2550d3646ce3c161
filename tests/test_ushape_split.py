"""A U-shaped split step computes exactly what the unsplit model computes (docs/architecture.md,
D15): client blocks [0, k) -> server [k, M - t) -> client tail [M - t, M), head and loss, and the
gradients back the same way."""

from __future__ import annotations

import pytest

from splitft.errors import ModelError
from splitft.model.segments import Segments
from splitft.model.split import token_stats
from test_split import unsplit_step

from _models import FAMILIES, batch, leaves, tiny_split


def u_step(model, layout, adapters, cut, tail, b):
    """Loss and every LoRA gradient of one U-shaped step, each hand-over detached as on the wire."""
    seg = Segments(model.num_blocks, cut, tail)
    client = leaves(adapters, layout.names(seg.client_blocks))
    server = leaves(adapters, layout.names(seg.server_blocks))
    mask = b["attention_mask"]
    head_out = model.client_forward(cut, b["input_ids"], mask, client)
    up = head_out.detach().requires_grad_(True)
    middle_out = model.middle_forward(cut, seg.tail_start, up, mask, server)
    down = middle_out.detach().requires_grad_(True)
    nll, tokens, _ = token_stats(model.server_forward(seg.tail_start, down, mask, client), b["labels"])
    loss = nll / tokens
    loss.backward()  # the client's tail and head
    middle_out.backward(down.grad)  # the server, from the gradient the client sends up
    head_out.backward(up.grad)  # the client's first part, from the gradient the server sends down
    return loss.detach(), {n: t.grad for n, t in {**client, **server}.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_u_shaped_step_equals_unsplit(family, padding_side):
    model, layout, adapters = tiny_split(family)
    b = batch(padding_side)
    ref_loss, ref_grads = unsplit_step(model, adapters, b)
    m = model.num_blocks
    shapes = [(k, t) for k in range(1, m) for t in range(1, m) if k + t <= m - 1]
    assert len(shapes) >= 3
    for cut, tail in shapes:
        loss, grads = u_step(model, layout, adapters, cut, tail, b)
        assert abs(float(loss - ref_loss)) <= 1e-5
        assert grads.keys() == ref_grads.keys()
        worst = max(float((grads[n] - ref_grads[n]).abs().max()) for n in grads)
        assert worst <= 1e-5, f"{family} cut {cut} tail {tail}: max grad diff {worst}"


def test_segments_of_a_u_shape():
    seg = Segments(num_blocks=10, cut=3, tail=2)
    assert seg.client_blocks == [0, 1, 2, 8, 9] and list(seg.server_blocks) == [3, 4, 5, 6, 7]
    assert seg.client_boundary == {2, 8} and seg.server_boundary == {3, 7}
    one = Segments(num_blocks=4, cut=2, tail=1)  # the server runs one block: both its boundaries
    assert list(one.server_blocks) == [2] and one.server_boundary == {2}
    vanilla = Segments(num_blocks=10, cut=3)
    assert vanilla.client_blocks == [0, 1, 2] and vanilla.client_boundary == {2}
    assert list(vanilla.server_blocks) == list(range(3, 10)) and vanilla.server_boundary == {3}


@pytest.mark.parametrize(("cut", "end"), [(2, 2), (2, 4), (3, 2)])
def test_an_empty_or_headless_server_part_is_a_clear_error(cut, end):
    model, _, adapters = tiny_split("llama")
    b = batch("right")
    hidden = model.client_forward(1, b["input_ids"], b["attention_mask"], adapters)
    with pytest.raises(ModelError, match="server part"):
        model.middle_forward(cut, end, hidden, b["attention_mask"], adapters)
