"""Entering another network namespace, only long enough to open things there."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from ..errors import CapabilityError, NetnsError

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
#: the calling thread's own network namespace (a thread's namespace is its own: setns(2)
#: moves the calling thread only)
_OWN = "/proc/thread-self/ns/net"


def _setns(fd: int) -> None:
    """setns(2) into the network namespace open at ``fd``, for the calling thread (as
    ``os.setns`` does from Python 3.12; here through libc, without pyroute2's netns
    package and what it imports, a tenth of a one-shot listing's time)."""
    if sys.version_info >= (3, 12):
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def resolve(netns: str) -> str:
    """Map a ``--netns`` argument (a name under /run/netns, or a path) to a path."""
    path = netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)
    if not os.path.exists(path):
        where = "no such file" if "/" in netns else f"not in {NETNS_RUN_DIR} (see `ip netns list`)"
        raise NetnsError(f"unknown network namespace {netns!r}: {where}")
    return path


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the body inside ``netns`` (the calling thread only), then come back.

    Sockets and /proc/net files opened inside stay bound to that namespace.
    The namespace is never created: an unknown one is a :class:`NetnsError`.
    """
    if not netns:
        yield
        return
    path = resolve(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"cannot open network namespace {netns!r}: {exc.strerror}") from None
    own = os.open(_OWN, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(fd)
        except OSError as exc:
            if exc.errno in (1, 13):
                raise CapabilityError(
                    f"entering network namespace {netns!r} needs CAP_SYS_ADMIN; run as root"
                ) from None
            raise NetnsError(f"{path} is not a network namespace: {exc.strerror}") from None
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(fd)
