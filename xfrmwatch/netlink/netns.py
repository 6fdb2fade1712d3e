"""Entering another network namespace, only long enough to open things there."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pyroute2.netns as p2netns

from ..errors import CapabilityError, NetnsError

NETNS_RUN_DIR = "/run/netns"


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
    p2netns.pushns()
    try:
        try:
            p2netns.setns(fd, flags=0)
        except OSError as exc:
            p2netns.dropns()
            if exc.errno in (1, 13):
                raise CapabilityError(
                    f"entering network namespace {netns!r} needs CAP_SYS_ADMIN; run as root"
                ) from None
            raise NetnsError(f"{path} is not a network namespace: {exc.strerror}") from None
        try:
            yield
        finally:
            p2netns.popns()
    finally:
        os.close(fd)
