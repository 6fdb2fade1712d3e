"""The pipeline: socket -> decode -> state (mirror + tracking) -> rules -> outputs.

Each stage is a trio service started with ``nursery.start`` and connected to
the next by a typed memory channel.  Events travel in batches (one channel
operation per batch, not per event); each batch is an immutable value once
sent, and each piece of state belongs to exactly one stage:

1. the :class:`Source`'s service: live, :func:`xfrmwatch.source.serve_events`
   (netlink subscriber and decoder, one :class:`~xfrmwatch.source.SourceBatch` per
   wakeup); in a replay, :class:`xfrmwatch.replay.ReplaySource` (a recording, on
   trio's clock);
2. :func:`serve_state`: the initial dump, the :class:`Mirror` and the tunnel model
   (:class:`~xfrmwatch.tunnels.TunnelModel`, through the :class:`Tracker` protocol),
   resyncs after an overrun, reads the SA counters every liveness interval; sends
   each kernel event followed by the events derived from it (:class:`StateBatch`);
3. :func:`serve_rules`: process-name enrichment and the rules; sends each event
   followed by its alerts;
4. the caller's output stage reads the last channel (``list[Event]`` batches).

A dashboard asks the state stage for what it shows through a :class:`StateLink`: its
:class:`~xfrmwatch.board.BoardRequest` travels in the stage's input between the source's
batches, and the answer is an immutable :class:`~xfrmwatch.board.Board`.

The per-event work of stages 2 and 3 is in small sync methods
(:class:`StateStage`, :class:`RulesStage`); the services only move batches.

:func:`start_pipeline` returns once every stage is ready: groups joined and
the initial dump applied.  Everything the stages know of the outside world comes
through the :class:`Source`: its events, the kernel's snapshots (:class:`Kernel`),
the wall clock, process names, the namespace's addresses.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import msgspec
import structlog
import trio

from . import events as ev
from .backoff import Backoff
from .board import Board, BoardQuery, BoardRequest, TunnelBoard
from .detect.alerting import Alerter
from .detect.enrich import Enricher, ProcessNames
from .errors import UserError
from .mirror import Mirror, SAEntry
from .netlink import addresses, query
from .netlink.decode import Decoder
from .netlink.netns import entered
from .netlink.proc import KeyManagerPresence, ProcFile
from .netlink.socket import DEFAULT_RCVBUF, XfrmSocket
from .source import SourceBatch, follow_key_manager, open_subscriber, serve_events
from .tunnels import TunnelModel, TunnelSettings

log = structlog.get_logger("xfrmwatch.pipeline")

#: What the last stage sends: events in order, each followed by what it caused.
OutBatch = list[ev.Event]

_NOTHING: frozenset[int] = frozenset()

#: what the state stage reads: the source's batches, and dashboards' requests
StateInput = SourceBatch | BoardRequest


class Tracker(Protocol):
    """What the state stage asks of a tracker (the tunnel model).

    It sees every event after the mirror applied it, with the SA entry the event
    touched (or removed), on trio's clock (``now``) and the wall clock (``wall``).
    """

    def load(self, now: float) -> None:
        """Build the state from the mirror's initial dump (no events)."""
        ...

    def counters(self, sas: list[ev.SA], now: float, wall: float) -> list[ev.Event]:
        """A sample of every SA's counters: events derived from the traffic."""
        ...

    def observe(self, e: ev.Event, entry: SAEntry | None, now: float, wall: float) -> tuple[list[ev.Event], bool]:
        """Events derived from ``e``; True if ``e`` was attached to one (rules skip it)."""
        ...

    def next_deadline(self) -> float | None:
        """When :meth:`on_time` has something to do next (trio's clock), if ever."""
        ...

    def on_time(self, now: float, wall: float) -> list[ev.Event]:
        """Events whose deadline has passed."""
        ...


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
    #: batches (of up to ``source.MAX_BATCH`` events) buffered between two stages
    channel_size: int = 16
    #: acquire auto: how often to look for a key manager on ACQUIRE (seconds)
    km_check: float = 10.0


    def tunnel_settings(self) -> TunnelSettings:
        return TunnelSettings(
            overdue_share=self.overdue_share, history_factor=self.history_factor, stall_after=self.stall_after
        )


@dataclass(frozen=True, slots=True)
class StateBatch:
    """Stage 2 -> 3: each event followed by the events derived from it."""

    events: list[ev.Event]
    #: positions in ``events`` the rules must not see (ACQUIREs attached to an alarm already raised)
    not_for_rules: frozenset[int] = _NOTHING


async def local_addresses(netns: str | None) -> frozenset[str]:
    """Addresses configured in the namespace (for SA direction)."""
    _, replies = await addresses.dump(netns)
    return addresses.parse(replies)


# --- the kernel as the state stage sees it ----------------------------------------------------


@dataclass
class Snapshot:
    sas: list[ev.SA]
    policies: list[ev.Policy]
    default: tuple[str, str, str] | None


class Kernel(Protocol):
    """Where the state stage gets a full snapshot, and learns whether messages were lost."""

    async def snapshot(self) -> Snapshot: ...

    async def sas(self) -> list[ev.SA]:
        """Every SA now, with its counters."""
        ...

    def drops(self) -> int | None:
        """Messages dropped so far for the subscriber (None: unknown)."""
        ...


@dataclass
class NetlinkKernel:
    """Dumps on a request socket; drops from the subscriber's line in /proc/net/netlink."""

    req: XfrmSocket
    sub: XfrmSocket
    decoder: Decoder

    async def sas(self) -> list[ev.SA]:
        sas: list[ev.SA] = []
        async for part in query.stream_sas(self.req, self.decoder):
            sas += part
        return sas

    async def snapshot(self) -> Snapshot:
        sas = await self.sas()
        pols: list[ev.Policy] = []
        async for ppart in query.stream_policies(self.req, self.decoder):
            pols += ppart
        default = await query.default_policy(self.req, self.decoder)
        return Snapshot(sas, pols, None if default is None else (default.in_, default.fwd, default.out))

    def drops(self) -> int | None:
        return self.sub.drops()


class Source(Protocol):
    """Where a pipeline's view of one namespace comes from: the kernel, or a recording."""

    @property
    def netns(self) -> str: ...

    @property
    def kernel(self) -> Kernel: ...

    @property
    def names(self) -> Enricher:
        """Who asked for a change (nlmsg_pid -> process name)."""
        ...

    @property
    def portid(self) -> int | None:
        """The subscriber's netlink port id in the live namespace (None: a recording, no
        /proc files to read about it)."""
        ...

    @property
    def polls_counters(self) -> bool:
        """True: the state stage dumps the SA counters itself every liveness interval; False:
        the source's batches carry them (:attr:`SourceBatch.counters`)."""
        ...

    def wall(self) -> float:
        """The wall-clock time (UNIX seconds) of what the source shows now."""
        ...

    def key_manager(self) -> bool:
        """Whether a key manager (an IKE daemon) listens in the namespace now."""
        ...

    async def local_addresses(self) -> frozenset[str]:
        """The namespace's own addresses (they tell inbound from outbound SAs)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What to say about the source when the pipeline is ready (log fields)."""
        ...

    async def serve(
        self, send: trio.MemorySendChannel[SourceBatch], *, task_status: trio.TaskStatus[None] = ...
    ) -> None:
        """Stage 1: send every batch, in order, until cancelled or (a recording) its end."""
        ...


class NetlinkSource:
    """The live source: the namespace's XFRM netlink subscriber and a request socket."""

    polls_counters = True

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.netns = cfg.netns or ""
        self.sub = open_subscriber(cfg.netns, aevents=cfg.aevents, acquire=cfg.acquire, rcvbuf=cfg.rcvbuf)
        req = XfrmSocket.open(cfg.netns)
        self.kernel = NetlinkKernel(req, self.sub, Decoder(self.netns))
        self.names = ProcessNames()
        with entered(cfg.netns):
            self._listeners = ProcFile("/proc/net/netlink")
        self.key_manager = KeyManagerPresence(self._listeners, (self.sub.portid, req.portid), trio.current_time)

    @property
    def portid(self) -> int:
        return self.sub.portid

    def wall(self) -> float:
        return time.time()

    async def local_addresses(self) -> frozenset[str]:
        return await local_addresses(self.cfg.netns)

    def describe(self) -> dict[str, Any]:
        return {"groups": sorted(self.sub.groups), "rcvbuf": self.sub.rcvbuf}

    async def serve(
        self, send: trio.MemorySendChannel[SourceBatch], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_events, self.sub, send)
                if self.cfg.acquire is None:
                    await nursery.start(partial(follow_key_manager, interval=self.cfg.km_check), self.sub, self.cfg.netns)
                task_status.started()
        finally:
            self._listeners.close()


# --- stage 2: state ------------------------------------------------------------------------------


def _with_switches(e: ev.DefaultPolicy, before: tuple[str, str, str] | None) -> ev.DefaultPolicy:
    """Name the directions that this change turned to accept (the kernel's default is accept)."""
    old = before or ("accept", "accept", "accept")
    new = (e.in_, e.fwd, e.out)
    switched = [d for d, o, n in zip(("in", "fwd", "out"), old, new, strict=True) if n == "accept" and o != "accept"]
    return msgspec.structs.replace(e, switched_to_accept=switched)


class StateStage:
    """The state of stage 2 (the mirror and the tracker, owned here only) and its per-event work.

    ``tunnels``: the tracker as a tunnel model, for dashboards' requests (:meth:`answer`);
    its :class:`~xfrmwatch.board.TunnelBoard` is made at the first request."""

    def __init__(self, mirror: Mirror, tracker: Tracker, *, tunnels: TunnelModel | None = None) -> None:
        self.mirror = mirror
        self.tracker = tracker
        self.tunnels = tunnels
        self.board: TunnelBoard | None = None

    def answer(self, request: BoardRequest, now: float) -> None:
        """Send the board a dashboard asked for (never blocks: the reply channel has room)."""
        if self.board is None and self.tunnels is not None:
            self.board = TunnelBoard(self.tunnels, self.mirror)
        m = self.mirror
        if self.board is not None:
            board = self.board.answer(request.query, now)
        else:
            board = Board(m.netns, now, (), 0, (), len(m.sas), len(m.policies), m.synced)
        with request.reply:
            try:
                request.reply.send_nowait(board)
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass  # the dashboard gave up waiting

    def apply(self, events: list[ev.Event], now: float, wall: float) -> StateBatch:
        """Apply a batch to the mirror and the tracker: each event, then what it caused.

        An event the mirror cannot apply (a bug) is still forwarded, and marks the mirror
        out of sync so that it is rebuilt from a dump."""
        mirror, observe, board = self.mirror, self.tracker.observe, self.board
        out: list[ev.Event] = []
        skip: set[int] | None = None
        for e in events:
            t = type(e)
            if t is ev.DefaultPolicy:
                e = _with_switches(e, mirror.default)  # type: ignore[arg-type]
            try:
                entry = mirror.apply(e)
            except Exception as exc:  # a bug must not stop the namespace: forward, then repair
                log.error("mirror could not apply an event: resyncing", type=type(e).__name__, error=type(exc).__name__)
                entry = None
                mirror.synced = False
            if t is ev.Overrun:
                mirror.synced = False
            try:
                derived, attached = observe(e, entry, now, wall)
            except Exception as exc:  # a bug must not stop the namespace: forward the event
                log.error("rekey tracking failed on an event", type=type(e).__name__, error=type(exc).__name__)
                derived, attached = [], False
            if attached:
                if skip is None:
                    skip = set()
                skip.add(len(out))
            out.append(e)
            if derived:
                out += derived
            if board is not None:
                board.touch(e, entry)
                board.touch_all(derived)
        return StateBatch(out, _NOTHING if skip is None else frozenset(skip))

    def on_time(self, now: float, wall: float) -> StateBatch:
        out = self.tracker.on_time(now, wall)
        if self.board is not None:
            self.board.touch_all(out)
        return StateBatch(out)

    def counters(self, sas: list[ev.SA], now: float, wall: float) -> StateBatch:
        try:
            out = self.tracker.counters(sas, now, wall)
        except Exception as exc:  # a bug must not stop the namespace
            log.error("traffic tracking failed on a counters sample", error=type(exc).__name__)
            return StateBatch([])
        if self.board is not None:
            self.board.rates_moved()
            self.board.touch_all(out)
        return StateBatch(out)

    def next_deadline(self) -> float:
        d = self.tracker.next_deadline()
        return math.inf if d is None else d


async def sync_mirror(
    mirror: Mirror, kernel: Kernel, wallclock: Callable[[], float] = time.time, *, compare: bool = True
) -> ev.Resync | None:
    """Rebuild the mirror from a snapshot taken now; return what had drifted.

    Call it only where the source has caught up (its queue was empty): every event
    queued from there on is applied after the snapshot, which makes the mirror exact,
    unless the kernel dropped some.  So the kernel's drop counter is read before and
    after: if it moved, the mirror stays marked out of sync (the source reports the
    overrun) and ``None`` is returned; the caller repeats at the next caught-up point.
    ``compare=False`` (the first dump) skips working out what had drifted.
    """
    before = kernel.drops()
    snap = await kernel.snapshot()
    after = kernel.drops()
    diff = mirror.differences(snap.sas, snap.policies) if compare else {"missing": [], "stale": []}
    mirror.load(snap.sas, snap.policies, snap.default, trio.current_time(), wallclock())
    if before is not None and after is not None and after != before:
        log.warning(
            "the kernel dropped messages during the dump: resyncing again once caught up",
            netns=mirror.netns, dropped=after - before,
        )  # fmt: skip
        mirror.synced = False
        return None
    mirror.synced = True
    return ev.Resync(
        **ev.own_fields(mirror.netns, trio.current_time(), wallclock()),
        missing=diff["missing"],
        stale=diff["stale"],
        sas=len(snap.sas),
        policies=len(snap.policies),
    )


async def serve_state(
    stage: StateStage,
    kernel: Kernel,
    recv: trio.MemoryReceiveChannel[StateInput],
    send: trio.MemorySendChannel[StateBatch],
    *,
    liveness_interval: float = 0.0,
    wallclock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stage 2: the initial dump, then every batch through the mirror and the tracker.

    After an overrun (or an event the mirror could not apply), the mirror is rebuilt from
    a fresh dump at the next point where the source has caught up and every batch it sent
    before has been applied (so that overruns already queued are not answered one dump
    each), repeated until a dump is followed by no loss (:func:`sync_mirror`); a failed
    dump is retried with backoff.  The resync event goes through the tracker too (tunnels
    found gone end there).

    A dashboard's :class:`~xfrmwatch.board.BoardRequest` in the input is answered at once,
    from the state the batches before it left.

    Every ``liveness_interval`` seconds (0: never) the SAs' counters are read with a dump
    and given to the tracker (traffic rates, stalls).  The interval stretches to 20 times
    the time a dump takes, so that reading counters costs at most about 5 % of the time.
    A batch may bring a sample of the counters itself (a recording's): it goes to the tracker
    right after the batch's events.  ``wallclock``: the time of the world the events come
    from (:meth:`Source.wall`)."""
    mirror = stage.mirror
    log.info("reading the SAD and SPD", netns=mirror.netns)
    await sync_mirror(mirror, kernel, wallclock, compare=False)
    stage.tracker.load(trio.current_time())
    if stage.board is not None:
        stage.board.reload()
    next_poll = trio.current_time() + liveness_interval if liveness_interval > 0 else math.inf
    caught_up = True  # nothing is queued before the first batch says otherwise
    retry_at = 0.0
    backoff = Backoff(0.5, 30.0)
    async with recv, send:
        task_status.started()
        while True:
            # resync where the source had caught up and every batch it sent is applied
            due = not mirror.synced and caught_up and recv.statistics().current_buffer_used == 0
            if due and trio.current_time() >= retry_at:
                try:
                    resynced = await sync_mirror(mirror, kernel, wallclock)
                except (UserError, trio.TooSlowError, OSError) as exc:
                    delay = backoff.delay()
                    log.warning(
                        "resync failed: retrying", netns=mirror.netns, error=str(exc) or type(exc).__name__,
                        retry_in=round(delay, 3),
                    )  # fmt: skip
                    retry_at = trio.current_time() + delay
                else:
                    backoff.reset()
                    if resynced is None:
                        caught_up = False  # messages were lost since: wait until caught up again
                    else:
                        log.warning(
                            "resynced after overrun", netns=mirror.netns, missing=len(resynced.missing),
                            stale=len(resynced.stale),
                        )  # fmt: skip
                        await send.send(stage.apply([resynced], trio.current_time(), wallclock()))
                continue
            if caught_up and trio.current_time() >= next_poll:
                began = trio.current_time()
                try:
                    sas = await kernel.sas()
                except (UserError, trio.TooSlowError, OSError) as exc:
                    log.warning("reading SA counters failed", netns=mirror.netns, error=str(exc) or type(exc).__name__)
                    sas = []
                out = stage.counters(sas, trio.current_time(), wallclock())
                now = trio.current_time()
                next_poll = now + max(liveness_interval, 20 * (now - began))
                if out.events:
                    await send.send(out)
                continue
            # (a poll waits until the source has caught up: until then, batches are the way on)
            deadline = min(stage.next_deadline(), next_poll if caught_up else math.inf)
            if due:
                deadline = min(deadline, retry_at)  # a failed resync's retry
            batch: StateInput | None = None
            with trio.move_on_at(deadline):
                try:
                    batch = await recv.receive()
                except trio.EndOfChannel:
                    return
            now, wall = trio.current_time(), wallclock()
            if isinstance(batch, BoardRequest):
                stage.answer(batch, now)
                continue
            if batch is None:
                out = stage.on_time(now, wall)
            else:
                caught_up = batch.caught_up
                out = stage.apply(batch.events, now, wall)
                if batch.counters is not None:
                    sampled = stage.counters(batch.counters, now, wall)
                    if sampled.events:
                        out = StateBatch(out.events + sampled.events, out.not_for_rules)
            if out.events:
                await send.send(out)


# --- stage 3: rules ------------------------------------------------------------------------------


class RulesStage:
    """Stage 3's per-event work: who did it (process name), then the rules."""

    def __init__(self, rules: Alerter | None, names: Enricher | None = None) -> None:
        self.rules = rules
        self.names = names or ProcessNames()

    def process(self, batch: StateBatch, now: float) -> OutBatch:
        enrich, rules, skip = self.names.enrich, self.rules, batch.not_for_rules
        out: OutBatch = []
        for i, e in enumerate(batch.events):
            if e.nlmsg_pid:  # (0: the kernel's own events, and `ip`'s: nobody to name)
                try:
                    e = enrich(e, now)
                except Exception as exc:  # never lose the event for a missing name
                    log.error("enrichment failed on an event", type=type(e).__name__, error=type(exc).__name__)
            out.append(e)
            if rules is None or i in skip:
                continue
            try:
                alerts = rules(e, now)
            except Exception as exc:  # a rule engine bug must not stop the namespace
                log.error("rules failed on an event", type=type(e).__name__, error=type(exc).__name__)
                continue
            if alerts:
                out += alerts
        return out


async def serve_rules(
    stage: RulesStage,
    recv: trio.MemoryReceiveChannel[StateBatch],
    send: trio.MemorySendChannel[OutBatch],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stage 3: forward every event, each followed by its alerts, in order."""
    async with recv, send:
        task_status.started()
        async for batch in recv:
            await send.send(stage.process(batch, trio.current_time()))


# --- wiring ------------------------------------------------------------------------------------

#: The collector's first threshold while a pipeline runs (Python's default is 700).  Each event
#: allocates a few short-lived containers, and with the default a young-generation collection
#: ran every ~100 events, with older generations, whose size grows with the mirror, scanned in
#: proportion: about 1 us per event at 100k mirrored objects.  The records themselves are
#: not tracked by the collector at all (``gc=False`` structs: they hold no cycles).
GC_THRESHOLD0 = 20_000


def tune_gc() -> None:
    """Fewer, larger collections (process-wide; a pipeline's objects live long, few form cycles)."""
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(GC_THRESHOLD0, gc.get_threshold()[0]), g1, g2)



class StateLink:
    """A dashboard's way into a running state stage: :meth:`board` asks it for a
    :class:`~xfrmwatch.board.Board` (the stage answers between two batches).

    Give it to :func:`start_pipeline`.  It holds a clone of the stage's input: when a finite
    source (a recording) ends, the state stage stays, answering, until the link is closed
    (so the dashboard can still be sorted, filtered and scrolled); then the pipeline ends."""

    def __init__(self) -> None:
        self._send: trio.MemorySendChannel[StateInput] | None = None

    def connect(self, send: trio.MemorySendChannel[StateInput]) -> None:
        """Use this input of a state stage (a clone of its channel, closed by :meth:`close`)."""
        self._send = send.clone()

    async def board(self, query: BoardQuery) -> Board | None:
        """The state stage's answer to ``query``; None if it is not running (any more)."""
        if self._send is None:
            return None
        send, recv = trio.open_memory_channel[Board](1)
        try:
            await self._send.send(BoardRequest(query, send))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        async with recv:
            try:
                return await recv.receive()
            except trio.EndOfChannel:
                return None

    def close(self) -> None:
        if self._send is not None:
            self._send.close()


async def start_pipeline(
    nursery: trio.Nursery,
    cfg: PipelineConfig,
    rules: Alerter | None = None,
    *,
    mirror: Mirror | None = None,
    link: StateLink | None = None,
    source: Source | None = None,
) -> tuple[trio.MemoryReceiveChannel[OutBatch], Mirror, Source]:
    """Start every stage in ``nursery``; return the output channel once all are ready.

    ``source``: where the events come from (default: the namespace ``cfg.netns``, live);
    ``mirror``: an empty mirror to fill (so that the caller can export it from the start);
    ``link``: connected to the state stage, for a dashboard."""
    tune_gc()
    source = source or NetlinkSource(cfg)
    if mirror is None:
        mirror = Mirror(netns=source.netns)
    try:
        mirror.local_addrs = await source.local_addresses()
    except Exception as exc:
        log.warning("cannot read local addresses; SA directions unknown", error=type(exc).__name__)
    s1, r1 = trio.open_memory_channel[StateInput](cfg.channel_size)
    s2, r2 = trio.open_memory_channel[StateBatch](cfg.channel_size)
    s3, r3 = trio.open_memory_channel[OutBatch](cfg.channel_size)
    await nursery.start(source.serve, s1)
    tracker = TunnelModel(mirror, cfg.tunnel_settings(), key_manager=source.key_manager)
    if link is not None:
        link.connect(s1)
    serve = partial(
        serve_state,
        liveness_interval=cfg.liveness_interval if source.polls_counters else 0.0,
        wallclock=source.wall,
    )
    await nursery.start(serve, StateStage(mirror, tracker, tunnels=tracker), source.kernel, r1, s2)
    await nursery.start(serve_rules, RulesStage(rules, source.names), r2, s3)
    return r3, mirror, source
