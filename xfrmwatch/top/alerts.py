"""The dashboard's alerts panel: open alerts by level, with age and count; resolved ones fade.

An alert is one rule firing about one subject (namespace, reqid, addresses, SPI: what
:meth:`~xfrmwatch.subject.Subject.first` says); repeats add to its count (with the firings the
rules held back).  The events that end an alert are those of
:mod:`xfrmwatch.detect.resolution`; a resolved alert stays listed, dimmed, for
:data:`FADE_SECONDS`, then goes.  An alert nothing resolves stays open while the dashboard
runs.  At most :data:`MAX_ALERTS` are kept (the oldest resolved, then the oldest open, go first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import events as ev
from .. import levels
from ..detect.resolution import ResolverKey, resolved_by, resolver_of
from ..subject import subject

#: how long a resolved alert stays listed (seconds)
FADE_SECONDS = 30.0
#: alerts kept at most
MAX_ALERTS = 500

AlertId = tuple[str, str, tuple[tuple[str, str], ...]]  # rule id, netns, subject


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One line of the alerts panel (immutable: what a frame shows)."""

    level: str
    title: str
    netns: str
    #: what it is about ("reqid 1 192.0.2.1 -> 192.0.2.2")
    subject: str
    count: int
    first: float  # trio's clock
    last: float
    resolved: float | None = None


def _subject(f: dict[str, str]) -> str:
    parts = []
    if f.get("reqid"):
        parts.append(f"reqid {f['reqid']}")
    if f.get("src") or f.get("dst"):
        parts.append(f"{f.get('src', '?')} -> {f.get('dst', '?')}")
    if f.get("spi") and not f.get("reqid"):
        parts.append(f"spi {f['spi']}")
    return " ".join(parts)


class OpenAlerts:
    """The alert table, fed every event in order (alerts open or repeat, resolvers close)."""

    def __init__(self) -> None:
        self._rows: dict[AlertId, AlertRow] = {}
        self._by_resolver: dict[ResolverKey, set[AlertId]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def feed(self, e: ev.Event, now: float) -> None:
        if isinstance(e, ev.Alert):
            self._fire(e, now)
            return
        for rk in resolved_by(e):
            for aid in self._by_resolver.pop(rk, ()):
                row = self._rows.get(aid)
                if row is not None and row.resolved is None:
                    self._rows[aid] = replace(row, resolved=now)

    def _fire(self, a: ev.Alert, now: float) -> None:
        f = subject(a).first()
        # one alert per rule and tunnel (as Alertmanager's labels), or per SA when no reqid
        keys = ("reqid", "src", "dst") if f.get("reqid") else ("spi", "src", "dst")
        aid: AlertId = (a.rule.id, a.netns, tuple((k, f[k]) for k in keys if k in f))
        row = self._rows.get(aid)
        n = 1 + a.suppressed
        if row is None or row.resolved is not None:
            level = a.rule.level if a.rule.level in levels.SEVERITIES else levels.DEFAULT_LEVEL
            row = AlertRow(level, a.rule.title or a.rule.id, a.netns, _subject(f), n, now, now)
            self._rows.pop(aid, None)
        else:
            row = replace(row, count=row.count + n, last=now)
        self._rows[aid] = row  # newest last
        rk = resolver_of(a)
        if rk is not None:
            self._by_resolver.setdefault(rk, set()).add(aid)
        while len(self._rows) > MAX_ALERTS:
            victim = next((k for k, r in self._rows.items() if r.resolved is not None), next(iter(self._rows)))
            del self._rows[victim]

    def rows(self, now: float, netns: str | None = None) -> list[AlertRow]:
        """Open alerts (most serious first, then the latest), then those resolved less than
        :data:`FADE_SECONDS` ago; ``netns``: of that namespace only.  Faded ones are dropped."""
        for aid in [k for k, r in self._rows.items() if r.resolved is not None and now - r.resolved > FADE_SECONDS]:
            del self._rows[aid]
        shown = [r for r in self._rows.values() if netns is None or r.netns == netns]
        shown.sort(key=lambda r: (r.resolved is not None, -levels.rank(r.level), -r.last))
        return shown

    def open_by_level(self, netns: str | None = None) -> dict[str, int]:
        """How many alerts are open, per level."""
        out: dict[str, int] = {}
        for r in self._rows.values():
            if r.resolved is None and (netns is None or r.netns == netns):
                out[r.level] = out.get(r.level, 0) + 1
        return out

