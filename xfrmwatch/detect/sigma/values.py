"""Rule values: how one (modified) Sigma value tests the values found at a field.

pySigma turns a detection item's values and modifiers into :mod:`sigma.types`
objects; :func:`value_test` compiles one of them into a test of the list of
values :func:`~xfrmwatch.detect.sigma.fields.resolve` found in an event.
Strings match case-insensitively unless ``cased``, with Sigma's wildcards;
numbers also match numeric strings (``0xc0de`` matches ``"0x0000c0de"``).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import operator
import re
from collections.abc import Callable
from typing import Any, cast

from sigma.policy import default_policy
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaTimestampPart,
    SigmaType,
    SpecialChars,
)

__all__ = ["Unsupported", "ValueTest", "as_number", "as_text", "value_test"]

#: a test of all the values found at one field path
ValueTest = Callable[[list[Any]], bool]
_Pred = Callable[[Any], bool]


class Unsupported(Exception):
    """A rule construct xfrmwatch does not evaluate; ``str()`` is the message for the user."""


def as_text(x: Any) -> str | None:
    """An event value as the text a string matches against (None for records and lists)."""
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return str(x)
    return None


@functools.lru_cache(maxsize=4096)
def _num_from_str(s: str) -> int | float | None:
    try:
        return int(s, 0)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def as_number(x: Any) -> int | float | None:
    """An event value as the number a numeric rule value compares with (hex strings included)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return x
    if isinstance(x, str):
        return _num_from_str(x.strip())
    return None


@functools.lru_cache(maxsize=4096)
def _network(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        return None


def _string_pred(s: SigmaString, cased: bool) -> _Pred:
    parts = list(s.s)
    if not all(isinstance(p, (str, SpecialChars)) for p in parts):
        raise Unsupported("placeholders (%name%) are not supported")
    fold: Callable[[str], str] = (lambda t: t) if cased else str.lower
    if not s.contains_special():
        target = fold("".join(cast(list[str], parts)))
        return lambda x: (t := as_text(x)) is not None and fold(t) == target
    multi = SpecialChars.WILDCARD_MULTI
    if len(parts) == 3 and parts[0] is multi and parts[2] is multi and isinstance(parts[1], str):
        needle = fold(parts[1])
        return lambda x: (t := as_text(x)) is not None and needle in fold(t)
    if len(parts) == 2 and isinstance(parts[0], str) and parts[1] is multi:
        prefix = fold(parts[0])
        return lambda x: (t := as_text(x)) is not None and fold(t).startswith(prefix)
    if len(parts) == 2 and parts[0] is multi and isinstance(parts[1], str):
        suffix = fold(parts[1])
        return lambda x: (t := as_text(x)) is not None and fold(t).endswith(suffix)
    pattern = "".join(re.escape(p) if isinstance(p, str) else ".*" if p is multi else "." for p in parts)
    rx = re.compile(pattern, re.DOTALL | (0 if cased else re.IGNORECASE))
    return lambda x: (t := as_text(x)) is not None and rx.fullmatch(t) is not None


_COMPARE: dict[CompareOperators, Callable[[Any, Any], bool]] = {
    CompareOperators.LT: operator.lt,
    CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt,
    CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}


def _regex_pred(v: SigmaRegularExpression) -> _Pred:
    flags = 0
    for flag in v.flags:
        flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
    engine = (v.policy or default_policy).regex_engine
    try:
        rx = engine.compile(str(v.regexp), flags)
    except engine.error as e:  # pySigma compiled it already; kept for safety
        raise Unsupported(f"invalid regular expression: {e}") from None
    return lambda x: (t := as_text(x)) is not None and rx.search(t) is not None


def _cidr_pred(v: SigmaCIDRExpression) -> _Pred:
    net = v.network
    return lambda x: (
        isinstance(x, str)
        and (n := _network(x)) is not None
        and n.version == net.version
        and n.subnet_of(net)  # type: ignore[arg-type]
    )


def _value_pred(v: SigmaType) -> _Pred:
    """A test of one event value against one (modified) rule value."""
    if isinstance(v, SigmaCasedString):
        return _string_pred(v, cased=True)
    if isinstance(v, SigmaString):
        return _string_pred(v, cased=False)
    if isinstance(v, SigmaBool):
        want = v.boolean
        return lambda x: isinstance(x, bool) and x is want
    if isinstance(v, SigmaTimestampPart):
        raise Unsupported("timestamp part modifiers are not supported")
    if isinstance(v, SigmaNumber):
        n = v.number
        return lambda x: (y := as_number(x)) is not None and y == n
    if isinstance(v, SigmaRegularExpression):
        return _regex_pred(v)
    if isinstance(v, SigmaCIDRExpression):
        return _cidr_pred(v)
    if isinstance(v, SigmaCompareExpression):
        cmp, bound = _COMPARE[v.op], v.number.number
        return lambda x: (y := as_number(x)) is not None and cmp(y, bound)
    raise Unsupported(f"values of type {type(v).__name__} are not supported")


def value_test(v: SigmaType) -> ValueTest:
    """A test of all the values found at a field path against one rule value
    (``null``: none found; ``exists``: some found or none; others: any value matches)."""
    if isinstance(v, SigmaNull):
        return lambda found: not found
    if isinstance(v, SigmaExists):
        want = bool(v)
        return lambda found: bool(found) == want
    pred = _value_pred(v)
    return lambda found: any(pred(x) for x in found)
