"""The render worker of ECS/OCSF file and stdout outputs (xfrmwatch/output/render_worker.py).

Its lines must be the bytes the in-process renderer makes, for every event the decoder
makes from the recorded fixtures, every built event (tests/unit/test_formats.py) and a
burst's policies (bench/decode.py's burst: one recorded NEWPOLICY with distinct addresses and
indexes); a real worker process is killed, stopped and signalled here, on trio's real clock.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import structlog
import trio
from support import ROOT
from test_formats import ALL_EVENTS

from xfrmwatch import events as ev
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output import render_worker
from xfrmwatch.output.file import FileConfig, FileOutput
from xfrmwatch.output.render import json_lines_renderer
from xfrmwatch.output.render_worker import FRAME_EVENTS, encode_frames, frame_decoder, serve_frames

sys.path.insert(0, str(ROOT / "bench"))
from decode import burst, load

FORMATS = ["ecs", "ocsf"]


def burst_events(n: int = 2000) -> list[ev.Event]:
    dec = Decoder("burst")
    return [e for m in burst(load(), n) for e in dec.decode(m, 100.0, 1764460000.5)]


EVENTS = [e for _, e in ALL_EVENTS] + burst_events()


def split_frames(data: bytes) -> list[bytes]:
    """The payloads of consecutive frames (4-byte little-endian length, then msgpack)."""
    out = []
    while data:
        n = int.from_bytes(data[:4], "little")
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


class TestProtocol:
    """Frames and the worker's loop, in process."""

    def test_frames_decode_to_equal_events(self) -> None:
        """Each frame holds at most FRAME_EVENTS events; decoded, they equal the events sent."""
        payloads = split_frames(bytes(encode_frames(msgspec.msgpack.Encoder(), EVENTS)))
        assert -(-len(EVENTS) // FRAME_EVENTS) == len(payloads)
        dec = frame_decoder()
        back = [e for p in payloads for e in dec.decode(p)]
        assert EVENTS == back
        assert [type(e) for e in EVENTS] == [type(e) for e in back]

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_lines_are_the_in_process_bytes(self, fmt: str) -> None:
        """The worker's loop writes exactly the in-process renderer's lines, and acknowledges
        the ready point and every frame."""
        out, acks = io.BytesIO(), io.BytesIO()
        serve_frames(fmt, io.BytesIO(bytes(encode_frames(msgspec.msgpack.Encoder(), EVENTS))), out, acks)
        assert json_lines_renderer(fmt)(EVENTS) == out.getvalue()
        counts = [int.from_bytes(acks.getvalue()[i : i + 4], "little") for i in range(0, len(acks.getvalue()), 4)]
        sizes = [min(FRAME_EVENTS, len(EVENTS) - i) for i in range(0, len(EVENTS), FRAME_EVENTS)]
        assert [0, 0, *(x for n in sizes for x in (n, 0))] == counts

    def test_a_frame_cut_short_is_an_error(self) -> None:
        """A truncated frame (the daemon died mid-write) ends the loop with an error, not a partial render."""
        data = bytes(encode_frames(msgspec.msgpack.Encoder(), EVENTS[:3]))
        out = io.BytesIO()
        with pytest.raises(EOFError):
            serve_frames("ecs", io.BytesIO(data[:-5]), out, io.BytesIO())
        assert b"" == out.getvalue()


async def _run(out: FileOutput, events: list[ev.Event], queue: int = 100_000) -> None:
    send, recv = trio.open_memory_channel[ev.Event](queue)
    async with trio.open_nursery() as n:
        await n.start(out.run, recv)
        for e in events:
            send.send_nowait(e)
        await send.aclose()


async def _wait(cond: Callable[[], bool], seconds: float = 20) -> None:
    """Poll ``cond`` (a file another process writes, a count that process makes): no event to wait on."""
    with trio.fail_after(seconds):
        while not cond():  # noqa: ASYNC110
            await trio.sleep(0.01)


def _worker_output(tmp_path: Path, fmt: str = "ecs") -> tuple[Path, FileOutput]:
    """A file output rendering in a worker process, and its file."""
    path = tmp_path / "e.jsonl"
    return path, FileOutput(FileConfig(path=str(path), format=fmt, render="process"))


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class TestWorkerProcess:
    """A real worker process behind a file output."""

    @pytest.mark.parametrize("fmt", FORMATS)
    async def test_file_holds_the_in_process_bytes(self, fmt: str, tmp_path: Path) -> None:
        """render = "process" and render = "inline" write the same bytes, every event flushed at the end."""
        for render in ("process", "inline"):
            path = tmp_path / f"{render}.jsonl"
            out = FileOutput(FileConfig(path=str(path), format=fmt, render=render))
            assert (render == "process") == out.worker
            await _run(out, EVENTS)
            assert json_lines_renderer(fmt)(EVENTS) == path.read_bytes(), render
            assert 0 == out.dropped

    def test_render_auto(self) -> None:
        """auto: a worker for ECS and OCSF when more than one CPU may run the daemon; JSON always inline."""
        many = len(os.sched_getaffinity(0)) > 1
        assert many == FileConfig(path="x", format="ecs").in_worker()
        assert many == FileConfig(path="x", format="ocsf").in_worker()
        assert not FileConfig(path="x", format="json", render="process").in_worker()
        assert not FileConfig(path="x", format="ecs", render="inline").in_worker()

    async def test_killed_worker_is_reported_counted_and_restarted(self, tmp_path: Path) -> None:
        """A worker killed with events in flight: one error line, those events dropped (and
        only those), a new worker writes what comes next."""
        path, out = _worker_output(tmp_path)
        evs = burst_events(300)
        send, recv = trio.open_memory_channel[ev.Event](10_000)
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as n:
                await n.start(out.run, recv)
                first = out.render_worker
                assert first is not None and first.pid is not None
                for e in evs[:100]:
                    send.send_nowait(e)
                await _wait(lambda: _lines(path) == 100)
                os.kill(first.pid, signal.SIGSTOP)
                for e in evs[100:200]:
                    send.send_nowait(e)
                await _wait(lambda: first.sent == 200)
                os.kill(first.pid, signal.SIGKILL)
                await _wait(lambda: out.render_worker is not first and out.render_worker is not None and out.render_worker.pid is not None)
                for e in evs[200:]:
                    send.send_nowait(e)
                await send.aclose()
        died = [x for x in logs if x["event"] == "render worker died: restarting"]
        assert 1 == len(died)
        assert (100, "render worker exited (killed by SIGKILL)") == (died[0]["lost"], died[0]["error"])
        assert 100 == out.dropped
        assert json_lines_renderer("ecs")(evs[:100] + evs[200:]) == path.read_bytes()

    async def test_stalled_worker_is_reported_and_never_blocks_the_producer(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stopped worker: a warning once no acknowledgement came for STALL_SECONDS; the
        output's queue fills and refuses more (the producer never waits); continued, it
        writes everything it was given."""
        monkeypatch.setattr(render_worker, "STALL_SECONDS", 0.3)
        path, out = _worker_output(tmp_path)
        evs = burst_events(3000)
        send, recv = trio.open_memory_channel[ev.Event](500)
        accepted: list[ev.Event] = []
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as n:
                await n.start(out.run, recv)
                w = out.render_worker
                assert w is not None and w.pid is not None
                os.kill(w.pid, signal.SIGSTOP)
                for e in evs:
                    try:
                        send.send_nowait(e)
                        accepted.append(e)
                    except trio.WouldBlock:
                        await trio.sleep(0.001)  # what the output took meanwhile, if anything
                await _wait(lambda: any(x["event"].startswith("render worker stalled") for x in logs))
                assert len(accepted) < len(evs)
                os.kill(w.pid, signal.SIGCONT)
                await send.aclose()
        assert any(x["event"] == "render worker writing again" for x in logs)
        assert json_lines_renderer("ecs")(accepted) == path.read_bytes()
        assert 0 == out.dropped

    async def test_worker_ignores_terminal_and_stop_signals(self, tmp_path: Path) -> None:
        """SIGINT, SIGTERM and SIGHUP (a Ctrl-C or systemd's stop reach the whole group) leave the
        worker running: it ends when its input does, after writing everything."""
        path, out = _worker_output(tmp_path, "ocsf")
        evs = burst_events(50)
        send, recv = trio.open_memory_channel[ev.Event](1000)
        async with trio.open_nursery() as n:
            await n.start(out.run, recv)
            w = out.render_worker
            assert w is not None and w.pid is not None
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                os.kill(w.pid, sig)
            for e in evs:
                send.send_nowait(e)
            await send.aclose()
        assert json_lines_renderer("ocsf")(evs) == path.read_bytes()
        assert out.render_worker is w

    async def test_reopen_writes_to_the_new_file(self, tmp_path: Path) -> None:
        """SIGHUP's reopen (logrotate): lines before it stay in the renamed file, later ones
        go to a new file at the configured path."""
        path, out = _worker_output(tmp_path)
        evs = burst_events(40)
        send, recv = trio.open_memory_channel[ev.Event](1000)
        async with trio.open_nursery() as n:
            await n.start(out.run, recv)
            for e in evs[:10]:
                send.send_nowait(e)
            await _wait(lambda: _lines(path) == 10)
            path.rename(tmp_path / "e.jsonl.1")
            out.reopen()
            for e in evs[10:]:
                send.send_nowait(e)
            await send.aclose()
        enc = json_lines_renderer("ecs")
        assert enc(evs[:10]) == (tmp_path / "e.jsonl.1").read_bytes()
        assert enc(evs[10:]) == path.read_bytes()


_STDOUT_SCRIPT = """
import sys, trio
sys.path[:0] = [{tests!r}, {unit!r}]
from test_render_worker import EVENTS, _run
from xfrmwatch.output.file import StdoutConfig, StdoutOutput
out = StdoutOutput(StdoutConfig(format="ecs", render="process"))
assert out.worker
trio.run(_run, out, EVENTS)
"""


def test_stdout_output_writes_to_the_daemons_stdout() -> None:
    """A stdout output's worker writes to the daemon's standard output (a pipe here), the same bytes."""
    script = _STDOUT_SCRIPT.format(tests=str(ROOT / "tests"), unit=str(ROOT / "tests" / "unit"))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, cwd=ROOT)
    assert 0 == p.returncode, p.stderr.decode()[-2000:]
    assert json_lines_renderer("ecs")(EVENTS) == p.stdout
