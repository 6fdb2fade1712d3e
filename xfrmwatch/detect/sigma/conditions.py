"""Detections and conditions: a parsed Sigma detection rule compiled into one :data:`Matcher`.

A selection that is a map is AND, a list of maps OR, a list of values OR (``|all``:
AND); ``condition`` combines named selections with ``and``, ``or``, ``not``,
parentheses and ``1 of``/``all of`` (a list of conditions is OR).  pySigma parses;
this module only evaluates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
    unwrap_parse_result_operand,
)
from sigma.exceptions import SigmaError, SigmaRegularExpressionError
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.types import SigmaNull

from .fields import resolve, split
from .values import Unsupported, value_test

__all__ = ["KEYWORD", "ConditionProblem", "Matcher", "compile_item", "compile_rule", "sigma_reason"]

#: an event -> whether it matches
Matcher = Callable[[Any], bool]

KEYWORD = "keyword (plain value) detections are not supported: match a field, e.g. `sa.auth.name: hmac(md5)`"


def sigma_reason(e: BaseException) -> str:
    """The user-facing text of an error pySigma raised (its message, never our guess at it)."""
    if isinstance(e, SigmaError) and e.args:
        text = str(e.args[0])
        if isinstance(e, SigmaRegularExpressionError):  # RE2's message arrives as repr(bytes)
            text = re.sub(r"""\bb'(.*)'$""", r"\1", text)
        return text
    if isinstance(e, SigmaError):
        return str(e) or type(e).__name__
    return f"pySigma cannot parse this rule ({type(e).__name__}: {e})"


class ConditionProblem(Exception):
    """The condition at ``index`` (of a list of conditions) cannot be compiled."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _all(fns: Sequence[Matcher]) -> Matcher:
    if len(fns) == 1:
        return fns[0]
    t = tuple(fns)
    return lambda e: all(f(e) for f in t)


def _any(fns: Sequence[Matcher]) -> Matcher:
    if len(fns) == 1:
        return fns[0]
    t = tuple(fns)
    return lambda e: any(f(e) for f in t)


def compile_item(item: SigmaDetectionItem) -> Matcher:
    """One ``field|modifiers: values`` item; :class:`Unsupported` for what xfrmwatch does not evaluate."""
    if item.field is None:
        raise Unsupported(KEYWORD)
    if item.negated:
        raise Unsupported("negated detection items are not supported")
    parts = split(item.field)
    tests = [value_test(v) for v in item.value] or [value_test(SigmaNull())]
    if len(tests) == 1:
        test = tests[0]
        return lambda e: test(resolve(e, parts))
    tt = tuple(tests)
    link = all if item.value_linking is ConditionAND else any  # `|all`: every value must match

    def match(e: Any) -> bool:
        found = resolve(e, parts)
        return link(t(found) for t in tt)

    return match


def _compile_detection(d: SigmaDetection) -> Matcher:
    fns = [
        _compile_detection(x) if isinstance(x, SigmaDetection) else compile_item(x)
        for x in d.detection_items
    ]
    return _all(fns) if d.item_linking is ConditionAND else _any(fns)


def _compile_condition(node: Any, dets: SigmaDetections, named: Callable[[str], Matcher]) -> Matcher:
    node = unwrap_parse_result_operand(node)
    if isinstance(node, ConditionSelector):
        fns = [named(c.identifier) for c in node.resolve_referenced_detections(dets)]
        return _all(fns) if node.cond_class is ConditionAND else _any(fns)
    if isinstance(node, ConditionIdentifier):
        return named(node.identifier)
    if isinstance(node, ConditionNOT):
        inner = _compile_condition(node.args[0], dets, named)
        return lambda e: not inner(e)
    if isinstance(node, (ConditionAND, ConditionOR)):
        fns = [_compile_condition(a, dets, named) for a in node.args]
        return _all(fns) if isinstance(node, ConditionAND) else _any(fns)
    raise Unsupported(f"condition element {type(node).__name__} is not supported")


def compile_rule(rule: SigmaRule) -> Matcher:
    """The rule's conditions (OR) as one matcher; :class:`ConditionProblem` names the bad one."""
    dets = rule.detection
    cache: dict[str, Matcher] = {}

    def named(name: str) -> Matcher:
        if name not in cache:
            cache[name] = _compile_detection(dets.detections[name])
        return cache[name]

    matchers = []
    for i, cond in enumerate(dets.parsed_condition):
        try:
            cond.parse(postprocess=True)  # pySigma's checks: identifiers defined, selectors match
            tree = cond.parse(postprocess=False)
            matchers.append(_compile_condition(tree, dets, named))
        except SigmaError as e:
            raise ConditionProblem(i, sigma_reason(e)) from None
        except Unsupported as e:
            raise ConditionProblem(i, str(e)) from None
    return _any(matchers)
