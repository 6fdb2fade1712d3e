"""Checking one rule document: xfrmwatch's own checks, then pySigma's, each problem at its key.

:func:`parse_document` runs xfrmwatch's checks (logsource, field names,
supported modifiers and correlation types, ``xfrmwatch:`` options), parses the
document with pySigma collecting every error, places each pySigma error at the
key it is about, and compiles a detection rule's condition.

pySigma reports no position.  An error is placed by its class where the class
names one key (:data:`KEYS_BY_ERROR`); otherwise by trying the document again
without each key in turn: the key whose removal makes that very error go away
is the one it is about (optional keys only: removing a required one makes pySigma
stop earlier, which proves nothing); else it belongs to the correlation or the
detection as a whole.  Nothing depends on the wording of pySigma's messages.
"""

from __future__ import annotations

import copy
from typing import Any

from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationConditionOperator
from sigma.exceptions import (
    SigmaAuthorError,
    SigmaConditionError,
    SigmaCorrelationConditionError,
    SigmaCorrelationTypeError,
    SigmaDateError,
    SigmaDescriptionError,
    SigmaError,
    SigmaFalsePositivesError,
    SigmaFieldsError,
    SigmaIdentifierError,
    SigmaLevelError,
    SigmaLicenseError,
    SigmaLogsourceError,
    SigmaModifiedError,
    SigmaNameError,
    SigmaReferencesError,
    SigmaRelatedError,
    SigmaRuleLocation,
    SigmaScopeError,
    SigmaStatusError,
    SigmaTagError,
    SigmaTaxonomyError,
    SigmaTimespanError,
    SigmaTitleError,
)
from sigma.modifiers import modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.rule.base import check_alias_expansion
from sigma.types import SigmaString

from .conditions import KEYWORD, ConditionProblem, compile_item, compile_rule, sigma_reason
from .documents import Keys, RuleDocument
from .fields import FieldNames
from .prefilter import rule_types
from .suppression import OPTION_KEYS, parse_period
from .values import Unsupported

__all__ = ["KEYS_BY_ERROR", "SUPPORTED_CORRELATIONS", "SUPPORTED_MODIFIERS", "as_list", "parse_document"]

SUPPORTED_MODIFIERS: tuple[str, ...] = (
    "contains", "startswith", "endswith", "all", "cased", "re", "i", "m", "s", "cidr",
    "gt", "gte", "lt", "lte", "exists",
)  # fmt: skip
SUPPORTED_CORRELATIONS: tuple[str, ...] = ("event_count", "value_count", "temporal", "temporal_ordered")

CORRELATION_KEYS = frozenset({"type", "rules", "group-by", "timespan", "condition", "aliases", "generate"})
CONDITION_OPS = frozenset(SigmaCorrelationConditionOperator.operators())


def as_list(v: Any, keys: Keys) -> list[tuple[Keys, Any]]:
    """A value or a list of values, each with its key path."""
    if isinstance(v, list):
        return [((*keys, i), x) for i, x in enumerate(v)]
    return [(keys, v)]


# --- xfrmwatch's checks ------------------------------------------------------------------------


def _check_options(doc: RuleDocument, opts: Any, fields: FieldNames) -> None:
    keys: Keys = ("xfrmwatch",)
    if not isinstance(opts, dict):
        doc.err(keys, "xfrmwatch: must be a mapping (keys: suppress, suppress_by)")
        return
    for k, v in opts.items():
        if k == "suppress":
            if parse_period(v) is None:
                doc.err(
                    (*keys, k),
                    "suppress must be a period like 30s, 5m, 1h, 1d or seconds (0 turns suppression off)",
                )
        elif k == "suppress_by":
            if doc.is_correlation:
                doc.err(
                    (*keys, k), "suppress_by is for detection rules: a correlation suppresses per group-by"
                )
                continue
            if not isinstance(v, (str, list)) or v == []:
                doc.err((*keys, k), "suppress_by must be a field name or a list of field names")
                continue
            for kk, name in as_list(v, (*keys, k)):
                if (problem := fields.problem(name)) is not None:
                    doc.err(kk, problem)
        else:
            doc.err((*keys, k), f"unknown xfrmwatch option '{k}' (known: {', '.join(OPTION_KEYS)})")


def _check_logsource(doc: RuleDocument, ls: Any) -> None:
    want = "logsource must be {product: linux, service: xfrm}"
    if ls is None:
        return  # pySigma reports the missing logsource
    if not isinstance(ls, dict):
        doc.err(("logsource",), want)
        return
    for k, v in ls.items():
        if k == "product" and v != "linux":
            doc.err(
                ("logsource", k), f"logsource product must be 'linux' (xfrmwatch's own events), not {v!r}"
            )
        elif k == "service" and v != "xfrm":
            doc.err(("logsource", k), f"logsource service must be 'xfrm', not {v!r}")
        elif k == "category":
            doc.err(
                ("logsource", k),
                "logsource category is not used by xfrmwatch: select event types with `type:` in the detection",
            )
        elif k not in ("product", "service", "definition"):
            doc.err(("logsource", k), f"unknown logsource key '{k}' ({want})")
    if "product" not in ls or "service" not in ls:
        doc.err(("logsource",), want)


def _check_item(doc: RuleDocument, key: Any, value: Any, keys: Keys, fields: FieldNames) -> None:
    if not isinstance(key, str):
        doc.err(keys, "a field name must be a string")
        return
    name, *mods = key.split("|")
    bad = False
    if name == "":
        doc.err(keys, "keyword detections with modifiers are not supported: name a field")
        bad = True
    elif (problem := fields.problem(name)) is not None:
        doc.err(keys, problem)
        bad = True
    for m in mods:
        if m not in modifier_mapping:
            doc.err(keys, f"unknown modifier '{m}'")
            bad = True
        elif m not in SUPPORTED_MODIFIERS:
            doc.err(
                keys,
                f"modifier '{m}' is not supported by xfrmwatch (supported: {', '.join(SUPPORTED_MODIFIERS)})",
            )
            bad = True
    if bad:
        return
    try:
        compile_item(SigmaDetectionItem.from_mapping(key, value))
    except SigmaError as e:
        doc.err(keys, sigma_reason(e))
    except Unsupported as e:
        doc.err(keys, str(e))
    except Exception as e:  # pySigma on values it does not expect (e.g. a number for `re`)
        doc.err(keys, f"invalid value for '{key}': {type(e).__name__}: {e}")


def _check_selection(doc: RuleDocument, sel: Any, keys: Keys, fields: FieldNames) -> None:
    if isinstance(sel, dict):
        if not sel:
            doc.err(keys, "empty selection")
        for k, v in sel.items():
            _check_item(doc, k, v, (*keys, k), fields)
    elif isinstance(sel, list) and not sel:
        doc.err(keys, "empty selection")
    elif isinstance(sel, list) and any(isinstance(x, (dict, list)) for x in sel):
        for i, x in enumerate(sel):
            if isinstance(x, (dict, list)):
                _check_selection(doc, x, (*keys, i), fields)
            else:
                doc.err((*keys, i), KEYWORD)
    else:
        doc.err(keys, KEYWORD)


def _condition_keys(cond: Any, index: int) -> Keys:
    return ("detection", "condition", index) if isinstance(cond, list) else ("detection", "condition")


def _check_condition(doc: RuleDocument, det: dict[Any, Any]) -> None:
    """pySigma's condition checks against stand-in selections, so they run even if a selection is wrong."""
    cond = det.get("condition")
    if cond is None:
        return  # pySigma reports it
    conds = cond if isinstance(cond, list) else [cond]
    names = [n for n in det if isinstance(n, str) and n != "condition"]
    try:
        stand_in = SigmaDetections(
            {n: SigmaDetection([SigmaDetectionItem("type", [], [SigmaString("x")])]) for n in names}, conds
        )
    except SigmaError:
        return  # no selections: pySigma reports it
    for i, c in enumerate(stand_in.parsed_condition):
        try:
            c.parse()
        except SigmaError as e:
            doc.err(_condition_keys(cond, i), sigma_reason(e))


def _check_detection(doc: RuleDocument, det: Any, fields: FieldNames) -> None:
    if det is None:
        return  # pySigma reports the missing detection
    if not isinstance(det, dict):
        doc.err(("detection",), "detection must be a mapping of named selections and a condition")
        return
    cond = det.get("condition")
    if "condition" in det and not (
        isinstance(cond, str) or (isinstance(cond, list) and cond and all(isinstance(c, str) for c in cond))
    ):
        doc.err(("detection", "condition"), "condition must be a string (or a list of strings)")
    else:
        _check_condition(doc, det)
    for name, sel in det.items():
        keys: Keys = ("detection", name)
        if name == "condition":
            continue
        if not isinstance(name, str):
            doc.err(keys, "selection names must be strings")
        elif name == "timeframe":
            doc.err(keys, "'timeframe' (Sigma 1) is not supported: use a correlation rule with a timespan")
        else:
            _check_selection(doc, sel, keys, fields)


def _check_aliases(doc: RuleDocument, aliases: Any, keys: Keys, fields: FieldNames) -> set[str]:
    """Check ``aliases``; the alias names (usable in group-by and condition field)."""
    names: set[str] = set()
    if aliases is None:
        return names
    if not isinstance(aliases, dict):
        doc.err((*keys, "aliases"), "aliases must be a mapping: alias -> {rule name: field}")
        return names
    for alias, mapping in aliases.items():
        if not isinstance(alias, str) or not isinstance(mapping, dict) or not mapping:
            doc.err((*keys, "aliases", alias), "an alias maps rule names to field names")
            continue
        names.add(alias)
        for ref, name in mapping.items():
            if (problem := fields.problem(name)) is not None:
                doc.err((*keys, "aliases", alias, ref), problem)
    return names


def _check_correlation_condition(
    doc: RuleDocument, cond: Any, ctype: Any, aliases: set[str], fields: FieldNames
) -> None:
    ck: Keys = ("correlation", "condition")
    if isinstance(cond, str):
        doc.err(ck, "extended (string) correlation conditions are not supported: list the rules instead")
    elif isinstance(cond, dict):
        if ctype == "temporal_ordered":
            doc.err(ck, "temporal_ordered takes no condition: every rule must match, in order")
        ops = [k for k in cond if k in CONDITION_OPS]
        if not ops:
            doc.err(ck, f"condition needs one of {', '.join(sorted(CONDITION_OPS))}")
        elif len(ops) > 1:
            doc.err(ck, "one comparison per condition (pySigma): chain two correlations for a range")
        for k, v in cond.items():
            if k in CONDITION_OPS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    doc.err((*ck, k), f"'{k}' needs a number, not {v!r}")
            elif k == "field":
                if ctype in SUPPORTED_CORRELATIONS and ctype != "value_count":
                    doc.err((*ck, k), "condition field is only used by value_count")
                elif v not in aliases and (problem := fields.problem(v)) is not None:
                    doc.err((*ck, k), problem)
            else:
                doc.err((*ck, k), f"unknown condition key '{k}'")
        if ctype == "value_count" and "field" not in cond:
            doc.err(ck, "value_count needs the field whose distinct values it counts: {field: ..., gte: N}")
    elif cond is not None:
        doc.err(ck, "condition must be a mapping such as {gte: 10}")
    elif ctype in ("event_count", "value_count"):
        doc.err(ck, f"{ctype} needs a condition such as {{gte: 10}}")


def _check_correlation(doc: RuleDocument, corr: Any, fields: FieldNames) -> None:
    keys: Keys = ("correlation",)
    if not isinstance(corr, dict):
        doc.err(keys, "correlation must be a mapping")
        return
    for k in corr:
        if k not in CORRELATION_KEYS:
            doc.err(
                (*keys, k), f"unknown correlation key '{k}' (known: {', '.join(sorted(CORRELATION_KEYS))})"
            )
    ctype = corr.get("type")
    if ctype is not None and ctype not in SUPPORTED_CORRELATIONS:
        doc.err(
            (*keys, "type"),
            f"correlation type '{ctype}' is not supported by xfrmwatch (supported: {', '.join(SUPPORTED_CORRELATIONS)})",
        )
    rules = corr.get("rules")
    if rules is None:
        doc.err((*keys, "rules"), "rules: the names or ids of the rules to correlate")
    elif (
        not isinstance(rules, (str, list))
        or rules == []
        or not all(isinstance(r, str) for r in (rules if isinstance(rules, list) else [rules]))
    ):
        doc.err((*keys, "rules"), "rules must be a rule name or id, or a list of them")
    aliases = _check_aliases(doc, corr.get("aliases"), keys, fields)
    group_by = corr.get("group-by")
    if group_by is not None:
        if not isinstance(group_by, (str, list)):
            doc.err((*keys, "group-by"), "group-by must be a field name or a list of field names")
        else:
            for kk, name in as_list(group_by, (*keys, "group-by")):
                if name not in aliases and (problem := fields.problem(name)) is not None:
                    doc.err(kk, problem)
    _check_correlation_condition(doc, corr.get("condition"), ctype, aliases, fields)


def _check_document(doc: RuleDocument, fields: FieldNames) -> bool:
    """xfrmwatch's checks, each problem at its key; ``False`` if pySigma should not see it at all."""
    data = doc.data
    if not isinstance(data, dict):
        doc.err((), "a rule must be a YAML mapping")
        return False
    if "action" in data:
        doc.err(
            ("action",), "Sigma collection actions (global, reset, repeat) are not supported: write rules out"
        )
        return False
    if "filter" in data:
        doc.err(("filter",), "Sigma filter rules are not supported")
        return False
    try:
        check_alias_expansion(data)
    except SigmaError as e:
        doc.err((), sigma_reason(e))
        return False
    for k in ("id", "name"):
        if k in data and not isinstance(data[k], str):
            doc.err((k,), f"rule {k} must be a string")
    if "xfrmwatch" in data:
        _check_options(doc, data["xfrmwatch"], fields)
    if doc.is_correlation:
        for k in ("detection", "logsource"):
            if k in data:
                doc.err((k,), f"a correlation rule has no {k}")
        _check_correlation(doc, data["correlation"], fields)
    else:
        _check_logsource(doc, data.get("logsource"))
        _check_detection(doc, data.get("detection"), fields)
    return True


# --- pySigma's checks, placed at their keys ---------------------------------------------------------

#: pySigma error classes that are about one key, wherever they come from
KEYS_BY_ERROR: dict[type[SigmaError], Keys] = {
    SigmaIdentifierError: ("id",),
    SigmaNameError: ("name",),
    SigmaTaxonomyError: ("taxonomy",),
    SigmaRelatedError: ("related",),
    SigmaLevelError: ("level",),
    SigmaStatusError: ("status",),
    SigmaTagError: ("tags",),
    SigmaDateError: ("date",),
    SigmaModifiedError: ("modified",),
    SigmaFieldsError: ("fields",),
    SigmaFalsePositivesError: ("falsepositives",),
    SigmaAuthorError: ("author",),
    SigmaDescriptionError: ("description",),
    SigmaReferencesError: ("references",),
    SigmaTitleError: ("title",),
    SigmaScopeError: ("scope",),
    SigmaLicenseError: ("license",),
    SigmaLogsourceError: ("logsource",),
    SigmaConditionError: ("detection", "condition"),
    SigmaCorrelationTypeError: ("correlation", "type"),
    SigmaTimespanError: ("correlation", "timespan"),
    SigmaCorrelationConditionError: ("correlation", "condition"),
}


def _pysigma(data: Any, doc: RuleDocument) -> tuple[list[BaseException], Any]:
    """pySigma's errors for ``data`` (every one, collected) and the rule it parsed (or None)."""
    try:
        coll = SigmaCollection.from_dicts(
            [copy.deepcopy(data)],
            collect_errors=True,
            source=SigmaRuleLocation(doc.path),
            collect_filters=True,
            resolve_references=False,
        )
        return list(coll.errors), (coll.rules[0] if coll.rules else None)
    except Exception as exc:  # pySigma raises some errors even when collecting them
        return [exc], None


def _identity(e: BaseException) -> tuple[type, str]:
    return type(e), sigma_reason(e)


def _without(data: dict[str, Any], keys: Keys) -> dict[str, Any]:
    if len(keys) == 1:
        return {k: v for k, v in data.items() if k != keys[0]}
    inner = data[keys[0]]
    return {**data, keys[0]: {k: v for k, v in inner.items() if k != keys[1]}}


#: keys whose removal never makes pySigma stop earlier (they are optional): safe to probe
_REQUIRED = frozenset({"title", "logsource", "detection", "correlation"})
_OPTIONAL_IN_CORRELATION = ("generate", "group-by", "aliases")


def _error_keys(err: BaseException, doc: RuleDocument) -> Keys:
    """Where in the document a pySigma error belongs: by its class; else the optional key
    whose removal makes that very error go away; else the correlation (or the detection)
    as a whole, where xfrmwatch's own checks of that part, if any fired, take precedence."""
    placed = KEYS_BY_ERROR.get(type(err)) if isinstance(err, SigmaError) else None
    if placed is not None:
        return placed
    data: dict[str, Any] = doc.data
    section: Keys = ("correlation",) if doc.is_correlation else ("detection",)
    candidates: list[Keys] = []
    corr = data.get("correlation")
    if doc.is_correlation and isinstance(corr, dict):
        candidates += [("correlation", k) for k in _OPTIONAL_IN_CORRELATION if k in corr]
    candidates += [(k,) for k in data if k not in _REQUIRED]
    wanted = _identity(err)
    for keys in candidates:
        errors, _ = _pysigma(_without(data, keys), doc)
        if len(errors) == 1 and not isinstance(errors[0], SigmaError):
            continue  # pySigma gave up on the probe: it proves nothing
        if wanted not in {_identity(e) for e in errors}:
            return keys
    return section


def _overlaps(a: Keys, b: Keys) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def parse_document(doc: RuleDocument, fields: FieldNames) -> None:
    """Check one document, parse it with pySigma, compile a detection rule's condition;
    problems are recorded on ``doc``, the results in ``doc.rule``/``matcher``/``types``."""
    if not _check_document(doc, fields):
        return
    mine = [k for k, _ in doc.problems]
    theirs, rule = _pysigma(doc.data, doc)
    for err in theirs:
        keys = _error_keys(err, doc)
        if not any(_overlaps(keys, k) for k in mine):  # already reported, with a better line
            reason = sigma_reason(err)
            if (keys, reason) not in doc.problems:
                doc.err(keys, reason)
    if doc.problems or rule is None:
        return
    doc.rule = rule
    if isinstance(rule, SigmaRule):
        try:
            doc.matcher = compile_rule(rule)
            doc.types = rule_types(rule)
        except ConditionProblem as p:
            doc.err(_condition_keys(doc.data["detection"]["condition"], p.index), p.reason)
