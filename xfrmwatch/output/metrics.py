"""Prometheus metrics of the daemon, and the ``/metrics`` endpoint (trio).

:class:`Metrics` keeps every value in plain dicts (the daemon calls it from
trio tasks only: no locks) and exports them through one collector in its own
:class:`prometheus_client.CollectorRegistry` (never the global one).
:func:`serve_metrics` is a small trio HTTP/1.1 server (the protocol by ``h11``)
that answers ``GET``/``HEAD /metrics`` in the format the scraper's ``Accept``
asks for (OpenMetrics 1.0 or the classic text format, chosen and written by
``prometheus_client``'s own encoder), any other method with ``405`` and
``Allow: GET, HEAD``; it listens on loopback by default
(``[metrics] listen = "127.0.0.1:9873"``).

Labelled counters whose label sets are known in advance exist at 0 from the
start (an alert rule's ``increase(...[5m]) > 0`` then sees the first
increment): ``output_dropped_total`` for every configured output,
``overruns_total`` and ``resyncs_total`` for every watched namespace,
``alerts_total`` for every loaded alerting rule in every watched namespace.

Metrics (label ``netns`` is the namespace name as configured; the daemon's own
namespace is ``""``, which Prometheus shows as no label):

=========================================== ======= ===============================================
name                                        type    labels / meaning
=========================================== ======= ===============================================
``xfrmwatch_events_total``                  counter ``type``, ``netns``: events seen, by event type
                                                    (alerts included, as ``type="alert"``)
``xfrmwatch_alerts_total``                  counter ``rule_id``, ``rule_title``, ``level``,
                                                    ``netns``: alerts raised
``xfrmwatch_overruns_total``                counter ``netns``: netlink receive-buffer overruns
                                                    (events were lost)
``xfrmwatch_resyncs_total``                 counter ``netns``: mirror rebuilds from a dump
``xfrmwatch_output_queue_depth``            gauge   ``output``: events waiting in the output's queue
``xfrmwatch_output_dropped_total``          counter ``output``: events dropped for that output
                                                    (queue full, or delivery given up)
``xfrmwatch_sas``                           gauge   ``netns``, ``direction`` (``in``, ``out``,
                                                    ``unknown``): SAs in the mirror
``xfrmwatch_policies``                      gauge   ``netns``, ``direction`` (``in``, ``out``,
                                                    ``fwd``): policies in the mirror
``xfrmwatch_sa_hard_expiry_seconds``        gauge   ``netns``, ``reqid``: seconds until the nearest
                                                    hard (add-time) expiry among the reqid's SAs;
                                                    negative once passed.  **Bounded**: only the
                                                    ``expiry_top`` (default 50) reqids nearest to
                                                    expiry per namespace are exported
``xfrmwatch_sa_hard_expiry_omitted``        gauge   ``netns``: reqids with a hard expiry left out
                                                    by that bound
``xfrmwatch_xfrm_stat_total``               counter ``netns``, ``counter``: every
                                                    ``/proc/net/xfrm_stat`` counter (e.g.
                                                    ``counter="XfrmInNoStates"``), as the kernel
                                                    reports it
``xfrmwatch_build_info``                    gauge   ``version``: always 1
=========================================== ======= ===============================================

Cardinality: ``type`` is bounded by the event classes, ``rule_*`` by the loaded
rules, ``output`` by the configuration, ``counter`` by the kernel (about 30),
``reqid`` by ``expiry_top`` per namespace.  :meth:`Metrics.forget` drops the
gauges of a namespace that is no longer watched.

Seconds to expiry are computed at scrape time from the deadlines recorded by
the last :meth:`Metrics.mirror` call (trio's clock), so they stay current
between mirror updates.
"""

from __future__ import annotations

import heapq
import operator
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, NamedTuple

import h11
import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from .. import events as ev
from ..errors import UserError
from ..mirror import Mirror

log = structlog.get_logger("xfrmwatch.metrics")

#: SA directions always exported (as 0 when absent), policy directions likewise
SA_DIRECTIONS = ("in", "out", "unknown")
POLICY_DIRECTIONS = ("in", "out", "fwd")
DEFAULT_LISTEN = "127.0.0.1:9873"
DEFAULT_EXPIRY_TOP = 50
#: the classic text format (what generate_latest writes), understood by every Prometheus
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: events that count in counters of their own too (see :meth:`Metrics.event`)
_COUNTED_APART = frozenset({ev.Alert, ev.Overrun, ev.Resync})
_NETNS = operator.attrgetter("netns")


class MetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[metrics]`` table."""

    enabled: bool = True
    #: HOST:PORT of the /metrics endpoint (``[::1]:9873`` for IPv6; loopback by default)
    listen: str = DEFAULT_LISTEN
    #: how many reqids (nearest to hard expiry) per namespace get an expiry series
    expiry_top: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_EXPIRY_TOP


class _Expiry(msgspec.Struct):
    deadlines: list[tuple[int, float]]  # (reqid, hard deadline on trio's clock), nearest first
    omitted: int
    now: float  # trio's clock at the mirror() call: fallback outside a trio run


class Metrics:
    """Every metric of the daemon.  Call from trio tasks (not thread-safe)."""

    def __init__(self, *, expiry_top: int = DEFAULT_EXPIRY_TOP) -> None:
        self.expiry_top = max(0, expiry_top)
        self.registry = CollectorRegistry(auto_describe=False)
        self._events: dict[tuple[str, str], int] = {}
        self._alerts: dict[tuple[str, str, str, str], int] = {}
        self._overruns: dict[str, int] = {}
        self._resyncs: dict[str, int] = {}
        self._queue: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._sas: dict[str, dict[str, int]] = {}
        self._policies: dict[str, dict[str, int]] = {}
        self._expiry: dict[str, _Expiry] = {}
        self._xfrm_stat: dict[str, dict[str, int]] = {}
        self._rules: tuple[tuple[str, str, str], ...] = ()
        self._netns: set[str] = set()
        self.registry.register(self)

    # --- what the daemon calls ------------------------------------------------------

    def event(self, e: ev.Event) -> None:
        """Count one event (and, for an alert, its rule).  ``overrun`` and
        ``resync`` events also count in their own counters: do not call
        :meth:`overrun`/:meth:`resync` as well for the same occurrence."""
        tag = e.__struct_config__.tag
        k = (str(tag), e.netns)
        self._events[k] = self._events.get(k, 0) + 1
        if isinstance(e, ev.Alert):
            a = (e.rule.id, e.rule.title, e.rule.level, e.netns)
            self._alerts[a] = self._alerts.get(a, 0) + 1
        elif isinstance(e, ev.Overrun):
            self.overrun(e.netns)
        elif isinstance(e, ev.Resync):
            self.resync(e.netns)

    def events(self, events: list[ev.Event]) -> None:
        """:meth:`event` for each of ``events`` (counted per class and namespace at once)."""
        counts = self._events
        kinds: Counter[tuple[type[ev.Event], str]] = Counter(zip(map(type, events), map(_NETNS, events), strict=True))
        for (cls, netns), n in kinds.items():
            if cls in _COUNTED_APART:
                for e in events:
                    if type(e) is cls and e.netns == netns:
                        self.event(e)
                continue
            k = (str(cls.__struct_config__.tag), netns)
            counts[k] = counts.get(k, 0) + n

    def overrun(self, netns: str) -> None:
        self._overruns[netns] = self._overruns.get(netns, 0) + 1

    def resync(self, netns: str) -> None:
        self._resyncs[netns] = self._resyncs.get(netns, 0) + 1

    def queue(self, output: str, depth: int) -> None:
        self._queue[output] = depth

    def dropped(self, output: str, n: int) -> None:
        self._dropped[output] = self._dropped.get(output, 0) + n

    def mirror(self, netns: str, mirror: Mirror, now: float | None = None) -> None:
        """Record SA and policy counts and hard-expiry deadlines of one namespace.
        ``now`` defaults to trio's clock."""
        if now is None:
            now = trio.current_time()
        sas = dict.fromkeys(SA_DIRECTIONS, 0)
        nearest: dict[int, float] = {}
        for entry in mirror.sas.values():
            sas[entry.direction] = sas.get(entry.direction, 0) + 1
            deadline = entry.hard_deadline
            if deadline is not None:
                reqid = entry.sa.reqid
                if reqid not in nearest or deadline < nearest[reqid]:
                    nearest[reqid] = deadline
        pols = dict.fromkeys(POLICY_DIRECTIONS, 0)
        for p in mirror.policies.values():
            pols[p.dir] = pols.get(p.dir, 0) + 1
        self._sas[netns] = sas
        self._policies[netns] = pols
        top = heapq.nsmallest(self.expiry_top, nearest.items(), key=lambda kv: (kv[1], kv[0]))
        self._expiry[netns] = _Expiry(deadlines=top, omitted=len(nearest) - len(top), now=now)

    def xfrm_stat(self, netns: str, counters: dict[str, int]) -> None:
        """The namespace's ``/proc/net/xfrm_stat`` counters (all of them)."""
        self._xfrm_stat[netns] = dict(counters)

    # --- the label sets known in advance: their counters exist at 0 from the start ----

    def outputs_configured(self, names: Iterable[str]) -> None:
        """The configured outputs: ``output_dropped_total`` and the queue depth at 0."""
        for name in names:
            self._dropped.setdefault(name, 0)
            self._queue.setdefault(name, 0)

    def rules_loaded(self, rules: Iterable[tuple[str, str, str]]) -> None:
        """The rules that raise alerts, as (rule_id, title, level): ``alerts_total`` at 0
        for each, in every namespace watched."""
        self._rules = tuple(rules)
        for netns in self._netns:
            self._init_alerts(netns)

    def namespace_watched(self, netns: str) -> None:
        """A namespace now watched: its overrun, resync and alert counters at 0."""
        self._netns.add(netns)
        self._overruns.setdefault(netns, 0)
        self._resyncs.setdefault(netns, 0)
        self._init_alerts(netns)

    def _init_alerts(self, netns: str) -> None:
        for rule_id, title, level in self._rules:
            self._alerts.setdefault((rule_id, title, level, netns), 0)

    def forget(self, netns: str) -> None:
        """Drop the gauges of a namespace that is no longer watched (counters stay)."""
        for d in (self._sas, self._policies, self._expiry, self._xfrm_stat):
            d.pop(netns, None)

    async def serve(
        self,
        listen: str | MetricsConfig = DEFAULT_LISTEN,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:func:`serve_metrics` for this instance (``nursery.start(metrics.serve, listen)``)."""
        await serve_metrics(self, listen, task_status=task_status)

    def exposition(self) -> bytes:
        """The text exposition format, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    # --- the collector ----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        m: Any
        m = CounterMetricFamily("xfrmwatch_events", "XFRM events seen, by type", labels=["type", "netns"])
        for (tag, ns), n in self._events.items():
            m.add_metric([tag, ns], n)
        yield m
        m = CounterMetricFamily(
            "xfrmwatch_alerts", "Alerts raised, by rule", labels=["rule_id", "rule_title", "level", "netns"]
        )
        for labels, n in self._alerts.items():
            m.add_metric(list(labels), n)
        yield m
        yield _counter(
            "xfrmwatch_overruns", "Netlink receive-buffer overruns (events lost)", "netns", self._overruns
        )
        yield _counter("xfrmwatch_resyncs", "Mirror rebuilds from a fresh dump", "netns", self._resyncs)
        m = GaugeMetricFamily(
            "xfrmwatch_output_queue_depth", "Events waiting in an output's queue", labels=["output"]
        )
        for o, n in self._queue.items():
            m.add_metric([o], n)
        yield m
        yield _counter("xfrmwatch_output_dropped", "Events dropped for an output", "output", self._dropped)
        yield _by_dir("xfrmwatch_sas", "SAs in the mirror, by direction", self._sas)
        yield _by_dir("xfrmwatch_policies", "Policies in the mirror, by direction", self._policies)
        try:
            now: float | None = trio.current_time()
        except RuntimeError:  # scraped outside a trio run (tests, a thread)
            now = None
        m = GaugeMetricFamily(
            "xfrmwatch_sa_hard_expiry_seconds",
            f"Seconds to the nearest hard expiry of a reqid's SAs (the {self.expiry_top} nearest reqids per netns)",
            labels=["netns", "reqid"],
        )
        omitted = GaugeMetricFamily(
            "xfrmwatch_sa_hard_expiry_omitted",
            "Reqids with a hard expiry not exported (beyond expiry_top)",
            labels=["netns"],
        )
        for ns, x in self._expiry.items():
            t = x.now if now is None else now
            for reqid, deadline in x.deadlines:
                m.add_metric([ns, str(reqid)], deadline - t)
            omitted.add_metric([ns], x.omitted)
        yield m
        yield omitted
        m = CounterMetricFamily(
            "xfrmwatch_xfrm_stat", "Counters of /proc/net/xfrm_stat", labels=["netns", "counter"]
        )
        for ns, counters in self._xfrm_stat.items():
            for name, n in counters.items():
                m.add_metric([ns, name], n)
        yield m
        m = GaugeMetricFamily("xfrmwatch_build_info", "xfrmwatch version", labels=["version"])
        m.add_metric([__version__], 1)
        yield m


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    m = CounterMetricFamily(name, doc, labels=[label])
    for k, n in values.items():
        m.add_metric([k], n)
    return m


def _by_dir(name: str, doc: str, values: dict[str, dict[str, int]]) -> Metric:
    m = GaugeMetricFamily(name, doc, labels=["netns", "direction"])
    for ns, by_dir in values.items():
        for d, n in by_dir.items():
            m.add_metric([ns, d], n)
    return m


# --- the HTTP endpoint ----------------------------------------------------------------------

#: limits of the endpoint: request head size, time to send it, concurrent connections
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
ALLOWED_METHODS = ("GET", "HEAD")
_INDEX = b'<html><body><a href="/metrics">xfrmwatch metrics</a></body></html>\n'
_TEXT = "text/plain; charset=utf-8"


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host means every address) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UserError(f"metrics: listen must be HOST:PORT, not {listen!r}")
    host = host.strip("[]")
    return (host or None), int(port)


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def _reply(metrics: Metrics, request: h11.Request) -> _Reply:
    """The answer to one request: ``GET``/``HEAD /metrics`` in the format the client
    accepts (OpenMetrics or the classic text format, by prometheus_client's encoder)."""
    method = request.method.decode("ascii", "replace")
    if method not in ALLOWED_METHODS:
        return _Reply(405, b"GET or HEAD only\n", _TEXT, (("Allow", ", ".join(ALLOWED_METHODS)),))
    target = request.target.split(b"?", 1)[0]
    if target == b"/metrics":
        accept = ", ".join(v.decode("latin-1") for k, v in request.headers if k == b"accept")
        encoder, content_type = choose_encoder(accept)
        return _Reply(200, encoder(metrics.registry), content_type)
    if target == b"/":
        return _Reply(200, _INDEX, "text/html; charset=utf-8")
    return _Reply(404, b"not found: try /metrics\n", _TEXT)


async def _send(stream: trio.SocketStream, conn: h11.Connection, reply: _Reply, head_only: bool) -> None:
    headers = [
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        ("Connection", "close"),
        *reply.headers,
    ]
    data = conn.send(h11.Response(status_code=reply.status, headers=headers))
    if not head_only and reply.body:
        data = (data or b"") + (conn.send(h11.Data(data=reply.body)) or b"")
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


async def _serve_one(metrics: Metrics, stream: trio.SocketStream) -> None:
    """One request per connection (HTTP/1.1 via h11, then close)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(4096))
                continue
            if isinstance(event, h11.Request):
                await _send(stream, conn, _reply(metrics, event), event.method == b"HEAD")
            return
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _send(stream, conn, _Reply(exc.error_status_hint, b"bad request\n", _TEXT), False)


async def serve_metrics(
    metrics: Metrics,
    listen: str | MetricsConfig = DEFAULT_LISTEN,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` until cancelled.  ``nursery.start(serve_metrics, metrics,
    listen)`` returns the bound (host, port) once the socket listens (port 0 picks one)."""
    if isinstance(listen, MetricsConfig):
        listen = listen.listen
    host, port = parse_listen(listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UserError(
            f"metrics: cannot listen on {listen}: {exc.strerror or exc}; change [metrics] listen"
        ) from None
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await _serve_one(metrics, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
                pass

    sock = listeners[0].socket
    bound = sock.getsockname()
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        log.info("metrics endpoint listening", address=f"{bound[0]}:{bound[1]}", addresses=len(listeners))
        task_status.started((str(bound[0]), int(bound[1])))


def metric_names(metrics: Metrics) -> Iterable[str]:
    """Every exported family name (with the ``_total`` suffix of counters)."""
    for fam in metrics.collect():
        yield fam.name + ("_total" if fam.type == "counter" else "")
