"""JSON lines to a file or stdout, in the native, ECS or OCSF format.

The file is opened in append mode and reopened on SIGHUP (logrotate's
``postrotate: systemctl reload xfrmwatch``, or ``copytruncate``-free rotation).

``render``: where the lines are made.  ``"inline"``: in the event loop, the write in a
worker thread.  ``"process"``: ECS and OCSF documents (several times the cost of a
native line) are rendered and written by a worker process
(:mod:`xfrmwatch.output.render_worker`), on another core than the netlink reader; a
worker that dies is logged, the events it had are counted as dropped, and it is
restarted with backoff.  ``"auto"`` (the default): ``"process"`` for ECS and OCSF when
the daemon may run on more than one CPU, else ``"inline"``.  The native JSON format is
always rendered inline (encoding events for a worker would cost as much).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Literal

import structlog
import trio

from .. import events as ev
from ..backoff import Backoff
from .base import DropSink, Output, OutputConfig
from .render import json_lines_renderer, json_renderer
from .render_worker import RenderWorker, WorkerDied

log = structlog.get_logger("xfrmwatch.output.file")


class LinesConfig(OutputConfig):
    """Keys of the outputs that write JSON lines."""

    #: where ECS/OCSF lines are rendered: "auto", "process" (a worker process), "inline"
    render: Literal["auto", "process", "inline"] = "auto"

    def in_worker(self) -> bool:
        """Whether the lines are rendered by a worker process (see the module's docstring)."""
        if self.format == "json" or self.render == "inline":
            return False
        return self.render == "process" or len(os.sched_getaffinity(0)) > 1


class FileConfig(LinesConfig, tag="file", kw_only=True):
    """``[[output]] type = "file"``: append JSON lines to ``path``."""

    path: str


class StdoutConfig(LinesConfig, tag="stdout"):
    """``[[output]] type = "stdout"``: JSON lines on standard output."""


class FileOutput(Output):
    type = "file"

    def __init__(self, config: FileConfig | StdoutConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.path = config.path if isinstance(config, FileConfig) else None
        self.worker = config.in_worker()
        #: the worker process running now (render in a process)
        self.render_worker: RenderWorker | None = None
        self._pending: list[ev.Event] = []
        self.render = json_renderer(config.format)
        self.render_lines = json_lines_renderer(config.format)
        self._f: IO[bytes] | None = None
        self._reopen = False

    def _open(self) -> IO[bytes]:
        if self.path is None:
            return sys.stdout.buffer
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        return open(self.path, "ab")

    def reopen(self) -> None:
        self._reopen = True

    def _lines(self, batch: list[ev.Event]) -> bytes:
        """The batch's lines, rendered at once; if an event cannot be rendered, one by one
        (that one is logged and dropped, the others written)."""
        try:
            return self.render_lines(batch)
        except Exception:
            return b"".join(b for b in (self.rendered(e, self.render) for e in batch) if b is not None)

    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write in batches, in a worker thread or a worker process: a slow disk or a
        stalled stdout pipe delays this output only, never the event loop."""
        if self.worker:
            await self._run_worker(recv, task_status=task_status)
            return
        f = await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            async with recv:
                while batch := await _next_batch(recv):
                    data = self._lines(batch)
                    if self._reopen and self.path is not None:
                        self._reopen = False
                        await trio.to_thread.run_sync(f.close)
                        f = await trio.to_thread.run_sync(self._open)
                    await trio.to_thread.run_sync(_write, f, data)
        finally:
            if self.path is not None and not f.closed:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(f.close)

    def _open_fd(self) -> int:
        """A descriptor the worker process writes to: the file's, or a duplicate of stdout's."""
        if self.path is None:
            return os.dup(sys.stdout.fileno())
        f = self._open()
        try:
            return os.dup(f.fileno())
        finally:
            f.close()

    async def _run_worker(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Render and write in a worker process, restarted with backoff when it dies; a new
        one (on the reopened file) after SIGHUP."""
        fd = await trio.to_thread.run_sync(self._open_fd)
        backoff = Backoff(0.5, 30.0)
        started = False
        try:
            async with recv:
                while True:
                    w = RenderWorker(self.config.format, fd, self.name, self.drop)
                    self.render_worker = w
                    more = False
                    died: WorkerDied | None = None
                    try:
                        async with trio.open_nursery() as nursery:
                            await nursery.start(w.serve)
                            if not started:
                                started = True
                                task_status.started()
                            more = await self._feed(recv, w)
                            w.finish()
                    except* WorkerDied as group:
                        if not started:
                            raise
                        died = group.exceptions[0]  # type: ignore[assignment]
                    if died is not None:
                        lost = w.in_flight
                        if lost:
                            self.drop(lost)
                        log.error("render worker died: restarting", output=self.name, pid=w.pid, error=str(died), lost=lost)
                        if w.written:
                            backoff.reset()
                        await backoff.sleep()
                        continue
                    if not more:
                        return
                    os.close(fd)
                    fd = -1
                    fd = await trio.to_thread.run_sync(self._open_fd)
        finally:
            if fd >= 0:
                os.close(fd)

    async def _feed(self, recv: trio.MemoryReceiveChannel[ev.Event], w: RenderWorker) -> bool:
        """Send batches to ``w`` until the queue ends (False) or a reopen is due (True)."""
        while True:
            batch, self._pending = self._pending, []
            batch += await _next_batch(recv, wait=not batch)
            if not batch:
                return False
            if self._reopen and self.path is not None:
                self._reopen = False
                self._pending = batch
                return True
            await w.send(batch)


async def _next_batch(recv: trio.MemoryReceiveChannel[ev.Event], *, wait: bool = True) -> list[ev.Event]:
    """Everything queued (waiting for a first event if ``wait``); empty once the queue ended.
    No cap: the pipeline adds a batch per scheduler pass, and a write takes a few, so a cap
    would let the queue fill in a burst and drop events."""
    batch: list[ev.Event] = []
    if wait:
        try:
            batch.append(await recv.receive())
        except trio.EndOfChannel:
            return batch
    while True:
        try:
            batch.append(recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return batch


def _write(f: IO[bytes], data: bytes) -> None:
    f.write(data)
    f.flush()


class StdoutOutput(FileOutput):
    type = "stdout"
