"""Suppression of repeated hits: the ``xfrmwatch:`` options of a rule, and their state.

Options (on a detection or a correlation rule)::

    xfrmwatch:
      suppress: 5m            # period (30s, 5m, 1h, 1d or seconds); 0 turns it off
      suppress_by: [sa.spi]   # detection rules only: what makes two hits "the same"

A repeated hit of the same rule for the same group within the period is held
back and counted; the next hit after the period carries ``suppressed: N``.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["OPTION_KEYS", "Suppressor", "parse_period"]

OPTION_KEYS = ("suppress", "suppress_by")

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_period(v: Any) -> float | None:
    """Seconds from ``30s``/``5m``/``1h``/``1d``/``2w`` or a number; ``None`` if invalid."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) and v >= 0 else None
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", v)
        if m:
            return float(m[1]) * _UNITS[m[2]]
    return None


class Suppressor:
    """Which (rule, group) pairs are held back until when, and how many hits were held.

    Bounded: beyond ``max_entries`` the oldest entries are forgotten.
    """

    __slots__ = ("_held", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # (rule index, group) -> [suppressed until, count held back]
        self._held: OrderedDict[tuple[int, Hashable], list[float]] = OrderedDict()

    def admit(self, rule: int, group: Hashable, period: float, now: float) -> int | None:
        """None: hold this hit back (counted).  Otherwise the number held back before it."""
        key = (rule, group)
        state = self._held.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return None
        held = int(state[1]) if state is not None else 0
        self._held[key] = [now + period, 0]
        self._held.move_to_end(key)
        while len(self._held) > self.max_entries:
            self._held.popitem(last=False)
        return held

    def expire(self, now: float) -> None:
        """Forget periods that are over with nothing held back."""
        while self._held:
            first = next(iter(self._held.values()))
            if first[0] > now or first[1]:
                break
            self._held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)
