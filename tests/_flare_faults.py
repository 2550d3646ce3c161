"""Test-only fault injection for FLARE jobs: a site that fails on purpose.

Production sites read nothing of this (a site config accepts ``data_path`` and ``device``
only); a test's job ships this subclass instead of :class:`SplitFTSite` (FLARE copies its
source into the job, so the site processes can import it).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from splitft.runtime.flare import CLIENT_METHODS, SplitFTSite


class FailingSite(SplitFTSite):
    """A site whose ``fail_on`` names ``site:method:n[:kill]``: on that site, the n-th call of
    ``method`` raises (or, with ``kill``, the site's process dies, as a crashed host would)."""

    def __init__(self, config: dict, fail_on: str = "") -> None:
        super().__init__(config)
        self.fail_on = fail_on

    def _handle(self, method: str, payload: bytes) -> bytes:
        site, fail_method, nth, how = (self.fail_on.split(":") + ["", "", ""])[:4]
        if self.name == site and method == fail_method and method in CLIENT_METHODS:
            self.injected = getattr(self, "injected", Counter())
            self.injected[method] += 1
            if self.injected[method] == int(nth or 1):
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(
                    f"site {self.name}: injected failure at {method} call {self.injected[method]}"
                )
        return super()._handle(method, payload)
