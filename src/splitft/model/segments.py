"""Which blocks each side runs for one client, in a vanilla or a U-shaped split
(docs/architecture.md, D15).

With ``M`` blocks, cut ``k`` and tail ``t`` (``t = 0``: vanilla), the client runs the
embeddings and blocks ``[0, k)`` and, in a U shape, blocks ``[M - t, M)`` with the final norm,
the head and the loss; the main server runs ``[k, M - t)`` (and, vanilla, the head and the
loss). The reduced LoRA rank applies at every boundary between the two sides: the client's
blocks ``k - 1`` and ``M - t``, the server's blocks ``k`` and ``M - t - 1`` (one block when the
server runs only one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from splitft.errors import ConfigError
from splitft.model.lora import AdapterLayout


@dataclass(frozen=True)
class Segments:
    """The two sides of one client's split."""

    num_blocks: int
    cut: int
    tail: int = 0
    """Blocks the client runs after the server (0: a vanilla split)."""

    @property
    def tail_start(self) -> int:
        """First block of the client's tail (``M`` when there is none)."""
        return self.num_blocks - self.tail

    @property
    def client_blocks(self) -> list[int]:
        return [*range(self.cut), *range(self.tail_start, self.num_blocks)]

    @property
    def server_blocks(self) -> range:
        return range(self.cut, self.tail_start)

    @property
    def client_boundary(self) -> set[int]:
        """The client's blocks next to the server's: trained at the client's cut rank."""
        return {self.cut - 1, *([self.tail_start] if self.tail else [])}

    @property
    def server_boundary(self) -> set[int]:
        """The server's blocks next to the client's: trained at the server's cut rank."""
        return {self.cut, *([self.tail_start - 1] if self.tail else [])}

    def client_ranks(self, layout: AdapterLayout, r_cut: int) -> dict[str, int]:
        """Trained rank of each adapter tensor of the client's copy."""
        return side_ranks(layout, self.client_blocks, self.client_boundary, r_cut)

    def server_ranks(self, layout: AdapterLayout, r_cut: int) -> dict[str, int]:
        """Trained rank of each adapter tensor of the server's copy for this client."""
        return side_ranks(layout, self.server_blocks, self.server_boundary, r_cut)


def side_ranks(
    layout: AdapterLayout, blocks: Sequence[int], boundary: set[int], r_cut: int
) -> dict[str, int]:
    """``r_cut`` for the tensors of ``boundary`` blocks, ``r_others`` for the rest of ``blocks``."""
    return {name: (r_cut if b in boundary else layout.rank) for b in blocks for name in layout.names([b])}


def check_tail_length(tails: Sequence[int], num_blocks: int) -> None:
    """ConfigError for a tail beyond the model: the client's first part and the server need a
    block each, so ``t <= M - 2``."""
    for i, tail in enumerate(tails):
        if tail > num_blocks - 2:
            raise ConfigError(
                f"split.tail {tail} (client {i}) is beyond the model: the model has {num_blocks} blocks, "
                f"so at most {num_blocks - 2} (one block each for the client's first part and the server)"
            )


def check_tails(cuts: Sequence[int], tails: Sequence[int], num_blocks: int) -> None:
    """ConfigError when a client's tail overlaps its first part or leaves the main server no
    block: ``k + t <= M - 1``."""
    check_tail_length(tails, num_blocks)
    for i, (cut, tail) in enumerate(zip(cuts, tails, strict=True)):
        if tail and cut + tail > num_blocks - 1:
            raise ConfigError(
                f"split.tail {tail} with split.cuts {cut} (client {i}) leaves the main server no block: "
                f"cut + tail must be <= {num_blocks - 1} (the model has {num_blocks} blocks)"
            )
