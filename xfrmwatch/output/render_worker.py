"""ECS and OCSF lines rendered by a worker process, off the netlink reader's core.

The daemon's event loop reads netlink, decodes, mirrors, runs the rules and fans out on
one core; an ECS or OCSF document costs several times what a native JSON line costs, so
a file or stdout output in those formats hands its batches to a child process
(``python -m xfrmwatch.output.render_worker FORMAT FD``) that renders them with the same
renderer as in process (:func:`~xfrmwatch.output.render.json_lines_renderer`) and writes
the lines to ``FD``: the output's file (opened, and reopened on SIGHUP, by the daemon) or a
duplicate of the daemon's standard output.  The batches cross the pipe encoded once, as
msgpack of the event model (:data:`~xfrmwatch.events.AnyEvent`, key-free like every event),
and decode into equal events, whose lines are the same bytes.

Protocol, over two pipes:

* daemon -> worker (its stdin): frames, each a 4-byte little-endian length and a msgpack
  array of events.  End of file: the worker writes what it has and exits 0.
* worker -> daemon (its stdout): when ready, one acknowledgement (0, 0); then one per frame
  once its lines are written: events written, events that could not be rendered (each a
  little-endian uint32).

The worker ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or systemd's stop reaches every
process of the group): it stops when its stdin closes, so what the daemon queued before it
stopped is written.  :class:`RenderWorker` is the daemon's side: it runs one worker process;
the file output supervises it (restarts with backoff, counts the events a dead worker took
with it as dropped).
"""

from __future__ import annotations

import fcntl
import gc
import os
import queue
import signal
import site
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
import structlog
import trio

from .. import events as ev

log = structlog.get_logger("xfrmwatch.output.file")

_LEN = struct.Struct("<I")
_ACK = struct.Struct("<II")
#: seconds without an acknowledgement, events in flight, before a worker is reported stalled
STALL_SECONDS = 10.0
#: seconds a worker may take to start (import and say it is ready)
START_SECONDS = 30.0
#: bytes of the pipe to a worker (Linux's default is 64 KiB; a frame of a burst is larger)
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
#: events in a frame: the worker decodes a frame at once and then renders it, and the
#: events of a larger one no longer fit the CPU's caches (10,000 a frame: 40 % slower)
FRAME_EVENTS = 256
#: frames between two collections of the worker's garbage
_GC_FRAMES = 64


class WorkerDied(Exception):
    """The render worker exited (or never became ready) while events were due."""


def encode_frames(enc: msgspec.msgpack.Encoder, events: list[ev.Event]) -> bytearray:
    """The frames of ``events`` (at most :data:`FRAME_EVENTS` each), in one buffer."""
    buf = bytearray()
    for i in range(0, len(events), FRAME_EVENTS):
        start = len(buf)
        buf += b"\0\0\0\0"
        enc.encode_into(events[i : i + FRAME_EVENTS], buf, -1)
        _LEN.pack_into(buf, start, len(buf) - start - _LEN.size)
    return buf


def frame_decoder() -> msgspec.msgpack.Decoder[list[ev.AnyEvent]]:
    """The decoder of a frame's payload (what follows the length)."""
    return msgspec.msgpack.Decoder(list[ev.AnyEvent])


def _child_env() -> dict[str, str]:
    """The daemon's environment, plus the directory this package was imported from when it
    is not an installed one (a checkout run with PYTHONPATH or from its directory): the
    worker imports the very same code."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ev.__file__)))
    installed = {os.path.abspath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


async def _kill(proc: trio.Process) -> None:
    """deliver_cancel: the worker ignores SIGTERM (it stops at the end of its input)."""
    proc.kill()


class RenderWorker:
    """One worker process rendering ``fmt`` lines to ``fd``.  Start :meth:`serve` with
    ``nursery.start``; then :meth:`send` batches and :meth:`finish`.  :meth:`serve` returns
    once the worker wrote everything and exited, or raises :class:`WorkerDied`."""

    def __init__(self, fmt: str, fd: int, name: str, drop: Callable[[int], None]) -> None:
        self.fmt = fmt
        self.fd = fd
        self.name = name
        #: where events that could not be rendered are reported (the output's drop)
        self.drop = drop
        #: events sent (counted when their frame starts), written, not renderable
        self.sent = 0
        self.written = 0
        self.failed = 0
        self._enc = msgspec.msgpack.Encoder()
        #: the pipe to the worker's stdin
        self._pipe: _PipeWriter | None = None
        self._closing = False
        self.pid: int | None = None

    @property
    def in_flight(self) -> int:
        """Events sent and not acknowledged: lost if the worker dies now."""
        return self.sent - self.written - self.failed

    def argv(self) -> list[str]:
        return [sys.executable, "-P", "-m", __name__, self.fmt, str(self.fd)]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default size serves
        self._pipe = pipe = _PipeWriter(w)
        died = ""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    proc: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            self.argv(),
                            stdin=r,
                            stdout=subprocess.PIPE,
                            pass_fds=(self.fd,),
                            env=_child_env(),
                            check=False,
                            deliver_cancel=_kill,
                        )
                    )
                finally:
                    os.close(r)  # the worker's end: a write fails once it is gone
                assert proc.stdout is not None
                self.pid = proc.pid
                nursery.start_soon(pipe.run)
                with trio.move_on_after(START_SECONDS) as starting:
                    ready = await self._ready(proc.stdout)
                if starting.cancelled_caught:
                    died = f"render worker not ready after {START_SECONDS:g}s"
                    nursery.cancel_scope.cancel()
                else:
                    if ready:
                        task_status.started()
                        await self._acks(proc.stdout)
                    rc = await proc.wait()
                    if not ready:
                        died = f"render worker exited before it was ready ({_status(rc)})"
                    elif not self._closing or rc != 0:
                        died = f"render worker exited ({_status(rc)})"
                    pipe.close()  # the writing thread ends (it had, if the input was finished)
        finally:
            pipe.close()
        if died:  # raised here, not in the nursery: one exception, not a group of one
            raise WorkerDied(died)

    @staticmethod
    async def _ready(stdout: trio.abc.ReceiveStream) -> bool:
        """Read the worker's first acknowledgement: whether it came (else it exited)."""
        buf = b""
        while len(buf) < _ACK.size:
            chunk = await stdout.receive_some(_ACK.size - len(buf))
            if not chunk:
                return False
            buf += chunk
        return True

    async def _acks(self, stdout: trio.abc.ReceiveStream) -> None:
        """Read acknowledgements until the worker's stdout ends."""
        buf = b""
        stalled = False
        while True:
            with trio.move_on_after(STALL_SECONDS) as wait:
                chunk = await stdout.receive_some(65536)
            if wait.cancelled_caught:
                if self.in_flight and not stalled:
                    stalled = True
                    log.warning(
                        "render worker stalled: no line written for a while",
                        output=self.name, pid=self.pid, seconds=STALL_SECONDS, in_flight=self.in_flight,
                    )  # fmt: skip
                continue
            if not chunk:
                return
            if stalled:
                stalled = False
                log.info("render worker writing again", output=self.name, pid=self.pid)
            buf += chunk
            n = len(buf) - len(buf) % _ACK.size
            for written, failed in _ACK.iter_unpack(buf[:n]):
                self.written += written
                if failed:
                    self.failed += failed
                    log.error("cannot render event", output=self.name, count=failed)
                    self.drop(failed)
            buf = buf[n:]

    async def send(self, events: list[ev.Event]) -> None:
        """Hand ``events`` to the worker (waits while two batches wait to be written)."""
        self.sent += len(events)
        assert self._pipe is not None, "send before serve started"
        await self._pipe.put(encode_frames(self._enc, events))

    def finish(self) -> None:
        """No more events: the worker writes what it has and exits (:meth:`serve` returns)."""
        self._closing = True
        if self._pipe is not None:
            self._pipe.close()


class _PipeWriter:
    """The write end of the pipe to a worker, written by one thread: the buffers handed
    over are written back to back, blocking while the pipe is full and going on as soon as
    the worker reads, whatever the event loop does meanwhile (from the event loop, the pipe
    would be refilled once per pass of the loop, and a pass over a burst's batch takes longer
    than the worker needs to empty the pipe).  It owns the descriptor and closes it."""

    def __init__(self, fd: int, depth: int = 2) -> None:
        self.fd = fd
        #: buffers handed over and not written yet, at most
        self.depth = depth
        self.waiting = 0
        self._q: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._room = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    async def run(self) -> None:
        """The writing thread, until :meth:`close` or a failed write (abandoned on cancel: it
        ends at its next buffer, or when the write fails as the worker is killed)."""
        await trio.to_thread.run_sync(self._write_loop, abandon_on_cancel=True)

    def _write_loop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._started = True
        try:
            while (buf := self._q.get()) is not None:
                _write_all(self.fd, buf)
                self._token.run_sync_soon(self._written)
        except (OSError, trio.RunFinishedError):
            pass  # the worker is gone (serve says so), or the daemon is
        finally:
            os.close(self.fd)

    def _written(self) -> None:
        self.waiting -= 1
        self._room.set()

    async def put(self, buf: bytearray) -> None:
        while self.waiting >= self.depth:
            self._room = room = trio.Event()
            await room.wait()
        self.waiting += 1
        self._q.put(buf)

    def close(self) -> None:
        """No more buffers: the thread writes what it has, closes the pipe and ends (if it
        never started, the pipe is closed here)."""
        self._q.put(None)
        with self._lock:
            if not self._started and not self._closed:
                self._closed = True
                os.close(self.fd)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _status(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"status {rc}"


# --- the worker process --------------------------------------------------------------------


def serve_frames(fmt: str, inp: Any, out: Any, acks: Any) -> None:
    """Read frames from ``inp`` until its end, write their lines to ``out``, acknowledge
    each on ``acks`` (binary files)."""
    from .render import json_lines_renderer, json_renderer

    lines = json_lines_renderer(fmt)
    one = json_renderer(fmt)
    dec = frame_decoder()
    # the garbage collector would scan each frame's fresh events and documents again and
    # again (1-1.5 us an event); they are freed by their counts when the frame is written,
    # so a full collection every few frames finds what cycles there are, over a small heap
    gc.freeze()
    gc.disable()
    frames = 0
    acks.write(_ACK.pack(0, 0))
    acks.flush()
    while head := inp.read(_LEN.size):
        if len(head) < _LEN.size:
            raise EOFError("a frame's length cut short")
        (n,) = _LEN.unpack(head)
        payload = inp.read(n)
        if len(payload) < n:
            raise EOFError("a frame cut short")
        events: list[ev.Event] = dec.decode(payload)  # type: ignore[assignment]
        failed = 0
        try:
            data = lines(events)
        except Exception:  # one bad event must not stop the others: one by one
            parts = []
            for e in events:
                try:
                    parts.append(one(e))
                except Exception:
                    failed += 1
            data = b"".join(parts)
        out.write(data)
        out.flush()
        acks.write(_ACK.pack(len(events) - failed, failed))
        acks.flush()
        del events, data
        frames += 1
        if frames % _GC_FRAMES == 0:
            gc.collect()


def main(argv: list[str] | None = None) -> int:
    """``python -m xfrmwatch.output.render_worker FORMAT FD``."""
    fmt, fd = argv if argv is not None else sys.argv[1:]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        with open(int(fd), "wb", closefd=True) as out:
            serve_frames(fmt, sys.stdin.buffer, out, sys.stdout.buffer)
    except Exception as exc:  # one line, no traceback (the daemon logs the exit)
        print(f"xfrmwatch render worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
