"""The compiled rules, shared and immutable (:class:`RuleSet`), and the live state
of one event stream (:class:`RuleState`, one per watched namespace).

A :class:`RuleSet` is what :func:`~xfrmwatch.detect.sigma.load_rules` returns:
compiled matchers, correlations and their metadata; it never changes, so every
namespace shares one.  :meth:`RuleSet.new_state` gives a :class:`RuleState`:
the correlation windows, the suppression table and an event counter, fed every
event with trio's clock through :meth:`RuleState.process`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .conditions import Matcher
from .correlations import Correlation, Limits, Windows
from .fields import Path, get, resolve
from .hits import Hit, RuleInfo, RuleMeta, group_key
from .prefilter import Types
from .suppression import Suppressor

__all__ = ["Detection", "RuleSet", "RuleState", "RuleStateStatistics"]


@dataclass(frozen=True)
class Detection:
    """One compiled detection rule."""

    meta: RuleMeta
    match: Matcher
    suppress_by: tuple[tuple[str, Path], ...]
    types: Types = None  # event types it can match (None: any)

    def group(self, event: Any) -> dict[str, Any]:
        """The ``suppress_by`` values of a matching event."""
        out: dict[str, Any] = {}
        for name, parts in self.suppress_by:
            found = resolve(event, parts)
            out[name] = None if not found else found[0] if len(found) == 1 else found
        return out


class RuleSet:
    """Compiled rules (never changed once built; share one between namespaces)."""

    __slots__ = (
        "_any_type", "_by_class", "_by_type", "correlations", "default_suppress", "detections", "limits", "rules",
    )  # fmt: skip

    def __init__(
        self,
        detections: Sequence[Detection] = (),
        correlations: Sequence[Correlation] = (),
        rules: Sequence[RuleInfo] = (),
        *,
        default_suppress: float = 60.0,
        limits: Limits | None = None,
    ) -> None:
        if default_suppress < 0:
            raise ValueError("default_suppress must not be negative")
        self.detections: tuple[Detection, ...] = tuple(detections)
        self.correlations: tuple[Correlation, ...] = tuple(correlations)
        #: every loaded rule, referenced rules first
        self.rules: tuple[RuleInfo, ...] = tuple(rules)
        self.default_suppress = default_suppress
        self.limits = limits or Limits()
        # the static per-type pre-filter: rules that require another `type` are skipped
        named = frozenset(t for d in self.detections if d.types is not None for t in d.types)
        self._any_type = tuple(d for d in self.detections if d.types is None)
        self._by_type: Mapping[str, tuple[Detection, ...]] = {
            t: tuple(d for d in self.detections if d.types is None or t in d.types) for t in named
        }
        #: the same answer per event class (an event struct's `type` is its class's tag)
        self._by_class: dict[type, tuple[Detection, ...]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def for_type(self, event: Any) -> tuple[Detection, ...]:
        """The detection rules that can match this event's type (the same answer as
        evaluating them all, without evaluating those that require another type)."""
        cls = type(event)
        found = self._by_class.get(cls)
        if found is not None:
            return found
        t = get(event, "type")
        found = self._by_type.get(t.lower(), self._any_type) if isinstance(t, str) else self._any_type
        if isinstance(event, msgspec.Struct) and "type" not in cls.__struct_fields__:
            self._by_class[cls] = found
        return found

    def new_state(self) -> RuleState:
        """Fresh live state for one event stream."""
        return RuleState(self)


@dataclass(frozen=True)
class RuleStateStatistics:
    """What a :class:`RuleState` holds right now."""

    events: int
    groups: tuple[int, ...]  # open groups per correlation
    suppressed: int  # (rule, group) pairs with a suppression period


class RuleState:
    """The live state of one :class:`RuleSet` over one event stream (one namespace):
    correlation windows, suppression, event order.  Feed it every event with trio's clock."""

    __slots__ = ("_seq", "_suppressor", "_windows", "ruleset")

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._seq = 0
        self._windows = tuple(Windows() for _ in ruleset.correlations)
        self._suppressor = Suppressor(ruleset.limits.max_groups)

    def statistics(self) -> RuleStateStatistics:
        return RuleStateStatistics(
            events=self._seq, groups=tuple(len(w) for w in self._windows), suppressed=len(self._suppressor)
        )

    def _emit(self, m: RuleMeta, group: Any, hit: Hit, now: float, out: list[Hit]) -> None:
        if m.suppress <= 0:
            out.append(hit)
            return
        held = self._suppressor.admit(m.index, group, m.suppress, now)
        if held is None:
            return
        out.append(msgspec.structs.replace(hit, suppressed=held) if held else hit)

    def process(self, event: Any, now: float) -> list[Hit]:
        """Evaluate every rule on ``event`` at time ``now`` (seconds, monotonic); the hits to report."""
        rs = self.ruleset
        self._seq += 1
        seq = self._seq
        detections = rs.for_type(event)
        if not detections:
            # no rule can match this type (most events of a burst): nothing to count; the
            # windows and suppressions are swept at the next event a rule can match
            return []
        out: list[Hit] = []
        occurred: dict[int, list[Any]] = {}
        for d in detections:
            if not d.match(event):
                continue
            occurred[d.meta.index] = [event]
            if d.meta.output:
                group = d.group(event)
                hit = d.meta.hit(group=group, events=[event], now=now)
                self._emit(d.meta, group_key(group), hit, now, out)
        for c, windows in zip(rs.correlations, self._windows, strict=True):
            for pos, ref in enumerate(c.refs):
                for payload in occurred.get(ref, ()):
                    fired = c.feed(windows, pos, payload, seq, now, rs.limits)
                    if fired is None:
                        continue
                    gkey, hit = fired
                    occurred.setdefault(c.meta.index, []).append(hit)
                    if c.meta.output:
                        self._emit(c.meta, gkey, hit, now, out)
            c.sweep(windows, now)
        self._suppressor.expire(now)
        return out
