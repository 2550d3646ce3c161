"""The round loop of a U-shaped split (``split.shape = "u"``; docs/architecture.md, D15).

Everything but the step and the held-out check is the vanilla loop's (``split_loop.py``). One
step of client ``i`` has four transfers instead of two, and the labels never leave the client:

1. ``forward_step``: the client runs blocks ``[0, k)`` and sends the hidden state and the
   attention mask up;
2. ``MainServer.forward_middle`` runs blocks ``[k, M - t)`` and keeps its graph; its output
   goes down with ``tail_step``: the client runs ``[M - t, M)``, the head and the loss,
   backpropagates them and sends the gradient at ``M - t`` and the loss statistics up;
3. ``MainServer.backward_middle`` backpropagates that gradient, steps the server's copy and
   returns the gradient at ``k``, which goes down with ``backward_step`` (the client's
   backward through ``[0, k)`` and its optimizer step over both of its parts).
"""

from __future__ import annotations

from typing import Any

from splitft.methods.split_loop import SplitRoundLoop
from splitft.model.lora import Adapters
from splitft.roles.main_server import StepStats
from splitft.wire.checks import step_stats
from splitft.wire.messages import read


class USplitRoundLoop(SplitRoundLoop):
    def _serve(
        self, round_number: int, i: int, smashed: bytes, global_step: int, dropped: list[dict]
    ) -> tuple[bytes, Any] | None:
        """The server's middle, the client's tail, the server's backward (steps 2 and 3 above)."""
        server = self.main_server
        down = self._read(round_number, i, "forward_step", dropped, server.forward_middle, i, smashed)
        if down is None:
            return None
        up = self._call(round_number, i, "tail_step", down, dropped)
        if up is None:
            server.forget_step(i)
            return None
        return self._read(round_number, i, "tail_step", dropped, server.backward_middle, i, up, global_step)

    def _score(
        self, round_number: int, i: int, payload: bytes, adapters: Adapters, dropped: list[dict]
    ) -> Any:
        """The server runs the global set's middle on the client's held-out hidden states; the
        client scores them with its tail and sends back only the loss statistics."""
        down = self._read(
            round_number, i, "heldout_forward", dropped, self.main_server.score_middle, i, payload, adapters
        )
        if down is None:
            return None
        if not read(down):  # nothing held out
            return StepStats(0.0, 0, 0)
        reply = self._call(round_number, i, "heldout_score", down, dropped)
        if reply is None:
            return None
        stats = self._read(
            round_number, i, "heldout_score", dropped, lambda: step_stats(read(reply).get("control"))
        )
        return None if stats is None else StepStats(*stats)
