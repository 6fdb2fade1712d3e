"""Lines on stderr carry their syslog priority as ``<N>`` only when stderr is the journal's stream."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import structlog
from support import ROOT, XFRMWATCH

from xfrmwatch.journal_stream import PriorityPrefix


def stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def run_with_stderr(tmp_path: Path, journal_stream: str | None, *args: str) -> tuple[int, str]:
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err.open("wb") as f:
        if journal_stream == "self":
            journal_stream = stream_of(err)
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        p = subprocess.run(
            [*XFRMWATCH, *args], stderr=f, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, timeout=60
        )
    return p.returncode, err.read_text()


def test_user_error_line_is_err_priority_on_the_journal_stream(tmp_path: Path) -> None:
    """A bad config, stderr being the stream JOURNAL_STREAM names: one line, prefixed <3> (err)."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nnope = 1\n")
    rc, text = run_with_stderr(tmp_path, "self", "config", "check", "--config", str(bad))
    assert 2 == rc
    assert [f"<3>xfrmwatch: {bad}:2:"] == [
        line[: len(f"<3>xfrmwatch: {bad}:2:")] for line in text.splitlines()
    ]


@pytest.mark.parametrize("journal_stream", [None, "1:2", "garbage"])
def test_no_prefix_when_stderr_is_not_the_journal(tmp_path: Path, journal_stream: str | None) -> None:
    """No JOURNAL_STREAM, or one naming another file (stderr redirected): the plain line."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nnope = 1\n")
    rc, text = run_with_stderr(tmp_path, journal_stream, "config", "check", "--config", str(bad))
    assert 2 == rc
    assert text.startswith(f"xfrmwatch: {bad}:2:")


@pytest.mark.parametrize(
    "level,priority", [("critical", 2), ("error", 3), ("warning", 4), ("info", 6), ("debug", 7)]
)
def test_log_line_prefix_is_the_syslog_severity_of_its_level(
    monkeypatch: pytest.MonkeyPatch, level: str, priority: int
) -> None:
    """A structlog JSON line gets <severity> of its level (RFC 5424 numbering), the JSON unchanged."""
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    render = PriorityPrefix(structlog.processors.JSONRenderer())
    line = render(None, level, {"event": "x", "level": level})
    assert line.startswith(f"<{priority}>{{")
    assert {"event": "x", "level": level} == json.loads(line[len(f"<{priority}>") :])
    monkeypatch.delenv("JOURNAL_STREAM")
    assert '{"event": "x", "level": "%s"}' % level == PriorityPrefix(structlog.processors.JSONRenderer())(
        None, level, {"event": "x", "level": level}
    )
