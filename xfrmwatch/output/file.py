"""JSON lines to a file or stdout, in the native, ECS or OCSF format.

The file is opened in append mode and reopened on SIGHUP (logrotate's
``postrotate: systemctl reload xfrmwatch``, or ``copytruncate``-free rotation).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import IO, Any

import msgspec
import structlog
import trio

from .. import events as ev
from .base import Output, OutputConfig

log = structlog.get_logger("xfrmwatch.output.file")


def json_renderer(fmt: str) -> Callable[[ev.Event], bytes]:
    """An event -> JSON line renderer for ``fmt`` ("json", "ecs" or "ocsf")."""
    enc = msgspec.json.Encoder()
    if fmt == "json":
        return lambda e: enc.encode(e) + b"\n"
    r: Any
    if fmt == "ecs":
        from .ecs import EcsRenderer

        r = EcsRenderer()
    elif fmt == "ocsf":
        from .ocsf import OcsfRenderer

        r = OcsfRenderer()
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return lambda e: enc.encode(r(e)) + b"\n"


class FileConfig(OutputConfig, tag="file"):
    """``[[output]] type = "file"``: append JSON lines to ``path``."""

    path: str


class StdoutConfig(OutputConfig, tag="stdout"):
    """``[[output]] type = "stdout"``: JSON lines on standard output."""


class FileOutput(Output):
    type = "file"

    def __init__(self, config: FileConfig | StdoutConfig) -> None:
        super().__init__(config)
        self.path = config.path if isinstance(config, FileConfig) else None
        self.render = json_renderer(config.format)
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
                    while len(batch) < 1000:
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    data = []
                    for e in batch:
                        try:
                            data.append(self.render(e))
                        except Exception as exc:  # one event that cannot be rendered is skipped, and said
                            log.error("cannot render event", output=self.name, type=type(e).__name__, error=type(exc).__name__)
                    if self._reopen and self.path is not None:
                        self._reopen = False
                        await trio.to_thread.run_sync(f.close)
                        f = await trio.to_thread.run_sync(self._open)
                    await trio.to_thread.run_sync(_write, f, b"".join(data))
        finally:
            if self.path is not None and not f.closed:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(f.close)


def _write(f: IO[bytes], data: bytes) -> None:
    f.write(data)
    f.flush()


class StdoutOutput(FileOutput):
    type = "stdout"
