"""What a dashboard sees of one namespace's tunnels, answered by the state stage on request.

The tunnel model belongs to the state stage (pipeline stage 2): no other task reads it.
A dashboard sends a :class:`BoardRequest` into that stage's input (the same channel the
source feeds, so a request is answered between two batches, from the state those batches
left); the stage answers with a :class:`Board`: immutable views of only the rows the
dashboard can show (sorted, filtered, ``limit`` rows from ``offset``), and counts.

A pass over every tunnel (a view of each, then a sort) takes about 400 ms at 100,000 SAs,
while a frame must cost at most 50 ms.  So while a dashboard asks, the stage keeps a
:class:`TunnelBoard`: each tunnel's last view and its place in the chosen order (a sorted
list), refreshed only for the tunnels touched since the previous request.  A tunnel's view
changes only with an event about one of its SAs, its policies or itself (derived events
come from the same stage), with a counters sample (rates), or with a flush or resync
(everything is refreshed).  The rows sent are fresh views, so their rates and countdowns
are those of the moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import trio
from sortedcontainers import SortedList

from . import events as ev
from .mirror import Mirror, PairKey, SAEntry, pair_key
from .tunnels import STATE_RANK, TunnelModel, TunnelView, urgency_key

Sort = Literal["urgency", "name", "age", "rekeys", "traffic"]
#: the orders a dashboard can ask for, in the order ``s`` cycles through them
SORTS: tuple[Sort, ...] = ("urgency", "name", "age", "rekeys", "traffic")
#: a row's place in its order (comparable across namespaces: the netns is the last part)
SortKey = tuple[float, float, str, str]


def sort_key(sort: Sort, v: TunnelView) -> SortKey:
    """Where a tunnel goes in ``sort`` (ascending): urgency (down, overdue, rekeying, then
    the soonest deadline), name, age (oldest first), rekeys (most first), traffic (busiest first)."""
    name = v.tunnel_id
    if sort == "urgency":
        rank, deadline = urgency_key(v)
        return float(rank), deadline, name, v.netns
    if sort == "name":
        return 0.0, 0.0, name, v.netns
    if sort == "age":
        return (v.established if v.established is not None else math.inf), 0.0, name, v.netns
    if sort == "rekeys":
        return float(-v.rekeys), 0.0, name, v.netns
    return -((v.in_rate or 0.0) + (v.out_rate or 0.0)), 0.0, name, v.netns


def search_text(v: TunnelView) -> str:
    """What ``/`` searches in a tunnel (lower case): id, addresses, selectors, SPIs, state, reqid."""
    words = (v.tunnel_id, v.netns, v.src, v.dst, *v.selectors, v.spi_in or "", v.spi_out or "", v.state)
    return " ".join((*words, f"reqid {v.reqid}", v.down_reason or "")).lower()


def needs_attention(v: TunnelView) -> bool:
    """A tunnel that is not simply up: establishing, rekeying, overdue, down, or stalled."""
    return v.state != "up" or v.stalled


@dataclass(frozen=True, slots=True)
class BoardQuery:
    """Which rows a dashboard can show."""

    sort: Sort = "urgency"
    #: lower-case substring of :func:`search_text` ("" : any)
    text: str = ""
    #: only tunnels that :func:`needs_attention`
    attention: bool = False
    #: the command line's filters as a tunnel predicate (``Filter.match_tunnel``), if any
    match: Callable[[TunnelView], bool] | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class BoardRow:
    key: SortKey
    view: TunnelView


@dataclass(frozen=True, slots=True)
class Board:
    """One namespace's answer: the rows asked for, and counts (all immutable)."""

    netns: str
    #: trio's clock when answered (countdowns are relative to it)
    now: float
    rows: tuple[BoardRow, ...]
    #: tunnels that match the query (rows is a window of them)
    matching: int
    #: every tunnel, per state
    states: tuple[tuple[str, int], ...]
    sas: int
    policies: int
    #: the mirror equals the kernel (false from an overrun until the resync)
    synced: bool

    @property
    def tunnels(self) -> int:
        return sum(n for _, n in self.states)


@dataclass(frozen=True, slots=True)
class BoardRequest:
    """A query and where the state stage sends its answer (a channel with room for it)."""

    query: BoardQuery
    reply: trio.MemorySendChannel[Board]


class TunnelBoard:
    """The state stage's index of its tunnels for dashboards (see the module's docstring)."""

    def __init__(self, model: TunnelModel, mirror: Mirror) -> None:
        self.model = model
        self.mirror = mirror
        self._views: dict[PairKey, TunnelView] = {}
        self._text: dict[PairKey, str] = {}
        self._keys: dict[PairKey, SortKey] = {}
        self._order: SortedList[tuple[SortKey, PairKey]] = SortedList()
        self._states: dict[str, int] = dict.fromkeys(STATE_RANK, 0)
        self._sort: Sort = "urgency"
        self._dirty: set[PairKey] = set()
        self._everything = True  # refresh every tunnel at the next answer
        self._rates_moved = False

    # --- what changed (called by the state stage, per event) -------------------------------

    def touch(self, e: ev.Event, entry: SAEntry | None = None) -> None:
        """``e`` was applied (``entry``: the SA it touched): mark the tunnels it is about."""
        dirty = self._dirty
        if entry is not None:
            dirty.add(pair_key(entry.sa))
        elif isinstance(e, ev.TunnelEvent):
            a, b = sorted((e.src, e.dst))
            dirty.add((e.reqid, e.proto, a, b))
        elif isinstance(e, (ev.PolicyEvent, ev.PolExpire)) or (isinstance(e, ev.DelPolicy) and e.policy):
            for t in e.policy.tmpl if e.policy is not None else ():
                a, b = sorted((t.src, t.dst))
                dirty.add((t.reqid, t.proto, a, b))
        elif isinstance(e, (ev.FlushSA, ev.FlushPolicy, ev.Resync, ev.DelPolicy)):
            self._everything = True

    def touch_all(self, events: Iterable[ev.Event]) -> None:
        for e in events:
            self.touch(e)

    def rates_moved(self) -> None:
        """A counters sample was taken: every rate changed."""
        self._rates_moved = True

    def reload(self) -> None:
        """The model was rebuilt (initial dump): refresh everything."""
        self._everything = True

    # --- the index ----------------------------------------------------------------------------

    def _drop(self, pk: PairKey) -> None:
        key = self._keys.pop(pk, None)
        if key is not None:
            self._order.remove((key, pk))
            self._states[self._views[pk].state] -= 1
            del self._views[pk]
            del self._text[pk]

    def _put(self, pk: PairKey) -> None:
        t = self.model.find(pk)
        if t is None:
            self._drop(pk)
            return
        v = self.model.view(t)
        key = sort_key(self._sort, v)
        old = self._keys.get(pk)
        if old is not None:
            if old != key:
                self._order.remove((old, pk))
                self._order.add((key, pk))
            self._states[self._views[pk].state] -= 1
        else:
            self._order.add((key, pk))
        self._keys[pk] = key
        self._views[pk] = v
        self._states[v.state] += 1
        self._text[pk] = search_text(v)

    def _rebuild(self) -> None:
        """A view of every tunnel (the first request, or after a flush or resync)."""
        self._views.clear()
        self._text.clear()
        self._states = dict.fromkeys(STATE_RANK, 0)
        view, find, views, text = self.model.view, self.model.find, self._views, self._text
        for pk in self.model.tunnel_keys():
            t = find(pk)
            if t is not None:
                v = views[pk] = view(t)
                text[pk] = search_text(v)
                self._states[v.state] += 1
        self._resort()

    def _resort(self) -> None:
        """Every tunnel's place in the order, from the views kept (a sort change)."""
        sort = self._sort
        self._keys = {pk: sort_key(sort, v) for pk, v in self._views.items()}
        self._order = SortedList((k, pk) for pk, k in self._keys.items())

    def _refresh(self, sort: Sort) -> None:
        if self._everything:
            self._sort = sort
            self._everything = self._rates_moved = False
            self._dirty.clear()
            self._rebuild()
            return
        if self._rates_moved and sort == "traffic":
            self._dirty.update(self._keys)
        self._rates_moved = False
        dirty, self._dirty = self._dirty, set()
        if sort != self._sort:
            self._sort = sort
            self._resort()
        for pk in dirty:
            self._put(pk)
        if len(self._keys) != self.model.size():  # down tunnels forgotten (no event says so)
            for pk in [pk for pk in self._keys if self.model.find(pk) is None]:
                self._drop(pk)

    # --- the answer ----------------------------------------------------------------------------

    def answer(self, q: BoardQuery, now: float) -> Board:
        """The rows ``q`` asks for (fresh views), and the counts."""
        self._refresh(q.sort)
        text = q.text.lower()
        end = q.offset + q.limit
        picked: list[tuple[SortKey, PairKey]]
        if not (text or q.attention or q.match is not None):
            picked = list(self._order.islice(q.offset, end))
            matching = len(self._order)
        else:
            views = self._views
            hits = [
                pk for pk, words in self._text.items()
                if (not text or text in words) and (not q.attention or needs_attention(views[pk]))
                and (q.match is None or q.match(views[pk]))
            ]  # fmt: skip
            matching = len(hits)
            if matching * 8 < len(self._order):  # few: sort them
                keys = self._keys
                picked = sorted((keys[pk], pk) for pk in hits)[q.offset : end]
            else:  # many: walk the order
                wanted = set(hits)
                picked = []
                seen = 0
                for item in self._order:
                    if item[1] in wanted:
                        seen += 1
                        if seen > q.offset:
                            picked.append(item)
                            if seen >= end:
                                break
        rows: list[BoardRow] = []
        for key, pk in picked:
            t = self.model.find(pk)
            if t is None:  # forgotten since (a down tunnel's time ran out)
                self._drop(pk)
                matching -= 1
                continue
            rows.append(BoardRow(key, self.model.view(t)))
        return Board(
            netns=self.mirror.netns, now=now, rows=tuple(rows), matching=matching,
            states=tuple((s, n) for s, n in self._states.items() if n), sas=len(self.mirror.sas),
            policies=len(self.mirror.policies), synced=self.mirror.synced,
        )  # fmt: skip
