"""Errors a user can cause or fix, each with its own exit code.

They print as one line (``xfrmwatch: <what>; <how to fix>``), never a traceback.
"""

from __future__ import annotations

#: Exit codes, documented in the README and ``--help``.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CAPABILITY = 3
EXIT_NO_XFRM = 4
EXIT_NETNS = 5
EXIT_NOT_FOUND = 6
EXIT_KERNEL = 7
EXIT_RULES = 8
EXIT_FINDINGS = 9
EXIT_CAPTURE = 10


class UserError(Exception):
    """An error the user can act on; ``str()`` is the whole message."""

    exit_code = EXIT_RUNTIME


class UsageError(UserError):
    exit_code = EXIT_USAGE


class CapabilityError(UserError):
    exit_code = EXIT_CAPABILITY


class NoXfrmError(UserError):
    exit_code = EXIT_NO_XFRM


class NetnsError(UserError):
    exit_code = EXIT_NETNS


class NotFoundError(UserError):
    exit_code = EXIT_NOT_FOUND


class RuleError(UserError):
    """Rule files that cannot be used; ``str()`` is one ``path:line: reason`` per line."""

    exit_code = EXIT_RULES

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class CaptureError(UserError):
    """A recording given to ``replay`` is not a readable netlink capture."""

    exit_code = EXIT_CAPTURE


class KernelError(UserError):
    """The kernel refused a request (NLMSG_ERROR) for a reason other than the above."""

    exit_code = EXIT_KERNEL

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


NEED_CAP = (
    "needs CAP_NET_ADMIN in the network namespace's user namespace; "
    "run as root or grant it (e.g. AmbientCapabilities=CAP_NET_ADMIN in the systemd unit)"
)
