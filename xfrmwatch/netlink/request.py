"""GET requests on NETLINK_XFRM, without an event loop: the read-only rule, the socket,
the reply checks, and the blocking dump of the one-shot listing commands.

:func:`encode_request` is where the read-only rule is enforced: every request the
product sends, from the trio socket (:mod:`xfrmwatch.netlink.socket`) or from
:func:`blocking_dump`, is built by it, and it refuses anything but the GET requests
of :data:`READ_ONLY_REQUESTS`, so nothing can change the SAD or SPD.
"""

from __future__ import annotations

import errno
import os
import socket as _stdsocket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import NEED_CAP, CapabilityError, KernelError, NotFoundError, NoXfrmError, UserError
from . import xfrm as x
from .framing import (
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    iter_messages,
)
from .netns import entered

if TYPE_CHECKING:
    from pyroute2.netlink import nlmsg


__all__ = [
    "DEFAULT_RCVBUF", "DUMPS", "DUMP_SEQ", "READ_ONLY_REQUESTS", "DumpInterrupted", "blocking_dump", "dump_replies", "dump_socket", "encode_request", "kernel_error", "open_raw",
    "scan_reply",
]  # fmt: skip

READ_ONLY_REQUESTS = frozenset(
    {
        x.XFRM_MSG_GETSA,
        x.XFRM_MSG_GETPOLICY,
        x.XFRM_MSG_GETAE,
        x.XFRM_MSG_GETSADINFO,
        x.XFRM_MSG_GETSPDINFO,
        x.XFRM_MSG_GETDEFAULT,
    }
)

#: the receive buffer of a subscribed socket (forced past net.core.rmem_max where allowed)
DEFAULT_RCVBUF = 32 * 1024 * 1024
#: the biggest datagram a dump reply can be (the kernel's netlink dumps stop at 32 KiB)
RECV_BUFSIZE = 1024 * 1024
#: how long each reply datagram may take (seconds)
REPLY_TIMEOUT = 10.0
#: the sequence number of :func:`blocking_dump`'s request (one request per socket)
DUMP_SEQ = 1
_ERR = struct.Struct("=i")


class DumpInterrupted(Exception):
    """The kernel marked a dump reply NLM_F_DUMP_INTR: the table changed during the dump."""


def encode_request(msg: nlmsg | None, msg_type: int, seq: int, portid: int, *, dump: bool = False) -> bytes:
    """The bytes of one GET request; any other message type raises before anything is built.
    ``msg`` None: the request's fixed part all zeros, no attributes (a whole dump's request,
    built without pyroute2: a one-shot listing does not import it)."""
    if msg_type not in READ_ONLY_REQUESTS:
        raise ValueError(f"refusing to send XFRM message type {msg_type}: xfrmwatch is read-only")
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    if msg is None:
        body = bytes(x.MSG_MIN_SIZE[msg_type])
        return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags, seq, portid) + body
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = portid
    msg.encode()
    return bytes(msg.data)


def open_raw() -> _stdsocket.socket:
    """A NETLINK_XFRM socket, bound (in the caller's network namespace)."""
    try:
        sock = _stdsocket.socket(_stdsocket.AF_NETLINK, _stdsocket.SOCK_RAW, x.NETLINK_XFRM)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise NoXfrmError(
                "this kernel has no XFRM netlink (CONFIG_XFRM_USER); load it with `modprobe xfrm_user`"
            ) from None
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise CapabilityError(f"opening an XFRM netlink socket {NEED_CAP}") from None
        raise
    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_SNDBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


def scan_reply(data: bytes, seq: int, what: str) -> tuple[bool, bool]:
    """Check one reply datagram: (saw NLMSG_DONE or a final reply, dump interrupted)."""
    done = False
    intr = False
    for item in iter_messages(data):
        if isinstance(item, str):  # a framing error: the decoder reports it
            break
        mtype, flags, mseq, _, off, end = item
        if mseq == seq:
            if mtype == NLMSG_ERROR:
                code = _ERR.unpack_from(data, off)[0] if end - off >= _ERR.size else -errno.EIO
                if code:
                    raise kernel_error(-code, what)
                done = True
            elif mtype == NLMSG_DONE or not flags & NLM_F_MULTI:
                done = True
            if flags & NLM_F_DUMP_INTR:
                intr = True
    return done, intr


def kernel_error(code: int, what: str) -> UserError:
    """Turn an NLMSG_ERROR code into the error a user can act on."""
    if code in (errno.EPERM, errno.EACCES):
        return CapabilityError(f"{what} {NEED_CAP}")
    if code == errno.ESRCH or code == errno.ENOENT:
        return NotFoundError(f"{what}: no such entry in the kernel")
    if code == errno.EOPNOTSUPP:
        return KernelError(f"{what}: not supported by this kernel", code)
    return KernelError(f"{what}: kernel error: {os.strerror(code)}", code)


#: the dump of each kind of entry: its request, and what errors call it
DUMPS = {
    "policy": (x.XFRM_MSG_GETPOLICY, "policy dump (GETPOLICY)"),
    "state": (x.XFRM_MSG_GETSA, "state dump (GETSA)"),
}


def dump_replies(sock: _stdsocket.socket, kind: str) -> Iterator[bytes]:
    """:func:`blocking_dump` of every entry of ``kind`` (a key of :data:`DUMPS`)."""
    msg_type, what = DUMPS[kind]
    return blocking_dump(sock, None, msg_type, what=what)


def dump_socket(netns: str | None) -> _stdsocket.socket:
    """A blocking socket in ``netns`` for :func:`blocking_dump` (each reply must come within
    :data:`REPLY_TIMEOUT`); the caller closes it."""
    with entered(netns):
        sock = open_raw()
    sock.settimeout(REPLY_TIMEOUT)
    return sock


def blocking_dump(sock: _stdsocket.socket, msg: nlmsg | None, msg_type: int, *, what: str) -> Iterator[bytes]:
    """One dump request (sequence number :data:`DUMP_SEQ`) on a :func:`dump_socket`; every
    datagram the kernel sends back, as it arrives (blocking reads: bounded memory for any
    size), for as long as the caller iterates.  (One request at a time on a socket: the next
    once this one's replies are read to their end.)

    For the commands that print a snapshot and exit: no event loop, nothing else to serve.
    The caller reads the replies' NLMSG_DONE, NLMSG_ERROR and NLM_F_DUMP_INTR (it walks
    every message anyway; :func:`scan_reply` does it for a whole datagram) and stops.
    """
    sock.sendto(encode_request(msg, msg_type, DUMP_SEQ, sock.getsockname()[0], dump=True), (0, 0))
    buf = bytearray(RECV_BUFSIZE)
    view = memoryview(buf)
    recv = sock.recvfrom_into
    while True:
        try:
            n, address = recv(buf, 0, _stdsocket.MSG_TRUNC)
        except TimeoutError:
            raise KernelError(f"{what}: no reply from the kernel within {REPLY_TIMEOUT:g} s") from None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise KernelError(f"{what}: reply lost (receive buffer overrun); retry") from None
            raise
        if address[0] == 0:  # from the kernel
            yield bytes(view[: min(n, RECV_BUFSIZE)])
