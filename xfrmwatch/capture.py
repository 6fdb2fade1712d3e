"""A netlink capture read back as what xfrmwatch saw: state dumps, notifications, losses.

Reads a recording made by ``xfrmwatch record`` or any nlmon capture (``tcpdump -i nlmon0``),
keeping the XFRM family (and the RTM_GETADDR replies that give the namespace's addresses):

- a **request** is a packet sent by user space (its messages carry ``NLM_F_REQUEST``, which
  the kernel never sets); a kernel message with the same nlmsg_seq (and port id, where the
  request names one) answers it.  Answers to GET dumps
  (``NLM_F_MULTI`` entries up to NLMSG_DONE) are **state dumps**; answers to single GETs,
  ALLOCSPI and acknowledgements belong to whoever asked and are dropped;
- every other kernel XFRM message is a **notification** (what a multicast listener got).  nlmon
  sees one copy per listening socket: an identical datagram within :data:`DUPLICATE_WINDOW` of
  an earlier one is that copy, and is dropped;
- ``NLMSG_OVERRUN`` from pid 0 marks a **loss** (an ENOBUFS the recorder saw);
  ``NLMSG_NOOP`` from the kernel names the process behind a pid, and from pid 0 says whether
  a **key manager** listens (body ``key-manager=1`` or ``=0``) or marks the **end** of the
  recording (no body) (``xfrmwatch record`` conventions, docs/recordings.md).

A run of consecutive dump exchanges (at most one SA dump) is one :class:`StateDump`.  The run
before the first notification is the initial state; each loss is followed by the dump that
repairs it; any other SA dump is a sample of the SA **counters**.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import CaptureError
from .netlink import addresses
from .netlink import xfrm as x
from .netlink.framing import (
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    iter_messages,
)
from .netlink.pcap import NETLINK_ROUTE, read_packets

#: nlmon copies of one broadcast (one per listener) arrive within microseconds
DUPLICATE_WINDOW = 0.001
#: a request not answered within this long is forgotten
REQUEST_TIMEOUT = 10.0

#: single (non-dump) requests whose answers are not notifications
_GET_REPLIES = {
    x.XFRM_MSG_GETSA: x.XFRM_MSG_NEWSA,
    x.XFRM_MSG_GETPOLICY: x.XFRM_MSG_NEWPOLICY,
    x.XFRM_MSG_GETAE: x.XFRM_MSG_NEWAE,
    x.XFRM_MSG_GETSADINFO: x.XFRM_MSG_NEWSADINFO,
    x.XFRM_MSG_GETSPDINFO: x.XFRM_MSG_NEWSPDINFO,
    x.XFRM_MSG_GETDEFAULT: x.XFRM_MSG_GETDEFAULT,
    x.XFRM_MSG_ALLOCSPI: x.XFRM_MSG_NEWSA,
}
_DUMPS = {x.XFRM_MSG_GETSA: "sa", x.XFRM_MSG_GETPOLICY: "policy"}


@dataclass(frozen=True, slots=True)
class Notification:
    """One datagram of multicast XFRM messages."""

    time: float
    data: bytes


@dataclass(frozen=True, slots=True)
class Loss:
    """The recorder's socket overran here: messages were lost."""

    time: float


@dataclass(frozen=True, slots=True)
class ProcessName:
    """From here on, ``pid`` is the process ``name`` (None: it has gone)."""

    time: float
    pid: int
    name: str | None


@dataclass(frozen=True, slots=True)
class KeyManager:
    """From here on, a key manager listens in the namespace (``present``), or none does."""

    time: float
    present: bool


#: the body of the key-manager marker, then "1" or "0"
KEY_MANAGER_MARK = b"key-manager="


@dataclass(frozen=True, slots=True)
class Counters:
    """An SA dump: every SA with its counters at ``time`` (reply datagrams)."""

    time: float
    sa: list[bytes]


Item = Notification | Loss | ProcessName | KeyManager | Counters


@dataclass
class StateDump:
    """The SAD/SPD as dumped: reply datagrams per request (None: not asked)."""

    time: float = 0.0  #: when its last reply arrived
    sa: list[bytes] | None = None
    policy: list[bytes] | None = None
    default: list[bytes] | None = None
    addresses: frozenset[str] | None = None

    @property
    def complete(self) -> bool:
        return self.sa is not None and self.policy is not None


@dataclass
class CaptureStats:
    packets: int = 0
    other_families: int = 0
    notifications: int = 0  #: messages
    duplicates: int = 0  #: nlmon copies dropped
    replies_dropped: int = 0  #: answers to other processes' single GETs, acks
    losses: int = 0
    dumps: int = 0  #: state dumps (initial and resyncs)
    counters: int = 0  #: SA dumps read as counter samples


@dataclass
class Capture:
    """A capture as a timeline: ``initial`` state, then ``items`` in order; ``resyncs[i]``
    is the dump that follows the i-th :class:`Loss`."""

    name: str
    start: float = 0.0
    initial: StateDump | None = None
    items: list[Item] = field(default_factory=list)
    resyncs: list[StateDump] = field(default_factory=list)
    stats: CaptureStats = field(default_factory=CaptureStats)
    #: set when the capture ends after a loss but before its dump: items stop at that loss
    truncated_at: float | None = None
    #: where the recording says it stops (its end marker), if it does
    stopped: float | None = None

    @property
    def end(self) -> float:
        """Where the capture ends: its end marker, or its last item."""
        last = self.items[-1].time if self.items else self.start
        return last if self.truncated_at is not None or self.stopped is None else max(self.stopped, last)

    @classmethod
    def load(cls, path: str | Path) -> Capture:
        try:
            with open(path, "rb") as f:
                return _Reader(str(path)).read(f)
        except OSError as exc:
            raise CaptureError(f"cannot read {path}: {exc.strerror}") from None


@dataclass
class _Pending:
    time: float
    pid: int
    kind: str  # "sa", "policy", "addr": dump; "default": GETDEFAULT; "drop": single GET
    reply_type: int
    replies: list[bytes] = field(default_factory=list)


class _Reader:
    def __init__(self, name: str) -> None:
        self.cap = Capture(name)
        self.pending: dict[tuple[int, int], _Pending] = {}  # (family, seq) -> request
        self.run: StateDump | None = None  # the dump run being collected
        self.runs_after_loss: list[StateDump] = []
        self.seen_event = False
        self.losses_waiting = 0
        self.recent: deque[tuple[float, bytes]] = deque(maxlen=16)

    def read(self, f: BinaryIO) -> Capture:
        cap = self.cap
        first = True
        for p in read_packets(f, cap.name):
            cap.stats.packets += 1
            if first:
                cap.start, first = p.time, False
            if p.family not in (NETLINK_ROUTE, x.NETLINK_XFRM):
                cap.stats.other_families += 1
            elif len(p.data) >= 16 and NLMSG_HDR.unpack_from(p.data)[2] & NLM_F_REQUEST:
                self._request(p.time, p.family, p.data)
            elif p.family == NETLINK_ROUTE:
                self._route(p.time, p.data)
            else:
                self._kernel(p.time, p.data)
        self._end_run()
        if self.losses_waiting:
            # the capture stops before the dump that repairs the last loss(es)
            idx = [i for i, it in enumerate(cap.items) if isinstance(it, Loss)][len(cap.resyncs)]
            cap.truncated_at = cap.items[idx].time
            del cap.items[idx:]
            cap.stats.losses = len(cap.resyncs)
        if first:
            raise CaptureError(f"{cap.name}: no packets")
        return cap

    # --- requests and their answers --------------------------------------------------

    def _request(self, t: float, family: int, data: bytes) -> None:
        for mtype, flags, seq, pid, _, _ in _messages(data):
            if not flags & NLM_F_REQUEST:
                continue
            if family == NETLINK_ROUTE:
                if mtype == addresses.RTM_GETADDR and flags & NLM_F_DUMP == NLM_F_DUMP:
                    self.pending[(family, seq)] = _Pending(t, pid, "addr", addresses.RTM_NEWADDR)
            elif mtype in _DUMPS and flags & NLM_F_DUMP == NLM_F_DUMP:
                self.pending[(family, seq)] = _Pending(t, pid, _DUMPS[mtype], 0)
            elif mtype in _GET_REPLIES:
                kind = "default" if mtype == x.XFRM_MSG_GETDEFAULT else "drop"
                self.pending[(family, seq)] = _Pending(t, pid, kind, _GET_REPLIES[mtype])
        if len(self.pending) > 64:
            for k in [k for k, r in self.pending.items() if t - r.time > REQUEST_TIMEOUT]:
                del self.pending[k]

    def _answer(self, t: float, family: int, mtype: int, flags: int, seq: int, pid: int) -> _Pending | None:
        """The request this kernel message answers, if any."""
        req = self.pending.get((family, seq))
        if req is None or (req.pid and pid and req.pid != pid):
            if flags & NLM_F_MULTI and family == x.NETLINK_XFRM and mtype in (x.XFRM_MSG_NEWSA, x.XFRM_MSG_NEWPOLICY):
                # a dump whose request the capture missed: still the kernel's state
                kind = "sa" if mtype == x.XFRM_MSG_NEWSA else "policy"
                req = self.pending[(family, seq)] = _Pending(t, pid, kind, 0)
                return req
            return None
        if mtype in (NLMSG_DONE, NLMSG_ERROR) or flags & NLM_F_MULTI or mtype == req.reply_type:
            return req
        return None

    def _finish(self, t: float, family: int, seq: int, req: _Pending) -> None:
        del self.pending[(family, seq)]
        if req.kind == "drop":
            self.cap.stats.replies_dropped += 1
            return
        if req.kind == "sa" and self.run is not None and self.run.sa is not None:
            self._end_run()  # a second SA dump: the first run is over
        run = self.run
        if run is None:
            run = self.run = StateDump()
        run.time = max(run.time, t)
        if req.kind == "sa":
            run.sa = req.replies
        elif req.kind == "policy":
            run.policy = req.replies
        elif req.kind == "default":
            run.default = req.replies
        elif req.kind == "addr":
            run.addresses = addresses.parse(req.replies)

    def _route(self, t: float, data: bytes) -> None:
        for mtype, flags, seq, pid, _, _ in _messages(data):
            req = self._answer(t, NETLINK_ROUTE, mtype, flags, seq, pid)
            if req is None:
                continue
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                self._finish(t, NETLINK_ROUTE, seq, req)
            elif mtype == req.reply_type:
                req.replies.append(data)

    # --- kernel XFRM packets ------------------------------------------------------

    def _kernel(self, t: float, data: bytes) -> None:
        notification = False
        for mtype, flags, seq, pid, off, end in _messages(data):
            if mtype == NLMSG_OVERRUN and pid == 0:
                self._event(Loss(t))
                self.losses_waiting += 1
                self.cap.stats.losses += 1
                continue
            if mtype == NLMSG_NOOP and pid == 0:
                body = data[off:end].rstrip(b"\0")
                if not body:
                    self.cap.stopped = t
                elif body.startswith(KEY_MANAGER_MARK):
                    present = body[len(KEY_MANAGER_MARK) :] == b"1"
                    self._event(KeyManager(t, present), interrupts_run=False)
                continue
            if mtype == NLMSG_NOOP:
                name = data[off:end].split(b"\0", 1)[0].decode("utf-8", "replace") or None
                self._event(ProcessName(t, pid, name), interrupts_run=False)
                continue
            req = self._answer(t, x.NETLINK_XFRM, mtype, flags, seq, pid)
            if req is not None:
                if not req.replies or req.replies[-1] is not data:
                    req.replies.append(data)
                if mtype in (NLMSG_DONE, NLMSG_ERROR) or not flags & NLM_F_MULTI:
                    if mtype == NLMSG_ERROR and req.kind == "default":
                        req.replies = []
                    self._finish(t, x.NETLINK_XFRM, seq, req)
                continue
            if mtype < 16:
                continue  # an acknowledgement or the end of someone else's dump
            notification = True
        if notification:
            if any(abs(t - pt) <= DUPLICATE_WINDOW and pd == data for pt, pd in self.recent):
                self.cap.stats.duplicates += 1
                return
            self.recent.append((t, data))
            self.cap.stats.notifications += sum(1 for m in _messages(data) if m[0] >= 16)
            self._event(Notification(t, data))

    def _event(self, item: Item, interrupts_run: bool = True) -> None:
        if interrupts_run:
            self._end_run()
            self.seen_event = True
        self.cap.items.append(item)

    def _end_run(self) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        if not self.seen_event and self.cap.initial is None:
            self.cap.initial = run
            self.cap.stats.dumps += 1
        elif self.losses_waiting and run.complete:
            self.cap.resyncs.append(run)
            self.losses_waiting -= 1
            self.cap.stats.dumps += 1
        elif run.sa is not None and run.policy is None:
            self.cap.items.append(Counters(run.time, run.sa))
            self.cap.stats.counters += 1


def _messages(data: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """(type, flags, seq, pid, body offset, body end) of each whole message."""
    return [m for m in iter_messages(data) if not isinstance(m, str)]


__all__ = [
    "KEY_MANAGER_MARK", "Capture", "CaptureStats", "Counters", "Item", "KeyManager", "Loss", "Notification",
    "ProcessName", "StateDump",
]  # fmt: skip
