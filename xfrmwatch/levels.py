"""Levels: how serious an alert or an event is, and what each output calls that.

One table for the whole tool.  An alert has its rule's Sigma ``level``; an
event that is not an alert has the level of :data:`EVENT_LEVELS` (most are
informational).  Each output maps the level through :data:`SEVERITIES`:
journald's ``PRIORITY`` and the syslog severity (RFC 5424), and the OCSF
``severity_id`` that ECS's ``event.severity`` uses too.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LEVEL", "LEVELS", "Level", "at_least", "rank"]

from typing import Literal

#: Sigma's levels, least serious first
LEVELS: tuple[str, ...] = ("informational", "low", "medium", "high", "critical")
Level = Literal["informational", "low", "medium", "high", "critical"]
#: the level of a rule that states none
DEFAULT_LEVEL = "medium"


def rank(level: str) -> int:
    """0 (informational) .. 4 (critical); an unknown level ranks as the default."""
    try:
        return LEVELS.index(level)
    except ValueError:
        return LEVELS.index(DEFAULT_LEVEL)


def at_least(level: str, minimum: str) -> bool:
    """Whether ``level`` is ``minimum`` or more serious."""
    return rank(level) >= rank(minimum)
