"""Rule files as YAML documents that remember their lines.

pySigma gives no line numbers, so every rule is read here first: each YAML
document keeps its node tree, and :meth:`RuleDocument.line` finds the line of
any key path (``("detection", "sel", "sa.spi")``) to report a problem as
``path:line: reason``.  The loader records problems, and what it compiled, on
the document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from .conditions import Matcher
from .prefilter import Types

__all__ = ["FileProblem", "Keys", "RuleDocument", "read_documents", "rule_files"]

#: a key path inside a document (mapping keys and list indices)
Keys = tuple[Any, ...]
#: a problem outside any document: (file order, line, "path:line: reason")
FileProblem = tuple[int, int, str]


@dataclass
class RuleDocument:
    """One YAML document of a rule file, its problems, and what was compiled from it."""

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

    @property
    def options(self) -> dict[str, Any]:
        """The rule's ``xfrmwatch:`` options (empty when it has none)."""
        opts = self.data.get("xfrmwatch") if isinstance(self.data, dict) else None
        return opts if isinstance(opts, dict) else {}


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


def read_documents(path: Path, order: int, errors: list[FileProblem]) -> list[RuleDocument]:
    """Every non-empty YAML document of one file; unreadable files, syntax errors
    and duplicate keys go to ``errors`` with their lines."""
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
            docs.append(RuleDocument(path, order, node, data))
    return docs


def rule_files(paths: Iterable[Path | str], errors: list[FileProblem]) -> list[Path]:
    """The files to read: given files, and every ``*.yml``/``*.yaml`` under given directories."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            errors.append((len(files), 1, f"{p}:1: no such file or directory"))
    return files
