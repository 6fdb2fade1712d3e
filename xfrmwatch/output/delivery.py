"""Delivery to a peer that may be down: what the journald and syslog outputs share.

:class:`RetryingSender` sends one item at a time, in order.  While the peer is
unreachable the item is retried with :class:`~xfrmwatch.backoff.Backoff` (later
events wait in the output's bounded queue, dropped and counted there when it is
full); the peer going down and coming back is logged once each
(:class:`Reachability`).  An item that can never be sent (:class:`Undeliverable`)
is dropped at once.  Once the queue is closed (shutdown, or the output removed on
reload) and the peer stays unreachable for ``drain_timeout`` seconds, the rest is
dropped.  Every drop is counted through :meth:`Output.drop`, so it reaches
``xfrmwatch_output_dropped_total``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .. import events as ev
from ..backoff import Backoff
from .base import Output

__all__ = [
    "NETWORK_ERRORS", "Reachability", "RetryingOutput", "RetryingSender", "Undeliverable", "error_reason",
]  # fmt: skip

#: what a broken or unreachable peer raises
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


class Undeliverable(Exception):
    """This item can never be sent (too large, a local problem; not the peer): drop it."""


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

    def __init__(self, log: Any, what: str) -> None:
        self._log = log
        self._what = what
        self._down_since: float | None = None

    def down(self, exc: BaseException, **context: object) -> None:
        if self._down_since is None:
            self._down_since = trio.current_time()
            self._log.warning(f"{self._what} unreachable: retrying with backoff", error=error_reason(exc), **context)

    def up(self, **context: object) -> bool:
        """Note a success; True if the peer had been down."""
        if self._down_since is None:
            return False
        self._log.info(
            f"{self._what} reachable again", after=round(trio.current_time() - self._down_since, 3), **context
        )
        self._down_since = None
        return True


class RetryingSender:
    """Sends items of one output to its peer, retrying with back-off; drops are the output's."""

    __slots__ = ("_drain_deadline", "_log", "_reach", "backoff", "context", "drain_timeout", "output", "sent")

    def __init__(
        self,
        output: Output,
        peer: str,
        *,
        log: Any,
        backoff: Backoff,
        drain_timeout: float,
        **context: object,
    ) -> None:
        self.output = output
        self.backoff = backoff
        self.drain_timeout = drain_timeout
        self.context = {"output": output.name, **context}
        self._log = log
        self._reach = Reachability(log, peer)
        self._drain_deadline: float | None = None
        #: items sent
        self.sent = 0

    async def deliver(
        self,
        attempt: Callable[[], Awaitable[None]],
        reset: Callable[[], Awaitable[None]],
        recv: trio.MemoryReceiveChannel[ev.Event],
    ) -> bool:
        """Run ``attempt`` until it succeeds (True), or the item is dropped (False).
        After a network error ``reset`` drops the connection before the next try."""
        while True:
            if self._drain_deadline is not None and trio.current_time() >= self._drain_deadline:
                self.output.drop()
                return False
            try:
                await attempt()
            except Undeliverable as exc:
                self._log.error("item dropped: it cannot be delivered", error=str(exc), **self.context)
                self.output.drop()
                return False
            except NETWORK_ERRORS as exc:
                await reset()
                self._reach.down(exc, **self.context)
            else:
                self.sent += 1
                if self._reach.up(**self.context):
                    self.backoff.reset()
                return True
            if self._drain_deadline is None and recv.statistics().open_send_channels == 0:
                self._drain_deadline = trio.current_time() + self.drain_timeout
            await self.backoff.sleep()


class RetryingOutput(Output):
    """An output that renders each event to bytes and sends them, one at a time, to a
    peer that may be down (through its :attr:`sender`)."""

    render: Callable[[ev.Event], bytes]
    sender: RetryingSender

    def frame(self, data: bytes) -> bytes:
        """The rendered event as it goes on the wire (default: as is)."""
        return data

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one framed item (connecting first if needed); raise a network error,
        or :class:`Undeliverable` for an item that can never be sent."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Drop the connection (after a network error, and at the end)."""

    async def run(
        self,
        recv: trio.MemoryReceiveChannel[ev.Event],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        try:
            async with recv:
                async for e in recv:
                    data = self.rendered(e, self.render)
                    if data is not None:
                        await self.sender.deliver(partial(self.send, self.frame(data)), self.disconnect, recv)
        finally:
            with trio.CancelScope(shield=True):
                await self.disconnect()
