"""Linking documents across all rule files: duplicate ids and names, correlation
references (by ``name`` or ``id``), aliases, and cycles of correlations."""

from __future__ import annotations

import uuid
from typing import Any

from .checks import as_list
from .documents import RuleDocument

__all__ = ["label", "link", "refers_to"]


def _ref_key(ref: str) -> tuple[str, str]:
    try:
        return ("id", str(uuid.UUID(ref)))
    except ValueError:
        return ("name", ref)


def refers_to(ref: Any, target: RuleDocument) -> bool:
    """Whether a rule reference (a name or an id) names ``target``."""
    if not isinstance(ref, str):
        return False
    kind, value = _ref_key(ref)
    if kind == "id":
        tid = target.data.get("id")
        return isinstance(tid, str) and _ref_key(tid) == (kind, value)
    return bool(target.data.get("name") == value)


def label(doc: RuleDocument) -> str:
    """How a rule is named in a message: its name, else its id, else where it is."""
    return str(doc.data.get("name") or doc.data.get("id") or doc.where())


def _index(docs: list[RuleDocument]) -> dict[tuple[str, str], RuleDocument]:
    """Documents by id and by name; duplicates are problems of the later document."""
    index: dict[tuple[str, str], RuleDocument] = {}
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
    return index


def _check_aliases(doc: RuleDocument, aliases: Any, targets: list[RuleDocument], missing: bool) -> None:
    if not isinstance(aliases, dict):
        return
    for alias, mapping in aliases.items():
        if not isinstance(mapping, dict):
            continue
        for ref in mapping:
            if not any(refers_to(ref, t) for t in targets) and not missing:
                doc.err(("correlation", "aliases", alias, ref), f"alias names rule '{ref}', which is not in rules")
        for t in targets:
            if not any(refers_to(ref, t) for ref in mapping):
                doc.err(("correlation", "aliases", alias), f"alias '{alias}' has no field for rule '{label(t)}'")


def _report_cycle(docs: list[RuleDocument], edges: dict[int, list[RuleDocument]]) -> None:
    state: dict[int, int] = {}  # 1: on the path, 2: done

    def cyclic(d: RuleDocument) -> bool:
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


def link(docs: list[RuleDocument]) -> None:
    """Across all files: duplicate ids and names, correlation references, aliases, cycles."""
    index = _index(docs)
    edges: dict[int, list[RuleDocument]] = {}
    for doc in docs:
        corr = doc.data.get("correlation") if doc.is_correlation else None
        if not isinstance(corr, dict):
            continue
        refs = corr.get("rules")
        targets: list[RuleDocument] = []
        missing = False
        for kk, ref in as_list(refs, ("correlation", "rules")) if refs is not None else []:
            if not isinstance(ref, str):
                continue
            target = index.get(_ref_key(ref))
            if target is None:
                doc.err(kk, f"rule '{ref}' not found (no rule has this name or id)")
                missing = True
            else:
                targets.append(target)
        edges[id(doc)] = targets
        _check_aliases(doc, corr.get("aliases"), targets, missing)
    _report_cycle(docs, edges)
