"""Predicted round time of the paper's "Same Split" (every client at cut 2) against the
resource-optimal cuts, over server speeds and device mixes (docs/results.md).

    PYTHONPATH=src python scripts/predicted_speedups.py

Only the cost model and the virtual clock run (no training): for SmolLM2's shape (first 8
blocks, and all 30), batch 4, 64 tokens, 5 clients, one local step.
"""

from splitft.algorithms.policy import AllocationContext, best_resource_cuts
from splitft.model.loading import smollm2_config
from splitft.sim.clock import predict_round
from splitft.sim.costs import ModelShape
from splitft.sim.devices import device_preset, server_profile
from splitft.sim.memory import check_fits

SERVERS = [
    ("idle (20 TFLOP/s)", "idle"),
    ("2 TFLOP/s", 2e12),
    ("busy (400 GFLOP/s)", "busy"),
    ("100 GFLOP/s", 1e11),
]


def smollm2(layers: int) -> ModelShape:
    return ModelShape.from_hf_config(smollm2_config(layers))


print("| blocks | devices | server | same split (cut 2) | best cuts | predicted round time | speed-up |")
print("|---|---|---|---|---|---|---|")
for layers in (8, 30):
    shape = smollm2(layers)
    for mix in ("hetero", "homogeneous"):
        devices = device_preset(mix, 5)
        max_cut = [min(c, layers - 1) for c in check_fits(shape, devices, 4, 64)]
        for label, speed in SERVERS:
            server = server_profile(speed)

            def predict(cuts, devices=devices, shape=shape, server=server):
                return predict_round(devices, cuts, shape, server, 4, 64)

            same = predict([2] * 5).makespan_s
            cuts, timing = best_resource_cuts(AllocationContext(1, [2] * 5, max_cut, predict))
            print(
                f"| {layers} | {mix} | {label} | {same:.2f} s | {cuts} | {timing.makespan_s:.2f} s "
                f"| {same / timing.makespan_s:.2f}x |"
            )
