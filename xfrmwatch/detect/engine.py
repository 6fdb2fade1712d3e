"""Rules in the pipeline: the shipped pack, the hook the detection stage calls,
and `xfrmwatch rules test` (rules over recorded event files vs expected hits)."""

from __future__ import annotations

import importlib.resources
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .. import events as ev
from ..decode import utc_precise
from ..errors import UsageError
from .sigma import RuleSet, load_rules

LEVELS = ("informational", "low", "medium", "high", "critical")


def shipped_rules() -> Path:
    """The rule pack installed with the package (rules/ in the source tree)."""
    return Path(str(importlib.resources.files("xfrmwatch.rules")))


def load(paths: Sequence[str | Path] | None, **kw: float) -> RuleSet:
    """Load the given rule files/directories, or the shipped pack."""
    return load_rules(list(paths) if paths else [shipped_rules()], **kw)  # type: ignore[arg-type]


def level_at_least(level: str, minimum: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(minimum) if level in LEVELS else False


class RuleHook:
    """The detection stage's rules callback: events in, alert events out."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def __call__(self, e: ev.Event, now: float) -> list[ev.Event]:
        hits = self.rules.process(e, now)
        if not hits:
            return []
        wall = utc_precise(time.time())
        return [h.to_alert(time=wall, netns=e.netns) for h in hits]


# --- rules test ----------------------------------------------------------------------------


@dataclass
class CaseResult:
    name: str
    expected: dict[str, int]
    got: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.expected == self.got


_decoder = msgspec.json.Decoder(ev.AnyEvent)


def read_events(path: Path) -> list[ev.Event]:
    """A JSON-lines file of events; each line must match the event schema."""
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(_decoder.decode(line))
        except msgspec.ValidationError as exc:
            raise UsageError(f"{path}:{n}: not an xfrmwatch event: {exc}") from None
        except msgspec.DecodeError as exc:
            raise UsageError(f"{path}:{n}: not JSON: {exc}") from None
    return out


def _rule_name(source: str) -> str:
    """The rule's file name without extension, from a hit's ``path:line``."""
    return Path(source.rsplit(":", 1)[0]).stem


def run_cases(rule_paths: Sequence[str | Path] | None, cases: Path) -> list[CaseResult]:
    """Run every ``*.jsonl`` case under ``cases`` through a fresh rule set and compare
    the alerts per rule file with ``expected.toml`` (unnamed rules: none expected)."""
    exp_file = cases / "expected.toml"
    try:
        expected = tomllib.loads(exp_file.read_text()) if exp_file.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{exp_file}: {exc}") from None
    results = []
    files = sorted(cases.glob("*.jsonl"))
    if not files:
        raise UsageError(f"{cases}: no *.jsonl test cases")
    for f in files:
        rules = load(rule_paths, default_suppress=0.0)
        got: Counter[str] = Counter()
        for e in read_events(f):
            for h in rules.process(e, e.mono):
                got[_rule_name(h.source)] += 1
        results.append(CaseResult(f.stem, {k: int(v) for k, v in expected.get(f.stem, {}).items()}, dict(got)))
    return results
