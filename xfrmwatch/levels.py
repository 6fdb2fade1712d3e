"""Levels: how serious an alert or an event is, and what each output calls that.

One table for the whole tool.  An alert has its rule's Sigma ``level``; an
event that is not an alert has the level of :data:`EVENT_LEVELS` (most are
informational).  Each output maps the level through :data:`SEVERITIES`:
journald's ``PRIORITY`` and the syslog severity (RFC 5424), and the OCSF
``severity_id`` that ECS's ``event.severity`` uses too.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from . import events as ev

__all__ = [
    "DEFAULT_LEVEL", "EVENT_LEVELS", "LEVELS", "SEVERITIES", "Level", "Severity", "at_least", "level_of",
    "rank", "severity",
]  # fmt: skip

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


class Severity(NamedTuple):
    """What one level is called by each output."""

    #: syslog severity (RFC 5424) = journald PRIORITY
    syslog: int
    #: OCSF ``severity_id``, also ECS ``event.severity``
    ocsf: int


#: level -> its severity in every output
SEVERITIES: dict[str, Severity] = {
    "informational": Severity(syslog=6, ocsf=1),  # info
    "low": Severity(syslog=5, ocsf=2),  # notice
    "medium": Severity(syslog=4, ocsf=3),  # warning
    "high": Severity(syslog=3, ocsf=4),  # err
    "critical": Severity(syslog=2, ocsf=5),  # crit
}

#: events (not alerts) that are more than informational, and why
EVENT_LEVELS: dict[str, str] = {
    "overrun": "high",  # events were lost
    "tunnel_down": "high",  # the tunnel ended (the rules rate a deliberate teardown informational)
    "traffic_stalled": "medium",  # nothing comes back: the peer or the path may be dead
    "malformed": "medium",  # a message could not be decoded
    "rekey_overdue": "medium",  # the hard limit is near
    "flushsa": "low",  # the whole SAD was flushed
    "flushpolicy": "low",  # the whole SPD was flushed
}


def level_of(e: ev.Event) -> str:
    """An alert's rule level (an unknown one counts as the default); an event's from :data:`EVENT_LEVELS`."""
    if isinstance(e, ev.Alert):
        return e.rule.level if e.rule.level in SEVERITIES else DEFAULT_LEVEL
    return EVENT_LEVELS.get(str(e.__struct_config__.tag), "informational")


def severity(e: ev.Event) -> Severity:
    """What each output calls how serious ``e`` is."""
    return SEVERITIES[level_of(e)]
