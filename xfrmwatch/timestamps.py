"""Wall-clock timestamps as the events carry them: ISO 8601 in UTC."""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

__all__ = ["seconds", "utc", "utc_precise"]


def seconds(iso: str | None) -> float | None:
    """Seconds since the epoch of an event's ISO 8601 time (None: none, or unreadable)."""
    if not iso:
        return None
    try:
        return _dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def utc(seconds: float) -> str:
    """ISO 8601 UTC, second resolution."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


_second_cache: list[Any] = [None, ""]


def utc_precise(seconds: float) -> str:
    """ISO 8601 UTC, microsecond resolution."""
    whole = int(seconds)
    if _second_cache[0] != whole:
        _second_cache[0] = whole
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
    # %d truncates the float as int() would; %-formatting is about half the f-string's time
    return "%s%06dZ" % (_second_cache[1], (seconds - whole) * 1e6)
