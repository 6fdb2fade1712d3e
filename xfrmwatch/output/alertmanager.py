"""``[[output]] type = "alertmanager"``: alerts to Prometheus Alertmanager's v2 API.

Example::

    [[output]]
    type = "alertmanager"
    url = "http://127.0.0.1:9093"        # /api/v2/alerts is appended
    resolve_timeout = 300                # endsAt = now + this; re-sent every half of it
    keep_active = 3600                   # an alert nothing resolves stops being re-sent after this
    labels = { site = "fra1" }
    token_file = "/etc/xfrmwatch/am.token"

Each alert becomes one Alertmanager alert with labels ``alertname`` (the rule's
title, or its id), ``severity`` (the rule's level), ``rule_id``, ``instance``
(the host name, or ``instance``), ``netns`` (when not empty), ``reqid``,
``src``, ``dst`` (when the alert's first event has them), plus ``labels``; and
annotations ``summary`` and ``description``.  ``startsAt`` is the alert's time.

Firing alerts carry ``endsAt = now + resolve_timeout`` and are re-sent every
``resolve_timeout / 2`` (Alertmanager resolves an alert whose endsAt passes)
for up to ``keep_active`` seconds after they last fired.  Resolution, by the
alert's first event:

* ``rekey_overdue``: resolved by a ``rekey_completed`` of the same netns and reqid;
* ``tunnel_down``: resolved by a ``tunnel_up`` of the same netns and reqid;
* ``traffic_stalled``: resolved by a ``traffic_resumed`` or ``rekey_completed`` of the same netns and reqid;

then it is re-sent once with ``endsAt = now``.  (So this output also wants those
events: its filter always lets ``rekey_completed``, ``traffic_resumed`` and ``tunnel_up`` in.)

Delivery never blocks the queue: the consumer only updates the alert table;
a sender task posts what changed in batches, retrying with exponential backoff
(``retry_initial`` doubling up to ``retry_max``) while Alertmanager is down, and
keeps only the latest state per alert.  Memory is bounded by ``max_alerts``
(beyond it, the oldest alert is forgotten: Alertmanager resolves it when its
endsAt passes).  Dropped and counted (``xfrmwatch_output_dropped_total``):
alerts Alertmanager rejects for good (a 4xx), and alerts still undelivered when
the output stops.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import msgspec
import structlog
import trio

from .. import events as ev
from ..backoff import Backoff
from ..detect.resolution import RESOLVERS, ResolverKey, resolved_by, resolver_of
from ..subject import subject
from ..timestamps import utc_precise
from .base import DropSink, Output, OutputConfig, Positive
from .http import AUTH_STATUSES, USER_AGENT, HttpUrl, TokenFile, redact_url, retryable

log = structlog.get_logger("xfrmwatch.output.alertmanager")

API_PATH = "/api/v2/alerts"
#: alerts per POST
BATCH = 64

AlertKey = frozenset[tuple[str, str]]
#: a Prometheus label name: letters, digits and _, not starting with a digit
LABEL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class AlertmanagerConfig(OutputConfig, tag="alertmanager", kw_only=True):
    """``[[output]] type = "alertmanager"``."""

    #: Alertmanager's base URL (or the full .../api/v2/alerts URL)
    url: HttpUrl = "http://127.0.0.1:9093"
    #: seconds for one request
    timeout: Positive = 10.0
    #: extra request headers
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: a file holding a bearer token (re-read on SIGHUP and after a 401/403)
    token_file: str = ""
    #: endsAt of a firing alert is now + resolve_timeout; re-sent every resolve_timeout/2
    resolve_timeout: Positive = 300.0
    #: an alert that nothing resolves is re-sent for this long after it last fired
    keep_active: float = 3600.0
    #: extra labels on every alert
    labels: dict[Annotated[str, msgspec.Meta(pattern=LABEL_NAME)], str] = msgspec.field(default_factory=dict)
    #: the ``instance`` label (default: the host name)
    instance: str = ""
    #: alerts tracked at most (oldest forgotten beyond)
    max_alerts: Annotated[int, msgspec.Meta(ge=1)] = 1000
    retry_initial: Positive = 1.0
    retry_max: Positive = 60.0

    def api_url(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith(API_PATH) else u + API_PATH

    def wants(self, e: ev.Event) -> bool:
        """Alerts (by the usual filter) and the events that resolve them."""
        if isinstance(e, RESOLVERS):
            return True
        return isinstance(e, ev.Alert) and super().wants(e)


@dataclass(eq=False)
class _Tracked:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    resolver: ResolverKey | None
    #: trio time after which it is no longer re-sent
    keep_until: float
    #: trio time of the next re-send
    next_send: float = 0.0
    #: trio time it was resolved (endsAt), None while firing
    resolved: float | None = None
    #: bumps on every change, so a send of an older state does not clear a newer one
    version: int = 0
    sent_once: bool = field(default=False)


class AlertmanagerOutput(Output):
    type = "alertmanager"

    def __init__(self, config: AlertmanagerConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.cfg = config
        self.url = config.api_url()
        self.instance = config.instance or socket.gethostname()
        self.token = TokenFile(config.token_file)
        self.alerts: dict[AlertKey, _Tracked] = {}
        self._by_resolver: dict[ResolverKey, set[AlertKey]] = {}
        #: alerts to send -> the version to send
        self._pending: dict[AlertKey, int] = {}
        self._wake = trio.Event()
        self._closing = trio.Event()
        self._wall_offset = 0.0
        #: alerts posted, batches given up (rejected by Alertmanager), alerts forgotten (bound)
        self.posted = 0
        self.rejected = 0
        self.evicted = 0

    def reopen(self) -> None:
        self.token.invalidate()

    # --- time -------------------------------------------------------------------------

    def _wall(self, mono: float) -> str:
        return utc_precise(mono + self._wall_offset)

    # --- the alert table (consumer side, never awaits) ----------------------------------

    def labels_of(self, a: ev.Alert) -> dict[str, str]:
        f = subject(a).first()
        labels = {
            **self.cfg.labels,
            "alertname": a.rule.title or a.rule.id,
            "severity": a.rule.level,
            "rule_id": a.rule.id,
            "instance": self.instance,
        }
        for k in ("netns", "reqid", "src", "dst"):
            if f.get(k):
                labels[k] = f[k]
        return labels

    def _annotations(self, a: ev.Alert) -> dict[str, str]:
        f = subject(a).first()
        first = a.events[0].__struct_config__.tag if a.events else None
        what = ", ".join(f"{k} {f[k]}" for k in ("spi", "reqid", "src", "dst") if f.get(k))
        desc = f"Rule {a.rule.title or a.rule.id} ({a.rule.level}) matched"
        if first:
            desc += f" a {first} event"
        if a.netns:
            desc += f" in netns {a.netns}"
        if what:
            desc += f": {what}"
        if a.suppressed:
            desc += f" ({a.suppressed} repeated firings held back before this one)"
        ann = {"summary": a.rule.title or a.rule.id, "description": desc + "."}
        if a.rule.tags:
            ann["tags"] = ",".join(a.rule.tags)
        return ann

    def _mark(self, key: AlertKey, t: _Tracked) -> None:
        t.version += 1
        self._pending[key] = t.version
        self._wake.set()

    def fire(self, a: ev.Alert, now: float) -> None:
        labels = self.labels_of(a)
        key: AlertKey = frozenset(labels.items())
        t = self.alerts.get(key)
        if t is None or t.resolved is not None:
            if t is not None:
                self._forget(key)
            t = _Tracked(
                labels=labels,
                annotations=self._annotations(a),
                starts_at=a.time,
                resolver=resolver_of(a),
                keep_until=now + self.cfg.keep_active,
            )
            self.alerts[key] = t
            if t.resolver is not None:
                self._by_resolver.setdefault(t.resolver, set()).add(key)
            while len(self.alerts) > self.cfg.max_alerts:
                oldest = next(iter(self.alerts))
                self._forget(oldest)
                self.evicted += 1
                if self.evicted in (1, 10, 100) or self.evicted % 1000 == 0:
                    log.warning("alertmanager: too many alerts, forgetting the oldest", output=self.name,
                                evicted=self.evicted, max_alerts=self.cfg.max_alerts)  # fmt: skip
        else:
            t.annotations = self._annotations(a)
            t.keep_until = now + self.cfg.keep_active
        self._mark(key, t)

    def resolve(self, e: ev.Event, now: float) -> int:
        """Resolve the alerts ``e`` ends; how many."""
        keys: set[AlertKey] = set()
        for rk in resolved_by(e):
            keys |= self._by_resolver.pop(rk, set())
        for key in keys:
            t = self.alerts[key]
            t.resolved = now
            t.resolver = None
            self._mark(key, t)
        return len(keys)

    def _forget(self, key: AlertKey) -> None:
        t = self.alerts.pop(key, None)
        self._pending.pop(key, None)
        if t is not None and t.resolver is not None:
            s = self._by_resolver.get(t.resolver)
            if s is not None:
                s.discard(key)
                if not s:
                    del self._by_resolver[t.resolver]

    def _due(self, now: float) -> float:
        """Queue re-sends that are due, drop alerts past keep_active; the next due time."""
        nxt = now + self.cfg.resolve_timeout / 2
        for key, t in list(self.alerts.items()):
            if t.resolved is not None or key in self._pending:
                continue
            if now >= t.keep_until:
                self._forget(key)  # its last endsAt lets Alertmanager resolve it
            elif now >= t.next_send:
                self._mark(key, t)
            else:
                nxt = min(nxt, t.next_send)
        return nxt

    def payload(self, key: AlertKey, now: float) -> dict[str, object]:
        t = self.alerts[key]
        ends = t.resolved if t.resolved is not None else now + self.cfg.resolve_timeout
        ends_at = self._wall(ends)
        return {
            "labels": t.labels,
            "annotations": t.annotations,
            "startsAt": min(t.starts_at, ends_at),
            "endsAt": ends_at,
        }

    # --- the service ----------------------------------------------------------------------

    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._wall_offset = time.time() - trio.current_time()
        headers = {"User-Agent": USER_AGENT, **self.cfg.headers}
        client = httpx.AsyncClient(timeout=self.cfg.timeout, headers=headers)
        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(self._sender, client)
            task_status.started()
            await self._consume(recv)

    async def _consume(self, recv: trio.MemoryReceiveChannel[ev.Event]) -> None:
        """Update the alert table from the queue; never waits on the network."""
        async with recv:
            async for e in recv:
                now = trio.current_time()
                if isinstance(e, ev.Alert):
                    if self.cfg.wants(e):
                        self.fire(e, now)
                elif isinstance(e, RESOLVERS):
                    self.resolve(e, now)
        # closed: one last attempt at what is pending, then the sender returns
        self._closing.set()
        self._wake.set()

    async def _sender(self, client: httpx.AsyncClient) -> None:
        backoff = Backoff(self.cfg.retry_initial, self.cfg.retry_max)
        while True:
            self._wake = trio.Event()
            now = trio.current_time()
            next_due = self._due(now)
            if not self._pending:
                if self._closing.is_set():
                    return
                with trio.move_on_at(next_due):
                    await self._wake.wait()
                continue
            batch = list(self._pending.items())[:BATCH]
            body = [self.payload(k, now) for k, _ in batch]
            result = await self._post(client, body)
            if result is None:  # down: retry later, keep the latest state of each
                if self._closing.is_set():
                    log.warning("alertmanager: stopping with alerts not delivered", output=self.name,
                                pending=len(self._pending))  # fmt: skip
                    self.drop(len(self._pending))
                    return
                with trio.move_on_after(backoff.delay()):
                    await self._closing.wait()
                continue
            backoff.reset()
            if result:
                self.posted += len(batch)
            else:
                self.rejected += len(batch)
                self.drop(len(batch))
            done = trio.current_time()
            for key, version in batch:
                t = self.alerts.get(key)
                if t is None or self._pending.get(key) != version:
                    continue  # forgotten, or changed while posting: send again
                del self._pending[key]
                t.sent_once = True
                if t.resolved is not None:
                    self._forget(key)
                else:
                    t.next_send = done + self.cfg.resolve_timeout / 2

    async def _post(self, client: httpx.AsyncClient, body: list[dict[str, object]]) -> bool | None:
        """True: accepted; False: rejected for good (logged); None: try again later."""
        try:
            r = await client.post(self.url, json=body, headers=await self.token.headers())
        except httpx.HTTPError as exc:
            log.warning("alertmanager unreachable", output=self.name, url=redact_url(self.url),
                        error=f"{type(exc).__name__}: {exc}", pending=len(self._pending))  # fmt: skip
            return None
        if r.is_success:
            return True
        if r.status_code in AUTH_STATUSES:
            self.token.invalidate()
        if retryable(r.status_code):
            log.warning(
                "alertmanager failed", output=self.name, status=r.status_code, pending=len(self._pending)
            )
            return None
        log.error("alertmanager rejected alerts", output=self.name, status=r.status_code, body=r.text[:300],
                  alerts=len(body))  # fmt: skip
        return False
