"""Rules on the host kernel: alerts inline in `monitor`, and `audit` of a real namespace."""

from __future__ import annotations

import json

from support import Monitor, run_cli, sh, validate_event


def _alerts(m: Monitor, title: str) -> list[dict]:
    return [e for e in m.events if e["type"] == "alert" and e["rule"]["title"] == title]


def test_flush_raises_an_alert_a_policy_delete_does_not(netns: str) -> None:
    """The default pack flags a policy flush; deleting by hand a policy that serves no tunnel
    is no alert (a tunnel's SA deleted on its own is: tests/guest)."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        sh(f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir out")
        sh(f"ip -n {netns} xfrm policy delete src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        sh(f"ip -n {netns} xfrm policy flush")
        m.wait_for(lambda e: e["type"] == "alert" and e["rule"]["level"] == "high")
        m.drain(0.3)
    (flush,) = _alerts(m, "Security policy database flushed")
    assert (["flushpolicy"], "high") == ([e["type"] for e in flush["events"]], flush["rule"]["level"])
    assert [flush] == [e for e in m.events if e["type"] == "alert"]
    assert ["delpolicy"] == [e["type"] for e in m.events if e["type"] == "delpolicy"]


def test_no_rules_means_no_alerts(netns: str) -> None:
    """--no-rules: events only."""
    with Monitor("--netns", netns, "--no-rules") as m:
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        sh(f"ip -n {netns} xfrm policy flush")
        m.of_type("flushpolicy")
        m.drain(0.3)
    assert [] == [e for e in m.events if e["type"] == "alert"]


def test_default_policy_switch_to_accept_alerts_once(netns: str) -> None:
    """block -> accept raises the alert; setting block does not."""
    with Monitor("--netns", netns) as m:
        sh(f"ip -n {netns} xfrm policy setdefault fwd block")
        sh(f"ip -n {netns} xfrm policy setdefault fwd accept")
        m.of_type("default_policy", count=2)
        m.drain(0.3)
    (a,) = _alerts(m, "Default policy switched to accept")
    assert ["fwd"] == a["events"][0]["switched_to_accept"]


def test_audit_of_a_real_namespace(netns: str) -> None:
    """A template nobody will serve, a broad bypass, no key manager: findings and --fail-on."""
    sh(
        f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out "
        "tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 9 mode tunnel"
    )
    sh(f"ip -n {netns} xfrm policy add src 0.0.0.0/0 dst 10.9.0.0/16 dir in priority 1")
    p = run_cli("audit", "--netns", netns, "--format", "json")
    assert 0 == p.returncode, p.stderr
    findings = [json.loads(line) for line in p.stdout.splitlines()]
    for f in findings:
        validate_event(f)
    titles = {f["rule"]["title"]: f for f in findings}
    unserved = titles["Policy template without an SA and no key manager"]
    assert ("high", 9) == (unserved["rule"]["level"], unserved["events"][0]["policy"]["tmpl"][0]["reqid"])
    assert "0.0.0.0/0" == titles["Broad policy that bypasses IPsec"]["events"][0]["policy"]["sel"]["src"]
    assert "No key manager listening" in titles
    assert "SA without a matching policy" not in titles  # there are no SAs
    assert 9 == run_cli("audit", "--netns", netns, "--format", "json", "--fail-on", "high").returncode
    assert 0 == run_cli("audit", "--netns", netns, "--format", "json", "--fail-on", "critical").returncode
    table = run_cli("audit", "--netns", netns, "--format", "table")
    assert "Policy template without an SA" in table.stdout and "high" in table.stdout
