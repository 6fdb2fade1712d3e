"""Loading rule files into a :class:`~xfrmwatch.detect.sigma.ruleset.RuleSet`.

Every file is read (:mod:`.documents`), every document checked and parsed
(:mod:`.checks`), all of them linked (:mod:`.linking`); *every* problem is
reported as ``path:line: reason`` in one :class:`~xfrmwatch.errors.RuleError`.
Only then are the rules compiled, referenced rules first.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, cast

from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from ...errors import RuleError
from ...levels import DEFAULT_LEVEL
from .checks import parse_document
from .conditions import sigma_reason
from .correlations import Limits, compile_correlation
from .documents import FileProblem, RuleDocument, read_documents, rule_files
from .fields import SCHEMA_FIELDS, FieldNames, split
from .hits import RuleMeta
from .linking import link
from .ruleset import Detection, RuleSet
from .suppression import parse_period

__all__ = ["load_rules"]


def _meta(doc: RuleDocument, index: int, output: bool, default_suppress: float) -> RuleMeta:
    rule = doc.rule
    assert rule is not None
    opts = doc.options
    if "suppress" in opts:
        suppress = parse_period(opts["suppress"]) or 0.0
    elif isinstance(rule, SigmaCorrelationRule) or "suppress_by" in opts:
        suppress = default_suppress
    else:
        suppress = 0.0
    return RuleMeta(
        index=index,
        rule_id=str(rule.id) if rule.id is not None else rule.name or doc.where(),
        name=rule.name,
        title=rule.title,
        level=str(rule.level) if rule.level is not None else DEFAULT_LEVEL,
        tags=tuple(str(t) for t in rule.tags),
        kind=str(rule.type) if isinstance(rule, SigmaCorrelationRule) else "detection",
        source=doc.where(),
        output=output,
        suppress=suppress,
    )


def _check_all(paths: Sequence[Path | str], fields: FieldNames) -> list[RuleDocument]:
    """Read, check and link every document; raise :class:`RuleError` with every problem."""
    errors: list[FileProblem] = []
    docs: list[RuleDocument] = []
    for order, path in enumerate(rule_files(paths, errors)):
        docs.extend(read_documents(path, order, errors))
    for doc in docs:
        parse_document(doc, fields)
    link(docs)
    for doc in docs:
        for keys, reason in doc.problems:
            line = doc.line(keys)
            errors.append((doc.order, line, f"{doc.path}:{line}: {reason}"))
    if errors:
        errors.sort(key=lambda e: (e[0], e[1]))
        raise RuleError([text for _, _, text in errors])
    return docs


def load_rules(
    paths: Sequence[Path | str],
    valid_fields: AbstractSet[str] = SCHEMA_FIELDS,
    *,
    default_suppress: float = 60.0,
    max_groups: int = 10_000,
    max_hit_events: int = 20,
    max_window_events: int = 10_000,
) -> RuleSet:
    """Load every rule under ``paths``; raise :class:`RuleError` listing every problem found.

    ``valid_fields``: the field names rules may use (``prefix.*`` accepts every
    path below ``prefix``); ``default_suppress``: the suppression period of
    correlations (and of detection rules with only ``suppress_by``); the ``max_*``
    bound what each :class:`RuleState` keeps (see :class:`Limits`)."""
    limits = Limits(max_groups=max_groups, max_hit_events=max_hit_events, max_window_events=max_window_events)
    if default_suppress < 0:
        raise ValueError("default_suppress must not be negative")
    docs = _check_all(paths, FieldNames(valid_fields))
    rules = [doc.rule for doc in docs if doc.rule is not None]
    try:
        merged = SigmaCollection(cast(Any, rules), resolve_references=True)
    except SigmaError as e:  # not expected: references were checked above
        raise RuleError([f"{docs[0].path}:1: {sigma_reason(e)}"]) from None
    outputs = {id(r) for r in merged.get_output_rules()}
    by_rule = {id(doc.rule): doc for doc in docs}
    index: dict[int, int] = {}
    detections, correlations, metas = [], [], []
    for rule in merged.rules:  # pySigma orders referenced rules first
        doc = by_rule[id(rule)]
        i = index[id(rule)] = len(index)
        meta = _meta(doc, i, id(rule) in outputs, default_suppress)
        metas.append(meta)
        if isinstance(rule, SigmaRule):
            assert doc.matcher is not None
            by = doc.options.get("suppress_by") or []
            names = by if isinstance(by, list) else [by]
            detections.append(Detection(meta, doc.matcher, tuple((n, split(n)) for n in names), doc.types))
        else:
            targets = [r.rule for r in rule.referenced_rules]
            refs = [index[id(t)] for t in targets]
            correlations.append(compile_correlation(doc, meta, refs, [by_rule[id(t)] for t in targets]))
    return RuleSet(
        detections, correlations, [m.info() for m in metas], default_suppress=default_suppress, limits=limits
    )
