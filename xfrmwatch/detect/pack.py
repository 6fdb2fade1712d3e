"""The shipped rule pack (``rules/`` in the source tree, ``xfrmwatch.rules`` once installed),
and loading it or the user's rule files."""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

from .sigma import RuleSet, load_rules


def shipped_rules() -> Path:
    """The rule pack installed with the package."""
    return Path(str(importlib.resources.files("xfrmwatch.rules")))


def load(paths: Sequence[str | Path] | None, *, default_suppress: float = 60.0) -> RuleSet:
    """Load the given rule files/directories, or the shipped pack."""
    return load_rules(list(paths) if paths else [shipped_rules()], default_suppress=default_suppress)
