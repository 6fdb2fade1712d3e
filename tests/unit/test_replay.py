"""Replays through the real pipeline on trio's mock clock: recorded times drive the clock, so
time-based verdicts fall at the recorded offsets; dumps, overruns, process names, counters and
key-manager marks come from the recording.

Recordings are built with the real Recorder from messages real kernels sent (tests/fixtures).
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from support import ROOT, XFRMWATCH, replay_json, validate_event

from xfrmwatch import events as ev
from xfrmwatch.capture import Capture
from xfrmwatch.detect.alerting import Alerter
from xfrmwatch.detect.enrich import ProcessNames
from xfrmwatch.detect.pack import load
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.pipeline import PipelineConfig, start_pipeline
from xfrmwatch.record import Recorder
from xfrmwatch.replay import ReplaySource, replay_clock
from xfrmwatch.source import SourceBatch

F = ROOT / "tests/fixtures"
#: NEWSA with `limit time-soft 1 limit time-hard 3`, its soft EXPIRE, its hard EXPIRE
#: (tests/fixtures/README.md, expire-time), added at 2026-11-27T04:27:18Z
EXPIRE_TIME = [p.read_bytes() for p in sorted((F / "uml/expire-time").glob("*.bin"))]
ADDED = datetime.datetime.fromisoformat("2026-11-27T04:27:18+00:00").timestamp()
SA_DUMP = [(F / "uml/req-sa-dump" / n).read_bytes() for n in ("dgram-0001.raw", "dgram-0008.raw")]
POLICY_DUMP = [(F / "host/req-policy-dump" / n).read_bytes() for n in ("dgram-0001.raw", "dgram-0005.raw")]
NEWPOLICY = (F / "host/policy/0001-NEWPOLICY.bin").read_bytes()
GETSA = bytes(16 + 24)  # the request's bytes do not matter to the reader: its header below
GETPOLICY = bytes(16 + 64)


def request(mtype: int, seq: int, pid: int, size: int) -> bytes:
    import struct

    return struct.pack("=IHHII", size, mtype, 0x301, seq, pid) + bytes(size - 16)


def state_dump(t: float) -> list[tuple[float, int, bytes, list[bytes]]]:
    """The recorded SA dump (seq 4242, port 853) and policy dump (seq 4242, port 12317)."""
    return [
        (t, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, 4242, 853, 40), SA_DUMP),
        (t, x.NETLINK_XFRM, request(x.XFRM_MSG_GETPOLICY, 4242, 12317, 80), POLICY_DUMP),
    ]


def expire_recording(tmp_path: Path) -> Path:
    """The expire-time SA's life as a recording: added at +0, soft EXPIRE at +1, hard at +3."""
    rec = Recorder()
    t0 = ADDED + 0.25
    for dt, m in zip((0.0, 1.0, 3.0), EXPIRE_TIME, strict=True):
        rec.notification(t0 + dt, m, 0.0)
    rec.end(t0 + 6)
    p = tmp_path / "expire.pcap"
    p.write_bytes(rec.take())
    return p


async def replay(path: Path, rules: bool = True) -> tuple[list[ev.Event], Any, ReplaySource]:
    """Every event a replay of ``path`` puts out, the final mirror, the source."""
    source = ReplaySource(Capture.load(path), "t")
    out: list[ev.Event] = []
    async with trio.open_nursery() as n:
        recv, mirror, _ = await start_pipeline(n, PipelineConfig(), Alerter(load(None)) if rules else None, source=source)
        async for batch in recv:
            out += batch
    return out, mirror, source


def offsets(events: list[ev.Event], source: ReplaySource) -> list[tuple[str, float]]:
    return [(type(e).__name__, round(e.mono - source.base, 6)) for e in events]


async def test_timer_verdicts_at_recorded_offsets(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """An SA with soft limit 1 s and hard limit 3 s that soft-expires and is never replaced:
    rekey_overdue half-way from soft to hard (+2 s), tunnel_down at the hard expiry plus the
    model's 0.5 s grace; every event stamped with the recorded wall time."""
    events, _, source = await replay(expire_recording(tmp_path))
    got = offsets(events, source)
    assert ("RekeyStarted", 1.0) in got and ("RekeyOverdue", 2.0) in got and ("TunnelDown", 3.5) in got
    assert [n for n, _ in got if n in ("NewSA", "Expire")] == ["NewSA", "Expire", "Expire"]
    assert [t for n, t in got if n == "Expire"] == [1.0, 3.0]
    titles = [e.rule.title for e in events if isinstance(e, ev.Alert)]
    assert "Rekey overdue" in titles
    for e in events:
        validate_event(msgspec.to_builtins(e))
        recorded = datetime.datetime.fromisoformat(e.time).timestamp()
        assert recorded == pytest.approx(ADDED + 0.25 + (e.mono - source.base), abs=1e-5)


def test_same_events_at_another_speed(tmp_path: Path) -> None:
    """Played at twice real time instead of jumping: the same events, at the same offsets
    (within the scheduling slack of a real-time clock: 250 ms late is 0.5 s of recording)."""
    path = expire_recording(tmp_path)

    async def run() -> list[tuple[str, float]]:
        events, _, source = await replay(path)
        return offsets(events, source)

    fast = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    timed = trio.run(run, clock=replay_clock(speed=2))
    assert [n for n, _ in timed] == [n for n, _ in fast], (timed, fast)
    assert all(abs(a - b) < 0.5 for (_, a), (_, b) in zip(timed, fast, strict=True)), (timed, fast)


async def test_overrun_resyncs_from_the_recorded_dump(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """Initial state from the recorded dump; an overrun, then the dump recorded after it: the
    resync event names what had drifted, and the final mirror is that dump."""
    rec = Recorder()
    rec.dump(state_dump(100.0))
    rec.notification(101.0, NEWPOLICY, 0.0)
    rec.overrun(102.0)
    rec.dump([(103.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, 4242, 853, 40), SA_DUMP[-1:]),
              (103.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETPOLICY, 4242, 12317, 80), POLICY_DUMP)])  # fmt: skip
    rec.end(104.0)
    (tmp_path / "o.pcap").write_bytes(rec.take())
    events, mirror, source = await replay(tmp_path / "o.pcap", rules=False)
    kinds = offsets(events, source)
    assert [k for k in kinds if k[0] in ("NewPolicy", "Overrun", "Resync")] == [
        ("NewPolicy", 1.0), ("Overrun", 2.0), ("Resync", 3.0),
    ]  # fmt: skip
    (resync,) = [e for e in events if isinstance(e, ev.Resync)]
    assert (resync.sas, resync.policies) == (0, 4)
    assert len(resync.stale) == 7  # the 7 SAs of the initial dump are gone
    assert mirror.sas == {} and len(mirror.policies) == 4


async def test_process_names_as_recorded(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """Changes carry the name the recorder saw for their nlmsg_pid when they arrived."""
    import struct

    (tmp_path / "proc/4321").mkdir(parents=True)
    comm = tmp_path / "proc/4321/comm"
    comm.write_text("charon\n")
    rec = Recorder(names=ProcessNames(proc=str(tmp_path / "proc"), ttl=0.0))
    pol = bytearray(NEWPOLICY)
    struct.pack_into("=I", pol, 12, 4321)  # nlmsg_pid
    rec.dump(state_dump(10.0))
    rec.notification(11.0, bytes(pol), 1.0)
    comm.unlink()
    rec.notification(12.0, bytes(pol), 2.0)
    rec.end(13.0)
    (tmp_path / "n.pcap").write_bytes(rec.take())
    events, _, _ = await replay(tmp_path / "n.pcap", rules=False)
    assert [e.process for e in events if isinstance(e, ev.NewPolicy)] == ["charon", None]  # type: ignore[attr-defined]


async def test_counters_and_key_manager_from_the_recording(autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """A recorded SA dump reaches the state stage as a counters sample at its time, and
    whether a key manager listens follows the recorded marks."""
    rec = Recorder()
    rec.dump(state_dump(50.0))
    rec.key_manager(50.0, False)
    rec.dump([(55.0, x.NETLINK_XFRM, request(x.XFRM_MSG_GETSA, 7, 853, 40), [_reseq(d, 7) for d in SA_DUMP])], counters=True)
    rec.key_manager(57.0, True)
    rec.end(60.0)
    (tmp_path / "c.pcap").write_bytes(rec.take())
    source = ReplaySource(Capture.load(tmp_path / "c.pcap"))
    seen: list[tuple[float, int | None, bool]] = []
    send, recv = trio.open_memory_channel[SourceBatch](10)
    async with trio.open_nursery() as n:
        await n.start(source.serve, send)
        seen.append((0.0, None, source.key_manager()))
        async for b in recv:
            seen.append((trio.current_time() - source.base, None if b.counters is None else len(b.counters), source.key_manager()))
    assert seen[:2] == [(0.0, None, False), (5.0, 7, False)]
    assert source.key_manager() is True and trio.current_time() - source.base == 10.0


def _reseq(data: bytes, seq: int) -> bytes:
    import struct

    out = bytearray(data)
    off = 0
    while off + 16 <= len(out):
        mlen = struct.unpack_from("=I", out, off)[0]
        struct.pack_into("=I", out, off + 8, seq)
        off += (mlen + 3) & ~3
    return bytes(out)


class TestCommand:
    def test_fast_json_count_and_state_file(self, tmp_path: Path) -> None:
        """`replay --fast --format json`: schema-valid lines, rules included; --count stops;
        --state-file gets the final mirror."""
        path = expire_recording(tmp_path)
        state = tmp_path / "end.json"
        lines = replay_json(path, "--state-file", str(state), timeout=60)
        types = [o["type"] for o in lines]
        assert types[:3] == ["newsa", "expire", "rekey_started"] and "tunnel_down" in types and "alert" in types
        assert json.loads(state.read_text())["sa"] == []
        p = subprocess.run([*XFRMWATCH, "replay", str(path), "--fast", "--format", "json", "--count", "2"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 2

    def test_mistakes_are_one_line(self, tmp_path: Path) -> None:
        """Not a capture, a missing file: exit 10; a bad --speed: exit 2; one line each."""
        (tmp_path / "x.txt").write_text("hello, not a capture\n")
        for args, code in (([str(tmp_path / "x.txt")], 10), ([str(tmp_path / "none.pcap")], 10),
                           ([str(expire_recording(tmp_path)), "--speed", "0"], 2)):  # fmt: skip
            p = subprocess.run([*XFRMWATCH, "replay", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert p.returncode == code, (args, p.stderr)
            assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
