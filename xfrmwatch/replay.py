"""``xfrmwatch replay``: a recording through the whole pipeline, as if live.

:class:`ReplaySource` is a :class:`xfrmwatch.pipeline.Source`: the pipeline runs unchanged
(mirror, tunnel model, rules, outputs) and cannot tell a recording from the kernel, except
that time is the recording's:

- trio's clock drives it: each notification is sent when the clock reaches its recorded
  offset from the start, so the tunnel model's deadlines (``rekey_overdue``,
  ``tunnel_down``'s grace, ...) fall at the offsets they fell at live.  Run it on a
  :class:`trio.testing.MockClock` (:func:`replay_clock`): ``rate=N`` plays N times as fast,
  ``autojump_threshold=0`` as fast as the pipeline goes, with the same events;
- the wall clock (event ``time`` fields, SA ages) is the recorded one;
- the kernel's snapshots are the recorded dumps: the initial state first, then, after each
  recorded overrun, the dump that followed it;
- SA counter samples arrive with the batches (:attr:`SourceBatch.counters`) at their
  recorded times, instead of being read every liveness interval;
- process names are the recorded ones, as they were when each event was received, and so is
  whether a key manager listened (without that mark, as in an nlmon capture: it did).

The replay ends at the recording's end (its end marker, or its last packet).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
import trio
import trio.testing

from . import events as ev
from .capture import Capture, Counters, KeyManager, Loss, Notification, ProcessName, StateDump
from .detect.enrich import CHANGE_EVENTS
from .errors import UsageError
from .netlink import query
from .netlink.decode import Decoder
from .pipeline import Snapshot
from .source import SourceBatch
from .timestamps import utc_precise

log = structlog.get_logger("xfrmwatch.replay")


def replay_clock(*, speed: float = 1.0, fast: bool = False) -> trio.testing.MockClock:
    """The clock to run a replay on: ``speed`` times real time, or (``fast``) jumping to the
    next thing due whenever the pipeline has nothing left to do."""
    if fast:
        return trio.testing.MockClock(autojump_threshold=0)
    if not speed > 0 or math.isinf(speed):
        raise UsageError("--speed must be a positive number (e.g. 10 for ten times as fast)")
    return trio.testing.MockClock(rate=speed)


class ReplaySource:
    """A :class:`Capture` as the pipeline's source (see the module)."""

    polls_counters = False
    portid = None

    def __init__(self, capture: Capture, netns: str = "") -> None:
        self.capture = capture
        self.netns = netns
        self._decoder = Decoder(netns)
        self._base: float | None = None
        self.kernel = ReplayKernel(self)
        self.names = RecordedNames(self)
        self._km: tuple[list[float], list[bool]] | None = None

    # --- time -----------------------------------------------------------------------

    @property
    def base(self) -> float:
        """trio's clock at the recording's start (fixed the first time it is asked)."""
        if self._base is None:
            self._base = trio.current_time()
        return self._base

    def mono(self, t: float) -> float:
        """trio's clock at recorded time ``t``."""
        return self.base + (t - self.capture.start)

    def wall(self) -> float:
        return self.capture.start + (trio.current_time() - self.base)

    def key_manager(self) -> bool:
        if self._km is None:
            marks = [i for i in self.capture.items if isinstance(i, KeyManager)]
            self._km = ([self.mono(m.time) for m in marks], [m.present for m in marks])
        i = bisect.bisect_right(self._km[0], trio.current_time())
        return self._km[1][i - 1] if i else True

    # --- Source ----------------------------------------------------------------------

    async def local_addresses(self) -> frozenset[str]:
        initial = self.capture.initial
        if initial is None or initial.addresses is None:
            log.warning("the recording has no address dump: SA directions unknown", file=self.capture.name)
            return frozenset()
        return initial.addresses

    def describe(self) -> dict[str, Any]:
        cap = self.capture
        return {
            "file": cap.name, "start": utc_precise(cap.start), "seconds": round(cap.end - cap.start, 3),
            "messages": cap.stats.notifications, "overruns": cap.stats.losses,
        }  # fmt: skip

    async def serve(
        self, send: trio.MemorySendChannel[SourceBatch], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send each recorded notification, overrun and counters sample when trio's clock
        reaches its offset; return (closing the channel) at the recording's end."""
        cap = self.capture
        decode = self._decoder.decode
        async with send:
            task_status.started()
            for item in cap.items:
                if isinstance(item, ProcessName | KeyManager):
                    continue  # RecordedNames and key_manager() know them
                await trio.sleep_until(self.mono(item.time))
                now = trio.current_time()
                if isinstance(item, Notification):
                    await send.send(SourceBatch(decode(item.data, now, item.time), caught_up=True))
                elif isinstance(item, Loss):
                    await send.send(SourceBatch([self._overrun(item, now)], caught_up=True))
                elif isinstance(item, Counters):
                    sas = [sa for d in item.sa for sa in query.sas_in(self._decoder, d, now, item.time)]
                    await send.send(SourceBatch([], caught_up=True, counters=sas))
            await trio.sleep_until(self.mono(cap.end))
            if cap.truncated_at is not None:
                log.warning(
                    "the recording stops after an overrun, before the dump that repairs it: replayed up to there",
                    file=cap.name,
                )  # fmt: skip

    def _overrun(self, item: Loss, now: float) -> ev.Overrun:
        return ev.Overrun(
            time=utc_precise(item.time), mono=now, netns=self.netns, nlmsg_pid=0, nlmsg_seq=0,
            detail="ENOBUFS (recorded): the kernel dropped events for the recorder; "
            "the SAD/SPD view may be stale until resynced",
        )  # fmt: skip

    def snapshot(self, dump: StateDump | None) -> Snapshot:
        """A recorded dump as the state stage takes it."""
        if dump is None:
            return Snapshot([], [], None)
        now, wall = trio.current_time(), dump.time
        sas = [s for d in dump.sa or [] for s in query.sas_in(self._decoder, d, now, wall)]
        pols = [p for d in dump.policy or [] for p in query.policies_in(self._decoder, d, now, wall)]
        default = None
        for d in dump.default or []:
            for e in self._decoder.decode(d, now, wall):
                if isinstance(e, ev.DefaultPolicy):
                    default = (e.in_, e.fwd, e.out)
        return Snapshot(sas, pols, default)


@dataclass
class ReplayKernel:
    """The kernel as recorded: the initial dump, then one resync dump per recorded overrun."""

    source: ReplaySource
    _served: int = 0

    async def snapshot(self) -> Snapshot:
        cap = self.source.capture
        if self._served == 0:
            self._served = 1
            if cap.initial is None:
                log.warning("the recording has no initial dump: replaying from an empty SAD/SPD", file=cap.name)
            return self.source.snapshot(cap.initial)
        k = self._served - 1
        if k >= len(cap.resyncs):
            # a resync the recording did not make (the mirror failed to apply an event):
            # the best state known is the last dump
            log.warning("no recorded dump for this resync: using the last one", file=cap.name)
            return self.source.snapshot(cap.resyncs[-1] if cap.resyncs else cap.initial)
        self._served += 1
        dump = cap.resyncs[k]
        await trio.sleep_until(self.source.mono(dump.time))
        return self.source.snapshot(dump)

    async def sas(self) -> list[ev.SA]:
        """Not asked in a replay: the counters come with the source's batches."""
        return []

    def drops(self) -> int | None:
        return None


class RecordedNames:
    """Process names from the recording's markers, as they stood when an event was received."""

    def __init__(self, source: ReplaySource) -> None:
        self.source = source
        self._table: dict[int, tuple[list[float], list[str | None]]] | None = None

    def _build(self) -> dict[int, tuple[list[float], list[str | None]]]:
        table: dict[int, tuple[list[float], list[str | None]]] = {}
        for item in self.source.capture.items:
            if isinstance(item, ProcessName):
                times, names = table.setdefault(item.pid, ([], []))
                times.append(self.source.mono(item.time))
                names.append(item.name)
        return table

    def name(self, pid: int, at: float) -> str | None:
        if self._table is None:
            self._table = self._build()
        entry = self._table.get(pid)
        if entry is None:
            return None
        i = bisect.bisect_right(entry[0], at)
        return entry[1][i - 1] if i else None

    def enrich(self, e: ev.Event, now: float) -> ev.Event:
        if e.nlmsg_pid and isinstance(e, CHANGE_EVENTS):
            name = self.name(e.nlmsg_pid, e.mono)
            if name is not None:
                return msgspec.structs.replace(e, process=name)
        return e


__all__ = ["RecordedNames", "ReplayKernel", "ReplaySource", "replay_clock"]
