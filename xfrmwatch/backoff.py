"""Exponential back-off with jitter on trio's clock: the one used by every retry loop
(output delivery, output supervision, resync after an overrun).

stamina (on tenacity) was considered and not used: its time bound is measured
on the wall clock (``time.monotonic``), not trio's, so a retry window could not
be tested on trio's mock clock; and our loops retry until their queue closes
(then for a drain deadline) and reset on success, which is a few lines here.
"""

from __future__ import annotations

import random

import trio

__all__ = ["Backoff"]


class Backoff:
    """Each :meth:`sleep` waits between half and all of the current delay, which then
    doubles up to ``maximum``; :meth:`reset` after a success starts again at ``initial``."""

    __slots__ = ("_next", "initial", "maximum")

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def delay(self) -> float:
        d = self._next * random.uniform(0.5, 1.0)  # jitter, not crypto
        self._next = min(self._next * 2, self.maximum)
        return d

    async def sleep(self) -> None:
        await trio.sleep(self.delay())
