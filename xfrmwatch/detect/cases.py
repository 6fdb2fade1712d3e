"""`xfrmwatch rules test`: rules over recorded event files, compared with the expected hits."""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .. import events as ev
from ..errors import UsageError
from .pack import load


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
    """Run every ``*.jsonl`` case under ``cases`` through a fresh rule state and compare
    the alerts per rule file with ``expected.toml`` (unnamed rules: none expected)."""
    exp_file = cases / "expected.toml"
    try:
        expected = tomllib.loads(exp_file.read_text()) if exp_file.exists() else {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{exp_file}: {exc}") from None
    files = sorted(cases.glob("*.jsonl"))
    if not files:
        raise UsageError(f"{cases}: no *.jsonl test cases")
    ruleset = load(rule_paths, default_suppress=0.0)
    results = []
    for f in files:
        state = ruleset.new_state()
        got: Counter[str] = Counter()
        for e in read_events(f):
            for h in state.process(e, e.mono):
                got[_rule_name(h.source)] += 1
        results.append(CaseResult(f.stem, {k: int(v) for k, v in expected.get(f.stem, {}).items()}, dict(got)))
    return results
