"""`xfrmwatch demo --live` on the host kernel, which has no ESP: one line saying so and what
to do instead, exit 7, and the namespaces it made are gone."""

from __future__ import annotations

from support import run_cli, sh


def test_live_demo_without_esp() -> None:
    """No ESP in this kernel: the failure is one line, and nothing is left behind."""
    p = run_cli("demo", "--live", "--rekey", "3", timeout=120)
    assert p.returncode == 7, p.stderr
    err = [line for line in p.stderr.splitlines() if line.startswith("xfrmwatch:")]
    assert len(err) == 1 and "cannot do ESP tunnels" in err[0] and "without --live" in err[0]
    assert "Traceback" not in p.stderr
    assert [n for n in sh("ip netns list").stdout.splitlines() if n.startswith("xw-demo-")] == []
