"""JSON lines to a file or stdout, in the native, ECS or OCSF format.

The file is opened in append mode and reopened on SIGHUP (logrotate's
``postrotate: systemctl reload xfrmwatch``, or ``copytruncate``-free rotation).
"""

from __future__ import annotations

import os
import sys
from typing import IO

import structlog
import trio

from .. import events as ev
from .base import DropSink, Output, OutputConfig
from .render import json_lines_renderer, json_renderer

log = structlog.get_logger("xfrmwatch.output.file")


class FileConfig(OutputConfig, tag="file"):
    """``[[output]] type = "file"``: append JSON lines to ``path``."""

    path: str


class StdoutConfig(OutputConfig, tag="stdout"):
    """``[[output]] type = "stdout"``: JSON lines on standard output."""


class FileOutput(Output):
    type = "file"

    def __init__(self, config: FileConfig | StdoutConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.path = config.path if isinstance(config, FileConfig) else None
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
        """Write in batches, in a worker thread: a slow disk or a stalled stdout
        pipe delays this output only, never the event loop."""
        f = await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            async with recv:
                while True:
                    try:
                        batch = [await recv.receive()]
                    except trio.EndOfChannel:
                        return
                    # everything queued (at most the queue's length): the pipeline adds a batch
                    # per scheduler pass, and a write takes a few, so a cap here would let the
                    # queue fill in a burst and drop events
                    while True:
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
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


def _write(f: IO[bytes], data: bytes) -> None:
    f.write(data)
    f.flush()


class StdoutOutput(FileOutput):
    type = "stdout"
