"""Wall-clock timestamps as the events carry them: ISO 8601 in UTC."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["utc", "utc_precise"]


def utc(seconds: float) -> str:
    """ISO 8601 UTC, second resolution."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


_second_cache: list[Any] = [None, ""]


def utc_precise(seconds: float) -> str:
    """ISO 8601 UTC, microsecond resolution."""
    whole = int(seconds)
    if _second_cache[0] != whole:
        _second_cache[0] = whole
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second_cache[1]}.{int((seconds - whole) * 1e6):06d}Z"
