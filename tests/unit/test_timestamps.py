"""Event times as text: ISO 8601 in UTC, checked against the datetime module's own rendering."""

from __future__ import annotations

import datetime as dt
import random

from xfrmwatch.timestamps import seconds, utc, utc_precise


def _iso(t: float) -> str:
    whole = int(t)
    us = int((t - whole) * 1e6)  # truncated, never rounded up into the next second
    return dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{us:06d}Z"


def test_utc_precise_microseconds_truncated_across_seconds() -> None:
    r = random.Random(7)
    values = [0.0, 1.5, 1e9, 1e9 + 0.9999999, 1e9 + 1e-7, 1764458000.000001, 4102444799.999999]
    values += [r.uniform(0, 4e9) for _ in range(2000)] + [1764458000 + r.random() for _ in range(2000)]
    for t in values:
        assert utc_precise(t) == _iso(t)
    assert utc_precise(1764458000.25) == "2025-11-29T23:13:20.250000Z"


def test_utc_and_back() -> None:
    assert utc(1764458000) == "2025-11-29T23:13:20Z"
    assert seconds(utc_precise(1764458000.5)) == 1764458000.5
    assert seconds("not a time") is None
