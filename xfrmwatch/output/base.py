"""What every output of `xfrmwatch run` is.

An output has its own bounded queue (a trio memory channel the daemon feeds
with ``send_nowait``: when it is full the event is dropped *for that output
only* and counted), its own filter, and a ``run`` service that consumes the
queue until it is closed.  A slow or dead output never blocks netlink reading
or the other outputs.

Configuration: each output type has a ``msgspec.Struct`` config class tagged
with its ``type`` (e.g. ``type = "syslog"`` in a ``[[output]]`` TOML table),
whose fields are the TOML keys; :class:`OutputConfig` holds what every output
shares (filtering, queue size).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import msgspec
import trio

from .. import events as ev

LEVELS = ("informational", "low", "medium", "high", "critical")


class OutputConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Keys every ``[[output]]`` table accepts."""

    name: str = ""
    #: "all" (events and alerts), "alerts" (alerts only), "events" (no alerts)
    select: str = "all"
    #: alerts below this level are not sent (events are unaffected)
    min_level: str = "informational"
    #: only these event types (empty: every type)
    types: list[str] = []
    #: bounded queue length; when full, events are dropped for this output and counted
    queue: int = 10000
    #: output format for outputs that write JSON: "json" (the event schema), "ecs", "ocsf"
    format: str = "json"

    def wants(self, e: ev.Event) -> bool:
        is_alert = isinstance(e, ev.Alert)
        if self.select == "alerts" and not is_alert:
            return False
        if self.select == "events" and is_alert:
            return False
        if isinstance(e, ev.Alert):
            level = e.rule.level if e.rule.level in LEVELS else "medium"
            if LEVELS.index(level) < LEVELS.index(self.min_level):
                return False
        return not self.types or e.__struct_config__.tag in self.types


class Output(abc.ABC):
    """One running output."""

    #: the ``type`` value of its config table
    type: ClassVar[str]

    def __init__(self, config: OutputConfig) -> None:
        self.config = config
        self.name = config.name or type(self).type

    @abc.abstractmethod
    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume ``recv`` until it is closed (then flush and return).  Call
        ``task_status.started()`` once ready.  Must survive its peer being down:
        retry/reconnect with backoff, never raise for a network error."""

    def reopen(self) -> None:  # noqa: B027 - optional hook
        """SIGHUP: reopen files (logrotate).  Default: nothing."""


def redact_url(url: str) -> str:
    """A URL fit for a log line: no user:password, no query (tokens live there)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparsable url>"


def error_reason(exc: BaseException) -> str:
    """A short, key-free reason for a delivery error, for a log line."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return error_reason(exc.__cause__)
    return str(exc) or type(exc).__name__


class Reachability:
    """Logs once when an output's peer becomes unreachable and once when it is back
    (with how long it was down), instead of once per failed attempt."""

    __slots__ = ("_down_since", "_log", "_what")

    def __init__(self, log: object, what: str) -> None:
        self._log = log
        self._what = what
        self._down_since: float | None = None

    def down(self, exc: BaseException, **context: object) -> None:
        if self._down_since is None:
            self._down_since = trio.current_time()
            self._log.warning(  # type: ignore[attr-defined]
                f"{self._what} unreachable: retrying with backoff", error=error_reason(exc), **context
            )

    def up(self, **context: object) -> bool:
        """Note a success; True if the peer had been down (reset the backoff then)."""
        if self._down_since is None:
            return False
        self._log.info(  # type: ignore[attr-defined]
            f"{self._what} reachable again", after=round(trio.current_time() - self._down_since, 3), **context
        )
        self._down_since = None
        return True
