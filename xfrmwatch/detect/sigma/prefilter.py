"""Which event types a detection rule can match: a static pre-filter, never a change of meaning.

A rule whose condition requires ``type: X`` (ANDed at the top, a plain value
without modifiers) can only match events of type X; the rule set evaluates it
on those only.  Anything this analysis does not understand (``not``, modifiers
on ``type``, ...) yields ``None``: the rule is evaluated on every event.
``tests/unit/test_sigma_prefilter.py`` proves the hits equal over every recorded event.
"""

from __future__ import annotations

from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionOR,
    ConditionSelector,
    unwrap_parse_result_operand,
)
from sigma.rule import SigmaDetection, SigmaDetections, SigmaRule
from sigma.types import SigmaString

__all__ = ["Types", "rule_types"]

#: the event types a rule can match; None: any type
Types = frozenset[str] | None


def _and_types(sets: list[Types]) -> Types:
    known = [t for t in sets if t is not None]
    if not known:
        return None
    out = known[0]
    for t in known[1:]:
        out &= t
    return out


def _or_types(sets: list[Types]) -> Types:
    if any(t is None for t in sets):
        return None
    return frozenset().union(*[t for t in sets if t is not None])


def _detection_types(d: SigmaDetection) -> Types:
    subs: list[Types] = []
    for x in d.detection_items:
        if isinstance(x, SigmaDetection):
            subs.append(_detection_types(x))
        elif (
            x.field == "type"
            and not x.modifiers
            and not x.negated
            and x.value
            and all(isinstance(v, SigmaString) and not v.contains_special() for v in x.value)
            and x.value_linking is not ConditionAND
        ):
            subs.append(frozenset(str(v).lower() for v in x.value))
        else:
            subs.append(None)
    return _and_types(subs) if d.item_linking is ConditionAND else _or_types(subs)


def _condition_types(node: Any, dets: SigmaDetections) -> Types:
    node = unwrap_parse_result_operand(node)
    if isinstance(node, ConditionSelector):
        sets = [_detection_types(dets.detections[c.identifier]) for c in node.resolve_referenced_detections(dets)]
        return _and_types(sets) if node.cond_class is ConditionAND else _or_types(sets)
    if isinstance(node, ConditionIdentifier):
        return _detection_types(dets.detections[node.identifier])
    if isinstance(node, ConditionAND):
        return _and_types([_condition_types(a, dets) for a in node.args])
    if isinstance(node, ConditionOR):
        return _or_types([_condition_types(a, dets) for a in node.args])
    return None  # NOT and anything else: no restriction known


def rule_types(rule: SigmaRule) -> Types:
    """The event types a detection rule can match, when its condition requires a
    ``type`` value (ANDed at the top); None when it could match any type."""
    try:
        trees = [c.parse(postprocess=False) for c in rule.detection.parsed_condition]
        return _or_types([_condition_types(t, rule.detection) for t in trees])
    except Exception:
        return None
