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
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Protocol, TypeVar

import msgspec
import structlog
import trio

from .. import events as ev
from .. import levels
from ..options import NotNegative as NotNegative
from ..options import Positive as Positive

log = structlog.get_logger("xfrmwatch.output")

if TYPE_CHECKING:
    EventType = str
else:
    #: the ``type`` of an event (every tag of the event model)
    EventType = Literal[ev.EVENT_TYPES]

T = TypeVar("T")


class OutputConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Keys every ``[[output]]`` table accepts."""

    name: str = ""
    #: "all" (events and alerts), "alerts" (alerts only), "events" (no alerts)
    select: Literal["all", "alerts", "events"] = "all"
    #: alerts below this level are not sent (events are unaffected)
    min_level: levels.Level = "informational"
    #: only these event types (empty: every type)
    types: list[EventType] = []
    #: bounded queue length; when full, events are dropped for this output and counted
    queue: Annotated[int, msgspec.Meta(ge=1)] = 10000
    #: output format for outputs that write JSON: "json" (the event schema), "ecs", "ocsf"
    format: Literal["json", "ecs", "ocsf"] = "json"

    def wants_all(self) -> bool:
        """Whether every event passes :meth:`wants` (no filter set)."""
        return self.select == "all" and not self.types and levels.rank(self.min_level) == 0

    def wants(self, e: ev.Event) -> bool:
        is_alert = isinstance(e, ev.Alert)
        if self.select == "alerts" and not is_alert:
            return False
        if self.select == "events" and is_alert:
            return False
        if isinstance(e, ev.Alert) and not levels.at_least(e.rule.level, self.min_level):
            return False
        return not self.types or e.__struct_config__.tag in self.types


class DropSink(Protocol):
    """Where an output reports the events it had to drop (the daemon: metrics and a log line)."""

    def dropped(self, output: str, n: int) -> None: ...


class Output(abc.ABC):
    """One running output.  Every event it gives up is reported through :meth:`drop`."""

    #: the ``type`` value of its config table
    type: ClassVar[str]

    def __init__(self, config: OutputConfig, drops: DropSink | None = None) -> None:
        self.config = config
        self.name = config.name or type(self).type
        self._drops = drops
        #: events given up by this output (delivery failed for good, or unrenderable)
        self.dropped = 0

    def drop(self, n: int = 1) -> None:
        """Count ``n`` events given up, and report them to the drop sink."""
        self.dropped += n
        if self._drops is not None:
            self._drops.dropped(self.name, n)

    def rendered(self, e: ev.Event, render: Callable[[ev.Event], T]) -> T | None:
        """``render(e)``; an event that cannot be rendered is logged, dropped, and None."""
        try:
            return render(e)
        except Exception as exc:  # one bad event must not stop the output
            log.error("cannot render event", output=self.name, type=type(e).__name__, error=type(exc).__name__)
            self.drop()
            return None

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
