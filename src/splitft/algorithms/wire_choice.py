"""Which format crosses the cut for which client: chosen with the cuts (docs/architecture.md, D14).

``policy.wire_formats`` lists the formats of activations and gradients the user accepts, from
the most faithful to the least (e.g. ``["fp32", "int8"]``: the list is the quality budget; the
compression results say what each format costs in perplexity). The rule:

    every client starts at the first format; while the client that finishes last (the one the
    round waits for) has a next format and moving it there shortens the predicted round by at
    least MIN_GAIN, it moves there.

Why this rule: only the client that sets the round's length is worth compressing (a faster
client's bytes do not end the round sooner), so every other client keeps the faithful format
and the quality cost is paid only where it buys time; a slow uplink therefore gets a smaller
format, a fast one never does. Requiring a real gain (1 %) keeps a client from compressing for
nothing when the server, not its link, is the bottleneck.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from splitft.sim.clock import RoundTiming

Wire = list[str | None]
"""One format per client (client order); None: the one [codec] configures."""
Predict = Callable[..., RoundTiming]
"""``predict(cuts)`` or ``predict(cuts, wire)``: a predicted round, ``per_client_s`` by client."""
MIN_GAIN = 0.01


def choose_wire(
    predict: Predict, cuts: Sequence[int], clients: Sequence[int], formats: Sequence[str]
) -> Wire:
    """The formats of the rule above for ``cuts``; clients not in ``clients`` get None."""
    wire: Wire = [formats[0] if i in clients else None for i in range(len(cuts))]
    timing = predict(list(cuts), wire)
    while clients:
        last = max(clients, key=lambda i: (timing.per_client_s[i], -i))
        level = formats.index(wire[last])
        if level + 1 >= len(formats):
            break
        trial = wire[:last] + [formats[level + 1]] + wire[last + 1 :]
        trial_timing = predict(list(cuts), trial)
        if trial_timing.makespan_s > (1.0 - MIN_GAIN) * timing.makespan_s:
            break
        wire, timing = trial, trial_timing
    return wire
