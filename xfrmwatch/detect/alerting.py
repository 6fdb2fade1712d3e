"""The rules in stage 3 of the pipeline: every event in, the alerts it raises out.

An :class:`Alerter` pairs the shared, immutable rule set with this namespace's
own rule state.  A reload swaps the rule set (and starts a fresh state).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import events as ev
from ..timestamps import seconds

if TYPE_CHECKING:
    from .sigma import RuleSet, RuleState


class Alerter:
    """Rules over one namespace's events: ``alerter(event, now)`` -> alert events."""

    __slots__ = ("ruleset", "state")

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.state: RuleState = ruleset.new_state()

    def use(self, ruleset: RuleSet) -> None:
        """Switch to another rule set (a reload): its windows and suppression start empty."""
        self.ruleset = ruleset
        self.state = ruleset.new_state()

    def __call__(self, e: ev.Event, now: float) -> list[ev.Event]:
        """The alerts ``e`` raises, stamped with ``e``'s time (what triggered them, when; a
        replay's alerts carry the recorded times)."""
        hits = self.state.process(e, now)
        if not hits:
            return []
        wall = seconds(e.time)
        return [h.to_alert(wall=time.time() if wall is None else wall, netns=e.netns) for h in hits]
