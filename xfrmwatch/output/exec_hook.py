"""``[[output]] type = "exec"``: run a program for each alert.

Example::

    [[output]]
    type = "exec"
    argv = ["/usr/local/bin/page-oncall", "--team", "vpn"]
    min_level = "high"
    timeout = 30           # seconds, then the program (its whole process group) is killed
    concurrency = 2        # programs running at once; more alerts wait in the queue

The program is started directly (``argv``, never through a shell) in its own
session, with the event's JSON (the event schema) on standard input and these
environment variables:

* ``XFRM_EVENT_TYPE`` (``alert`` for an alert), ``XFRM_TIME``, ``XFRM_NETNS``;
* for an alert: ``XFRM_RULE_ID``, ``XFRM_RULE_LEVEL``, ``XFRM_RULE_TITLE``;
* what the event is about (:func:`xfrmwatch.subject.subject`; for an alert: its
  triggering events), the first value of each it has: ``XFRM_SPI``,
  ``XFRM_REQID``, ``XFRM_SRC``, ``XFRM_DST``, ``XFRM_PROTO``, ``XFRM_DIR``,
  ``XFRM_TUNNEL_ID``;
* ``PATH`` (and ``LANG``) from the daemon, plus ``env`` from the configuration;
  the rest of the daemon's environment only with ``inherit_env = true``.

It gets none of the daemon's capabilities (see ``daemon.clear_ambient_capabilities``).

Its standard output is discarded; the end of its standard error (at most 2 KiB)
and its exit status are logged.  By default only alerts run it (``select = "alerts"``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from functools import partial
from typing import Annotated, Literal

import msgspec
import structlog
import trio

from .. import events as ev
from ..subject import subject
from .base import DropSink, Output, OutputConfig, Positive
from .render import json_renderer

log = structlog.get_logger("xfrmwatch.output.exec")

STDERR_KEEP = 2048


class ExecConfig(OutputConfig, tag="exec", kw_only=True):
    """``[[output]] type = "exec"``."""

    #: the program and its arguments (no shell); an absolute path is best
    argv: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    select: Literal["all", "alerts", "events"] = "alerts"
    #: seconds a run may take before it is killed
    timeout: Positive = 30.0
    #: runs at once
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 2
    #: extra environment variables
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: pass the daemon's whole environment (default: PATH and LANG only)
    inherit_env: bool = False


def hook_env(e: ev.Event) -> dict[str, str]:
    """The ``XFRM_*`` variables for one event."""
    env = {"XFRM_EVENT_TYPE": str(e.__struct_config__.tag), "XFRM_TIME": e.time}
    if isinstance(e, ev.Alert):
        env.update(XFRM_RULE_ID=e.rule.id, XFRM_RULE_LEVEL=e.rule.level, XFRM_RULE_TITLE=e.rule.title)
    for k, v in subject(e).first().items():
        env[f"XFRM_{k.upper()}"] = v
    return env


async def _kill_group(proc: trio.Process) -> None:
    """deliver_cancel: SIGKILL the program's whole process group (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ExecOutput(Output):
    type = "exec"

    def __init__(self, config: ExecConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.cfg = config
        self.encode = json_renderer(config.format, newline=False)
        self.limiter = trio.CapacityLimiter(config.concurrency)
        base = dict(os.environ) if config.inherit_env else {
            k: v for k, v in os.environ.items() if k in ("PATH", "LANG")
        }  # fmt: skip
        base.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        self.base_env = {**base, **config.env}
        #: runs that exited 0, exited otherwise / could not start, were killed at the timeout
        self.ok = 0
        self.failed = 0
        self.timed_out = 0

    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery, recv:
            task_status.started()
            async for e in recv:
                if not self.cfg.wants(e):
                    continue
                # wait for a free slot here, so pending alerts stay in the bounded queue
                token = object()
                await self.limiter.acquire_on_behalf_of(token)
                nursery.start_soon(self._run_one, e, token)

    async def _run_one(self, e: ev.Event, token: object) -> None:
        try:
            await self.run_hook(e)
        finally:
            self.limiter.release_on_behalf_of(token)

    async def run_hook(self, e: ev.Event) -> int | None:
        """Run the program for one event; its exit status (None: killed at the timeout
        or could not start)."""
        env = {**self.base_env, **hook_env(e)}
        data = self.encode(e)
        fields = {"output": self.name, "program": self.cfg.argv[0], "event_type": env["XFRM_EVENT_TYPE"]}
        if "XFRM_RULE_ID" in env:
            fields["rule_id"] = env["XFRM_RULE_ID"]
        start = trio.current_time()
        proc: trio.Process | None = None
        tail = b""
        start_error: BaseException | None = None
        try:
            with trio.move_on_after(self.cfg.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    proc = await nursery.start(
                        partial(
                            trio.run_process,
                            self.cfg.argv,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            env=env,
                            check=False,
                            start_new_session=True,
                            deliver_cancel=_kill_group,
                        )
                    )
                    assert proc is not None and proc.stdin is not None and proc.stderr is not None
                    nursery.start_soon(_feed, proc.stdin, data)
                    tail = await _tail(proc.stderr)
        except* OSError as group:  # the program could not be started
            start_error = group.exceptions[0]
        if start_error is not None:
            self.failed += 1
            log.error(
                "exec hook could not start", **fields, error=f"{type(start_error).__name__}: {start_error}"
            )
            self.drop()
            return None
        seconds = round(trio.current_time() - start, 3)
        stderr = tail.decode(errors="replace").strip()
        if scope.cancelled_caught:
            self.timed_out += 1
            log.warning("exec hook timed out: killed", **fields, timeout=self.cfg.timeout, stderr=stderr)
            return None
        assert proc is not None
        rc = proc.returncode
        if rc == 0:
            self.ok += 1
            log.info("exec hook exited", **fields, status=rc, seconds=seconds)
        else:
            self.failed += 1
            sig = ""
            if rc is not None and rc < 0:
                try:
                    sig = signal.Signals(-rc).name
                except ValueError:
                    sig = str(-rc)
            log.warning(
                "exec hook failed", **fields, status=rc, signal=sig or None, seconds=seconds, stderr=stderr
            )
        return rc


async def _feed(stdin: trio.abc.SendStream, data: bytes) -> None:
    """Write the event and close stdin; a program that does not read it is fine."""
    try:
        async with stdin:
            await stdin.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _tail(stream: trio.abc.ReceiveStream) -> bytes:
    """Read to EOF, keeping the last STDERR_KEEP bytes."""
    kept = b""
    async with stream:
        while chunk := await stream.receive_some(65536):
            kept = (kept + chunk)[-STDERR_KEEP:]
    return kept
