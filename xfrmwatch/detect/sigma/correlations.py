"""Sigma correlation rules: ``event_count``, ``value_count``, ``temporal``, ``temporal_ordered``.

A compiled :class:`Correlation` is immutable and shared; the groups it is
counting live in a :class:`Windows` of each rule state (one per namespace).
A condition is evaluated when a referenced rule matches, over the window that
ends then; a group whose correlation fired starts afresh.  Events lacking a
``group-by`` field are not counted.  ``temporal`` counts the distinct rules seen
in the window; ``temporal_ordered`` needs every rule, in order, by distinct events.
"""

from __future__ import annotations

import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
)

from .documents import RuleDocument
from .fields import Path, resolve, split
from .hits import Hit, RuleMeta, hashable
from .linking import refers_to

__all__ = ["Correlation", "Limits", "Windows", "compile_correlation"]


@dataclass(frozen=True)
class Limits:
    """Bounds on what a rule state keeps."""

    #: open correlation groups per correlation, and suppressed groups (least recently used forgotten)
    max_groups: int = 10_000
    #: triggering events a hit carries at most (the latest)
    max_hit_events: int = 20
    #: matches one group's window keeps per referenced rule (the oldest dropped)
    max_window_events: int = 10_000

    def __post_init__(self) -> None:
        if min(self.max_groups, self.max_hit_events, self.max_window_events) < 1:
            raise ValueError("rule set limits must be positive")


@dataclass
class _Entry:
    t: float
    seq: int
    payload: Any  # an event, or the Hit of a referenced correlation
    values: tuple[Hashable, ...] = ()


@dataclass
class _Group:
    values: dict[str, Any]
    slots: list[deque[_Entry]]
    touched: float
    distinct: dict[Hashable, int] = field(default_factory=dict)

    def drop_oldest(self, slot: deque[_Entry]) -> None:
        old = slot.popleft()
        for v in old.values:
            n = self.distinct.get(v, 0) - 1
            if n > 0:
                self.distinct[v] = n
            else:
                self.distinct.pop(v, None)


class Windows:
    """The open groups of one correlation in one rule state, least recently used first."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: OrderedDict[Hashable, _Group] = OrderedDict()

    def __len__(self) -> int:
        return len(self.groups)


#: per referenced rule: (the name to look up in a referenced correlation's group, the path in an event)
Lookup = tuple[str, Path]


def _payload_values(payload: Any, lookup: Lookup) -> list[Any]:
    name, parts = lookup
    if isinstance(payload, Hit):
        if name in payload.group:
            v = payload.group[name]
            return [x for x in (v if isinstance(v, list) else [v]) if x is not None]
        return _payload_values(payload.events[-1], lookup) if payload.events else []
    return resolve(payload, parts)


def _flatten_events(payloads: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for p in payloads:
        if isinstance(p, Hit):
            out.extend(p.events)
        else:
            out.append(p)
    return out


@dataclass(frozen=True)
class Correlation:
    """One compiled correlation rule (shared, never changed)."""

    meta: RuleMeta
    ctype: str
    refs: tuple[int, ...]  # indices of the referenced rules
    group_by: tuple[str, ...]
    paths: tuple[tuple[Lookup, ...], ...]  # per ref position: a lookup per group-by name
    value_paths: tuple[Lookup, ...] | None  # value_count: per ref position
    span: float
    test: Callable[[int], bool]

    def _group(self, pos: int, payload: Any) -> tuple[Hashable, dict[str, Any]] | None:
        key: list[Hashable] = []
        values: dict[str, Any] = {}
        for out_name, lookup in zip(self.group_by, self.paths[pos], strict=True):
            found = _payload_values(payload, lookup)
            if not found:
                return None
            v = found[0] if len(found) == 1 else found
            key.append(hashable(v))
            values[out_name] = v
        return tuple(key), values

    def feed(
        self, windows: Windows, pos: int, payload: Any, seq: int, now: float, limits: Limits
    ) -> tuple[Hashable, Hit] | None:
        """Count one match of the rule at ``pos``; the group and hit if the correlation fires."""
        found = self._group(pos, payload)
        if found is None:
            return None
        entry = _Entry(now, seq, payload)
        if self.value_paths is not None:
            vals = _payload_values(payload, self.value_paths[pos])
            if not vals:
                return None
            entry.values = tuple({hashable(v): None for v in vals})
        gkey, gvalues = found
        nslots = len(self.refs) if self.ctype in ("temporal", "temporal_ordered") else 1
        groups = windows.groups
        g = groups.get(gkey)
        if g is None:
            g = groups[gkey] = _Group(gvalues, [deque() for _ in range(nslots)], now)
            while len(groups) > limits.max_groups:
                groups.popitem(last=False)
        else:
            groups.move_to_end(gkey)
            g.touched = now
        slot = g.slots[pos if nslots > 1 else 0]
        if len(slot) >= limits.max_window_events:
            g.drop_oldest(slot)
        slot.append(entry)
        for v in entry.values:
            g.distinct[v] = g.distinct.get(v, 0) + 1
        for s in g.slots:
            while s and s[0].t < now - self.span:
                g.drop_oldest(s)
        chain = self._fires(g)
        if chain is None:
            return None
        del groups[gkey]
        events = _flatten_events(e.payload for e in chain)[-limits.max_hit_events :]
        return gkey, self.meta.hit(group=g.values, events=events, now=now)

    def _fires(self, g: _Group) -> list[_Entry] | None:
        """The entries behind a firing, or ``None``."""
        if self.ctype == "event_count":
            return list(g.slots[0]) if self.test(len(g.slots[0])) else None
        if self.ctype == "value_count":
            return list(g.slots[0]) if self.test(len(g.distinct)) else None
        if self.ctype == "temporal":
            if not self.test(sum(1 for s in g.slots if s)):
                return None
            return sorted((e for s in g.slots for e in s), key=lambda e: e.seq)
        chain: list[_Entry] = []  # temporal_ordered: one entry per rule, strictly later events
        last = -1
        for s in g.slots:
            nxt = next((e for e in s if e.seq > last), None)
            if nxt is None:
                return None
            chain.append(nxt)
            last = nxt.seq
        return chain

    def sweep(self, windows: Windows, now: float) -> None:
        """Forget groups untouched for longer than the timespan."""
        groups = windows.groups
        while groups:
            first = next(iter(groups.values()))
            if first.touched >= now - self.span:
                break
            groups.popitem(last=False)


_OPS: dict[SigmaCorrelationConditionOperator, Callable[[Any, Any], bool]] = {
    SigmaCorrelationConditionOperator.LT: operator.lt,
    SigmaCorrelationConditionOperator.LTE: operator.le,
    SigmaCorrelationConditionOperator.GT: operator.gt,
    SigmaCorrelationConditionOperator.GTE: operator.ge,
    SigmaCorrelationConditionOperator.EQ: operator.eq,
    SigmaCorrelationConditionOperator.NEQ: operator.ne,
}


def compile_correlation(
    doc: RuleDocument, meta: RuleMeta, refs: list[int], ref_docs: list[RuleDocument]
) -> Correlation:
    """A checked correlation document, its referenced rules' indices and documents -> :class:`Correlation`."""
    rule = doc.rule
    assert isinstance(rule, SigmaCorrelationRule)
    corr = doc.data["correlation"]
    aliases: dict[str, dict[str, str]] = corr.get("aliases") or {}
    group_by_value = corr.get("group-by") or []
    group_by = tuple(group_by_value if isinstance(group_by_value, list) else [group_by_value])

    def lookup(name: str, target: RuleDocument) -> Lookup:
        for ref, fieldname in aliases.get(name, {}).items():
            if refers_to(ref, target):
                name = fieldname
                break
        return name, split(name)

    ctype = rule.type.name.lower()
    cond = rule.condition
    value_paths = None
    if ctype == "value_count" and isinstance(cond, SigmaCorrelationCondition):
        value_paths = tuple(lookup(str(cond.fieldref), t) for t in ref_docs)
    if ctype == "temporal_ordered" or not isinstance(cond, SigmaCorrelationCondition):
        n = len(refs)
        test: Callable[[int], bool] = lambda k: k >= n  # noqa: E731
    else:
        op, bound = _OPS[cond.op], cond.count
        test = lambda k: op(k, bound)  # noqa: E731
    return Correlation(
        meta=meta,
        ctype=ctype,
        refs=tuple(refs),
        group_by=group_by,
        paths=tuple(tuple(lookup(g, t) for g in group_by) for t in ref_docs),
        value_paths=value_paths,
        span=float(rule.timespan.seconds),
        test=test,
    )
