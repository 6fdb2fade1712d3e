"""Value types of settings, shared by the configuration file and the command line:
msgspec types whose constraints are the one statement of each valid range."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["HistoryFactor", "NotNegative", "OverdueShare", "Positive", "ReceiveBuffer", "check"]

#: more than 0 (seconds, sizes)
Positive = Annotated[float, msgspec.Meta(gt=0)]
#: 0 or more
NotNegative = Annotated[float, msgspec.Meta(ge=0)]
#: rekey_overdue after this share of the soft->hard interval
OverdueShare = Annotated[float, msgspec.Meta(gt=0, lt=1)]
#: without kernel lifetimes: rekey_overdue at this multiple of the learned rekey interval
HistoryFactor = Annotated[float, msgspec.Meta(gt=1)]
#: the netlink receive buffer in bytes (the overrun tests use the smallest)
ReceiveBuffer = Annotated[int, msgspec.Meta(ge=4096)]


def check(values: dict[str, object], struct: type[msgspec.Struct]) -> str | None:
    """Why ``values`` do not fit ``struct`` (``"--name: reason"``), or None."""
    try:
        msgspec.convert(values, struct)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where, _, path = text.rpartition(" - at `$.")
        name = path.rstrip("`").split(".")[0].replace("_", "-")
        return f"--{name}: {where}" if where else text
    return None
