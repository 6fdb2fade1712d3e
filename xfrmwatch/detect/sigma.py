"""Sigma rules on xfrmwatch events: parsed with pySigma, evaluated live in Python.

:func:`load_rules` reads every ``*.yml``/``*.yaml`` file (directories recursively;
several YAML documents per file allowed), checks each rule against what this module
evaluates, and reports *every* problem as ``path:line: reason`` in one
:class:`RuleError`.  :meth:`RuleSet.process` is then fed ``(event, now)`` for every
event, ``now`` being trio's clock (the only time source: windows and suppression are
testable on a mock clock), and returns the :class:`Hit` s.

Rule conventions
================

* **logsource**: ``logsource: {product: linux, service: xfrm}`` on every detection
  rule (``definition`` may be added as free text).  Anything else is rejected, including
  ``category``: select event types with the ``type`` field in the detection instead.
* **fields**: the event fields of ``docs/events.md`` as dotted paths (``type``,
  ``sa.spi``, ``sa.auth.name``, ``policy.sel.src``, ``counts.in``...).  A path through
  a list matches when any element does (``policy.tmpl.proto: esp``, ``sa.flags: esn``).
  Unknown fields are rejected (``valid_fields`` widens the set; an entry ``prefix.*``
  accepts every path below ``prefix``).  Events may be msgspec structs or plain dicts.
* **detection**: named selections (a map is AND, a list of maps OR, a list of values
  OR) and ``condition`` with ``and``, ``or``, ``not``, parentheses, ``1 of x*``,
  ``all of x*``, ``1 of them``, ``all of them`` (a list of conditions is OR).  Keyword
  (plain value) detections are rejected.
* **values**: strings match case-insensitively, with Sigma's ``*`` and ``?`` wildcards;
  ``field: null`` matches a missing or null field (or an empty list); numbers also match
  numeric strings (``sa.spi: 0xc0de`` matches ``"0x0000c0de"``).
* **modifiers**: ``contains``, ``startswith``, ``endswith``, ``all``, ``cased``,
  ``re`` (Sigma/RE2 syntax, unanchored, case-sensitive) with its flags ``i``, ``m``,
  ``s``, ``cidr`` (an address, or a network that is a subnet of the rule's CIDR),
  ``gt``, ``gte``, ``lt``, ``lte``, ``exists``.  Every other modifier is rejected.
* **level**: Sigma's ``informational``, ``low``, ``medium``, ``high``, ``critical``;
  ``medium`` when the rule has none.  The hit's id is the rule's ``id``, else its
  ``name``, else ``path:line``.
* **correlations** (Sigma correlation rules): ``event_count``, ``value_count``
  (``condition.field``), ``temporal``, ``temporal_ordered``, with ``rules`` (by ``name``
  or ``id``; correlations may reference correlations), ``group-by``, ``aliases``,
  ``timespan`` (``30s``, ``5m``, ``1h``, ``1d``...) and ``condition`` (one of ``gt``,
  ``gte``, ``lt``, ``lte``, ``eq``, ``neq``).  ``temporal`` counts the distinct rules
  seen in the window (default: all of them); ``temporal_ordered`` takes no condition:
  every rule, in the given order, by distinct events.  Conditions are evaluated when a
  referenced rule matches, over the window that ends then; a group whose correlation
  fired starts afresh.  Events lacking a ``group-by`` field are not counted.  Rules
  referenced by a correlation produce no hits of their own unless the correlation says
  ``generate: true``.  Not supported: ``value_sum``/``value_avg``/``value_percentile``/
  ``value_median``, extended (string) conditions, ranges (two operators: chain two
  correlations instead), Sigma filters and collection actions (``action: global``...).
* **suppression**: an optional ``xfrmwatch`` key per rule::

      xfrmwatch:
        suppress: 5m            # period (30s, 5m, 1h, 1d or seconds); 0 turns it off
        suppress_by: [sa.spi]   # detection rules only: what makes two hits "the same"

  A repeated hit of the same rule for the same group within the period is held back
  and counted; the next hit after the period carries ``suppressed: N``.  A correlation
  groups by its ``group-by`` values and is suppressed for ``suppress`` or else the
  RuleSet's ``default_suppress``; a detection rule is suppressed only when it says
  ``suppress`` or ``suppress_by`` (``default_suppress`` being the period when it gives
  only ``suppress_by``; ``suppress`` alone groups the whole rule).
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import math
import operator
import re
import typing
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, cast

import msgspec
import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
    unwrap_parse_result_operand,
)
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
)
from sigma.exceptions import (
    SigmaAuthorError,
    SigmaConditionError,
    SigmaCorrelationConditionError,
    SigmaCorrelationRuleError,
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
    SigmaRegularExpressionError,
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
from sigma.policy import default_policy
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.rule.base import check_alias_expansion
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

from .. import events as ev
from ..errors import EXIT_RULES, UserError

__all__ = [
    "SCHEMA_FIELDS",
    "SUPPORTED_CORRELATIONS",
    "SUPPORTED_MODIFIERS",
    "Hit",
    "RuleError",
    "RuleInfo",
    "RuleSet",
    "load_rules",
    "schema_fields",
]

SUPPORTED_MODIFIERS: tuple[str, ...] = (
    "contains",
    "startswith",
    "endswith",
    "all",
    "cased",
    "re",
    "i",
    "m",
    "s",
    "cidr",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
)
SUPPORTED_CORRELATIONS: tuple[str, ...] = ("event_count", "value_count", "temporal", "temporal_ordered")
LEVELS: tuple[str, ...] = ("informational", "low", "medium", "high", "critical")
DEFAULT_LEVEL = "medium"

_CORRELATION_KEYS = frozenset({"type", "rules", "group-by", "timespan", "condition", "aliases", "generate"})
_CONDITION_OPS = frozenset(SigmaCorrelationConditionOperator.operators())
_OPTION_KEYS = ("suppress", "suppress_by")
_KEYWORD = "keyword (plain value) detections are not supported: match a field, e.g. `sa.auth.name: hmac(md5)`"


# --- errors ---------------------------------------------------------------------------------


class RuleError(UserError):
    """Rule files that cannot be used; ``str()`` is one ``path:line: reason`` per line."""

    exit_code = EXIT_RULES

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Unsupported(Exception):
    """A rule construct this module does not evaluate (message for the user)."""


# --- the event schema's field paths ------------------------------------------------------------


def _struct_types(tp: Any) -> Iterator[type[msgspec.Struct]]:
    """The struct classes inside a type hint (through unions, optionals and lists)."""
    origin = typing.get_origin(tp)
    if origin in (Union, UnionType, list, tuple, set, frozenset):
        for arg in typing.get_args(tp):
            yield from _struct_types(arg)
    elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp


def _walk_struct(cls: type[msgspec.Struct], prefix: str, out: set[str], stack: tuple[type, ...]) -> None:
    if cls in stack:  # a recursive type: stop, its paths are already there
        return
    hints = typing.get_type_hints(cls)
    tag_field = cls.__struct_config__.tag_field
    if tag_field is not None and cls.__struct_config__.tag is not None:
        out.add(prefix + tag_field)
    for f in msgspec.structs.fields(cls):
        for name in {f.encode_name, f.name}:
            path = prefix + name
            out.add(path)
            for sub in _struct_types(hints.get(f.name, f.type)):
                _walk_struct(sub, path + ".", out, (*stack, cls))


def schema_fields() -> frozenset[str]:
    """Every dotted field path of every event class (``in`` also as ``in_``), with ``type``."""
    out: set[str] = set()
    for cls in typing.get_args(ev.AnyEvent):
        _walk_struct(cls, "", out, ())
    return frozenset(out)


#: The default ``valid_fields``: every path of the event schema.
SCHEMA_FIELDS: frozenset[str] = schema_fields()


class _Fields:
    def __init__(self, valid: AbstractSet[str]) -> None:
        self.exact = frozenset(f for f in valid if not f.endswith(".*"))
        self.prefixes = tuple(f[:-1] for f in valid if f.endswith(".*"))

    def problem(self, name: object) -> str | None:
        """Why ``name`` is no usable field path (``None`` if it is one)."""
        if not isinstance(name, str):
            return "a field name must be a string"
        if name in self.exact or name.startswith(self.prefixes):
            return None
        close = difflib.get_close_matches(name, self.exact, n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else " (see docs/events.md)"
        return f"unknown field '{name}': not in the xfrmwatch event schema{hint}"


# --- resolving dotted paths on structs and dicts ------------------------------------------------

_MISSING: Any = object()


@functools.cache
def _struct_names(cls: type[msgspec.Struct]) -> tuple[dict[str, str], str | None, Any]:
    names: dict[str, str] = {}
    for f in msgspec.structs.fields(cls):
        names[f.encode_name] = f.name
        names.setdefault(f.name, f.name)
    cfg = cls.__struct_config__
    return names, cfg.tag_field, cfg.tag


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, msgspec.Struct):
        # fast path: most encoded names are the attribute names (field paths are
        # validated against the schema at load time, so no other attribute is asked for)
        value = getattr(obj, name, _MISSING)
        if value is not _MISSING and name in obj.__struct_fields__:
            return value
        names, tag_field, tag = _struct_names(type(obj))
        attr = names.get(name)
        if attr is not None:
            return getattr(obj, attr)
        if name == tag_field and tag is not None:
            return tag
        return _MISSING
    if isinstance(obj, Mapping):
        if name in obj:
            return obj[name]
        return obj.get(name[:-1] if name.endswith("_") else name + "_", _MISSING)
    return _MISSING


def _walk(obj: Any, parts: tuple[str, ...], i: int, out: list[Any]) -> None:
    while True:
        if obj is None or obj is _MISSING:
            return
        if isinstance(obj, (list, tuple)):
            for x in obj:
                _walk(x, parts, i, out)
            return
        if i == len(parts):
            out.append(obj)
            return
        obj = _get(obj, parts[i])
        i += 1


def _resolve(obj: Any, parts: tuple[str, ...]) -> list[Any]:
    """The values at a dotted path: lists on the way (and at the end) are flattened, nulls dropped."""
    out: list[Any] = []
    _walk(obj, parts, 0, out)
    return out


# --- compiling detections ------------------------------------------------------------------------

Matcher = Callable[[Any], bool]
_ValueTest = Callable[[list[Any]], bool]
_Pred = Callable[[Any], bool]


def _text(x: Any) -> str | None:
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


def _num(x: Any) -> int | float | None:
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
        raise _Unsupported("placeholders (%name%) are not supported")
    fold: Callable[[str], str] = (lambda t: t) if cased else str.lower
    if not s.contains_special():
        target = fold("".join(cast(list[str], parts)))
        return lambda x: (t := _text(x)) is not None and fold(t) == target
    multi = SpecialChars.WILDCARD_MULTI
    if len(parts) == 3 and parts[0] is multi and parts[2] is multi and isinstance(parts[1], str):
        needle = fold(parts[1])
        return lambda x: (t := _text(x)) is not None and needle in fold(t)
    if len(parts) == 2 and isinstance(parts[0], str) and parts[1] is multi:
        prefix = fold(parts[0])
        return lambda x: (t := _text(x)) is not None and fold(t).startswith(prefix)
    if len(parts) == 2 and parts[0] is multi and isinstance(parts[1], str):
        suffix = fold(parts[1])
        return lambda x: (t := _text(x)) is not None and fold(t).endswith(suffix)
    pattern = "".join(re.escape(p) if isinstance(p, str) else ".*" if p is multi else "." for p in parts)
    rx = re.compile(pattern, re.DOTALL | (0 if cased else re.IGNORECASE))
    return lambda x: (t := _text(x)) is not None and rx.fullmatch(t) is not None


_COMPARE: dict[CompareOperators, Callable[[Any, Any], bool]] = {
    CompareOperators.LT: operator.lt,
    CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt,
    CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}


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
        raise _Unsupported("timestamp part modifiers are not supported")
    if isinstance(v, SigmaNumber):
        n = v.number
        return lambda x: (y := _num(x)) is not None and y == n
    if isinstance(v, SigmaRegularExpression):
        flags = 0
        for flag in v.flags:
            flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
        engine = (v.policy or default_policy).regex_engine
        try:
            rx = engine.compile(str(v.regexp), flags)
        except engine.error as e:  # pySigma compiled it already; kept for safety
            raise _Unsupported(f"invalid regular expression: {e}") from None
        return lambda x: (t := _text(x)) is not None and rx.search(t) is not None
    if isinstance(v, SigmaCIDRExpression):
        net = v.network
        return lambda x: (
            isinstance(x, str)
            and (n := _network(x)) is not None
            and n.version == net.version
            and n.subnet_of(net)  # type: ignore[arg-type]
        )
    if isinstance(v, SigmaCompareExpression):
        cmp, bound = _COMPARE[v.op], v.number.number
        return lambda x: (y := _num(x)) is not None and cmp(y, bound)
    raise _Unsupported(f"values of type {type(v).__name__} are not supported")


def _value_test(v: SigmaType) -> _ValueTest:
    """A test of all the values found at a field path against one rule value."""
    if isinstance(v, SigmaNull):
        return lambda found: not found
    if isinstance(v, SigmaExists):
        want = bool(v)
        return lambda found: bool(found) == want
    pred = _value_pred(v)
    return lambda found: any(pred(x) for x in found)


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


def _compile_item(item: SigmaDetectionItem) -> Matcher:
    if item.field is None:
        raise _Unsupported(_KEYWORD)
    if item.negated:
        raise _Unsupported("negated detection items are not supported")
    parts = tuple(item.field.split("."))
    tests = [_value_test(v) for v in item.value] or [_value_test(SigmaNull())]
    if len(tests) == 1:
        test = tests[0]
        return lambda e: test(_resolve(e, parts))
    tt = tuple(tests)
    link = all if item.value_linking is ConditionAND else any  # `|all`: every value must match

    def match(e: Any) -> bool:
        found = _resolve(e, parts)
        return link(t(found) for t in tt)

    return match


def _compile_detection(d: SigmaDetection) -> Matcher:
    fns = [
        _compile_detection(x) if isinstance(x, SigmaDetection) else _compile_item(x)
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
    raise _Unsupported(f"condition element {type(node).__name__} is not supported")


class _ConditionProblem(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _compile_rule(rule: SigmaRule) -> Matcher:
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
            raise _ConditionProblem(i, _reason(e)) from None
        except _Unsupported as e:
            raise _ConditionProblem(i, str(e)) from None
    return _any(matchers)


# --- which event types a rule can match (a pre-filter, never a change of meaning) ----------------

Types = frozenset[str] | None  # None: any type


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


def _rule_types(rule: SigmaRule) -> Types:
    """The event types a detection rule can match, when its condition requires a
    ``type`` value (ANDed at the top); None when it could match any type."""
    try:
        trees = [c.parse(postprocess=False) for c in rule.detection.parsed_condition]
        return _or_types([_condition_types(t, rule.detection) for t in trees])
    except Exception:
        return None


# --- YAML documents with line numbers -------------------------------------------------------------

Keys = tuple[Any, ...]


def _reason(e: BaseException) -> str:
    if isinstance(e, SigmaError) and e.args:
        text = str(e.args[0])
        if isinstance(e, SigmaRegularExpressionError):  # RE2's message arrives as repr(bytes)
            text = re.sub(r"""\bb'(.*)'$""", r"\1", text)
        return text
    if isinstance(e, SigmaError):
        return str(e) or type(e).__name__
    return f"pySigma cannot parse this rule ({type(e).__name__}: {e})"


@dataclass
class _Doc:
    path: Path
    order: int  # of the file among all files
    node: yaml.Node
    data: Any
    problems: list[tuple[Keys, str]] = field(default_factory=list)
    rule: SigmaRule | SigmaCorrelationRule | None = None
    matcher: Matcher | None = None
    types: Types = None

    def err(self, keys: Keys, reason: str) -> None:
        self.problems.append((keys, reason))

    def line(self, keys: Keys) -> int:
        """1-based line of the key (or list item) at ``keys``; the nearest enclosing one if absent."""
        node = self.node
        line = node.start_mark.line
        for step in keys:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(step):
                        line, node = k.start_mark.line, v
                        break
                else:
                    break
            elif (
                isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value)
            ):
                node = node.value[step]
                line = node.start_mark.line
            else:
                break
        return line + 1

    def where(self, keys: Keys = ()) -> str:
        return f"{self.path}:{self.line(keys)}"

    @property
    def is_correlation(self) -> bool:
        return isinstance(self.data, dict) and "correlation" in self.data


def _duplicate_keys(node: yaml.Node) -> Iterator[tuple[yaml.Node, str]]:
    seen: set[int] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: set[str] = set()
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in keys and k.value != "<<":
                        yield k, k.value
                    keys.add(k.value)
                todo.append(v)
        elif isinstance(n, yaml.SequenceNode):
            todo.extend(n.value)


def _read_docs(path: Path, order: int, errors: list[tuple[int, int, str]]) -> list[_Doc]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        errors.append((order, 1, f"{path}:1: cannot read: {getattr(e, 'strerror', None) or e}"))
        return []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        errors.append((order, line, f"{path}:{line}: invalid YAML: {e.problem or e.context}"))
        return []
    except yaml.YAMLError as e:
        errors.append((order, 1, f"{path}:1: invalid YAML: {e}"))
        return []
    docs = []
    for node in nodes:
        if node is None:
            continue
        dups = list(_duplicate_keys(node))
        for k, name in dups:
            line = k.start_mark.line + 1
            errors.append((order, line, f"{path}:{line}: duplicate key '{name}'"))
        if dups:
            continue
        try:
            data = yaml.SafeLoader("").construct_document(node)
        except yaml.YAMLError as e:
            line = node.start_mark.line + 1
            errors.append((order, line, f"{path}:{line}: invalid YAML: {e}"))
            continue
        if data is not None:
            docs.append(_Doc(path, order, node, data))
    return docs


def _rule_files(paths: Iterable[Path | str], errors: list[tuple[int, int, str]]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            errors.append((len(files), 1, f"{p}:1: no such file or directory"))
    return files


# --- checking rules (before and beside pySigma) ---------------------------------------------------


def _parse_period(v: Any) -> float | None:
    """Seconds from ``30s``/``5m``/``1h``/``1d``/``2w`` or a number; ``None`` if invalid."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) and v >= 0 else None
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", v)
        if m:
            return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]]
    return None


def _as_list(v: Any, keys: Keys) -> list[tuple[Keys, Any]]:
    if isinstance(v, list):
        return [((*keys, i), x) for i, x in enumerate(v)]
    return [(keys, v)]


def _check_options(doc: _Doc, opts: Any, fields: _Fields) -> None:
    keys: Keys = ("xfrmwatch",)
    if not isinstance(opts, dict):
        doc.err(keys, "xfrmwatch: must be a mapping (keys: suppress, suppress_by)")
        return
    for k, v in opts.items():
        if k == "suppress":
            if _parse_period(v) is None:
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
            for kk, name in _as_list(v, (*keys, k)):
                if (problem := fields.problem(name)) is not None:
                    doc.err(kk, problem)
        else:
            doc.err((*keys, k), f"unknown xfrmwatch option '{k}' (known: {', '.join(_OPTION_KEYS)})")


def _check_logsource(doc: _Doc, ls: Any) -> None:
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


def _check_item(doc: _Doc, key: Any, value: Any, keys: Keys, fields: _Fields) -> None:
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
        item = SigmaDetectionItem.from_mapping(key, value)
        _compile_item(item)
    except SigmaError as e:
        doc.err(keys, _reason(e))
    except _Unsupported as e:
        doc.err(keys, str(e))
    except Exception as e:  # pySigma on values it does not expect (e.g. a number for `re`)
        doc.err(keys, f"invalid value for '{key}': {type(e).__name__}: {e}")


def _check_selection(doc: _Doc, sel: Any, keys: Keys, fields: _Fields) -> None:
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
                doc.err((*keys, i), _KEYWORD)
    else:
        doc.err(keys, _KEYWORD)


def _check_condition(doc: _Doc, det: dict[Any, Any]) -> None:
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
            doc.err(
                ("detection", "condition", i) if isinstance(cond, list) else ("detection", "condition"),
                _reason(e),
            )


def _check_detection(doc: _Doc, det: Any, fields: _Fields) -> None:
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


def _check_correlation(doc: _Doc, corr: Any, fields: _Fields) -> None:
    keys: Keys = ("correlation",)
    if not isinstance(corr, dict):
        doc.err(keys, "correlation must be a mapping")
        return
    for k in corr:
        if k not in _CORRELATION_KEYS:
            doc.err(
                (*keys, k), f"unknown correlation key '{k}' (known: {', '.join(sorted(_CORRELATION_KEYS))})"
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
        or not all(isinstance(r, str) for r in _as_flat(rules))
    ):
        doc.err((*keys, "rules"), "rules must be a rule name or id, or a list of them")
    alias_names: set[str] = set()
    aliases = corr.get("aliases")
    if isinstance(aliases, dict):
        for alias, mapping in aliases.items():
            if not isinstance(alias, str) or not isinstance(mapping, dict) or not mapping:
                doc.err((*keys, "aliases", alias), "an alias maps rule names to field names")
                continue
            alias_names.add(alias)
            for ref, name in mapping.items():
                if (problem := fields.problem(name)) is not None:
                    doc.err((*keys, "aliases", alias, ref), problem)
    elif aliases is not None:
        doc.err((*keys, "aliases"), "aliases must be a mapping: alias -> {rule name: field}")
    group_by = corr.get("group-by")
    if group_by is not None:
        if not isinstance(group_by, (str, list)):
            doc.err((*keys, "group-by"), "group-by must be a field name or a list of field names")
        else:
            for kk, name in _as_list(group_by, (*keys, "group-by")):
                if name not in alias_names and (problem := fields.problem(name)) is not None:
                    doc.err(kk, problem)
    cond = corr.get("condition")
    ck: Keys = (*keys, "condition")
    if isinstance(cond, str):
        doc.err(ck, "extended (string) correlation conditions are not supported: list the rules instead")
    elif isinstance(cond, dict):
        if ctype == "temporal_ordered":
            doc.err(ck, "temporal_ordered takes no condition: every rule must match, in order")
        ops = [k for k in cond if k in _CONDITION_OPS]
        if not ops:
            doc.err(ck, f"condition needs one of {', '.join(sorted(_CONDITION_OPS))}")
        elif len(ops) > 1:
            doc.err(ck, "one comparison per condition (pySigma): chain two correlations for a range")
        for k, v in cond.items():
            if k in _CONDITION_OPS:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    doc.err((*ck, k), f"'{k}' needs a number, not {v!r}")
            elif k == "field":
                if ctype in SUPPORTED_CORRELATIONS and ctype != "value_count":
                    doc.err((*ck, k), "condition field is only used by value_count")
                elif v not in alias_names and (problem := fields.problem(v)) is not None:
                    doc.err((*ck, k), problem)
            else:
                doc.err((*ck, k), f"unknown condition key '{k}'")
        if ctype == "value_count" and "field" not in cond:
            doc.err(ck, "value_count needs the field whose distinct values it counts: {field: ..., gte: N}")
    elif cond is not None:
        doc.err(ck, "condition must be a mapping such as {gte: 10}")
    elif ctype in ("event_count", "value_count"):
        doc.err(ck, f"{ctype} needs a condition such as {{gte: 10}}")


def _as_flat(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _check_doc(doc: _Doc, fields: _Fields) -> bool:
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
        doc.err((), _reason(e))
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


_KEYS_BY_ERROR: dict[type[SigmaError], Keys] = {
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


def _error_keys(e: BaseException, doc: _Doc) -> Keys:
    """Where in the document a pySigma error belongs (pySigma gives the file, never the line)."""
    if isinstance(e, SigmaError) and type(e) in _KEYS_BY_ERROR:
        return _KEYS_BY_ERROR[type(e)]
    msg = _reason(e).lower()
    if not isinstance(e, SigmaCorrelationRuleError):
        for word, key in (("rule name", "name"), ("tag", "tags"), ("related", "related")):
            if word in msg:
                return (key,)
    if isinstance(e, SigmaCorrelationRuleError) or doc.is_correlation:
        for word, key in (
            ("group-by", "group-by"),
            ("generate", "generate"),
            ("timespan", "timespan"),
            ("alias", "aliases"),
            ("condition", "condition"),
            ("field reference", "condition"),
            ("rule reference", "rules"),
        ):
            if word in msg:
                return ("correlation", key)
        return ("correlation",)
    return ("detection",)


def _overlaps(a: Keys, b: Keys) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _parse_doc(doc: _Doc, fields: _Fields) -> None:
    """Check one document, parse it with pySigma, compile a detection rule's condition."""
    if not _check_doc(doc, fields):
        return
    mine = [k for k, _ in doc.problems]
    try:
        coll = SigmaCollection.from_dicts(
            [copy.deepcopy(doc.data)],
            collect_errors=True,
            source=SigmaRuleLocation(doc.path),
            collect_filters=True,
            resolve_references=False,
        )
        theirs: list[BaseException] = list(coll.errors)
        rule = coll.rules[0] if coll.rules else None
    except Exception as exc:  # pySigma raises some errors even when collecting them
        theirs, rule = [exc], None
    for err in theirs:
        keys = _error_keys(err, doc)
        if not any(_overlaps(keys, k) for k in mine):  # already reported, with a better line
            reason = _reason(err)
            if (keys, reason) not in doc.problems:
                doc.err(keys, reason)
    if doc.problems or rule is None:
        return
    doc.rule = rule
    if isinstance(rule, SigmaRule):
        try:
            doc.matcher = _compile_rule(rule)
            doc.types = _rule_types(rule)
        except _ConditionProblem as p:
            cond = doc.data["detection"]["condition"]
            doc.err(
                ("detection", "condition", p.index) if isinstance(cond, list) else ("detection", "condition"),
                p.reason,
            )


# --- linking documents: references, duplicates, cycles ---------------------------------------------


def _ref_key(ref: str) -> tuple[str, str]:
    try:
        return ("id", str(uuid.UUID(ref)))
    except ValueError:
        return ("name", ref)


def _refers_to(ref: Any, target: _Doc) -> bool:
    """Whether a rule reference (a name or an id) names ``target``."""
    if not isinstance(ref, str):
        return False
    kind, value = _ref_key(ref)
    if kind == "id":
        tid = target.data.get("id")
        return isinstance(tid, str) and _ref_key(tid) == (kind, value)
    return bool(target.data.get("name") == value)


def _label(doc: _Doc) -> str:
    return str(doc.data.get("name") or doc.data.get("id") or doc.where())


def _link(docs: list[_Doc]) -> None:
    """Across all files: duplicate ids and names, correlation references, aliases, cycles."""
    index: dict[tuple[str, str], _Doc] = {}
    for doc in docs:
        if not isinstance(doc.data, dict):
            continue
        for kind in ("id", "name"):
            value = doc.data.get(kind)
            if not isinstance(value, str):
                continue
            key = _ref_key(value) if kind == "id" else ("name", value)
            if key[0] != kind:
                continue  # an id that is no UUID: pySigma reported it
            first = index.setdefault(key, doc)
            if first is not doc:
                doc.err((kind,), f"duplicate rule {kind} '{value}' (first at {first.where((kind,))})")
    edges: dict[int, list[_Doc]] = {}
    for doc in docs:
        corr = doc.data.get("correlation") if doc.is_correlation else None
        if not isinstance(corr, dict):
            continue
        refs = corr.get("rules")
        targets: list[_Doc] = []
        missing = False
        for kk, ref in _as_list(refs, ("correlation", "rules")) if refs is not None else []:
            if not isinstance(ref, str):
                continue
            target = index.get(_ref_key(ref))
            if target is None:
                doc.err(kk, f"rule '{ref}' not found (no rule has this name or id)")
                missing = True
            else:
                targets.append(target)
        edges[id(doc)] = targets
        aliases = corr.get("aliases")
        if not isinstance(aliases, dict):
            continue
        for alias, mapping in aliases.items():
            if not isinstance(mapping, dict):
                continue
            for ref in mapping:
                if not any(_refers_to(ref, t) for t in targets) and not missing:
                    doc.err(
                        ("correlation", "aliases", alias, ref),
                        f"alias names rule '{ref}', which is not in rules",
                    )
            for t in targets:
                if not any(_refers_to(ref, t) for ref in mapping):
                    doc.err(
                        ("correlation", "aliases", alias),
                        f"alias '{alias}' has no field for rule '{_label(t)}'",
                    )
    state: dict[int, int] = {}  # 1: on the path, 2: done

    def cyclic(d: _Doc) -> bool:
        state[id(d)] = 1
        for t in edges.get(id(d), []):
            s = state.get(id(t), 0)
            if s == 1 or (s == 0 and cyclic(t)):
                return True
        state[id(d)] = 2
        return False

    for doc in docs:
        if state.get(id(doc), 0) == 0 and cyclic(doc):
            doc.err(("correlation", "rules"), "correlation rules reference each other in a cycle")
            break


# --- hits and state -------------------------------------------------------------------------------


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """A rule fired.  ``events``: the triggering event, or a correlation's window (the latest few)."""

    rule_id: str
    title: str
    level: str
    tags: list[str]
    kind: str  # "detection" or the correlation type
    group: dict[str, Any]
    events: list[Any]
    time: float  # the ``now`` it fired at
    suppressed: int = 0
    name: str | None = None
    source: str = ""  # rule file:line

    def to_alert(self, *, time: str, netns: str) -> ev.Alert:
        """This hit as the schema's ``alert`` event (group values as strings)."""
        return ev.Alert(
            time=time,
            mono=self.time,
            netns=netns,
            nlmsg_pid=0,
            nlmsg_seq=0,
            rule=ev.RuleRef(id=self.rule_id, title=self.title, level=self.level, tags=list(self.tags)),
            group={k: _group_str(v) for k, v in self.group.items()},
            suppressed=self.suppressed,
            events=cast(
                list[ev.TriggerEvent],
                [e for e in self.events if isinstance(e, ev.Event) and not isinstance(e, ev.Alert)],
            ),
        )


class RuleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded rule: what it is, whether it produces hits itself."""

    rule_id: str
    title: str
    level: str
    kind: str
    output: bool
    source: str


def _group_str(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(_group_str(x) for x in v)
    t = _text(v)
    return t if t is not None else msgspec.json.encode(v).decode()


def _hashable(v: Any) -> Hashable:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return msgspec.json.encode(v)


@dataclass(frozen=True)
class _Meta:
    index: int
    rule_id: str
    name: str | None
    title: str
    level: str
    tags: list[str]
    kind: str
    source: str
    output: bool
    suppress: float


@dataclass(frozen=True)
class _Detection:
    meta: _Meta
    match: Matcher
    suppress_by: tuple[tuple[str, tuple[str, ...]], ...]
    types: Types = None  # event types it can match (None: any)


@dataclass
class _Entry:
    t: float
    seq: int
    payload: Any  # an event, or the Hit of a referenced correlation
    values: tuple[Hashable, ...] = ()


@dataclass
class _Group:
    values: dict[str, Any]
    slots: list[deque[_Entry]]
    touched: float
    distinct: dict[Hashable, int] = field(default_factory=dict)


def _payload_values(payload: Any, name: str, parts: tuple[str, ...]) -> list[Any]:
    if isinstance(payload, Hit):
        if name in payload.group:
            return [v for v in _as_flat(payload.group[name]) if v is not None]
        return _payload_values(payload.events[-1], name, parts) if payload.events else []
    return _resolve(payload, parts)


def _flatten_events(payloads: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for p in payloads:
        if isinstance(p, Hit):
            out.extend(p.events)
        else:
            out.append(p)
    return out


@dataclass
class _Correlation:
    meta: _Meta
    ctype: str
    refs: tuple[int, ...]  # indices of the referenced rules
    group_by: tuple[str, ...]
    paths: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]  # per ref position: (name to look up, path)
    value_paths: tuple[tuple[str, tuple[str, ...]], ...] | None  # value_count: per ref position
    span: float
    test: Callable[[int], bool]
    groups: OrderedDict[Hashable, _Group] = field(default_factory=OrderedDict)

    def _group(self, pos: int, payload: Any) -> tuple[Hashable, dict[str, Any]] | None:
        key: list[Hashable] = []
        values: dict[str, Any] = {}
        for out_name, (name, parts) in zip(self.group_by, self.paths[pos], strict=True):
            found = _payload_values(payload, name, parts)
            if not found:
                return None
            v = found[0] if len(found) == 1 else found
            key.append(_hashable(v))
            values[out_name] = v
        return tuple(key), values

    def feed(self, pos: int, payload: Any, seq: int, now: float, rs: RuleSet) -> tuple[Hashable, Hit] | None:
        """Count one match of the rule at ``pos``; the group and hit if the correlation fires."""
        found = self._group(pos, payload)
        if found is None:
            return None
        entry = _Entry(now, seq, payload)
        if self.value_paths is not None:
            name, parts = self.value_paths[pos]
            vals = _payload_values(payload, name, parts)
            if not vals:
                return None
            entry.values = tuple({_hashable(v): None for v in vals})
        gkey, gvalues = found
        nslots = len(self.refs) if self.ctype in ("temporal", "temporal_ordered") else 1
        g = self.groups.get(gkey)
        if g is None:
            g = self.groups[gkey] = _Group(gvalues, [deque() for _ in range(nslots)], now)
            while len(self.groups) > rs.max_groups:
                self.groups.popitem(last=False)
        else:
            self.groups.move_to_end(gkey)
            g.touched = now
        slot = g.slots[pos if nslots > 1 else 0]
        if len(slot) >= rs.max_window_events:
            self._drop(g, slot)
        slot.append(entry)
        for v in entry.values:
            g.distinct[v] = g.distinct.get(v, 0) + 1
        for s in g.slots:
            while s and s[0].t < now - self.span:
                self._drop(g, s)
        chain = self._fires(g)
        if chain is None:
            return None
        del self.groups[gkey]
        m = self.meta
        hit = Hit(
            rule_id=m.rule_id, title=m.title, level=m.level, tags=list(m.tags), kind=m.kind, group=g.values,
            events=_flatten_events(e.payload for e in chain)[-rs.max_hit_events :], time=now,
            name=m.name, source=m.source,
        )  # fmt: skip
        return gkey, hit

    @staticmethod
    def _drop(g: _Group, slot: deque[_Entry]) -> None:
        old = slot.popleft()
        for v in old.values:
            n = g.distinct.get(v, 0) - 1
            if n > 0:
                g.distinct[v] = n
            else:
                g.distinct.pop(v, None)

    def _fires(self, g: _Group) -> list[_Entry] | None:
        """The entries behind a firing, or ``None``."""
        if self.ctype == "event_count":
            return list(g.slots[0]) if self.test(len(g.slots[0])) else None
        if self.ctype == "value_count":
            return list(g.slots[0]) if self.test(len(g.distinct)) else None
        if self.ctype == "temporal":
            if not self.test(sum(1 for s in g.slots if s)):
                return None
            return sorted((e for s in g.slots for e in s), key=lambda e: e.seq)
        chain: list[_Entry] = []  # temporal_ordered: one entry per rule, strictly later events
        last = -1
        for s in g.slots:
            nxt = next((e for e in s if e.seq > last), None)
            if nxt is None:
                return None
            chain.append(nxt)
            last = nxt.seq
        return chain

    def sweep(self, now: float) -> None:
        while self.groups:
            first = next(iter(self.groups.values()))
            if first.touched >= now - self.span:
                break
            self.groups.popitem(last=False)


_OPS: dict[SigmaCorrelationConditionOperator, Callable[[Any, Any], bool]] = {
    SigmaCorrelationConditionOperator.LT: operator.lt,
    SigmaCorrelationConditionOperator.LTE: operator.le,
    SigmaCorrelationConditionOperator.GT: operator.gt,
    SigmaCorrelationConditionOperator.GTE: operator.ge,
    SigmaCorrelationConditionOperator.EQ: operator.eq,
    SigmaCorrelationConditionOperator.NEQ: operator.ne,
}


class RuleSet:
    """Compiled rules and their live state; feed it every event with trio's clock."""

    def __init__(
        self,
        *,
        default_suppress: float = 60.0,
        max_groups: int = 10_000,
        max_hit_events: int = 20,
        max_window_events: int = 10_000,
    ) -> None:
        if min(max_groups, max_hit_events, max_window_events) < 1 or default_suppress < 0:
            raise ValueError("RuleSet limits must be positive (and default_suppress not negative)")
        self.default_suppress = default_suppress
        self.max_groups = max_groups
        self.max_hit_events = max_hit_events
        self.max_window_events = max_window_events
        self._detections: list[_Detection] = []
        self._by_type: dict[str | None, list[_Detection]] = {}
        self._correlations: list[_Correlation] = []
        self._info: list[RuleInfo] = []
        self._seq = 0
        # (rule index, group) -> [suppressed until, count held back]
        self._suppressed: OrderedDict[tuple[int, Hashable], list[float]] = OrderedDict()

    @property
    def rules(self) -> tuple[RuleInfo, ...]:
        return tuple(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def _add_info(self, m: _Meta) -> None:
        self._info.append(
            RuleInfo(
                rule_id=m.rule_id, title=m.title, level=m.level, kind=m.kind, output=m.output, source=m.source
            )
        )

    def _emit(self, m: _Meta, gkey: Hashable, hit: Hit, now: float, out: list[Hit]) -> None:
        if m.suppress <= 0:
            out.append(hit)
            return
        key = (m.index, gkey)
        state = self._suppressed.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return
        held = int(state[1]) if state is not None else 0
        self._suppressed[key] = [now + m.suppress, 0]
        self._suppressed.move_to_end(key)
        while len(self._suppressed) > self.max_groups:
            self._suppressed.popitem(last=False)
        out.append(msgspec.structs.replace(hit, suppressed=held) if held else hit)

    def _for_type(self, event: Any) -> list[_Detection]:
        """The detection rules that can match this event's type (rules that require
        another ``type`` are skipped: the same answer, without evaluating them)."""
        t = _get(event, "type")
        key = t.lower() if isinstance(t, str) else None
        found = self._by_type.get(key)
        if found is None:
            found = [d for d in self._detections if d.types is None or (key is not None and key in d.types)]
            self._by_type[key] = found
        return found

    def process(self, event: Any, now: float) -> list[Hit]:
        """Evaluate every rule on ``event`` at time ``now`` (seconds, monotonic); the hits to report."""
        self._seq += 1
        seq = self._seq
        out: list[Hit] = []
        occurred: dict[int, list[Any]] = {}
        for d in self._for_type(event):
            if not d.match(event):
                continue
            occurred[d.meta.index] = [event]
            if d.meta.output:
                group = {}
                for name, parts in d.suppress_by:
                    found = _resolve(event, parts)
                    group[name] = None if not found else found[0] if len(found) == 1 else found
                m = d.meta
                hit = Hit(
                    rule_id=m.rule_id, title=m.title, level=m.level, tags=list(m.tags), kind=m.kind, group=group,
                    events=[event], time=now, name=m.name, source=m.source,
                )  # fmt: skip
                self._emit(m, tuple(_hashable(v) for v in group.values()), hit, now, out)
        for c in self._correlations:
            for pos, ref in enumerate(c.refs):
                for payload in occurred.get(ref, ()):
                    fired = c.feed(pos, payload, seq, now, self)
                    if fired is None:
                        continue
                    gkey, hit = fired
                    occurred.setdefault(c.meta.index, []).append(hit)
                    if c.meta.output:
                        self._emit(c.meta, gkey, hit, now, out)
            c.sweep(now)
        while self._suppressed:
            first = next(iter(self._suppressed.values()))
            if first[0] > now or first[1]:
                break
            self._suppressed.popitem(last=False)
        return out


# --- loading ----------------------------------------------------------------------------------------


def _meta(doc: _Doc, index: int, output: bool, rs: RuleSet) -> _Meta:
    rule = doc.rule
    assert rule is not None
    opts = doc.data.get("xfrmwatch") or {}
    kind = str(rule.type) if isinstance(rule, SigmaCorrelationRule) else "detection"
    if "suppress" in opts:
        suppress = _parse_period(opts["suppress"]) or 0.0
    elif isinstance(rule, SigmaCorrelationRule) or "suppress_by" in opts:
        suppress = rs.default_suppress
    else:
        suppress = 0.0
    return _Meta(
        index=index,
        rule_id=str(rule.id) if rule.id is not None else rule.name or doc.where(),
        name=rule.name,
        title=rule.title,
        level=str(rule.level) if rule.level is not None else DEFAULT_LEVEL,
        tags=[str(t) for t in rule.tags],
        kind=kind,
        source=doc.where(),
        output=output,
        suppress=suppress,
    )


def _correlation(doc: _Doc, meta: _Meta, refs: list[int], ref_docs: list[_Doc]) -> _Correlation:
    rule = doc.rule
    assert isinstance(rule, SigmaCorrelationRule)
    corr = doc.data["correlation"]
    aliases: dict[str, dict[str, str]] = corr.get("aliases") or {}
    group_by = tuple(_as_flat(corr.get("group-by") or []))

    def lookup(name: str, target: _Doc) -> tuple[str, tuple[str, ...]]:
        for ref, fieldname in aliases.get(name, {}).items():
            if _refers_to(ref, target):
                name = fieldname
                break
        return name, tuple(name.split("."))

    paths = tuple(tuple(lookup(g, t) for g in group_by) for t in ref_docs)
    value_paths = None
    cond = rule.condition
    if rule.type.name.lower() == "value_count" and isinstance(cond, SigmaCorrelationCondition):
        value_paths = tuple(lookup(str(cond.fieldref), t) for t in ref_docs)
    if rule.type.name.lower() == "temporal_ordered" or not isinstance(cond, SigmaCorrelationCondition):
        n = len(refs)
        test: Callable[[int], bool] = lambda k: k >= n  # noqa: E731
    else:
        op, bound = _OPS[cond.op], cond.count
        test = lambda k: op(k, bound)  # noqa: E731
    return _Correlation(
        meta=meta,
        ctype=rule.type.name.lower(),
        refs=tuple(refs),
        group_by=group_by,
        paths=paths,
        value_paths=value_paths,
        span=float(rule.timespan.seconds),
        test=test,
    )


def load_rules(
    paths: Sequence[Path | str],
    valid_fields: AbstractSet[str] = SCHEMA_FIELDS,
    *,
    default_suppress: float = 60.0,
    max_groups: int = 10_000,
    max_hit_events: int = 20,
    max_window_events: int = 10_000,
) -> RuleSet:
    """Load every rule under ``paths``; raise :class:`RuleError` listing every problem found."""
    errors: list[tuple[int, int, str]] = []
    fields = _Fields(valid_fields)
    docs: list[_Doc] = []
    for order, path in enumerate(_rule_files(paths, errors)):
        docs.extend(_read_docs(path, order, errors))
    for doc in docs:
        _parse_doc(doc, fields)
    _link(docs)
    for doc in docs:
        for keys, reason in doc.problems:
            line = doc.line(keys)
            errors.append((doc.order, line, f"{doc.path}:{line}: {reason}"))
    if errors:
        errors.sort(key=lambda e: (e[0], e[1]))
        raise RuleError([text for _, _, text in errors])

    rules = [doc.rule for doc in docs if doc.rule is not None]
    try:
        merged = SigmaCollection(cast(Any, rules), resolve_references=True)
    except SigmaError as e:  # not expected: references were checked above
        raise RuleError([f"{docs[0].path}:1: {_reason(e)}"]) from None
    outputs = {id(r) for r in merged.get_output_rules()}
    by_rule = {id(doc.rule): doc for doc in docs}
    rs = RuleSet(
        default_suppress=default_suppress,
        max_groups=max_groups,
        max_hit_events=max_hit_events,
        max_window_events=max_window_events,
    )
    index: dict[int, int] = {}
    for rule in merged.rules:  # pySigma orders referenced rules first
        doc = by_rule[id(rule)]
        i = index[id(rule)] = len(index)
        meta = _meta(doc, i, id(rule) in outputs, rs)
        rs._add_info(meta)
        if isinstance(rule, SigmaRule):
            assert doc.matcher is not None
            opts = doc.data.get("xfrmwatch") or {}
            by = tuple((n, tuple(n.split("."))) for n in _as_flat(opts.get("suppress_by") or []))
            rs._detections.append(_Detection(meta, doc.matcher, by, doc.types))
        else:
            targets = [r.rule for r in rule.referenced_rules]
            refs = [index[id(t)] for t in targets]
            rs._correlations.append(_correlation(doc, meta, refs, [by_rule[id(t)] for t in targets]))
    return rs
