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
import trio

from .. import events as ev
from .base import Output, OutputConfig


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
        f = self._open()
        task_status.started()
        try:
            async with recv:
                async for e in recv:
                    if self._reopen and self.path is not None:
                        self._reopen = False
                        f.close()
                        f = self._open()
                    f.write(self.render(e))
                    if recv.statistics().current_buffer_used == 0:
                        f.flush()
        finally:
            f.flush()
            if self.path is not None:
                f.close()


class StdoutOutput(FileOutput):
    type = "stdout"
