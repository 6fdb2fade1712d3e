"""Log lines on stderr that journald stores with the priority of their level.

Under systemd, a service's stderr is a stream to journald, which gives every line
PRIORITY 6 (info) unless the line starts with ``<N>``, N the syslog severity
(``sd-daemon(3)``, ``SyslogLevelPrefix=yes`` by default): journald strips the prefix and
stores N.  Without it, ``journalctl -p err -u xfrmwatch`` would never show a failed reload.
The prefix is written only when stderr *is* that stream: systemd then sets
``JOURNAL_STREAM=<device>:<inode>`` of it, and a redirected stderr no longer matches.
"""

from __future__ import annotations

import os
from typing import Any

#: syslog severity of each log level
LEVEL_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def stderr_is_journal() -> bool:
    """True when stderr is connected to the journal (``JOURNAL_STREAM`` names it)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def prefix(level: str) -> str:
    """``<N>`` for a line of this level when stderr is the journal, else nothing."""
    return f"<{LEVEL_PRIORITY.get(level, 6)}>" if stderr_is_journal() else ""


class PriorityPrefix:
    """A structlog renderer wrapper: the rendered line, prefixed with ``<N>`` of its level.

    Decided once, when built (``configure_logging``): stderr does not change under a service.
    """

    __slots__ = ("_on", "_render")

    def __init__(self, render: Any) -> None:
        self._render = render
        self._on = stderr_is_journal()

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> str:
        if not self._on:
            return str(self._render(logger, method_name, event_dict))
        level = str(event_dict.get("level", method_name))
        return f"<{LEVEL_PRIORITY.get(level, 6)}>{self._render(logger, method_name, event_dict)}"
