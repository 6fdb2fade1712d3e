"""The recorded tunnel scenarios (tests/fixtures/uml/scenarios/, README "Tunnel scenarios")
are complete and well formed: both sides' JSON lines, markers with the test's actions, the
daemons' rekey counts, and kernel events that still match the event schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import ROOT, validate_event

SCENARIOS = ROOT / "tests" / "fixtures" / "uml" / "scenarios"
DOCS = sorted(SCENARIOS.glob("*.json"))
# the kernel's messages; the recordings also hold the events derived by the xfrmwatch of the
# day (rekey_started, ...), whose shape has changed since
KERNEL_TYPES = {
    "newsa", "updsa", "delsa", "expire", "newpolicy", "updpolicy", "delpolicy", "polexpire",
    "flushsa", "flushpolicy", "acquire", "newae", "report", "migrate", "mapping", "default_policy",
}  # fmt: skip


def test_every_scenario_is_recorded() -> None:
    """One markers file per scenario of tests/guest/scenarios.py, both sides next to it."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "guest"))
    from scenarios import SCENARIOS as NAMES

    assert sorted(NAMES) == sorted(p.stem for p in DOCS)
    for p in DOCS:
        for side in ("left", "right"):
            assert (SCENARIOS / f"{p.stem}-{side}.jsonl").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=[p.stem for p in DOCS])
def test_recording_is_well_formed(doc: Path) -> None:
    """Markers from monitors_ready to end in time order; kernel events valid and inside that window."""
    d = json.loads(doc.read_text())
    whats = [m["what"] for m in d["markers"]]
    assert "monitors_ready" == whats[0] and "end" == whats[-1]
    times = [m["time"] for m in d["markers"]]
    assert times == sorted(times)
    for side in ("left", "right"):
        lines = (SCENARIOS / f"{doc.stem}-{side}.jsonl").read_text().splitlines()
        events = [json.loads(ln) for ln in lines]
        kernel = [e for e in events if e["type"] in KERNEL_TYPES]
        assert kernel, f"{doc.stem}-{side}: no kernel event"
        for e in kernel:
            validate_event(e)
            assert d["namespaces"][side] == e["netns"]
        assert times[0] <= kernel[0]["time"]
    assert d["keys_checked"] > 0
