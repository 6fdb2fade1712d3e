"""The pipeline: socket -> decode -> mirror -> detection -> outputs.

Each stage is a trio service started with ``nursery.start`` and connected to
the next by a typed memory channel:

1. :func:`xfrmwatch.source.serve_events`: netlink subscriber and decoder;
2. :func:`serve_mirror`: initial dump, applies events to the :class:`Mirror`,
   resyncs after an overrun;
3. :func:`serve_detection`: tunnel model (:mod:`xfrmwatch.tunnels`) and rules;
   derived events and alerts;
4. the caller's output stage reads the last channel.

:func:`start_pipeline` returns once every stage is ready: groups joined and
the initial dump applied.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import msgspec
import structlog
import trio

from . import events as ev
from . import query
from .decode import Decoder
from .detect.alerting import Alerter
from .detect.enrich import ProcessNames
from .errors import UserError
from .mirror import Mirror, SAEntry
from .netlink.netns import entered
from .netlink.socket import DEFAULT_RCVBUF, XfrmSocket
from .source import follow_key_manager, open_subscriber, serve_events
from .timestamps import utc_precise
from .tunnels import TunnelModel, TunnelSettings

log = structlog.get_logger("xfrmwatch.pipeline")

Applied = tuple[ev.Event, SAEntry | None]


@dataclass(frozen=True)
class PipelineConfig:
    netns: str | None = None
    aevents: bool = False
    acquire: bool | None = None
    rcvbuf: int = DEFAULT_RCVBUF
    overdue_share: float = 0.5
    #: without kernel lifetimes, rekey_overdue at this multiple of the learned rekey interval
    history_factor: float = 1.5
    #: traffic_stalled after inbound is silent this long while outbound sends (seconds)
    stall_after: float = 30.0
    #: how often SA counters are read (GETSA dump) for rates and stalls; 0: never
    liveness_interval: float = 10.0
    channel_size: int = 4096
    #: acquire auto: how often to look for a key manager on ACQUIRE (seconds)
    km_check: float = 10.0


    def tunnel_settings(self) -> TunnelSettings:
        return TunnelSettings(
            overdue_share=self.overdue_share, history_factor=self.history_factor, stall_after=self.stall_after
        )


def local_addresses(netns: str | None) -> frozenset[str]:
    """Addresses configured in the namespace (for SA direction)."""
    from pyroute2 import IPRoute

    with entered(netns):
        ipr = IPRoute()
    try:
        return frozenset(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS"))
    finally:
        ipr.close()


async def dump_into(mirror: Mirror, req: XfrmSocket, decoder: Decoder) -> tuple[list[ev.SA], list[ev.Policy]]:
    sas = await query.dump_sas(req, decoder)
    pols = await query.dump_policies(req, decoder)
    default = await query.default_policy(req, decoder)
    mirror.load(
        sas,
        pols,
        None if default is None else (default.in_, default.fwd, default.out),
        trio.current_time(),
        time.time(),
    )
    return sas, pols


async def serve_mirror(
    mirror: Mirror,
    req: XfrmSocket,
    recv: trio.MemoryReceiveChannel[ev.Event],
    send: trio.MemorySendChannel[Applied],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply events to the mirror; on an overrun, resync from a fresh dump."""
    decoder = Decoder(mirror.netns)
    await dump_into(mirror, req, decoder)
    async with recv, send:
        task_status.started()
        async for e in recv:
            if isinstance(e, ev.DefaultPolicy):
                e = _with_switches(e, mirror.default)
            try:
                entry = mirror.apply(e)
            except Exception as exc:  # a bug must not stop the namespace: forward, then repair
                log.error("mirror could not apply an event: resyncing", type=type(e).__name__, error=type(exc).__name__)
                entry = None
                e_resync = True
            else:
                e_resync = isinstance(e, ev.Overrun)
            await send.send((e, entry))
            if e_resync:
                await send.send((await resync_until_done(mirror, req, decoder), None))


def _with_switches(e: ev.DefaultPolicy, before: tuple[str, str, str] | None) -> ev.DefaultPolicy:
    """Name the directions that this change turned to accept (the kernel's default is accept)."""
    old = before or ("accept", "accept", "accept")
    new = (e.in_, e.fwd, e.out)
    switched = [d for d, o, n in zip(("in", "fwd", "out"), old, new, strict=True) if n == "accept" and o != "accept"]
    return msgspec.structs.replace(e, switched_to_accept=switched)


async def resync_until_done(mirror: Mirror, req: XfrmSocket, decoder: Decoder) -> ev.Resync:
    """Resync, retrying with backoff while the kernel is too busy to give a consistent dump
    (events keep queueing in the subscriber's buffer meanwhile)."""
    delay = 0.5
    while True:
        try:
            return await resync(mirror, req, decoder)
        except (UserError, trio.TooSlowError, OSError) as exc:
            log.warning("resync failed: retrying", netns=mirror.netns, error=str(exc) or type(exc).__name__, retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def resync(mirror: Mirror, req: XfrmSocket, decoder: Decoder) -> ev.Resync:
    """Rebuild the mirror from a dump; report what had drifted."""
    sas = await query.dump_sas(req, decoder)
    pols = await query.dump_policies(req, decoder)
    diff = mirror.differences(sas, pols)
    default = await query.default_policy(req, decoder)
    mirror.load(
        sas, pols, None if default is None else (default.in_, default.fwd, default.out),
        trio.current_time(), time.time(),
    )  # fmt: skip
    log.warning(
        "resynced after overrun", netns=mirror.netns, missing=len(diff["missing"]), stale=len(diff["stale"])
    )
    return ev.Resync(
        time=utc_precise(time.time()),
        mono=trio.current_time(),
        netns=mirror.netns,
        nlmsg_pid=0,
        nlmsg_seq=0,
        missing=diff["missing"],
        stale=diff["stale"],
        sas=len(sas),
        policies=len(pols),
    )


async def serve_detection(
    tracker: TunnelModel,
    rules: Alerter | None,
    recv: trio.MemoryReceiveChannel[Applied],
    send: trio.MemorySendChannel[ev.Event],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward every event, plus derived events and alerts, in order."""

    async def emit(e: ev.Event, to_rules: bool = True) -> None:
        await send.send(e)
        if rules is not None and to_rules:
            try:
                alerts = rules(e, trio.current_time())
            except Exception as exc:  # a rule engine bug must not stop the namespace
                log.error("rules failed on an event", type=type(e).__name__, error=type(exc).__name__)
                alerts = []
            for alert in alerts:
                await send.send(alert)

    names = ProcessNames()
    async with recv, send:
        task_status.started()
        while True:
            deadline = tracker.next_deadline()
            item: Applied | None = None
            with trio.move_on_at(math.inf if deadline is None else deadline):
                try:
                    item = await recv.receive()
                except trio.EndOfChannel:
                    return
            now = trio.current_time()
            if item is None:
                for d in tracker.on_time(now, time.time()):
                    await emit(d)
                continue
            e, entry = item
            try:
                e = names.enrich(e, now)
                derived, attached = tracker.observe(e, entry, now, time.time())
            except Exception as exc:  # a bug must not stop the namespace: forward the event
                log.error("rekey tracking failed on an event", type=type(e).__name__, error=type(exc).__name__)
                derived, attached = [], False
            await emit(e, to_rules=not attached)
            for d in derived:
                await emit(d)


async def start_pipeline(
    nursery: trio.Nursery,
    cfg: PipelineConfig,
    rules: Alerter | None = None,
) -> tuple[trio.MemoryReceiveChannel[ev.Event], Mirror, XfrmSocket]:
    """Start every stage in ``nursery``; return the output channel once all are ready."""
    sub = open_subscriber(cfg.netns, aevents=cfg.aevents, acquire=cfg.acquire, rcvbuf=cfg.rcvbuf)
    req = XfrmSocket.open(cfg.netns)
    mirror = Mirror(netns=cfg.netns or "")
    try:
        mirror.local_addrs = local_addresses(cfg.netns)
    except Exception as exc:
        log.warning("cannot read local addresses; SA directions unknown", error=type(exc).__name__)
    s1, r1 = trio.open_memory_channel[ev.Event](cfg.channel_size)
    s2, r2 = trio.open_memory_channel[Applied](cfg.channel_size)
    s3, r3 = trio.open_memory_channel[ev.Event](cfg.channel_size)
    await nursery.start(serve_events, sub, s1)
    if cfg.acquire is None:
        await nursery.start(partial(follow_key_manager, interval=cfg.km_check), sub, cfg.netns)
    await nursery.start(serve_mirror, mirror, req, r1, s2)
    tracker = TunnelModel(mirror, cfg.tunnel_settings())
    tracker.load(trio.current_time())
    await nursery.start(serve_detection, tracker, rules, r2, s3)
    return r3, mirror, sub
