"""Stage 1 of the pipeline: the netlink subscriber (socket -> decode -> batches of events).

:func:`serve_events` is a trio service: started with ``nursery.start``, it is
ready once its socket has joined its groups.  At each wakeup it reads every
datagram the kernel has queued (up to :data:`MAX_BATCH`), decodes them, and
sends them on as one :class:`SourceBatch`: one channel operation per wakeup,
not per event.  An ENOBUFS becomes an ``overrun`` event in the batch, never
swallowed.

Any other source (a recording: :mod:`xfrmwatch.replay`) feeds the pipeline the
same way: batches of decoded events, in order, with ``overrun`` events where
messages were lost (see :class:`SourceBatch` and :class:`xfrmwatch.pipeline.Source`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
import trio

from . import events as ev
from .netlink import xfrm as x
from .netlink.decode import Decoder
from .netlink.netns import entered
from .netlink.proc import ProcFile, key_managers, xfrm_listeners
from .netlink.socket import DEFAULT_RCVBUF, MessagesLost, XfrmSocket

log = structlog.get_logger("xfrmwatch.source")

#: Datagrams read per wakeup at most, so that the later stages run between batches.
MAX_BATCH = 2048


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """What a source sends down the pipeline: decoded events in the kernel's order.

    ``caught_up``: nothing more was queued after these events.  For the netlink socket
    this matters after an overrun: the kernel reports ENOBUFS once, then keeps dropping
    silently until the socket's queue has been emptied; from a point where it was empty,
    every message is delivered or a new overrun is reported.  The state stage resyncs
    only at such a point.

    The list is not modified after the batch is sent.
    """

    events: list[ev.Event] = field(default_factory=list)
    caught_up: bool = False
    #: a sample of every SA's counters taken after these events, for a source that has them
    #: (a recording); the live pipeline reads them itself every liveness interval
    counters: list[ev.SA] | None = None


#: Joined always: none of these changes what the kernel does.
BASE_GROUPS = (
    x.XFRMNLGRP_EXPIRE,
    x.XFRMNLGRP_SA,
    x.XFRMNLGRP_POLICY,
    x.XFRMNLGRP_REPORT,
    x.XFRMNLGRP_MIGRATE,
    x.XFRMNLGRP_MAPPING,
)


@dataclass(frozen=True)
class GroupPlan:
    groups: tuple[int, ...]
    notes: tuple[str, ...]


def plan_groups(
    *, aevents: bool, acquire: bool | None, listeners_text: str, own_portid: int = -1
) -> GroupPlan:
    """Decide which groups to join.

    Listening changes the kernel's behaviour: while anyone listens on ACQUIRE
    the kernel creates larval states and queues ACQUIREs instead of failing
    fast, and NEWAE is generated only while AEVENTS has listeners.  So
    AEVENTS is joined only when asked; ACQUIRE when asked (``acquire=True``),
    never when refused (``False``), and by default only if a key manager
    already listens on it (a passive listener such as ``ip xfrm monitor`` does not
    count: :func:`xfrmwatch.netlink.proc.key_managers`).
    """
    groups = list(BASE_GROUPS)
    notes = []
    km = [
        k
        for k in key_managers(xfrm_listeners(listeners_text), own_portid=own_portid)
        if k.listener.listens_on(x.XFRMNLGRP_ACQUIRE)
    ]
    if acquire is True or (acquire is None and km):
        groups.insert(0, x.XFRMNLGRP_ACQUIRE)
    elif acquire is None:
        notes.append(
            "not joining the ACQUIRE group: no key manager listens on it, and listening would "
            "make the kernel hold packets in larval states instead of failing; --acquire joins it anyway"
        )
    if aevents:
        groups.append(x.XFRMNLGRP_AEVENTS)
    return GroupPlan(tuple(groups), tuple(notes))


def open_subscriber(
    netns: str | None, *, aevents: bool, acquire: bool | None, rcvbuf: int = DEFAULT_RCVBUF
) -> XfrmSocket:
    """Open the multicast socket in ``netns``, size its buffer and join the groups."""
    with entered(netns):
        listeners = ProcFile("/proc/net/netlink")
        text = listeners.read()
        listeners.close()
    sock = XfrmSocket.open(netns)
    try:
        sock.set_rcvbuf(rcvbuf)
        plan = plan_groups(
            aevents=aevents, acquire=acquire, listeners_text=text, own_portid=sock.portid
        )
        for note in plan.notes:
            log.info(note, netns=netns or "")
        for g in plan.groups:
            sock.join(g)
    except BaseException:
        sock.close()
        raise
    return sock


async def follow_key_manager(
    sock: XfrmSocket,
    netns: str | None,
    *,
    interval: float = 10.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``acquire = auto``: join the ACQUIRE group once a key manager listens on it (an IKE
    daemon started after xfrmwatch), and leave it when none does any more, so that
    xfrmwatch's own membership never makes the kernel behave as if one were there."""
    with entered(netns):
        listeners = ProcFile("/proc/net/netlink")
    task_status.started()
    try:
        while True:
            await trio.sleep(interval)
            km = any(
                k.listener.listens_on(x.XFRMNLGRP_ACQUIRE)
                for k in key_managers(xfrm_listeners(listeners.read()), own_portid=sock.portid)
            )
            joined = x.XFRMNLGRP_ACQUIRE in sock.groups
            if km and not joined:
                sock.join(x.XFRMNLGRP_ACQUIRE)
                log.info("a key manager now listens on ACQUIRE: joined it", netns=netns or "")
            elif joined and not km:
                sock.leave(x.XFRMNLGRP_ACQUIRE)
                log.info("no key manager listens on ACQUIRE any more: left it", netns=netns or "")
    finally:
        listeners.close()


def overrun_event(sock: XfrmSocket) -> ev.Overrun:
    return ev.Overrun(
        **ev.own_fields(sock.netns, trio.current_time(), time.time()),
        detail=(
            f"ENOBUFS: the kernel dropped events (receive buffer {sock.rcvbuf} bytes); "
            "the SAD/SPD view may be stale until resynced"
        ),
    )


async def serve_events(
    sock: XfrmSocket,
    send: trio.MemorySendChannel[SourceBatch],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive, decode and forward events in batches until cancelled.  Never swallows ENOBUFS.

    Each wakeup reads everything queued (up to :data:`MAX_BATCH` datagrams), so the
    kernel's queue is emptied as fast as the pipeline allows.
    """
    decoder = Decoder(sock.netns)
    decode = decoder.decode
    receive = sock.receive_nowait
    perf = time.perf_counter
    async with send:
        task_status.started()
        while True:
            await sock.wait_readable()
            events: list[ev.Event] = []
            caught_up = False
            # each datagram's receipt time on trio's clock and the wall clock, from one
            # reading of each per wakeup and the (cheaper) performance counter since
            mono0, wall0, perf0 = trio.current_time(), time.time(), perf()
            for _ in range(MAX_BATCH):
                try:
                    data = receive()
                except MessagesLost:
                    log.warning("netlink receive buffer overrun: events were lost", netns=sock.netns)
                    events.append(overrun_event(sock))
                    continue
                if data is None:
                    caught_up = True
                    break
                since = perf() - perf0
                events += decode(data, mono0 + since, wall0 + since)
            await send.send(SourceBatch(events, caught_up))
