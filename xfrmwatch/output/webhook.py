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

This module also holds the small helpers the HTTP and exec outputs share:
:class:`TokenFile`, :func:`backoff_delays` and :func:`subject_fields`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import structlog
import trio

from .. import __version__
from .. import events as ev
from .base import Output, OutputConfig

log = structlog.get_logger("xfrmwatch.output.webhook")

USER_AGENT = f"xfrmwatch/{__version__}"
#: statuses worth retrying (besides transport errors and 5xx)
RETRY_STATUSES = frozenset({408, 425, 429})
AUTH_STATUSES = frozenset({401, 403})

#: called with (output name, number of events) when events are given up
DropHook = Callable[[str, int], None]


# --- shared helpers ----------------------------------------------------------------------------


class TokenFile:
    """A bearer token read from a file (stripped), cached until :meth:`invalidate`
    (on SIGHUP, or after a 401/403), so rotated tokens are picked up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._token: str | None = None

    def invalidate(self) -> None:
        self._token = None

    async def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}``, or nothing without a path.  An
        unreadable file is logged and sends no Authorization header."""
        if not self.path:
            return {}
        if self._token is None:
            try:
                self._token = (await trio.Path(self.path).read_text()).strip()
            except OSError as exc:
                log.error("cannot read token file", path=self.path, error=exc.strerror or str(exc))
                return {}
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def backoff_delays(initial: float, maximum: float) -> Iterator[float]:
    """initial, 2*initial, 4*initial, ... capped at maximum (forever)."""
    d = max(initial, 0.001)
    while True:
        yield min(d, maximum)
        d = min(d * 2, maximum)


def retryable(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUSES or status in AUTH_STATUSES


def subject_fields(e: ev.Event) -> dict[str, str]:
    """What an event (for an alert: its first triggering event) is about:
    ``netns`` always, and ``spi``, ``reqid``, ``src``, ``dst`` where it has them."""
    out: dict[str, str] = {"netns": e.netns}
    first: Any = e
    if isinstance(e, ev.Alert):
        if not e.events:
            for key in ("reqid", "spi", "src", "dst"):
                for gk, gv in e.group.items():
                    if gk == key or gk.endswith("." + key):
                        out.setdefault(key, gv)
            return out
        first = e.events[0]
    sa = getattr(first, "sa", None)
    if isinstance(sa, ev.SA):
        out.update(spi=sa.spi, reqid=str(sa.reqid), src=sa.src, dst=sa.dst)
    elif isinstance(first, ev.TunnelEvent):
        out.update(reqid=str(first.reqid), src=first.src, dst=first.dst)
        spi = getattr(first, "spi", None) or first.spi_in or first.spi_out
        if spi:
            out["spi"] = spi
    elif isinstance(first, ev.DelSA):
        out.update(spi=first.id.spi, dst=first.id.dst)
    elif isinstance(first, ev.NewAE):
        a = first.ae
        out.update(spi=a.spi, reqid=str(a.reqid), src=a.src, dst=a.dst)
    elif isinstance(first, ev.Mapping):
        out.update(spi=first.id.spi, reqid=str(first.reqid), src=first.new_src, dst=first.id.dst)
    elif isinstance(first, ev.AcquireEvent):
        out.update(src=first.acquire.src, dst=first.acquire.dst)
    return out


def json_encoder(fmt: str) -> Callable[[ev.Event], bytes]:
    """An event -> JSON body (no newline) for ``fmt``."""
    if fmt == "json":
        enc = msgspec.json.Encoder()
        return enc.encode
    from .file import json_renderer

    render = json_renderer(fmt)
    return lambda e: render(e).rstrip(b"\n")


# --- the output --------------------------------------------------------------------------------


class WebhookConfig(OutputConfig, tag="webhook", kw_only=True):
    """``[[output]] type = "webhook"``."""

    url: str
    select: str = "alerts"
    #: seconds for one request (connect, send, answer)
    timeout: float = 10.0
    #: retries after the first attempt, then the event is given up
    retries: int = 5
    retry_initial: float = 0.5
    retry_max: float = 30.0
    #: a file holding a bearer token (re-read on SIGHUP and after a 401/403)
    token_file: str = ""
    #: extra request headers
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http:// or https://, not {self.url!r}")
        if self.timeout <= 0 or self.retries < 0 or self.retry_initial <= 0:
            raise ValueError("timeout and retry_initial must be positive, retries not negative")


class WebhookOutput(Output):
    type = "webhook"

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.token = TokenFile(config.token_file)
        self.encode = json_encoder(config.format)
        #: events delivered, and given up after every retry
        self.sent = 0
        self.failed = 0
        #: set by the daemon (e.g. ``metrics.dropped``) to count given-up events
        self.on_drop: DropHook | None = None

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
                if await self.deliver(client, self.encode(e)):
                    self.sent += 1
                else:
                    self.failed += 1
                    if self.on_drop is not None:
                        self.on_drop(self.name, 1)

    async def deliver(self, client: httpx.AsyncClient, body: bytes) -> bool:
        """POST ``body``, retrying; True once a 2xx answers."""
        delays = backoff_delays(self.cfg.retry_initial, self.cfg.retry_max)
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await trio.sleep(next(delays))
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
