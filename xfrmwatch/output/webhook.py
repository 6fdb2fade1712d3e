"""``[[output]] type = "webhook"``: each alert as an HTTP POST of its JSON.

Example::

    [[output]]
    type = "webhook"
    url = "https://hooks.example.net/xfrm"
    token_file = "/etc/xfrmwatch/webhook.token"   # sends "Authorization: Bearer <token>"
    timeout = 10
    retries = 5            # then the event is given up (logged, counted as dropped)

The body is one event as JSON (``format = "json"``, the event schema; ``ecs``
and ``ocsf`` use the file output's renderers), ``Content-Type:
application/json``.  By default only alerts are sent (``select = "alerts"``).

Delivery: a transport error, a 5xx, 408, 429 (and 401/403, after re-reading
the token file) is retried with exponential backoff (``retry_initial`` doubling
up to ``retry_max`` seconds); any other 4xx is final.  One event is delivered
at a time, in order; while it is retried the daemon's bounded queue fills and
further events are dropped for this output only (and counted).

An event given up (retries exhausted, or rejected) is dropped and counted
(``xfrmwatch_output_dropped_total``); one delivery at a time means a slow
receiver fills this output's queue only, never another output's.
"""

from __future__ import annotations

from typing import Annotated, Literal

import httpx
import msgspec
import structlog
import trio

from .. import events as ev
from ..backoff import Backoff
from .base import DropSink, Output, OutputConfig, Positive
from .http import AUTH_STATUSES, USER_AGENT, HttpUrl, TokenFile, retryable
from .render import json_renderer

log = structlog.get_logger("xfrmwatch.output.webhook")

# --- the output --------------------------------------------------------------------------------


class WebhookConfig(OutputConfig, tag="webhook", kw_only=True):
    """``[[output]] type = "webhook"``."""

    url: HttpUrl
    select: Literal["all", "alerts", "events"] = "alerts"
    #: seconds for one request (connect, send, answer)
    timeout: Positive = 10.0
    #: retries after the first attempt, then the event is given up
    retries: Annotated[int, msgspec.Meta(ge=0)] = 5
    retry_initial: Positive = 0.5
    retry_max: Positive = 30.0
    #: a file holding a bearer token (re-read on SIGHUP and after a 401/403)
    token_file: str = ""
    #: extra request headers
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class WebhookOutput(Output):
    type = "webhook"

    def __init__(self, config: WebhookConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.cfg = config
        self.token = TokenFile(config.token_file)
        self.encode = json_renderer(config.format, newline=False)
        #: events delivered
        self.sent = 0

    def reopen(self) -> None:
        self.token.invalidate()

    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        headers = {"User-Agent": USER_AGENT, **self.cfg.headers, "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=self.cfg.timeout, headers=headers) as client, recv:
            task_status.started()
            async for e in recv:
                if not self.cfg.wants(e):
                    continue
                body = self.rendered(e, self.encode)
                if body is None:
                    continue
                if await self.deliver(client, body):
                    self.sent += 1
                else:
                    self.drop()

    async def deliver(self, client: httpx.AsyncClient, body: bytes) -> bool:
        """POST ``body``, retrying; True once a 2xx answers."""
        backoff = Backoff(self.cfg.retry_initial, self.cfg.retry_max)
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await backoff.sleep()
            try:
                r = await client.post(self.cfg.url, content=body, headers=await self.token.headers())
            except httpx.HTTPError as exc:
                log.warning(
                    "webhook unreachable",
                    output=self.name,
                    attempt=attempt + 1,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            if r.is_success:
                return True
            if r.status_code in AUTH_STATUSES:
                self.token.invalidate()
            if not retryable(r.status_code):
                log.error(
                    "webhook rejected the event", output=self.name, status=r.status_code, body=r.text[:200]
                )
                return False
            log.warning("webhook failed", output=self.name, attempt=attempt + 1, status=r.status_code)
        log.error("webhook: giving up on an event", output=self.name, attempts=self.cfg.retries + 1)
        return False
