"""Tunnel truth with real daemons (issue 7): the tunnel model against strongSwan, Libreswan and
manual keying, every scenario of tests/guest/scenarios.py, both sides.

All scenarios run once, concurrently (each in its own pair of namespaces; ``XW_TUNNEL_JOBS``,
default 4), with ``xfrmwatch monitor --format json`` and the shipped rules on each side
(``--liveness-interval 1 --stall-after 4``: the scenarios last under a minute).  Each test
then checks one scenario's two streams:

* no alert at medium or above in normal operation (set-up, rekeys, reauthentication,
  collisions, key rotation, deliberate teardown), and none before the failure was caused;
* exactly one ``rekey_completed`` per real rekey per side: real rekeys are counted from the
  daemon's own log (scenarios.swan_facts / libre_facts), or the test's own actions for ``ip xfrm``;
* on a failure, a warning (``rekey_overdue`` or ``traffic_stalled``) before the tunnel ends
  where the kernel's lifetimes, the byte rate or the tunnel's history make it possible, and
  ``tunnel_down`` within 1 s of the end (of the kernel's first removal of the last
  generation, or of its last event for that CHILD_SA when the daemon removes it in steps).

The measured figures (rekeys real vs reported, warning lead times, tunnel_down latency) are
printed at the end of the run (conftest.py) and attached to the JUnit report.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from figures import report_figure
from libre import have_libreswan
from scenarios import SCENARIOS, Run, daemon_rekeys, parse_iso, run_scenario
from support import validate_event
from swan import have_strongswan

MONITOR_ARGS = ["--liveness-interval", "1", "--stall-after", "4"]
SIDES = ("left", "right")
MEDIUM = ("medium", "high", "critical")
SA_MSGS = ("newsa", "updsa")


@dataclass
class Outcome:
    run: Run | None
    error: str | None
    events: dict[str, list[dict[str, Any]]]


def _missing() -> str | None:
    return have_strongswan() or have_libreswan()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every scenario, run once, concurrently; its events per side, checked against the schema."""
    if (missing := _missing()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"needed in CI: {missing}")
        pytest.skip(missing)
    # XW_TUNNEL_OUT: keep the streams and markers there (run_guest.sh passes XW_* in)
    out = Path(os.environ["XW_TUNNEL_OUT"]) if os.environ.get("XW_TUNNEL_OUT") else tmp_path_factory.mktemp("tunnels")
    out.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> tuple[str, Outcome]:
        try:
            run = run_scenario(name, out, MONITOR_ARGS)
        except Exception:
            return name, Outcome(None, traceback.format_exc(), {})
        events = {side: run.events(side) for side in SIDES}
        (out / f"{name}.json").write_text(json.dumps(run.markers_doc(), indent=1) + "\n")
        for evs in events.values():
            for e in evs:
                validate_event(e)
        return name, Outcome(run, None, events)

    with ThreadPoolExecutor(max_workers=int(os.environ.get("XW_TUNNEL_JOBS", "4"))) as pool:
        yield dict(pool.map(one, SCENARIOS))


# -- reading the streams --------------------------------------------------------


def t(e: dict[str, Any]) -> float:
    return parse_iso(e["time"])


def of(evs: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] in types]


def alerts_at_least_medium(evs: list[dict[str, Any]], before: float | None = None) -> list[str]:
    return [
        f"{a['rule']['level']}: {a['rule']['title']} at {a['time']}"
        for a in of(evs, "alert")
        if a["rule"]["level"] in MEDIUM and (before is None or t(a) < before)
    ]


#: echo replies a reauthentication may lose without the data plane being broken (in flight
#: while the old SAs go and the new ones come)
LOST_IN_FLIGHT = 3


def replies_lost(run: Run) -> int:
    """Echo requests sent without a send error that got no reply (the scenario's traffic)."""
    tr = run.config.get("traffic") or {}
    return int(tr.get("sent", 0)) - int(tr.get("send_errors", 0)) - int(tr.get("replies", 0))


def get(o: Outcome, name: str) -> Run:
    if o.error is not None or o.run is None:
        pytest.fail(f"{name} did not run:\n{o.error}")
    return o.run


def kernel_end(evs: list[dict[str, Any]], reqid: int, after: float) -> tuple[float, float] | None:
    """When the kernel removed the tunnel's last generation after ``after``: (first, last) time
    of a hard EXPIRE or DELSA of one of its SAs, a DELPOLICY of its policies, or its out
    policy switched to a hold template (reqid 0).  The last generation: the newest inbound
    and outbound SAs of that reqid installed before the first of those removals."""
    current: dict[str, str] = {}  # dir -> spi
    removals: list[float] = []
    ours: set[str] = set()
    for e in evs:
        typ = e["type"]
        if typ in SA_MSGS and e["sa"]["reqid"] == reqid and e["sa"].get("aead") and not removals:
            # outbound SAs are the ones whose source this side's out policy names
            current[e["sa"]["dst"]] = e["sa"]["spi"]
            ours = set(current.values())
        if t(e) <= after:
            continue
        if (typ == "expire" and e["hard"] and e["sa"]["spi"] in ours) or (typ == "delsa" and e["sa"]["spi"] in ours) or (typ == "delpolicy" and any(x["reqid"] == reqid for x in e["policy"].get("tmpl") or [])) or (typ == "updpolicy" and e["policy"]["dir"] == "out" and all(
            x["reqid"] == 0 for x in e["policy"].get("tmpl") or [{"reqid": 1}]
        )):
            removals.append(t(e))
    return (min(removals), max(removals)) if removals else None


def new_sas_seen(evs: list[dict[str, Any]]) -> list[float]:
    """For each rekey_completed, when the kernel announced the first SA of its new generation."""
    first_seen: dict[str, float] = {}
    for e in of(evs, *SA_MSGS):
        first_seen.setdefault(e["sa"]["spi"], t(e))
    seen = ([first_seen[s] for s in e["new_spis"] if s in first_seen] for e in of(evs, "rekey_completed"))
    return [min(s) for s in seen if s]


def rekeys_reported(evs: list[dict[str, Any]], until: float) -> int:
    """rekey_completed events whose new generation's first SA the kernel announced before
    ``until`` (the same cut as the daemon's log: a report comes ``settle`` s after)."""
    return sum(1 for seen in new_sas_seen(evs) if seen < until)


def daemon_facts(run: Run) -> dict[str, Any]:
    facts: dict[str, Any] = run.expect.get("charon") or run.expect.get("pluto") or run.expect["manual"]
    return facts


def cut_of(run: Run, until_marker: str | None) -> float:
    """Rekeys are compared up to 3 s before the end (a report comes 2 s after the new SAs),
    or up to a marker (a teardown: what follows it is not a rekey)."""
    if until_marker is not None:
        return parse_iso(run.marker(until_marker)["time"])
    return parse_iso(run.marker("end")["time"]) - 3.0


def compare_rekeys(name: str, run: Run, o: Outcome, until_marker: str | None = None) -> dict[str, Any]:
    """One rekey_completed per real rekey per side, up to the cut; the figures."""
    cut = cut_of(run, until_marker)
    cut_iso = datetime.fromtimestamp(cut, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    figures: dict[str, Any] = {}
    for side in SIDES:
        real = daemon_rekeys(daemon_facts(run)[side], until=cut_iso)
        reported = rekeys_reported(o.events[side], cut)
        figures[side] = {"rekeys_real": real, "rekeys_reported": reported}
        assert real == reported, f"{name} {side}: {real} real rekeys, {reported} rekey_completed"
    return figures


def check_normal(name: str, o: Outcome, until_marker: str | None = None) -> dict[str, Any]:
    """Normal operation: tunnel_up on both sides, no medium+ alert, one rekey_completed per
    real rekey per side.  Returns the figures."""
    run = get(o, name)
    for side in SIDES:
        evs = o.events[side]
        assert of(evs, "tunnel_up"), f"{name} {side}: no tunnel_up"
        assert [] == alerts_at_least_medium(evs), f"{name} {side}"
    return compare_rekeys(name, run, o, until_marker)


def check_failure(
    name: str, o: Outcome, side: str, *, reqid: int, warning_possible: bool, why: str
) -> dict[str, Any]:
    """After the failure marker: a warning before the end (if ``warning_possible``), tunnel_down
    within 1 s of the end, no medium+ alert before the failure."""
    run = get(o, name)
    failure = next(m for m in run.markers if m["what"] in ("kill", "link_down"))
    t_fail = parse_iso(failure["time"])
    evs = o.events[side]
    assert [] == alerts_at_least_medium(evs, before=t_fail), f"{name} {side}: alert before the failure"
    end = kernel_end(evs, reqid, t_fail)
    assert end is not None, f"{name} {side}: the kernel never removed the tunnel"
    first, last = end
    downs = [e for e in of(evs, "tunnel_down") if t(e) > t_fail]
    assert downs, f"{name} {side}: no tunnel_down (kernel removal {first - t_fail:+.2f} s after the failure)"
    down = downs[0]
    lat_first, lat_last = t(down) - first, t(down) - last
    assert -0.05 <= lat_first and (lat_first <= 1.0 or abs(lat_last) <= 1.0), (
        f"{name} {side}: tunnel_down {lat_first:+.2f} s after the kernel's first removal, "
        f"{lat_last:+.2f} s after its last event"
    )
    warnings = [e for e in of(evs, "rekey_overdue", "traffic_stalled") if t_fail < t(e) < first]
    lead = first - t(warnings[0]) if warnings else None
    if warning_possible:
        assert warnings, f"{name} {side}: no rekey_overdue/traffic_stalled before the end ({why})"
    return {
        "warning": warnings[0]["type"] if warnings else None,
        "warning_basis": warnings[0].get("basis") if warnings else None,
        "lead_s": round(lead, 2) if lead is not None else None,
        "down_after_first_removal_s": round(lat_first, 3),
        "down_after_last_event_s": round(lat_last, 3),
        "reason": down["reason"],
        "rekey_failed": down["rekey_failed"],
        "teardown": down["teardown"],
        "warning_expected": warning_possible,
        "why": why,
    }


def check_teardown(name: str, o: Outcome, sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """A deliberate teardown: tunnel_down with teardown=true within 1 s of the kernel's removal."""
    run = get(o, name)
    mark = next(m for m in run.markers if m["what"] in ("terminate", "teardown"))
    t_mark = parse_iso(mark["time"])
    figures = {}
    for side in sides:
        evs = o.events[side]
        reqid = of(evs, "tunnel_up")[0]["reqid"]
        end = kernel_end(evs, reqid, t_mark)
        assert end is not None, f"{name} {side}: no removal in the kernel"
        downs = [e for e in of(evs, "tunnel_down") if t(e) > t_mark]
        assert downs, f"{name} {side}: no tunnel_down after the teardown"
        d = downs[0]
        assert d["teardown"] is True and d["rekey_failed"] is False, f"{name} {side}: {d}"
        lat_first, lat_last = t(d) - end[0], t(d) - end[1]
        assert -0.05 <= lat_first and (lat_first <= 1.0 or abs(lat_last) <= 1.0), (
            f"{name} {side}: tunnel_down {lat_first:+.2f} s after the first removal, {lat_last:+.2f} s after the last"
        )
        figures[side] = {"down_after_first_removal_s": round(lat_first, 3), "down_after_last_event_s": round(lat_last, 3)}
    return figures


# -- the scenarios ----------------------------------------------------------------

NORMAL = [
    "strongswan-rekey", "strongswan-bytes-rekey", "strongswan-collision", "strongswan-ipv6",
    "strongswan-transport", "strongswan-two-children", "libreswan-rekey",
]  # fmt: skip


# Cases the tunnel model once got wrong (streams in tests/fixtures/uml/scenarios/issues/):
# two rekeys in a row folded into one (strongswan-collision), a slow break-before-make
# reauthentication judged rekey_failed (strongswan-reauth), Libreswan's short first interval
# learned and warned on (libreswan-rekey, libreswan-terminate).  Fixed in tunnels.py.


@pytest.mark.parametrize("name", NORMAL)
def test_normal_operation(outcomes: dict[str, Outcome], name: str) -> None:
    """Set-up and rekeys (or reauthentications, or collisions): no medium+ alert, one
    rekey_completed per real rekey per side, the tunnel never reported down."""
    o = outcomes[name]
    figures = check_normal(name, o)
    for side in SIDES:
        assert [] == of(o.events[side], "tunnel_down"), f"{name} {side}: reported down"
    report_figure(name, figures)


TEARDOWNS = {
    # scenario: the marker of the deliberate teardown
    "strongswan-terminate": "terminate",  # swanctl --terminate --ike net: DELPOLICY x3, DELSA x2
    "libreswan-terminate": "terminate",  # whack --terminate: out policy -> hold, in/fwd and SAs deleted
    "manual-teardown": "teardown",  # ip xfrm policy delete x3, state delete x2
}


@pytest.mark.parametrize("name", sorted(TEARDOWNS))
def test_deliberate_teardown(outcomes: dict[str, Outcome], name: str) -> None:
    """Rekeys up to a deliberate teardown, then an informational tunnel_down (teardown=true)
    on both sides within 1 s; no medium+ alert."""
    figures = check_normal(name, outcomes[name], until_marker=TEARDOWNS[name])
    figures["teardown"] = check_teardown(name, outcomes[name])
    report_figure(name, figures)


@pytest.mark.parametrize("name", ["strongswan-reauth", "strongswan-reauth-mbb"])
def test_reauthentication(outcomes: dict[str, Outcome], name: str) -> None:
    """IKE reauthentication: each is reported either as one rekey_completed (the new CHILD_SA
    replaced the old one within the model's grace) or as an informational teardown followed
    by tunnel_up (break-before-make with a longer gap); no medium+ alert, no CHILD_SA rekey."""
    o = outcomes[name]
    run = get(o, name)
    figures: dict[str, Any] = {}
    lost = replies_lost(run)
    if lost > LOST_IN_FLIGHT:
        # The data plane itself broke during a reauthentication (seen once on a loaded host:
        # the responder's charon deleted one policy, then installed the new CHILD_SA's policies
        # as updates while deleting the old SAs, and 39 echo replies were lost over 8 s). That
        # is an outage, not normal operation: xfrmwatch must have said so, as traffic_stalled.
        stalled = {side: of(o.events[side], "traffic_stalled") for side in SIDES}
        assert any(stalled.values()), f"{name}: {lost} replies lost and no traffic_stalled reported"
        report_figure(name, {"data_plane_broke": {"replies_lost": lost, "traffic_stalled": {
            side: len(v) for side, v in stalled.items()}}})
        return
    cut = cut_of(run, None)
    for side in SIDES:
        evs = o.events[side]
        assert [] == alerts_at_least_medium(evs), f"{name} {side}"
        reauths = len([r for r in daemon_facts(run)[side]["reauth_log"] if parse_iso(r) < cut])
        completed = rekeys_reported(evs, cut)
        all_ups = of(evs, "tunnel_up")
        ups = [e for e in all_ups if t(e) < cut]
        downs = [e for e in of(evs, "tunnel_down") if t(e) < cut]
        assert all(d["teardown"] and not d["rekey_failed"] for d in downs), f"{name} {side}: {downs}"
        # every down before the cut came back up (that up may come just after the cut)
        back_up = [min((t(u) for u in all_ups if t(u) > t(d)), default=None) for d in downs]
        assert None not in back_up, f"{name} {side}: a tunnel_down never followed by tunnel_up"
        expected_ups = 1 + sum(1 for b in back_up if b is not None and b < cut)
        assert len(ups) == expected_ups, (
            f"{name} {side}: {len(ups)} tunnel_up before the cut, {len(downs)} tunnel_down ({expected_ups} expected)"
        )
        # each reauthentication begun before the cut has exactly one outcome between its start
        # and the next one's: a rekey_completed (placed where its new SAs appeared) or a
        # teardown; that outcome may fall after the cut (seen in CI under load: a
        # make-before-break exchange begun 0.7 s before the cut installed its SAs 1.3 s after it)
        starts = sorted(parse_iso(r) for r in daemon_facts(run)[side]["reauth_log"])
        results = sorted([*new_sas_seen(evs), *(t(d) for d in of(evs, "tunnel_down"))])
        for i, start in enumerate(s for s in starts if s < cut):
            until = starts[i + 1] if i + 1 < len(starts) else float("inf")
            found = [r for r in results if start <= r < until]
            assert len(found) == 1, (
                f"{name} {side}: reauthentication {i + 1} (of {reauths} before the cut) has "
                f"{len(found)} outcomes (rekey_completed or tunnel_down), not 1"
            )
        figures[side] = {"reauths": reauths, "as_rekey_completed": completed, "as_down_up": len(downs)}
    report_figure(name, figures)


def test_manual_rotation(outcomes: dict[str, Outcome]) -> None:
    """ip xfrm key rotations: the same-reqid one is one rekey_completed per side; the one to a
    new reqid ends reqid 1 as a teardown replaced by reqid 2; no medium+ alert."""
    name = "manual-rotation"
    o = outcomes[name]
    figures = check_normal(name, o)
    for side in SIDES:
        evs = o.events[side]
        assert {1, 2} == {e["reqid"] for e in of(evs, "tunnel_up")}, f"{name} {side}"
        downs = of(evs, "tunnel_down")
        assert 1 == len(downs) and 1 == downs[0]["reqid"], f"{name} {side}: {downs}"
        assert downs[0]["teardown"] is True and downs[0]["replaced_by"], f"{name} {side}: {downs[0]}"
    report_figure(name, figures)


FAILURES: dict[str, list[tuple[str, int, bool, str]]] = {
    # scenario: [(side, reqid, warning possible?, why)]
    "strongswan-dead-peer": [
        ("left", 1, True, "time lifetimes: overdue before the hard limit; inbound traffic stops"),
        ("right", 1, True, "time lifetimes (charon dead, the kernel's limits remain)"),
    ],
    "cutlink": [
        ("left", 1, True, "time lifetimes; inbound silent while sending"),
        ("right", 1, True, "time lifetimes"),
    ],
    "strongswan-bytes-dead-peer": [
        ("left", 1, True, "byte limits: overdue projected from the rate before the hard byte limit"),
    ],
    "strongswan-giveup-before-hard": [
        ("left", 1, False, "charon gives up 16 s after the soft limit, 37 s before the hard one; "
                           "traffic still flows through the dead daemon's kernel SAs"),
    ],
    "libreswan-dead-peer": [
        ("left", 16389, True, "no kernel lifetimes: history (one whole rekey interval seen)"),
    ],
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failure(outcomes: dict[str, Outcome], name: str) -> None:
    """A peer or path dies: one rekey_completed per real rekey, a warning before the end where
    the kernel makes it possible, tunnel_down within 1 s of the end."""
    o = outcomes[name]
    run = get(o, name)
    figures: dict[str, Any] = {"rekeys": compare_rekeys(name, run, o)}
    for side, reqid, possible, why in FAILURES[name]:
        figures[side] = check_failure(name, o, side, reqid=reqid, warning_possible=possible, why=why)
    report_figure(name, figures)


def test_libreswan_dead_side(outcomes: dict[str, Outcome]) -> None:
    """The side whose pluto died: the kernel never removes anything (its SAs have no limit
    and nobody deletes them), so no tunnel_down and no alert at medium or above; whether the
    tunnel's history still gave rekey_overdue (no key manager listens any more) is reported."""
    name = "libreswan-dead-peer"
    o = outcomes[name]
    run = get(o, name)
    t_kill = parse_iso(run.marker("kill")["time"])
    evs = o.events["right"]
    assert [] == [e for e in of(evs, "tunnel_down") if t(e) > t_kill], f"{name} right"
    assert [] == alerts_at_least_medium(evs, before=t_kill), f"{name} right"
    overdue = [e for e in of(evs, "rekey_overdue") if t(e) > t_kill]
    report_figure(
        name + " (dead side)",
        {"rekey_overdue_after_kill_s": round(t(overdue[0]) - t_kill, 2) if overdue else None},
    )


def test_every_scenario_is_tested() -> None:
    tested = set(NORMAL) | set(FAILURES) | set(TEARDOWNS) | {
        "manual-rotation", "strongswan-reauth", "strongswan-reauth-mbb",
    }  # fmt: skip
    assert set(SCENARIOS) == tested


def test_scenario_outputs_have_no_keys(outcomes: dict[str, Outcome]) -> None:
    """Every stream (and the monitors' stderr) is free of the keys the kernel held."""
    from support import assert_no_keys

    for name, o in outcomes.items():
        run = get(o, name)
        assert run.keys, f"{name}: no key sampled"
        for side in SIDES:
            m = run.monitors[side]
            assert_no_keys([Path(m.out).read_text(), Path(m.err).read_text()], sorted(run.keys))
