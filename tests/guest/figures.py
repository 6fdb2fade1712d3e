"""Measured figures of the UML tier's tunnel tests, printed at the end of the run.

A test calls ``report_figure(name, {...})``; tests/guest/conftest.py prints every figure in
the terminal summary (pytest shows no output of passing tests) and the test's JUnit
properties carry them too.
"""

from __future__ import annotations

import json
from typing import Any

FIGURES: list[tuple[str, dict[str, Any]]] = []


def report_figure(name: str, figures: dict[str, Any]) -> None:
    FIGURES.append((name, figures))
    print(f"{name}: {json.dumps(figures)}")
