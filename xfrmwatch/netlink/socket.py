"""A NETLINK_XFRM socket driven by trio: multicast groups, requests, dumps.

The product only ever sends GET requests (GETSA, GETPOLICY, GETAE,
GETSAINFO, GETSPDINFO, GETDEFAULT): every request is built by
:func:`xfrmwatch.netlink.request.encode_request`, which enforces
:data:`READ_ONLY_REQUESTS`, so nothing here can change the SAD or SPD.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket as _stdsocket
from collections.abc import AsyncIterator

import structlog
import trio
from pyroute2.netlink import nlmsg

from ..errors import NEED_CAP, CapabilityError, KernelError
from . import xfrm as x
from .netns import entered
from .proc import ProcFile, socket_drops
from .request import (
    DEFAULT_RCVBUF,
    READ_ONLY_REQUESTS,
    DumpInterrupted,
    encode_request,
    kernel_error,
    open_raw,
    scan_reply,
)

log = structlog.get_logger("xfrmwatch.netlink")

RECV_BUFSIZE = 1024 * 1024

__all__ = [
    "DEFAULT_RCVBUF", "READ_ONLY_REQUESTS", "DumpInterrupted", "MessagesLost", "XfrmSocket", "kernel_error",
]  # fmt: skip


class MessagesLost(Exception):
    """ENOBUFS: the kernel dropped messages for this socket."""


class XfrmSocket:
    """One NETLINK_XFRM socket.  Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, sock: _stdsocket.socket, netns: str, listing: ProcFile | None = None) -> None:
        self._raw = sock
        self._sock = trio.socket.from_stdlib_socket(sock)  # sets O_NONBLOCK
        self.netns = netns
        self.portid: int = sock.getsockname()[0]
        self._inode = os.fstat(sock.fileno()).st_ino
        self._listing = listing
        self._seq = itertools.count(1)
        self._buf = bytearray(RECV_BUFSIZE)
        self._view = memoryview(self._buf)
        self.groups: set[int] = set()
        self.rcvbuf = 0

    @classmethod
    def open(cls, netns: str | None = None) -> XfrmSocket:
        with entered(netns):
            raw = open_raw()
            listing = ProcFile("/proc/net/netlink")  # this namespace's, for drops()
        return cls(raw, netns or "", listing)

    def close(self) -> None:
        self._sock.close()
        if self._listing is not None:
            self._listing.close()

    def drops(self) -> int | None:
        """The kernel's count of messages it dropped for this socket (the ``Drops`` column of
        /proc/net/netlink in its namespace), or None if that cannot be read."""
        if self._listing is None:
            return None
        return socket_drops(self._listing.read(), self._inode)

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- multicast ------------------------------------------------------------------

    def set_rcvbuf(self, size: int) -> int:
        """Set the receive buffer, forcing past rmem_max when allowed; return the effective size."""
        try:
            self._raw.setsockopt(_stdsocket.SOL_SOCKET, x.SO_RCVBUFFORCE, size)
        except PermissionError:
            self._raw.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF, size)
            eff = self._raw.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF)
            log.warning(
                "receive buffer capped by net.core.rmem_max (SO_RCVBUFFORCE needs CAP_NET_ADMIN)",
                requested=size,
                effective=eff,
            )
            self.rcvbuf = eff
            return eff
        self.rcvbuf = self._raw.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF)
        return self.rcvbuf

    def join(self, group: int) -> None:
        try:
            self._raw.setsockopt(x.SOL_NETLINK, x.NETLINK_ADD_MEMBERSHIP, group)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise CapabilityError(
                    f"joining the XFRM {x.GROUP_NAMES.get(group, group)} group {NEED_CAP}"
                ) from None
            raise
        self.groups.add(group)

    def leave(self, group: int) -> None:
        self._raw.setsockopt(x.SOL_NETLINK, 2, group)  # NETLINK_DROP_MEMBERSHIP
        self.groups.discard(group)

    async def wait_readable(self) -> None:
        """Wait until a datagram (or an error such as ENOBUFS) is queued."""
        await trio.lowlevel.wait_readable(self._raw)

    def receive_nowait(self) -> bytes | None:
        """One queued datagram from the kernel, or None if the queue is empty (no checkpoint:
        the caller reads everything available, then waits with :meth:`wait_readable`).

        Datagrams not sent by the kernel (source port id != 0) are dropped.
        Raises :class:`MessagesLost` on ENOBUFS: never swallowed.
        """
        recv = self._raw.recvfrom_into
        while True:
            try:
                n, address = recv(self._buf, 0, _stdsocket.MSG_TRUNC)
            except BlockingIOError:
                return None
            except OSError as exc:
                raise _receive_error(exc) from None
            if address[0] == 0:  # from the kernel
                return self._received(n)

    async def receive(self) -> bytes:
        """Receive one datagram from the kernel.

        Datagrams not sent by the kernel (source port id != 0) are dropped.
        Raises :class:`MessagesLost` on ENOBUFS: never swallowed.
        """
        while True:
            try:
                n, address = await self._sock.recvfrom_into(self._buf, 0, _stdsocket.MSG_TRUNC)
            except OSError as exc:
                raise _receive_error(exc) from None
            if address[0] == 0:  # from the kernel
                return self._received(n)

    def _received(self, n: int) -> bytes:
        """The datagram of ``n`` bytes just received; truncated (n > buffer): what fits
        (the decoder's framing checks flag it)."""
        return bytes(self._view[:n])

    # --- requests ---------------------------------------------------------------------

    async def replies(
        self, msg: nlmsg, msg_type: int, *, dump: bool = False, what: str = ""
    ) -> AsyncIterator[bytes]:
        """Send one GET request; yield each reply datagram as it arrives (multi-part until DONE),
        so a dump of any size is processed in bounded memory.

        NLMSG_ERROR with a non-zero code raises a :class:`UserError` subclass.  Each reply
        datagram must come within 10 s.
        """
        seq = next(self._seq)
        request = encode_request(msg, msg_type, seq, self.portid, dump=dump)
        what = what or x.MSG_NAMES.get(msg_type, str(msg_type))
        with trio.fail_after(10):
            await self._sock.sendto(request, (0, 0))
        while True:
            try:
                data = self.receive_nowait()
            except MessagesLost:
                raise KernelError(f"{what}: reply lost (receive buffer overrun); retry") from None
            if data is None:
                with trio.fail_after(10):
                    await self.wait_readable()
                continue
            done, interrupted = scan_reply(data, seq, what)
            if interrupted:
                raise DumpInterrupted()
            yield data
            if done or not dump:
                return
            # the next part is usually queued already: let the other tasks (the subscriber
            # draining its own queue, signals) run between parts of a long dump
            await trio.lowlevel.checkpoint()

    async def request(
        self, msg: nlmsg, msg_type: int, *, dump: bool = False, what: str = ""
    ) -> list[bytes]:
        """Send one GET request; return every reply datagram (see :meth:`replies`)."""
        out: list[bytes] = []
        async for data in self.replies(msg, msg_type, dump=dump, what=what):
            out.append(data)
        return out

    async def dump(self, msg: nlmsg, msg_type: int, *, what: str = "") -> list[bytes]:
        """A dump request, retried if the kernel marks it inconsistent (NLM_F_DUMP_INTR)."""
        for _ in range(5):
            try:
                return await self.request(msg, msg_type, dump=True, what=what)
            except DumpInterrupted:
                continue
        raise KernelError(f"{what}: the dump kept being interrupted by changes; retry")


def _receive_error(exc: OSError) -> Exception:
    """ENOBUFS is :class:`MessagesLost` (never swallowed); any other error as it is."""
    return MessagesLost() if exc.errno == errno.ENOBUFS else exc
