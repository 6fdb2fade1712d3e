"""subject(): what an event is about, for every consumer; and the filters that ask it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import ROOT

from xfrmwatch import events as ev
from xfrmwatch.cli import build_filter, build_parser
from xfrmwatch.detect.alerting import Alerter
from xfrmwatch.detect.pack import load
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.subject import subject

COMMON: dict[str, Any] = {"time": "2026-01-01T00:00:00Z", "mono": 0.0, "netns": "ns", "nlmsg_pid": 0, "nlmsg_seq": 0}


def tunnel(reqid: int, spi_in: str, spi_out: str) -> dict[str, Any]:
    return {
        **COMMON, "tunnel_id": f"esp/{reqid}/192.0.2.1/192.0.2.2", "reqid": reqid, "proto": "esp",
        "src": "192.0.2.1", "dst": "192.0.2.2", "spi_in": spi_in, "spi_out": spi_out,
    }  # fmt: skip


def derived(reqid: int) -> list[ev.Event]:
    """The derived events of one tunnel, and the alert its failure raises (the shipped pack)."""
    base = tunnel(reqid, f"0x{reqid:04x}0001", f"0x{reqid:04x}0002")
    down = ev.TunnelDown(
        **base, reason="hard_expire", teardown=False, rekey_failed=True, spis=[f"0x{reqid:04x}0001"]
    )
    overdue = ev.RekeyOverdue(**base, basis="time", spi=f"0x{reqid:04x}0001", seconds_to_hard=3.0)
    alerts = Alerter(load(None, default_suppress=0.0))(down, 1.0)
    assert [a.rule.title for a in alerts if isinstance(a, ev.Alert)] == ["Tunnel down without a replacement"]
    return [overdue, down, *alerts]


def monitor_filter(*args: str) -> Any:
    return build_filter(build_parser().parse_args(["monitor", *args]))


def test_monitor_reqid_spi_proto_show_derived_events_and_alerts() -> None:
    """`monitor --reqid 7` (or --spi, --proto, --src) keeps reqid 7's tunnel events and the
    alert about its end, and hides those of reqid 8 (derived events used to be hidden)."""
    seven, eight = derived(7), derived(8)
    for args in (["--reqid", "7"], ["--spi", "0x00070001"], ["--reqid", "7", "--proto", "esp"],
                 ["--reqid", "7", "--src", "192.0.2.0/24"]):  # fmt: skip
        flt = monitor_filter(*args)
        assert [True] * len(seven) == [flt.match(e) for e in seven], args
        assert [False] * len(eight) == [flt.match(e) for e in eight], args
    assert not any(monitor_filter("--proto", "ah").match(e) for e in seven)


def test_tunnel_fields_are_read_by_name() -> None:
    """A tunnel event's flat fields give its subject; `spi` (the SA it is about) comes first."""
    e = ev.RekeyOverdue(**tunnel(7, "0x1", "0x2"), basis="time", spi="0x3")
    s = subject(e)
    assert (("esp/7/192.0.2.1/192.0.2.2",), (7,), ("0x3", "0x2", "0x1"), ("esp",)) == (
        s.tunnel_id, s.reqid, s.spi, s.proto
    )
    assert {"netns": "ns", "spi": "0x3", "reqid": "7", "src": "192.0.2.1", "dst": "192.0.2.2", "proto": "esp",
            "tunnel_id": "esp/7/192.0.2.1/192.0.2.2"} == s.first()  # fmt: skip


def test_an_alert_is_about_its_events() -> None:
    """An alert's subject is the union of its triggering events' (in order)."""
    alert = derived(7)[-1]
    assert isinstance(alert, ev.Alert)
    assert (7,) == subject(alert).reqid and ("0x00070002", "0x00070001") == subject(alert).spi[:2]
    assert ("events.src", "192.0.2.1") in subject(alert).addresses


def test_recorded_events_name_their_sa_and_policy() -> None:
    """On every recorded kernel message, the subject holds the SA's or policy's own values."""
    seen = 0
    for f in sorted((ROOT / "tests/fixtures").rglob("*.bin")):
        for e in Decoder("t").decode(Path(f).read_bytes(), 0.0, 0.0):
            s = subject(e)
            sa = getattr(e, "sa", None)
            if isinstance(sa, ev.SA):
                assert sa.spi in s.spi and sa.reqid in s.reqid and sa.src in s.src and sa.dst in s.dst
                seen += 1
            pol = getattr(e, "policy", None)
            if isinstance(pol, ev.Policy):
                assert pol.dir in s.dir and pol.sel.src in s.src
                assert all(t.proto in s.proto for t in pol.tmpl)
                seen += 1
            if isinstance(e, ev.DelSA):
                assert e.id.spi in s.spi and e.id.dst in s.dst
    assert seen > 50


def test_record_reads_agree_with_the_subject_walk() -> None:
    """ECS related.ip and OCSF observables read an SA's or policy's addresses from the record
    directly (output/siem.py); on every recorded kernel message they are the walk's, in order."""
    from xfrmwatch.output.siem import record_addresses, record_hosts
    from xfrmwatch.subject import addresses, hosts

    read = 0
    for f in sorted((ROOT / "tests/fixtures").rglob("*.bin")):
        for e in Decoder("t").decode(Path(f).read_bytes(), 0.0, 0.0):
            found_hosts, found_addresses = record_hosts(e), record_addresses(e)
            assert (found_hosts is None) == (found_addresses is None), e
            if found_hosts is None or found_addresses is None:
                continue
            assert list(found_hosts) == list(hosts(e)), e
            assert list(found_addresses) == list(addresses(e)), e
            read += 1
    assert read > 50
