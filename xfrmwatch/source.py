"""Stage 1 of the pipeline: the netlink subscriber (socket -> decode -> events).

:func:`serve_events` is a trio service: started with ``nursery.start``, it is
ready once its socket has joined its groups; it then sends every decoded
event (and an ``overrun`` event for every ENOBUFS) into a memory channel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
import trio

from . import events as ev
from .decode import Decoder
from .netlink import xfrm as x
from .netlink.netns import entered
from .netlink.proc import ProcFile, key_managers, xfrm_listeners
from .netlink.socket import DEFAULT_RCVBUF, Overrun, XfrmSocket
from .timestamps import utc_precise

log = structlog.get_logger("xfrmwatch.source")

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


async def serve_events(
    sock: XfrmSocket,
    send: trio.MemorySendChannel[ev.Event],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive, decode and forward events until cancelled.  Never swallows ENOBUFS."""
    decoder = Decoder(sock.netns)
    async with send:
        task_status.started()
        while True:
            try:
                data = await sock.receive()
            except Overrun:
                now = time.time()
                log.warning("netlink receive buffer overrun: events were lost", netns=sock.netns)
                await send.send(
                    ev.Overrun(
                        time=utc_precise(now),
                        mono=trio.current_time(),
                        netns=sock.netns,
                        nlmsg_pid=0,
                        nlmsg_seq=0,
                        detail=(
                            f"ENOBUFS: the kernel dropped events (receive buffer {sock.rcvbuf} bytes); "
                            "the SAD/SPD view may be stale until resynced"
                        ),
                    )
                )
                continue
            for e in decoder.decode(data, trio.current_time()):
                await send.send(e)
