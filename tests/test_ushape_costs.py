"""What a U shape costs (docs/architecture.md, D15): FLOPs split exactly over the four legs,
the tail and the head in the client's memory, the clock's two server jobs per step, and the
cuts a policy may choose leave the tail to the client."""

from __future__ import annotations

from dataclasses import replace

import pytest

from splitft.config import Config
from splitft.model.loading import smollm2_config
from splitft.sim.clock import ClientWork, simulate_round
from splitft.sim.costs import ModelShape, StepCosts, block_ranks, unsplit_step_flops
from splitft.sim.memory import client_memory_bytes, max_cut_that_fits
from splitft.sim.timing import RoundTimer
from test_clock import CLIENT, SERVER, work
from test_devices import smollm2


@pytest.mark.parametrize(("cut", "tail"), [(1, 1), (2, 2), (5, 20), (28, 1)])
def test_the_four_legs_add_up_to_the_unsplit_step(cut, tail):
    shape = smollm2()
    u = StepCosts.for_cut(shape, cut, 4, 32, 16, 8, server_r_cut=4, tail=tail)
    total = u.client_forward_flops + u.client_backward_flops + u.server_flops + u.server_backward_flops
    ranks = block_ranks(shape.num_blocks, cut, 16, 8, 4, tail)
    assert total + u.tail_flops == unsplit_step_flops(shape, 4, 32, ranks)
    assert ranks[cut - 1] == ranks[shape.num_blocks - tail] == 8  # the client's boundary blocks
    assert ranks[cut] == ranks[shape.num_blocks - tail - 1] == 4  # the server's
    vanilla = StepCosts.for_cut(shape, cut, 4, 32, 16, 8, server_r_cut=4)
    assert u.tail_down_bytes == u.up_bytes - 4 * 32 == vanilla.down_bytes == u.tail_up_bytes
    assert u.up_bytes < vanilla.up_bytes  # no labels: 4 bytes a token less
    assert u.client_lora_params > vanilla.client_lora_params


def test_the_client_holds_its_tail_the_logits_and_an_untied_head():
    tied = smollm2()
    untied = replace(tied, tied=False)
    vanilla = client_memory_bytes(tied, 2, 4, 32, 1000)
    u = client_memory_bytes(tied, 2, 4, 32, 1000, tail=2)
    two_more_blocks = client_memory_bytes(tied, 4, 4, 32, 1000)
    logits = 4 * 2 * 4 * 32 * tied.vocab  # fp32 logits and their gradient
    assert u == two_more_blocks + logits  # a tied head is the embedding the client already holds
    assert client_memory_bytes(untied, 2, 4, 32, 1000, tail=2) == u + 4 * tied.vocab * tied.embed_dim
    chunked = client_memory_bytes(tied, 2, 4, 32, 1000, tail=2, loss_chunk=64)  # one chunk of logits
    assert chunked == u - logits + 4 * (64 * tied.vocab + 4 * 32 * tied.embed_dim)
    phone = replace(CLIENT, memory_bytes=vanilla + 40e6)
    assert max_cut_that_fits(tied, phone, 4, 32) > max_cut_that_fits(tied, phone, 4, 32, tail=2) >= 0


def test_a_u_step_queues_two_server_jobs_between_the_four_legs():
    u = work(tail_flops=4e9, server_backward_flops=1e10, tail_down_bytes=1e6, tail_up_bytes=5e5)
    timing = simulate_round(SERVER, [u])
    adapters_down, forward, upload = 0.01 + 1e5 / 2e6, 2.0, 0.01 + 1e6 / 1e6
    middle, down_hidden, tail, up_grad = 0.5, 0.01 + 1e6 / 2e6, 4.0, 0.01 + 5e5 / 1e6
    middle_back, download, backward, adapters_up = 1.0, 0.01 + 2e6 / 2e6, 3.0, 0.01 + 1e5 / 1e6
    expected = adapters_down + forward + upload + middle + down_hidden + tail + up_grad
    expected += middle_back + download + backward + adapters_up
    assert timing.makespan_s == pytest.approx(expected, rel=1e-12)
    assert timing.server_busy_s == pytest.approx(1.5)
    assert timing.breakdown[0].compute_s == pytest.approx(9.0)


def test_a_shared_server_serves_each_u_step_whole_in_client_order():
    """Client 1 is faster, but with a shared set its step waits for client 0's whole step (two
    jobs), as the loop applies them; FIFO serves its forward between client 0's two jobs."""
    slow = work(forward_flops=4e9, tail_flops=1e9, server_backward_flops=5e9)
    fast = replace(slow, forward_flops=1e9, device=replace(CLIENT, name="fast"))
    fifo, ordered = simulate_round(SERVER, [slow, fast]), simulate_round(SERVER, [slow, fast], in_order=True)
    assert ordered.breakdown[1].wait_s > fifo.breakdown[1].wait_s
    assert ordered.per_client_s[1] > fifo.per_client_s[1]
    assert ordered.per_client_s[0] == pytest.approx(simulate_round(SERVER, [slow]).per_client_s[0])


def test_policies_choose_cuts_that_leave_the_tail_and_predict_its_time():
    def timer(**split):
        cfg = Config().with_overrides({"devices.clients": "workstation", "data.max_length": "32", **split})
        return RoundTimer(cfg, smollm2_config(), 30)

    vanilla, u = timer(), timer(**{"split.shape": "u", "split.tail": "3"})
    assert vanilla.max_cut == [29] * 5 and u.max_cut == [26] * 5
    one, with_tail = vanilla.predict([2] * 5), u.predict([2] * 5)
    # the tail's three blocks, the head and the loss move from the server to a slower device
    assert with_tail.makespan_s > one.makespan_s
    assert with_tail.breakdown[0].compute_s > one.breakdown[0].compute_s
    assert with_tail.server_busy_s < one.server_busy_s


def test_a_vanilla_client_work_has_one_job_per_step():
    assert ClientWork(CLIENT, 1.0, 1.0, 1.0).jobs_per_step == 1
    assert work(tail_flops=1.0).jobs_per_step == 2
    assert ModelShape.from_hf_config(smollm2_config()).head_params == 0  # tied
