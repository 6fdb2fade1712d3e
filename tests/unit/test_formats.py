"""The ECS and OCSF renderers (xfrmwatch/output/ecs.py, ocsf.py; docs/formats.md).

Every event the decoder produces from the recorded fixtures, plus derived
events, audit state records and alerts built from the event classes, is
rendered in both formats and validated against the committed schemas
(xfrmwatch/schema/ecs.schema.json, ocsf.schema.json).  Expected values are the
configured ones of tests/fixtures/README.md, never the renderer's own output.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from support import ROOT, assert_no_keys

from xfrmwatch import events as ev
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output.ecs import ECS_TYPES, ECS_VERSION, EcsRenderer
from xfrmwatch.output.ocsf import OCSF_TYPES, OCSF_VERSION, OcsfRenderer

FIX = ROOT / "tests" / "fixtures"
SCHEMAS = ROOT / "xfrmwatch" / "schema"
BINS = sorted(FIX.rglob("*.bin"))
# the recorded keys (tests/fixtures/README.md)
KEYS = (
    "00112233445566778899aabbccddeeff",
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "0f0e0d0c0b0a09080706050403020100cafebabe",
    "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100deadbeef",
)
HOST = "xw-test-host"
ECS = EcsRenderer(HOST)
OCSF = OcsfRenderer(HOST)
ENC = msgspec.json.Encoder()

# ECS 8.11.0 event.category -> expected event.type values (schemas/event.yml)
ECS_EXPECTED = {
    "api": {
        "access",
        "admin",
        "allowed",
        "change",
        "creation",
        "deletion",
        "denied",
        "end",
        "info",
        "start",
        "user",
    },
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "database": {"access", "change", "info", "error"},
    "driver": {"change", "end", "info", "start"},
    "email": {"info"},
    "file": {"access", "change", "creation", "deletion", "info"},
    "host": {"access", "change", "end", "info", "start"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "library": {"start"},
    "malware": {"info"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
    "package": {"access", "change", "deletion", "info", "installation", "start"},
    "process": {"access", "change", "end", "info", "start"},
    "registry": {"access", "change", "creation", "deletion"},
    "session": {"start", "end", "info"},
    "threat": {"indicator"},
    "vulnerability": {"info"},
    "web": {"access", "error", "info"},
}


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def render(fmt: str, e: ev.Event) -> dict[str, Any]:
    """Render, round-trip through JSON (as the outputs write it), validate, search for keys."""
    renderer: Callable[[ev.Event], dict[str, Any]] = ECS if fmt == "ecs" else OCSF
    raw = ENC.encode(renderer(e))
    assert_no_keys([raw], KEYS)
    obj: dict[str, Any] = msgspec.json.decode(raw)
    errors = sorted(validator(fmt).iter_errors(obj), key=lambda x: list(x.absolute_path))
    assert not errors, f"{fmt} output invalid: {errors[0].message} at {list(errors[0].absolute_path)}"
    return obj


def decoded(path: str | Path) -> list[ev.Event]:
    p = FIX / path if isinstance(path, str) else path
    return Decoder("t").decode(p.read_bytes(), 0.0, 0.0)


def one(path: str) -> ev.Event:
    (e,) = decoded(path)
    return e


def both(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    e = one(path)
    return render("ecs", e), render("ocsf", e)


# --- events built from the classes (derived, audit state, alerts, losses) --------------------

T0 = "2026-11-27T04:27:16.250000Z"
T0_MS = 1795753636250


def common(t: str = T0, pid: int = 0, process: str | None = None) -> dict[str, Any]:
    return {"time": t, "mono": 12.5, "netns": "t", "nlmsg_pid": pid, "nlmsg_seq": 0, "process": process}


SA_ESP = next(e.sa for e in decoded("uml/sa/0001-NEWSA.bin") if isinstance(e, ev.NewSA))
POLICY_IN = next(e.policy for e in decoded("host/policy/0002-NEWPOLICY.bin") if isinstance(e, ev.NewPolicy))
NEWSA_BY_CHARON = ev.NewSA(**common(pid=773, process="charon"), sa=SA_ESP)


TUNNEL_101: dict[str, Any] = {
    "tunnel_id": "esp/101/10.10.0.1/10.10.0.2", "reqid": 101, "proto": "esp", "src": "10.10.0.1",
    "dst": "10.10.0.2", "spi_in": "0x00002001", "spi_out": "0x00001001",
}  # fmt: skip


def built() -> dict[str, ev.Event]:
    """One event of each type the decoder does not produce from the fixtures."""
    started = ev.RekeyStarted(
        **common(),
        **TUNNEL_101,
        spi="0x00001001",
        basis="time",
        seconds_to_hard=600.0,
    )
    down = ev.TunnelDown(
        **common("2026-11-27T04:37:16Z"),
        **TUNNEL_101,
        reason="hard_expire",
        teardown=False,
        rekey_failed=True,
        spis=["0x00001001", "0x00002001"],
        acquires=3,
    )
    rule = ev.RuleRef(
        id="5d0b2e5c-0000-4000-8000-000000000001",
        title="SA expired unreplaced",
        level="high",
        tags=["xfrm.rekey", "xfrm.lifetime"],
    )
    return {
        "newsa_by_charon": NEWSA_BY_CHARON,
        "rekey_started": started,
        "rekey_completed": ev.RekeyCompleted(
            **common(),
            tunnel_id="esp/102/192.0.2.1/192.0.2.2",
            reqid=102,
            proto="esp",
            src="192.0.2.1",
            dst="192.0.2.2",
            spi_in="0x00001032",
            spi_out="0x00001022",
            old_spis=["0x00001002", "0x00001012"],
            new_spis=["0x00001022", "0x00001032"],
            initiator=True,
            duration_seconds=1.234567,
        ),
        "rekey_overdue": ev.RekeyOverdue(
            **common(),
            **TUNNEL_101,
            spi="0x00001001",
            basis="time",
            seconds_since_soft=300.0,
            seconds_to_hard=None,
        ),
        "tunnel_down": down,
        "tunnel_up": ev.TunnelUp(**common(), **TUNNEL_101, mode="tunnel"),
        "traffic_stalled": ev.TrafficStalled(**common(), **TUNNEL_101, silent_seconds=30.0, out_bytes_since=4096),
        "traffic_resumed": ev.TrafficResumed(**common(), **TUNNEL_101, silent_seconds=42.0),
        "resync": ev.Resync(**common(), missing=["sa esp 0x1001"], stale=[], sas=6, policies=4),
        "overrun": ev.Overrun(
            **common(), detail="netlink receive buffer overrun (ENOBUFS): events were lost"
        ),
        "malformed": ev.Malformed(**common(), reason="truncated xfrm_usersa_info", msg_type=16, length=40),
        "report": ev.Report(
            **common(),
            proto="route2",
            sel=msgspec.structs.replace(
                POLICY_IN.sel, family="inet6", src="2001:db8::5/128", dst="2001:db8::6/128"
            ),
            coaddr="2001:db8::99",
        ),
        "sa_state": ev.SaState(**common(), sa=SA_ESP, direction="out", policy_matched=True),
        "policy_state": ev.PolicyState(
            **common(),
            policy=POLICY_IN,
            protects=True,
            prefix_min=24,
            tmpl_without_sa=True,
            key_manager=False,
        ),
        "netns_state": ev.NetnsState(
            **common(),
            default_in="accept",
            default_fwd="accept",
            default_out="accept",
            key_manager=False,
            key_manager_groups=[],
            xfrm_stat={"XfrmInNoStates": 3, "XfrmInError": 0},
            xfrm_stat_errors=3,
            xfrm_stat_nonzero=["XfrmInNoStates"],
        ),
        "alert": ev.Alert(
            **common("2026-11-27T04:37:17Z"),
            rule=rule,
            group={"reqid": "101"},
            suppressed=2,
            events=[started, down],
        ),
        "alert_policy": ev.Alert(
            **common(),
            rule=ev.RuleRef(id="policy-flush", title="SPD flushed", level="critical"),
            events=[one("host/policy/0012-FLUSHPOLICY.bin")],  # type: ignore[list-item]
        ),
        "alert_empty": ev.Alert(
            **common(), rule=ev.RuleRef(id="r", title="no triggers", level="informational")
        ),
    }


BUILT = built()
ALL_EVENTS: list[tuple[str, ev.Event]] = [
    *((f"{p.relative_to(FIX)}#{i}", e) for p in BINS for i, e in enumerate(decoded(p))),
    *BUILT.items(),
]


def test_fixtures_and_built_events_cover_every_event_type() -> None:
    """Every event type of the model is rendered by this module, and mapped by both tables."""
    seen = {e.__struct_config__.tag for _, e in ALL_EVENTS}
    assert set(ev.EVENT_TYPES) == seen
    for t in ev.EVENT_TYPES:
        assert t in ECS_TYPES and t in OCSF_TYPES, t
    assert len(BINS) > 150


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
@pytest.mark.parametrize(("name", "e"), ALL_EVENTS, ids=[n for n, _ in ALL_EVENTS])
def test_every_event_renders_valid_and_key_free(fmt: str, name: str, e: ev.Event) -> None:
    """Each event renders to a document that validates against the format's schema, without key bytes."""
    render(fmt, e)


@pytest.mark.parametrize(("name", "e"), ALL_EVENTS, ids=[n for n, _ in ALL_EVENTS])
def test_ecs_types_are_expected_for_a_listed_category(name: str, e: ev.Event) -> None:
    """ECS categorization: each event.type is one ECS expects for one of the event.category values."""
    d = render("ecs", e)
    cats = d["event"]["category"]
    for t in d["event"]["type"]:
        assert any(t in ECS_EXPECTED[c] for c in cats), (t, cats)


def _native_from_ecs(d: dict[str, Any]) -> dict[str, Any]:
    n = dict(d["xfrm"])
    n["type"] = d["event"]["action"].removeprefix("xfrm-").replace("-", "_")
    n["time"] = d["@timestamp"]
    n["kind"] = d["event"]["kind"]
    n["process"] = d.get("process", {}).get("name")
    if "process" in d:
        n["nlmsg_pid"] = d["process"]["pid"]
    if "rule" in d:
        level = {1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}[d["event"]["severity"]]
        n["rule"] = {"id": d["rule"]["id"], "title": d["rule"]["name"], "level": level}
        if "tags" in d:  # RuleRef omits empty tags
            n["rule"]["tags"] = d["tags"]
    return n


def _native_from_ocsf(d: dict[str, Any]) -> dict[str, Any]:
    n = dict(d["unmapped"])
    n.pop("hostname", None)
    md = d["metadata"]
    n["type"] = md["event_code"]
    n["time"] = md["original_time"]
    n["kind"] = md["log_name"].removeprefix("xfrmwatch.").removesuffix("s")
    proc = d.get("actor", {}).get("process")
    n["process"] = proc["name"] if proc else None
    if proc:
        n["nlmsg_pid"] = proc["pid"]
    if "finding_info" in d:
        fi = d["finding_info"]
        level = {1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}[d["severity_id"]]
        n["rule"] = {"id": fi["analytic"]["uid"], "title": fi["title"], "level": level}
        if "types" in fi:
            n["rule"]["tags"] = fi["types"]
    return n


@pytest.mark.parametrize(("name", "e"), ALL_EVENTS, ids=[n for n, _ in ALL_EVENTS])
def test_nothing_is_lost(name: str, e: ev.Event) -> None:
    """The native event is the mapped fields plus xfrm (ECS) / unmapped (OCSF): nothing dropped."""
    native = msgspec.to_builtins(e)
    assert native == _native_from_ecs(render("ecs", e))
    assert native == _native_from_ocsf(render("ocsf", e))


def test_renderers_are_pure_small_and_default_constructible() -> None:
    """Same event, same document; the event is untouched; slots; a no-argument constructor."""
    for r in (EcsRenderer(), OcsfRenderer()):
        assert not hasattr(r, "__dict__")
        assert r.hostname
    for _, e in ALL_EVENTS[:20] + list(BUILT.items()):
        before = msgspec.to_builtins(e)
        assert ECS(e) == ECS(e) and OCSF(e) == OCSF(e)
        assert before == msgspec.to_builtins(e)


def test_common_fields() -> None:
    """Pinned versions, time, host, module, dataset and product metadata."""
    e = BUILT["rekey_started"]
    d, o = render("ecs", e), render("ocsf", e)
    assert ECS_VERSION == "8.11.0" == d["ecs"]["version"]
    assert T0 == d["@timestamp"]
    assert {"hostname": HOST, "name": HOST} == d["host"]
    assert ("xfrmwatch", "xfrmwatch.events", "xfrm-rekey-started") == (
        d["event"]["module"],
        d["event"]["dataset"],
        d["event"]["action"],
    )
    assert OCSF_VERSION == "1.3.0" == o["metadata"]["version"]
    assert T0_MS == o["time"]
    assert {"name": "xfrmwatch", "vendor_name": "xfrmwatch"} == {
        k: v for k, v in o["metadata"]["product"].items() if k != "version"
    }
    assert HOST == o["device"]["hostname"]
    assert d["message"] == o["message"] and d["message"].startswith("rekey_started esp reqid 101 10.10.0.1 <-> 10.10.0.2")


# --- SAs (uml/sa, kernel 6.1) --------------------------------------------------------------


def test_newsa_esp_transport() -> None:
    """sa/0001: esp 0x1001 10.10.0.1 -> 10.10.0.2: a tunnel opens; endpoints, ESP (50)."""
    d, o = both("uml/sa/0001-NEWSA.bin")
    assert (["configuration", "network"], ["creation", "start"]) == (
        d["event"]["category"],
        d["event"]["type"],
    )
    assert ("event", "xfrm-newsa") == (d["event"]["kind"], d["event"]["action"])
    assert ({"ip": "10.10.0.1"}, {"ip": "10.10.0.2"}) == (d["source"], d["destination"])
    assert ("esp", "50", "ipv4") == (
        d["network"]["transport"],
        d["network"]["iana_number"],
        d["network"]["type"],
    )
    assert ["10.10.0.1", "10.10.0.2"] == d["related"]["ip"]
    assert (4014, 4, 1, 401401) == (o["class_uid"], o["category_uid"], o["activity_id"], o["type_uid"])
    assert ("Tunnel Activity: Open", "Open") == (o["type_name"], o["activity_name"])
    assert ({"ip": "10.10.0.1"}, {"ip": "10.10.0.2"}) == (o["src_endpoint"], o["dst_endpoint"])
    assert (50, "esp", 4) == tuple(
        o["connection_info"][k] for k in ("protocol_num", "protocol_name", "protocol_ver_id")
    )
    assert ({"uid": "0x00001001"}, "IPsec") == (o["session"], o["protocol_name"])
    assert 101 == o["unmapped"]["sa"]["reqid"] == d["xfrm"]["sa"]["reqid"]
    assert "cbc(aes)" == d["xfrm"]["sa"]["enc"]["name"]


def test_newsa_espinudp_ports() -> None:
    """sa/0003: ESP-in-UDP 4500 -> 4500: the encapsulation ports are the endpoint ports."""
    d, o = both("uml/sa/0003-NEWSA.bin")
    assert ({"ip": "192.0.2.1", "port": 4500}, {"ip": "192.0.2.3", "port": 4500}) == (
        d["source"],
        d["destination"],
    )
    assert ({"ip": "192.0.2.1", "port": 4500}, {"ip": "192.0.2.3", "port": 4500}) == (
        o["src_endpoint"],
        o["dst_endpoint"],
    )
    assert "50" == d["network"]["iana_number"]


@pytest.mark.parametrize(
    ("path", "transport", "number"),
    [
        ("uml/sa/0004-NEWSA.bin", "ah", 51),
        ("uml/sa/0005-NEWSA.bin", "ipcomp", 108),
        ("uml/sa/0002-NEWSA.bin", "esp", 50),
    ],
)
def test_newsa_protocols(path: str, transport: str, number: int) -> None:
    """sa/0004 AH, sa/0005 IPComp, sa/0002 ESP: the IANA keyword and number."""
    d, o = both(path)
    assert (transport, str(number)) == (d["network"]["transport"], d["network"]["iana_number"])
    assert (number, transport) == (
        o["connection_info"]["protocol_num"],
        o["connection_info"]["protocol_name"],
    )
    assert 401401 == o["type_uid"]


def test_newsa_ipv6() -> None:
    """sa/0006: 2001:db8::1 -> 2001:db8::2."""
    d, o = both("uml/sa/0006-NEWSA.bin")
    assert ("2001:db8::1", "2001:db8::2", "ipv6") == (
        d["source"]["ip"],
        d["destination"]["ip"],
        d["network"]["type"],
    )
    assert ("2001:db8::1", 6) == (o["src_endpoint"]["ip"], o["connection_info"]["protocol_ver_id"])


def test_updsa_delsa_flushsa() -> None:
    """sa/0007 UPDSA (Other: Update), 0008 DELSA of AH 0x1004 (Close), 0009 FLUSHSA proto 50, 0010 proto any."""
    d, o = both("uml/sa/0007-UPDSA.bin")
    assert ["change"] == d["event"]["type"]
    assert (4014, 99, 401499, "Update") == (
        o["class_uid"],
        o["activity_id"],
        o["type_uid"],
        o["activity_name"],
    )
    d, o = both("uml/sa/0008-DELSA.bin")
    assert (["configuration", "network"], ["deletion", "end"]) == (d["event"]["category"], d["event"]["type"])
    assert ("10.10.0.1", "10.10.0.2", "51") == (
        d["source"]["ip"],
        d["destination"]["ip"],
        d["network"]["iana_number"],
    )
    assert (2, 401402, "0x00001004") == (o["activity_id"], o["type_uid"], o["session"]["uid"])
    d, o = both("uml/sa/0009-FLUSHSA.bin")
    assert ("esp", "50") == (d["network"]["transport"], d["network"]["iana_number"])
    assert "source" not in d and "related" not in d
    assert (401402, 50) == (o["type_uid"], o["connection_info"]["protocol_num"])
    d, o = both("uml/sa/0010-FLUSHSA.bin")
    assert "network" not in d
    assert (401402, {"direction_id": 0, "direction": "Unknown"}) == (o["type_uid"], o["connection_info"])


def test_expire_soft_and_hard() -> None:
    """expire-time/0002 soft (the SA lives on), 0003 hard (the SA is gone: Close)."""
    d, o = both("uml/expire-time/0002-EXPIRE.bin")
    assert ["info"] == d["event"]["type"]
    assert (99, 401499, "Soft Expire") == (o["activity_id"], o["type_uid"], o["activity_name"])
    assert ("10.11.0.1", "10.11.0.2") == (d["source"]["ip"], d["destination"]["ip"])
    d, o = both("uml/expire-time/0003-EXPIRE.bin")
    assert ["deletion", "end"] == d["event"]["type"]
    assert (2, 401402) == (o["activity_id"], o["type_uid"])


def test_newae_counters() -> None:
    """traffic-u2 NEWAE: SA counters as traffic (bytes/packets)."""
    path = next(p for p in sorted((FIX / "uml/traffic-u2").glob("*-NEWAE.bin")))
    d, o = both(str(path.relative_to(FIX)))
    assert (["network"], ["info"]) == (d["event"]["category"], d["event"]["type"])
    assert (401499, "Counters") == (o["type_uid"], o["activity_name"])
    assert ("10.20.0.1", "10.20.0.2") == (o["src_endpoint"]["ip"], o["dst_endpoint"]["ip"])
    assert d["network"]["bytes"] == o["traffic"]["bytes"] == o["unmapped"]["ae"]["current"]["bytes"]


def test_mapping_new_nat_source() -> None:
    """traffic-u2 MAPPING: (10.20.0.2, 0x2005) now from 10.20.0.1:4501."""
    path = next(p for p in sorted((FIX / "uml/traffic-u2").glob("*-MAPPING.bin")))
    d, o = both(str(path.relative_to(FIX)))
    assert ({"ip": "10.20.0.1", "port": 4501}, {"ip": "10.20.0.2"}) == (d["source"], d["destination"])
    assert ("ingress", "50") == (d["network"]["direction"], d["network"]["iana_number"])
    assert (401499, "NAT Mapping Change", 1) == (
        o["type_uid"],
        o["activity_name"],
        o["connection_info"]["direction_id"],
    )
    assert 4500 == o["unmapped"]["old_sport"]


# --- policies and the rest (host set, kernel 6.18) ---------------------------------------------


def test_newpolicy_single_hosts() -> None:
    """policy/0001: 10.1.0.1/32:4000 -> 10.1.0.2/32:5000 udp dir out: the selector is the endpoint pair."""
    d, o = both("host/policy/0001-NEWPOLICY.bin")
    assert (["configuration"], ["creation"]) == (d["event"]["category"], d["event"]["type"])
    assert ({"ip": "10.1.0.1", "port": 4000}, {"ip": "10.1.0.2", "port": 5000}) == (
        d["source"],
        d["destination"],
    )
    assert ("udp", "17", "egress") == (
        d["network"]["transport"],
        d["network"]["iana_number"],
        d["network"]["direction"],
    )
    assert (5019, 5, 1, 501901) == (o["class_uid"], o["category_uid"], o["activity_id"], o["type_uid"])
    assert (2, "Enabled") == (o["state_id"], o["state"])
    assert "src_endpoint" not in o
    assert 0x1001 == o["unmapped"]["policy"]["index"]


def test_newpolicy_subnets_and_ipv6_host() -> None:
    """policy/0002 (subnets: no source/destination; template endpoints related), 0006 (IPv6 hosts, tcp 443)."""
    d, _ = both("host/policy/0002-NEWPOLICY.bin")
    assert "source" not in d and "destination" not in d
    assert (["192.0.2.2", "192.0.2.1"], "ingress") == (d["related"]["ip"], d["network"]["direction"])
    d, _ = both("host/policy/0004-NEWPOLICY.bin")
    assert "source" not in d and "ipv6" == d["network"]["type"]
    d, _ = both("host/policy/0006-NEWPOLICY.bin")
    assert ({"ip": "2001:db8:2::5"}, {"ip": "2001:db8:1::5", "port": 443}) == (d["source"], d["destination"])
    assert ("tcp", "6") == (d["network"]["transport"], d["network"]["iana_number"])


@pytest.mark.parametrize(
    ("path", "etype", "state"),
    [
        ("host/policy/0007-UPDPOLICY.bin", ["change"], (99, "Updated")),
        ("host/policy/0008-DELPOLICY.bin", ["deletion"], (1, "Disabled")),
        ("host/policy/0009-DELPOLICY.bin", ["deletion"], (1, "Disabled")),
        ("host/policy/0010-GETDEFAULT.bin", ["change"], (99, "Default Policy Changed")),
        ("host/policy/0012-FLUSHPOLICY.bin", ["deletion"], (1, "Disabled")),
        ("host/polexpire/0002-POLEXPIRE.bin", ["info"], (99, "Soft Expired")),
        ("host/polexpire/0003-POLEXPIRE.bin", ["deletion"], (1, "Disabled")),
    ],
)
def test_policy_changes(path: str, etype: list[str], state: tuple[int, str]) -> None:
    """Policy changes: ECS configuration/<type>; OCSF Device Config State Change, Log, state."""
    d, o = both(path)
    assert (["configuration"], etype) == (d["event"]["category"], d["event"]["type"])
    assert (5019, 1, 501901, state) == (
        o["class_uid"],
        o["activity_id"],
        o["type_uid"],
        (o["state_id"], o["state"]),
    )


def test_default_policy_fields() -> None:
    """policy/0010: in block, fwd block, out accept stay under xfrm/unmapped."""
    d, o = both("host/policy/0010-GETDEFAULT.bin")
    assert {"in": "block", "fwd": "block", "out": "accept"} == {k: d["xfrm"][k] for k in ("in", "fwd", "out")}
    assert "accept" == o["unmapped"]["out"]


def test_acquire() -> None:
    """acquire/0002: ESP SA 10.5.0.1 -> 10.5.0.2 asked for, policy 0x3001 (dir out)."""
    d, o = both("host/acquire/0002-ACQUIRE.bin")
    assert ({"ip": "10.5.0.1"}, {"ip": "10.5.0.2"}, "50") == (
        d["source"],
        d["destination"],
        d["network"]["iana_number"],
    )
    assert (4014, 99, 401499, "Acquire") == (
        o["class_uid"],
        o["activity_id"],
        o["type_uid"],
        o["activity_name"],
    )
    assert 2 == o["connection_info"]["direction_id"] and "session" not in o  # SPI 0: none yet
    assert 0x3001 == o["unmapped"]["policy"]["index"]


def test_migrate() -> None:
    """migrate/0002: .10/.20 -> .11/.21; the new endpoints are source/destination, all four related."""
    d, o = both("host/migrate/0002-MIGRATE.bin")
    assert ({"ip": "192.0.2.11"}, {"ip": "192.0.2.21"}) == (d["source"], d["destination"])
    assert {"192.0.2.10", "192.0.2.20", "192.0.2.11", "192.0.2.21"} == set(d["related"]["ip"])
    assert (401499, "Migrate", "192.0.2.21") == (o["type_uid"], o["activity_name"], o["dst_endpoint"]["ip"])


def test_forward_direction() -> None:
    """A migration of a forward policy: OCSF direction Other (Forward); ECS has no host-based value."""
    e = one("host/migrate/0002-MIGRATE.bin")
    assert isinstance(e, ev.Migrate)
    fwd = msgspec.structs.replace(e, policy_id=msgspec.structs.replace(e.policy_id, dir="fwd"))
    d, o = render("ecs", fwd), render("ocsf", fwd)
    assert "direction" not in d["network"]
    assert (99, "Forward") == (o["connection_info"]["direction_id"], o["connection_info"]["direction"])


def test_info_replies() -> None:
    """req-sainfo / req-spdinfo: Device Config State, Collect."""
    for path in ("host/req-sainfo/0001-NEWSADINFO.bin", "host/req-spdinfo/0001-NEWSPDINFO.bin"):
        d, o = both(path)
        assert (["configuration"], ["info"]) == (d["event"]["category"], d["event"]["type"])
        assert (5002, 5, 2, 500202) == (o["class_uid"], o["category_uid"], o["activity_id"], o["type_uid"])


# --- derived events, state records, alerts, losses --------------------------------------------


def test_process_is_the_actor() -> None:
    """A change requested by charon (pid 773): ECS process, OCSF actor.process."""
    d, o = render("ecs", NEWSA_BY_CHARON), render("ocsf", NEWSA_BY_CHARON)
    assert {"name": "charon", "pid": 773} == d["process"] == o["actor"]["process"]
    assert "nlmsg_pid" not in d["xfrm"] and "process" not in o["unmapped"]


def test_rekey_events() -> None:
    """Rekey tracking: Tunnel Activity Renew with a status; ECS outcome and duration."""
    d, o = render("ecs", BUILT["rekey_started"]), render("ocsf", BUILT["rekey_started"])
    assert (["configuration", "network"], ["start"]) == (d["event"]["category"], d["event"]["type"])
    assert (401403, 99, "Started") == (o["type_uid"], o["status_id"], o["status"])
    assert ("10.10.0.1", "10.10.0.2") == (o["src_endpoint"]["ip"], d["destination"]["ip"])
    d, o = render("ecs", BUILT["rekey_completed"]), render("ocsf", BUILT["rekey_completed"])
    assert ("success", 1234567000) == (d["event"]["outcome"], d["event"]["duration"])
    assert "192.0.2.2" == d["destination"]["ip"] and ["192.0.2.1", "192.0.2.2"] == d["related"]["ip"]
    assert (401403, 1, 1235) == (o["type_uid"], o["status_id"], o["duration"])
    d, o = render("ecs", BUILT["rekey_overdue"]), render("ocsf", BUILT["rekey_overdue"])
    assert (3, 3, "Overdue") == (d["event"]["severity"], o["severity_id"], o["status"])
    d, o = render("ecs", BUILT["tunnel_down"]), render("ocsf", BUILT["tunnel_down"])
    assert (["end"], 4) == (d["event"]["type"], d["event"]["severity"])
    assert (401402, 4, "High") == (o["type_uid"], o["severity_id"], o["severity"])
    d, o = render("ecs", BUILT["tunnel_up"]), render("ocsf", BUILT["tunnel_up"])
    assert (["start"], "success", 401401) == (d["event"]["type"], d["event"]["outcome"], o["type_uid"])
    d, o = render("ecs", BUILT["traffic_stalled"]), render("ocsf", BUILT["traffic_stalled"])
    assert ("failure", 3, "Traffic Stalled") == (d["event"]["outcome"], d["event"]["severity"], o["activity_name"])


def test_losses_and_report_are_base_events() -> None:
    """overrun/malformed: Base Event Other, status Failure with the detail; ECS outcome failure, reason."""
    for name, detail in (("overrun", BUILT["overrun"].detail), ("malformed", "truncated xfrm_usersa_info")):  # type: ignore[attr-defined]
        d, o = render("ecs", BUILT[name]), render("ocsf", BUILT[name])
        assert ("failure", detail) == (d["event"]["outcome"], d["event"]["reason"])
        assert (0, 0, 99, 99, name.capitalize()) == (
            o["class_uid"],
            o["category_uid"],
            o["activity_id"],
            o["type_uid"],
            o["activity_name"],
        )
        assert (2, detail, HOST) == (o["status_id"], o["status_detail"], o["unmapped"]["hostname"])
        assert "device" not in o
    assert 4 == render("ocsf", BUILT["overrun"])["severity_id"]
    d, o = render("ecs", BUILT["report"]), render("ocsf", BUILT["report"])
    assert ("2001:db8::5", "2001:db8::6") == (d["source"]["ip"], d["destination"]["ip"])
    assert "2001:db8::99" in d["related"]["ip"]
    assert (0, 99, "Report") == (o["class_uid"], o["type_uid"], o["activity_name"])


def test_state_records() -> None:
    """Audit records: ECS kind state (dataset xfrmwatch.state); OCSF Device Config State, Collect."""
    for name in ("sa_state", "policy_state", "netns_state"):
        d, o = render("ecs", BUILT[name]), render("ocsf", BUILT[name])
        assert ("state", "xfrmwatch.state", ["info"]) == (
            d["event"]["kind"],
            d["event"]["dataset"],
            d["event"]["type"],
        )
        assert (5002, 2, 500202, "xfrmwatch.state") == (
            o["class_uid"],
            o["activity_id"],
            o["type_uid"],
            o["metadata"]["log_name"],
        )
    assert ("10.10.0.1", "esp") == (
        render("ecs", BUILT["sa_state"])["source"]["ip"],
        render("ecs", BUILT["sa_state"])["network"]["transport"],
    )


def test_alert() -> None:
    """An alert: ECS kind alert with rule.*, categories of its triggers; OCSF Detection Finding."""
    a = BUILT["alert"]
    d, o = render("ecs", a), render("ocsf", a)
    assert ("alert", "xfrmwatch.alerts", 4) == (
        d["event"]["kind"],
        d["event"]["dataset"],
        d["event"]["severity"],
    )
    assert (["intrusion_detection", "configuration", "network"], ["info"]) == (
        d["event"]["category"],
        d["event"]["type"],
    )
    assert {
        "id": "5d0b2e5c-0000-4000-8000-000000000001",
        "name": "SA expired unreplaced",
        "category": "xfrm.rekey",
    } == d["rule"]
    assert ["xfrm.rekey", "xfrm.lifetime"] == d["tags"]
    assert (T0, "2026-11-27T04:37:16Z") == (d["event"]["start"], d["event"]["end"])
    assert ("10.10.0.1", "10.10.0.2") == (d["source"]["ip"], d["destination"]["ip"])
    assert ({"reqid": "101"}, 2, 2) == (d["xfrm"]["group"], d["xfrm"]["suppressed"], len(d["xfrm"]["events"]))
    assert (2004, 2, 1, 200401) == (o["class_uid"], o["category_uid"], o["activity_id"], o["type_uid"])
    assert (4, "High", 1, "New") == (o["severity_id"], o["severity"], o["status_id"], o["status"])
    fi = o["finding_info"]
    assert ("SA expired unreplaced", d["event"]["id"]) == (fi["title"], fi["uid"])
    assert {
        "uid": "5d0b2e5c-0000-4000-8000-000000000001",
        "name": "SA expired unreplaced",
        "type_id": 1,
        "type": "Rule",
    } == fi["analytic"]
    assert (T0_MS, T0_MS + 600_000 - 250) == (fi["first_seen_time"], fi["last_seen_time"])
    assert (o["start_time"], o["end_time"]) == (fi["first_seen_time"], fi["last_seen_time"])
    assert [{"ip": "10.10.0.1"}] == [ev_["src_endpoint"] for ev_ in o["evidences"]]
    assert "rekey_started" == o["unmapped"]["events"][0]["type"]


def test_alert_ids_are_stable_and_distinct() -> None:
    """The finding uid / event.id: the same for the same alert, different for another firing."""
    a = BUILT["alert"]
    again = msgspec.structs.replace(a, time="2026-11-27T04:37:18Z")
    assert render("ocsf", a)["finding_info"]["uid"] == render("ecs", a)["event"]["id"]
    assert render("ecs", a)["event"]["id"] != render("ecs", again)["event"]["id"]


def test_alert_levels_and_odd_alerts() -> None:
    """Each Sigma level maps to one severity; an alert without triggers has no network fields."""
    for level, sev in (("informational", 1), ("low", 2), ("medium", 3), ("high", 4), ("critical", 5)):
        a = msgspec.structs.replace(BUILT["alert_empty"], rule=ev.RuleRef(id="r", title="t", level=level))
        assert sev == render("ecs", a)["event"]["severity"] == render("ocsf", a)["severity_id"]
    d, o = render("ecs", BUILT["alert_empty"]), render("ocsf", BUILT["alert_empty"])
    assert "source" not in d and "network" not in d and "rule" in d and "tags" not in d
    assert ["intrusion_detection"] == d["event"]["category"]
    assert "evidences" not in o and "start_time" not in o
    d = render("ecs", BUILT["alert_policy"])
    assert ["intrusion_detection", "configuration"] == d["event"]["category"]
    assert (5, 5) == (d["event"]["severity"], render("ocsf", BUILT["alert_policy"])["severity_id"])


def test_schemas_enforce_the_spec_values() -> None:
    """The schemas reject what the specs do not allow (guards against a too-lax schema)."""
    d = render("ecs", one("host/policy/0001-NEWPOLICY.bin"))
    ecs_cases: list[tuple[str, str, Any]] = [
        ("event", "kind", "incident"),
        ("event", "category", ["ipsec"]),
        ("event", "type", ["connection"]),  # not expected for configuration
        ("source", "ip", "10.1.0.300"),
        ("network", "direction", "out"),
        ("ecs", "version", "1.6.0"),
    ]
    for field_set, field, bad in ecs_cases:
        doc = json.loads(json.dumps(d))
        doc[field_set][field] = bad
        assert not validator("ecs").is_valid(doc), (field_set, field)
    o = render("ocsf", one("host/policy/0001-NEWPOLICY.bin"))
    ocsf_cases: list[tuple[str, Any]] = [
        ("type_uid", 501902),
        ("class_uid", 4001),
        ("severity", "High"),
        ("src_endpoint", {"ip": "1.2.3.4"}),  # not an attribute of Device Config State Change
    ]
    for key, bad in ocsf_cases:
        doc = json.loads(json.dumps(o))
        doc[key] = bad
        assert not validator("ocsf").is_valid(doc), key
    doc = json.loads(json.dumps(o))
    del doc["device"]  # required by the class
    assert not validator("ocsf").is_valid(doc)


def test_rekey_text_without_a_hard_limit() -> None:
    """A rekey event of an SA without a hard time limit says so (it read "hard in Nones")."""
    from xfrmwatch.output.render import summary

    common = {"time": "2026-01-01T00:00:00Z", "mono": 0.0, "netns": "", "nlmsg_pid": 0, "nlmsg_seq": 0}
    where = {"tunnel_id": "esp/1/192.0.2.1/192.0.2.2", "reqid": 1, "proto": "esp", "src": "192.0.2.1",
             "dst": "192.0.2.2", "spi": "0x0000c0de", "basis": "time"}  # fmt: skip
    overdue = ev.RekeyOverdue(**common, **where, seconds_since_soft=12.5, seconds_to_hard=None)
    started = ev.RekeyStarted(**common, **where)
    learned = ev.RekeyOverdue(**common, **{**where, "basis": "history"}, expected_seconds=3600.0)
    assert summary(overdue).endswith("12.5s since the soft time limit, no hard limit known")
    assert summary(started).endswith("reached its soft time limit, no hard limit known")
    assert "no rekey after 3600s (its usual interval, learned), no hard limit known" in summary(learned)
    assert "None" not in summary(overdue) + summary(started) + summary(learned)
