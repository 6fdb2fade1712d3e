"""What the rules report: a :class:`Hit` per firing, built from a rule's :class:`RuleMeta`."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from ... import events as ev
from .values import as_text

__all__ = ["Hit", "RuleInfo", "RuleMeta", "group_key", "hashable"]


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """A rule fired.  ``events``: the triggering event, or a correlation's window (the latest few)."""

    rule_id: str
    title: str
    level: str
    tags: list[str]
    kind: str  # "detection" or the correlation type
    group: dict[str, Any]
    events: list[Any]
    time: float  # the ``now`` it fired at
    suppressed: int = 0
    name: str | None = None
    source: str = ""  # rule file:line

    def to_alert(self, *, wall: float, netns: str) -> ev.Alert:
        """This hit as the schema's ``alert`` event (group values as strings); ``wall``:
        seconds since the epoch when it fired."""
        return ev.Alert(
            **ev.own_fields(netns, self.time, wall),
            rule=ev.RuleRef(id=self.rule_id, title=self.title, level=self.level, tags=list(self.tags)),
            group={k: _group_str(v) for k, v in self.group.items()},
            suppressed=self.suppressed,
            events=cast(
                list[ev.TriggerEvent],
                [e for e in self.events if isinstance(e, ev.Event) and not isinstance(e, ev.Alert)],
            ),
        )


class RuleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded rule: what it is, whether it produces hits itself."""

    rule_id: str
    title: str
    level: str
    kind: str
    output: bool
    source: str


@dataclass(frozen=True)
class RuleMeta:
    """A compiled rule's identity and reporting settings."""

    index: int  # position in the rule set (referenced rules first)
    rule_id: str
    name: str | None
    title: str
    level: str
    tags: tuple[str, ...]
    kind: str
    source: str
    output: bool  # produces hits itself (not only feeds a correlation)
    suppress: float  # seconds; 0: off

    def info(self) -> RuleInfo:
        return RuleInfo(
            rule_id=self.rule_id, title=self.title, level=self.level, kind=self.kind, output=self.output,
            source=self.source,
        )  # fmt: skip

    def hit(self, *, group: dict[str, Any], events: list[Any], now: float) -> Hit:
        return Hit(
            rule_id=self.rule_id, title=self.title, level=self.level, tags=list(self.tags), kind=self.kind,
            group=group, events=events, time=now, name=self.name, source=self.source,
        )  # fmt: skip


def _group_str(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(_group_str(x) for x in v)
    t = as_text(v)
    return t if t is not None else msgspec.json.encode(v).decode()


def hashable(v: Any) -> Hashable:
    """A group value as a dict key (lists as tuples, records as their JSON)."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(hashable(x) for x in v)
    return msgspec.json.encode(v)


def group_key(values: dict[str, Any]) -> Hashable:
    return tuple(hashable(v) for v in values.values())
