"""``xfrmwatch record``: every XFRM netlink message into a pcap file, key-free.

The file is what an nlmon capture of the namespace would hold (see
:mod:`xfrmwatch.netlink.pcap` and docs/recordings.md), restricted to what xfrmwatch itself
uses, plus two markers of its own:

- first the **initial dump**: an RTM_GETADDR dump (the namespace's addresses), then GETSA and
  GETPOLICY dumps and a GETDEFAULT request, each request (``NLM_F_REQUEST``) followed by the
  kernel's replies (``NLM_F_MULTI`` entries and NLMSG_DONE);
- then every multicast datagram the subscriber receives, as the kernel sent it;
- an **overrun** (ENOBUFS) is an ``NLMSG_OVERRUN`` message from pid 0, followed (once it is
  done) by a fresh dump of the SAD/SPD: the one a resync reads;
- every ``liveness_interval`` seconds (as ``monitor`` reads them), a GETSA dump alone: the SA
  **counters** the tunnel model derives traffic rates and stalls from;
- a **process name**: before the first message that names a process by its nlmsg_pid (a
  change it asked for), and whenever that name changes, an ``NLMSG_NOOP`` message from the
  kernel whose nlmsg_pid is that PID and whose body is the name (``/proc/PID/comm``, 16 bytes,
  NUL-padded; empty once the process has gone);
- whether a **key manager** listens in the namespace (the tunnel model only expects rekeys
  it learned while one does): an ``NLMSG_NOOP`` from pid 0 whose body is ``key-manager=1``
  or ``key-manager=0``, at the start and whenever that changes (checked every 10 s);
- at the end, an ``NLMSG_NOOP`` from pid 0 with no body: where the recording stops (a replay
  runs its timers up to there).

Key bytes never reach the file (:func:`xfrmwatch.scrub.zero_keys`, applied to every XFRM
datagram before it is written).  The recorder only sends GET requests.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

import structlog
import trio

from .capture import KEY_MANAGER_MARK
from .detect.enrich import ProcessNames
from .errors import UserError
from .netlink import addresses
from .netlink import messages as xm
from .netlink import xfrm as x
from .netlink.framing import NLMSG_HDR, NLMSG_NOOP, NLMSG_OVERRUN, iter_messages
from .netlink.netns import entered
from .netlink.pcap import NETLINK_ROUTE, PcapWriter
from .netlink.proc import KeyManagerPresence, ProcFile
from .netlink.scrub import zero_keys
from .netlink.socket import DEFAULT_RCVBUF, MessagesLost, XfrmSocket
from .source import follow_key_manager, open_subscriber

log = structlog.get_logger("xfrmwatch.record")

COMM_LEN = 16
FLUSH_INTERVAL = 0.25
#: how often whether a key manager listens is checked (as the live pipeline does)
KM_INTERVAL = 10.0


def marker(msg_type: int, pid: int = 0, body: bytes = b"") -> bytes:
    """A netlink control message as the recorder writes it (NLMSG_OVERRUN, NLMSG_NOOP)."""
    head: bytes = NLMSG_HDR.pack(16 + len(body), msg_type, 0, 0, pid)
    return head + body


def name_body(name: str | None) -> bytes:
    return (name or "").encode("utf-8", "replace")[: COMM_LEN - 1].ljust(COMM_LEN, b"\0")


@dataclass
class RecordStats:
    messages: int = 0  #: multicast XFRM messages
    dumps: int = 0  #: state dumps (the initial one and one per overrun)
    counters: int = 0  #: SA dumps for the counters
    dump_messages: int = 0
    overruns: int = 0
    names: int = 0  #: process-name markers
    packets: int = 0


@dataclass
class Recorder:
    """Turns what the sockets see into pcap packets (kept in memory until :meth:`take`)."""

    names: ProcessNames = field(default_factory=ProcessNames)
    stats: RecordStats = field(default_factory=RecordStats)

    def __post_init__(self) -> None:
        self._buf = io.BytesIO()
        self._writer = PcapWriter(self._buf)
        self._named: dict[int, str | None] = {}
        self._key_manager: bool | None = None

    def take(self) -> bytes:
        """Everything written since the last call (the pcap header first)."""
        data = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        self.stats.packets = self._writer.packets
        return data

    def notification(self, t: float, data: bytes, now: float) -> None:
        self._name_markers(t, data, now)
        self._writer.write(t, zero_keys(data))
        self.stats.messages += _count(data)

    def end(self, t: float) -> None:
        self._writer.write(t, marker(NLMSG_NOOP))

    def key_manager(self, t: float, present: bool) -> None:
        """Say whether a key manager listens, if that changed."""
        if present != self._key_manager:
            self._key_manager = present
            body = KEY_MANAGER_MARK + (b"1" if present else b"0")
            self._writer.write(t, marker(NLMSG_NOOP, 0, body.ljust((len(body) + 3) & ~3, b"\0")))

    def overrun(self, t: float) -> None:
        self._writer.write(t, marker(NLMSG_OVERRUN))
        self.stats.overruns += 1

    def dump(self, exchanges: list[Exchange], *, counters: bool = False) -> None:
        """One dump: (time, netlink family, request, replies) per request."""
        for t, family, req, replies in exchanges:
            self._writer.write(t, req, family=family)
            for data in replies:
                self._writer.write(t, zero_keys(data) if family == x.NETLINK_XFRM else data, family=family)
                self.stats.dump_messages += _count(data)
        if counters:
            self.stats.counters += 1
        else:
            self.stats.dumps += 1

    def _name_markers(self, t: float, data: bytes, now: float) -> None:
        for m in iter_messages(data):
            if isinstance(m, str):
                return
            mtype, _, _, pid, _, _ = m
            if pid and mtype != x.XFRM_MSG_NEWAE:  # NEWAE's nlmsg_pid is garbage
                name = self.names.name(pid, now)
                if name != self._named.get(pid):  # first seen with a name, renamed, or gone
                    self._named[pid] = name
                    self._writer.write(t, marker(NLMSG_NOOP, pid, name_body(name)))
                    self.stats.names += 1


def _count(data: bytes) -> int:
    """XFRM messages (not netlink control messages) in a datagram."""
    return sum(1 for m in iter_messages(data) if not isinstance(m, str) and m[0] >= 16)


#: One request and its replies: (time, netlink family, request bytes, reply datagrams).
Exchange = tuple[float, int, bytes, list[bytes]]


async def sa_dump(req: XfrmSocket) -> Exchange:
    msg = xm.usersa_id_msg()
    replies = await req.dump(msg, x.XFRM_MSG_GETSA, what="state dump (GETSA)")
    return (time.time(), x.NETLINK_XFRM, bytes(msg.data), replies)


async def dump_exchanges(req: XfrmSocket, netns: str | None) -> list[Exchange]:
    """The requests and replies of one state dump: addresses, SAs, policies, default policy."""
    out: list[Exchange] = []
    a_req, a_replies = await addresses.dump(netns)
    out.append((time.time(), NETLINK_ROUTE, a_req, a_replies))
    out.append(await sa_dump(req))
    msg = xm.userpolicy_id_msg()
    replies = await req.dump(msg, x.XFRM_MSG_GETPOLICY, what="policy dump (GETPOLICY)")
    out.append((time.time(), x.NETLINK_XFRM, bytes(msg.data), replies))
    msg = xm.userpolicy_default_msg()
    try:
        replies = await req.request(msg, x.XFRM_MSG_GETDEFAULT)
    except UserError:  # kernels before 5.16: no default policy to read
        replies = []
    out.append((time.time(), x.NETLINK_XFRM, bytes(msg.data), replies))
    return out


async def _until_done(what: Callable[[], Awaitable[list[Exchange]]]) -> list[Exchange]:
    delay = 0.5
    while True:
        try:
            return await what()
        except (UserError, trio.TooSlowError, OSError) as exc:
            log.warning("dump failed: retrying", error=str(exc) or type(exc).__name__, retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


@dataclass(frozen=True)
class RecordConfig:
    netns: str | None = None
    aevents: bool = False
    acquire: bool | None = None
    rcvbuf: int = DEFAULT_RCVBUF
    km_check: float = 10.0
    count: int = 0  #: stop after this many multicast messages (0: no limit)
    duration: float = math.inf  #: stop after this many seconds
    #: how often the SA counters are dumped (as monitor reads them); 0: never
    liveness_interval: float = 10.0


async def record(
    out: BinaryIO,
    cfg: RecordConfig,
    stats: RecordStats | None = None,
    *,
    task_status: trio.TaskStatus[XfrmSocket] = trio.TASK_STATUS_IGNORED,
) -> RecordStats:
    """Record until cancelled, ``count`` messages or ``duration`` seconds; return the figures
    (kept up to date in ``stats`` meanwhile).

    Ready (``task_status.started``, with the subscriber socket) once the groups are joined and
    the initial dump is written.
    """
    rec = Recorder(stats=stats or RecordStats())
    sub = open_subscriber(cfg.netns, aevents=cfg.aevents, acquire=cfg.acquire, rcvbuf=cfg.rcvbuf)
    req = XfrmSocket.open(cfg.netns)
    to_dump, dump_requests = trio.open_memory_channel[None](math.inf)
    one_request = trio.Lock()  # the request socket serves one exchange at a time

    async def exchanges(what: Callable[[], Awaitable[list[Exchange]]]) -> list[Exchange]:
        async with one_request:
            return await _until_done(what)

    async def flush() -> None:
        data = rec.take()
        if data:
            await trio.to_thread.run_sync(_write, out, data)

    async def flusher() -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            await flush()

    async def dumper() -> None:
        async for _ in dump_requests:
            rec.dump(await exchanges(partial(dump_exchanges, req, cfg.netns)))

    with entered(cfg.netns):
        listeners = ProcFile("/proc/net/netlink")
    km = KeyManagerPresence(listeners, (sub.portid, req.portid), trio.current_time, ttl=KM_INTERVAL)

    async def key_manager() -> None:
        while True:
            rec.key_manager(time.time(), km())
            await trio.sleep(KM_INTERVAL)

    async def counters() -> None:
        async def one() -> list[Exchange]:
            return [await sa_dump(req)]

        while True:
            await trio.sleep(cfg.liveness_interval)
            rec.dump(await exchanges(one), counters=True)

    try:
        with sub, req:
            rec.dump(await dump_exchanges(req, cfg.netns))
            await flush()
            async with trio.open_nursery() as nursery:
                if cfg.acquire is None:
                    await nursery.start(partial(follow_key_manager, interval=cfg.km_check), sub, cfg.netns)
                nursery.start_soon(flusher)
                nursery.start_soon(dumper)
                nursery.start_soon(key_manager)
                if cfg.liveness_interval > 0:
                    nursery.start_soon(counters)
                task_status.started(sub)
                with trio.move_on_after(cfg.duration):
                    while not cfg.count or rec.stats.messages < cfg.count:
                        try:
                            data = await sub.receive()
                        except MessagesLost:
                            log.warning("netlink receive buffer overrun: recorded, dumping again", netns=cfg.netns or "")
                            rec.overrun(time.time())
                            to_dump.send_nowait(None)
                            continue
                        rec.notification(time.time(), data, trio.current_time())
                nursery.cancel_scope.cancel()
    finally:
        listeners.close()
        rec.end(time.time())
        with trio.CancelScope(shield=True):
            await flush()
    return rec.stats


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


__all__ = ["RecordConfig", "RecordStats", "Recorder", "marker", "record"]
