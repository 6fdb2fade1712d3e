"""The metrics, Alertmanager, webhook and exec outputs against real peers.

* a real Prometheus (Debian's ``prometheus``) scrapes :func:`serve_metrics` every
  second and is queried through its HTTP API; it also loads and evaluates
  ``contrib/prometheus/xfrmwatch-rules.yml``, which ``promtool`` checks and unit-tests;
* a real Alertmanager (``prometheus-alertmanager``) receives, resolves and, after
  a restart, re-receives the alerts;
* a small trio HTTP server receives the webhook; shell scripts are the exec hooks.

Every service runs on 127.0.0.1 with free ports and a temporary directory, and
is stopped after its test.  Every I/O test has an absolute deadline (trio.fail_after).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import structlog
import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from xfrmwatch import events as ev
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output import exec_hook
from xfrmwatch.output.alertmanager import AlertmanagerConfig, AlertmanagerOutput
from xfrmwatch.output.base import Output, OutputConfig
from xfrmwatch.output.exec_hook import ExecConfig, ExecOutput
from xfrmwatch.output.metrics import Metrics, MetricsConfig, metric_names, serve_metrics
from xfrmwatch.output.webhook import WebhookConfig, WebhookOutput
from xfrmwatch.timestamps import utc_precise

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
RULES = ROOT / "contrib" / "prometheus" / "xfrmwatch-rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "xfrmwatch-dashboard.json"


# --- building events -----------------------------------------------------------------------------


def decode(rel: str, netns: str = "t") -> list[ev.Event]:
    return Decoder(netns).decode((FIXTURES / rel).read_bytes(), trio.current_time(), time.time())


def base_sa() -> ev.SA:
    e = decode("uml/sa/0001-NEWSA.bin")[0]
    assert isinstance(e, ev.NewSA)
    return e.sa


def make_sa(reqid: int, src: str, dst: str, spi: int, hard: int | None) -> ev.SA:
    sa = base_sa()
    return msgspec.structs.replace(
        sa,
        reqid=reqid,
        src=src,
        dst=dst,
        spi=f"0x{spi:08x}",
        lifetime=msgspec.structs.replace(sa.lifetime, soft_add_seconds=None, hard_add_seconds=hard),
        current=msgspec.structs.replace(sa.current, add_time=None),
    )


def common(netns: str) -> dict[str, Any]:
    return {
        "time": utc_precise(time.time()),
        "mono": trio.current_time(),
        "netns": netns,
        "nlmsg_pid": 0,
        "nlmsg_seq": 0,
    }


def newsa(sa: ev.SA, netns: str) -> ev.NewSA:
    return ev.NewSA(**common(netns), sa=sa)


def _tunnel(netns: str, reqid: int) -> dict[str, Any]:
    return {
        **common(netns), "tunnel_id": f"esp/{reqid}/192.0.2.1/192.0.2.2", "reqid": reqid, "proto": "esp",
        "src": "192.0.2.1", "dst": "192.0.2.2", "spi_out": f"0x{reqid:08x}",
    }  # fmt: skip


def overdue(netns: str, reqid: int) -> ev.RekeyOverdue:
    return ev.RekeyOverdue(
        **_tunnel(netns, reqid), spi=f"0x{reqid:08x}", basis="time", seconds_since_soft=3.0, seconds_to_hard=3.0
    )


def unreplaced(netns: str, reqid: int) -> ev.TunnelDown:
    return ev.TunnelDown(
        **_tunnel(netns, reqid), reason="hard_expire", teardown=False, rekey_failed=True, spis=[f"0x{reqid:08x}"]
    )


def tunnel_up(netns: str, reqid: int) -> ev.TunnelUp:
    return ev.TunnelUp(**_tunnel(netns, reqid), mode="tunnel")


def completed(netns: str, reqid: int) -> ev.RekeyCompleted:
    return ev.RekeyCompleted(
        **_tunnel(netns, reqid), old_spis=[f"0x{reqid:08x}"], new_spis=["0x0000beef"], initiator=True,
        duration_seconds=1.5,
    )  # fmt: skip


def alert(first: ev.Event, rule_id: str, title: str, level: str) -> ev.Alert:
    return ev.Alert(
        **common(first.netns),
        rule=ev.RuleRef(id=rule_id, title=title, level=level, tags=["xfrm.rekey"]),
        events=[first],  # type: ignore[list-item]
    )


# --- helpers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def until(
    check: Callable[[], Awaitable[Any]], what: str, within: float = 20, interval: float = 0.25
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and its last value."""
    last: Any = None
    with trio.move_on_after(within):
        while True:
            last = await check()
            if last:
                return last
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


class Service:
    """A real daemon as a child process, logging to a file; ready when ``ready_url`` answers 200."""

    def __init__(self, argv: list[str], log: Path, ready_url: str) -> None:
        self.argv, self.log, self.ready_url = argv, log, ready_url
        self.proc: trio.Process | None = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    async def start(self) -> None:
        with self.log.open("ab") as f:
            self.proc = await trio.lowlevel.open_process(self.argv, stdout=f, stderr=subprocess.STDOUT)

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    return (await c.get(self.ready_url)).status_code == 200
            except httpx.HTTPError:
                return False

        await until(ready, f"{self.argv[0]} to be ready", within=30, interval=0.1)

    async def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.returncode is not None:
            return
        p.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await p.wait()
            return
        p.kill()
        await p.wait()


@asynccontextmanager
async def service(argv: list[str], log: Path, ready_url: str) -> AsyncIterator[Service]:
    s = Service(argv, log, ready_url)
    try:
        await s.start()
        yield s
    finally:
        with trio.CancelScope(shield=True):
            await s.stop()


def alertmanager_argv(binary: str, d: Path, port: int) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "alertmanager.yml"
    cfg.write_text(
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n"
        "receivers:\n  - name: blackhole\n"
    )
    return [
        binary, f"--config.file={cfg}", f"--storage.path={d / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
    ]  # fmt: skip


async def am_alerts(base: str) -> list[dict[str, Any]]:
    """Alertmanager's active alerts (resolved ones are not listed)."""
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(f"{base}/api/v2/alerts")
        r.raise_for_status()
        alerts: list[dict[str, Any]] = r.json()
        return alerts


def by_reqid(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["labels"].get("reqid", ""): a for a in alerts}


@asynccontextmanager
async def running(out: Output, cfg: OutputConfig) -> AsyncIterator[Callable[[ev.Event], None]]:
    """Run an output as the daemon does; yield its publish function (filter, then send_nowait)."""
    send, recv = trio.open_memory_channel[ev.Event](cfg.queue)
    async with trio.open_nursery() as n:
        await n.start(out.run, recv)

        def publish(e: ev.Event) -> None:
            if cfg.wants(e):
                send.send_nowait(e)  # raises WouldBlock if the output does not keep up

        yield publish
        send.close()


# --- Prometheus ---------------------------------------------------------------------------------------


def feed_known(m: Metrics) -> Mirror:
    """Known values for every metric; returns the mirror of netns "m"."""
    for i in range(1, 7):
        for e in decode(f"uml/sa/000{i}-NEWSA.bin"):
            m.event(e)
    for e in decode("uml/sa/0007-UPDSA.bin"):
        m.event(e)
    m.event(ev.Overrun(**common("t"), detail="ENOBUFS"))
    m.overrun("u")
    m.resync("t")
    m.resync("t")
    first = overdue("t", 7)
    for _ in range(2):
        m.event(alert(first, "r-high", "High thing", "high"))
    m.event(alert(first, "r-crit", "Critical thing", "critical"))
    m.queue("file", 7)
    m.dropped("file", 3)
    m.dropped("webhook", 1)
    m.xfrm_stat("t", {"XfrmInError": 5, "XfrmOutNoStates": 2, "XfrmInNoPols": 0})
    mirror = Mirror(netns="m", local_addrs=frozenset({"10.0.0.1"}))
    sas = [
        make_sa(1, "10.0.0.1", "10.0.0.2", 0x101, 30),  # out, the nearest expiry
        make_sa(1, "10.0.0.2", "10.0.0.1", 0x102, 40),  # in
        make_sa(2, "10.0.0.1", "10.0.0.3", 0x201, 3600),  # out
        make_sa(3, "10.0.0.3", "10.0.0.1", 0x301, 7200),  # in: beyond expiry_top=2
        make_sa(4, "10.9.9.9", "10.9.9.8", 0x401, None),  # unknown, no hard expiry
    ]
    for sa in sas:
        mirror.apply(newsa(sa, "m"))
    for i in range(1, 5):  # out, in, fwd, out
        for e in decode(f"host/policy/000{i}-NEWPOLICY.bin", "m"):
            mirror.apply(e)
    m.mirror("m", mirror)
    return mirror


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    async def get(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{self.base}{path}", params=params)
            r.raise_for_status()
            return r.json()["data"]

    async def query(self, q: str) -> dict[frozenset[tuple[str, str]], float]:
        data = await self.get("/api/v1/query", query=q)
        drop = {"__name__", "instance", "job"}
        return {
            frozenset((k, v) for k, v in r["metric"].items() if k not in drop): float(r["value"][1])
            for r in data["result"]
        }

    async def values(self, q: str, label: str) -> dict[str, float]:
        return {dict(k).get(label, ""): v for k, v in (await self.query(q)).items()}


async def test_prometheus_scrapes_metrics(tmp_path: Path, prometheus_bin: str) -> None:
    with trio.fail_after(90):
        m = Metrics(expiry_top=2)
        feed_known(m)
        async with trio.open_nursery() as n:
            host, port = await n.start(serve_metrics, m, MetricsConfig(listen="127.0.0.1:0"))
            assert host == "127.0.0.1"

            # the endpoint itself, parsed as Prometheus' text format
            async with httpx.AsyncClient(timeout=5) as c:
                r = await c.get(f"http://127.0.0.1:{port}/metrics")
                assert r.status_code == 200 and r.headers["content-type"].startswith(
                    "text/plain; version=0.0.4"
                )
                assert (await c.get(f"http://127.0.0.1:{port}/nope")).status_code == 404
                post = await c.post(f"http://127.0.0.1:{port}/metrics")
                assert (405, "GET, HEAD") == (post.status_code, post.headers["allow"])
                head = await c.head(f"http://127.0.0.1:{port}/metrics")
                assert (200, b"") == (head.status_code, head.content)
                # the length of the body GET would send (expiry seconds move between scrapes)
                assert abs(int(head.headers["content-length"]) - len(r.content)) < 20
                om = await c.get(
                    f"http://127.0.0.1:{port}/metrics",
                    headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
                )
                assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
                assert om.text.endswith("# EOF\n")
                om_fams = {f.name: f for f in openmetrics_families(om.text)}
                assert {s.labels["type"]: s.value for s in om_fams["xfrmwatch_events"].samples} == {
                    "newsa": 6, "updsa": 1, "overrun": 1, "alert": 3,
                }  # fmt: skip
            fams = {f.name: f for f in text_string_to_metric_families(r.text)}
            assert {s.labels["type"]: s.value for s in fams["xfrmwatch_events"].samples} == {
                "newsa": 6, "updsa": 1, "overrun": 1, "alert": 3,
            }  # fmt: skip

            pdir = tmp_path / "prometheus"
            pdir.mkdir()
            (pdir / "prometheus.yml").write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {RULES}\n"
                "scrape_configs:\n  - job_name: xfrmwatch\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{port}']\n"
            )
            pport = free_port()
            argv = [
                prometheus_bin, f"--config.file={pdir / 'prometheus.yml'}", f"--storage.tsdb.path={pdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn",
            ]  # fmt: skip
            async with service(argv, pdir / "prometheus.log", f"http://127.0.0.1:{pport}/-/ready"):
                prom = Prom(f"http://127.0.0.1:{pport}")

                async def scraped() -> bool:
                    return (await prom.values('up{job="xfrmwatch"}', "job")).get("") == 1.0

                await until(scraped, "Prometheus to scrape the endpoint", within=30)
                assert await prom.values('xfrmwatch_events_total{netns="t"}', "type") == {
                    "newsa": 6, "updsa": 1, "overrun": 1, "alert": 3,
                }  # fmt: skip
                assert await prom.query("xfrmwatch_alerts_total") == {
                    frozenset({("rule_id", "r-high"), ("rule_title", "High thing"), ("level", "high"), ("netns", "t")}): 2,
                    frozenset({("rule_id", "r-crit"), ("rule_title", "Critical thing"), ("level", "critical"), ("netns", "t")}): 1,
                }  # fmt: skip
                assert await prom.values("xfrmwatch_overruns_total", "netns") == {"t": 1, "u": 1}
                assert await prom.values("xfrmwatch_resyncs_total", "netns") == {"t": 2}
                assert await prom.values("xfrmwatch_output_queue_depth", "output") == {"file": 7}
                assert await prom.values("xfrmwatch_output_dropped_total", "output") == {
                    "file": 3,
                    "webhook": 1,
                }
                assert await prom.values('xfrmwatch_sas{netns="m"}', "direction") == {
                    "in": 2,
                    "out": 2,
                    "unknown": 1,
                }
                assert await prom.values('xfrmwatch_policies{netns="m"}', "direction") == {
                    "in": 1,
                    "out": 2,
                    "fwd": 1,
                }
                expiry = await prom.values('xfrmwatch_sa_hard_expiry_seconds{netns="m"}', "reqid")
                assert set(expiry) == {"1", "2"}, "only the expiry_top=2 nearest reqids are exported"
                assert 0 < expiry["1"] <= 30 and 3500 < expiry["2"] <= 3600
                assert await prom.values("xfrmwatch_sa_hard_expiry_omitted", "netns") == {"m": 1}
                assert await prom.values('xfrmwatch_xfrm_stat_total{netns="t"}', "counter") == {
                    "XfrmInError": 5, "XfrmOutNoStates": 2, "XfrmInNoPols": 0,
                }  # fmt: skip
                assert list((await prom.values("xfrmwatch_build_info", "version")).values()) == [1]

                # the values follow: a new event shows up at the next scrape
                for e in decode("uml/sa/0001-NEWSA.bin"):
                    m.event(e)

                async def counted() -> bool:
                    return (await prom.values('xfrmwatch_events_total{netns="t",type="newsa"}', "type")) == {
                        "newsa": 7
                    }

                await until(counted, "the 7th newsa in Prometheus")

                # the shipped rules load and evaluate against these series
                async def rules_ok() -> list[tuple[str, str]]:
                    groups = (await prom.get("/api/v1/rules"))["groups"]
                    health = [(r["name"], r["health"]) for g in groups for r in g["rules"]]
                    return health if health and all(h == "ok" for _, h in health) else []

                health = await until(rules_ok, "every rule evaluated with health ok")
                assert len(health) == 6

                async def expiry_alert() -> list[dict[str, Any]]:
                    alerts = (await prom.get("/api/v1/alerts"))["alerts"]
                    return [a for a in alerts if a["labels"]["alertname"] == "XfrmSaHardExpirySoon"]

                fired = await until(expiry_alert, "XfrmSaHardExpirySoon to fire")
                assert [(a["labels"]["netns"], a["labels"]["reqid"], a["state"]) for a in fired] == [
                    ("m", "1", "firing")
                ]
            n.cancel_scope.cancel()


PROMTOOL_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'xfrmwatch_sa_hard_expiry_seconds{{instance="gw:9873",job="xfrmwatch",netns="vpn",reqid="7"}}'
        values: '300 240 180 120 60 30'
      - series: 'xfrmwatch_sa_hard_expiry_seconds{{instance="gw:9873",job="xfrmwatch",netns="vpn",reqid="8"}}'
        values: '3600 3540 3480 3420 3360 3300'
      - series: 'xfrmwatch_output_dropped_total{{instance="gw:9873",job="xfrmwatch",output="webhook"}}'
        values: '0 0 0 4 4 4'
    alert_rule_test:
      - eval_time: 3m
        alertname: XfrmSaHardExpirySoon
        exp_alerts: []
      - eval_time: 5m
        alertname: XfrmSaHardExpirySoon
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "gw:9873", netns: vpn, reqid: "7"}}
            exp_annotations:
              summary: "IPsec SA reqid 7 hard-expires in 30s"
              description: "An SA of reqid 7 (netns \\"vpn\\") on gw:9873 reaches its hard lifetime within 60 s; unless the key manager installs a replacement, traffic for it will be dropped."
      - eval_time: 2m
        alertname: XfrmwatchOutputDropping
        exp_alerts: []
      - eval_time: 4m
        alertname: XfrmwatchOutputDropping
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "gw:9873", job: xfrmwatch, output: webhook}}
            exp_annotations:
              summary: "xfrmwatch output webhook drops events"
              description: "{drops} events dropped for output webhook on gw:9873 in 5 minutes (queue full or delivery given up): its destination is slow or down."
"""


def _series_values(steps: list[bytes], name: str, labels: dict[str, str]) -> str:
    """One series across successive scrapes, in promtool's notation (``_``: absent)."""
    out = []
    for text in steps:
        found = [
            s.value
            for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples
            if s.name == name and s.labels == labels
        ]
        out.append(str(int(found[0])) if found else "_")
    return " ".join(out)


async def test_first_increment_fires_the_shipped_rules(tmp_path: Path, promtool_bin: str) -> None:
    """The series of known label sets exist at 0 before their first increment, so the
    shipped `increase(...) > 0` rules fire on the first overrun, the first critical
    alert and the first drop; a label set first seen at its increment (netns "late",
    never announced) would not fire: the reason for the zeros."""
    m = Metrics()
    m.outputs_configured(["webhook"])
    m.rules_loaded([("r-crit", "Critical thing", "critical")])
    m.namespace_watched("vpn")
    steps = []
    for minute in range(5):
        if minute == 2:
            m.event(ev.Overrun(**common("vpn"), detail="ENOBUFS"))
            m.event(ev.Overrun(**common("late"), detail="ENOBUFS"))
            m.event(alert(overdue("vpn", 7), "r-crit", "Critical thing", "critical"))
            m.dropped("webhook", 1)
        steps.append(m.exposition())
    job = {"instance": "gw:9873", "job": "xfrmwatch"}

    def series(name: str, labels: dict[str, str]) -> str:
        sel = ",".join(f'{k}="{v}"' for k, v in {**job, **labels}.items())
        return f"      - series: '{name}{{{sel}}}'\n        values: '{_series_values(steps, name, labels)}'\n"

    crit = {"rule_id": "r-crit", "rule_title": "Critical thing", "level": "critical", "netns": "vpn"}
    test = tmp_path / "first-increment.yml"
    test.write_text(
        f"rule_files: [{RULES}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n"
        + series("xfrmwatch_overruns_total", {"netns": "vpn"})
        + series("xfrmwatch_overruns_total", {"netns": "late"})
        + series("xfrmwatch_alerts_total", crit)
        + series("xfrmwatch_output_dropped_total", {"output": "webhook"})
        + "    alert_rule_test:\n"
        + "".join(
            f"      - eval_time: 1m\n        alertname: {name}\n        exp_alerts: []\n"
            for name in ("XfrmNetlinkOverruns", "XfrmCriticalAlerts", "XfrmwatchOutputDropping")
        )
        + "      - eval_time: 3m\n        alertname: XfrmNetlinkOverruns\n        exp_alerts:\n"
        "          - exp_labels: {severity: warning, instance: 'gw:9873', job: xfrmwatch, netns: vpn}\n"
        "            exp_annotations:\n"
        "              summary: 'xfrmwatch lost XFRM events (netlink overruns) on gw:9873'\n"
        "              description: '1 receive-buffer overruns in netns \"vpn\" in 5 minutes: events were lost"
        " (the mirror was resynced). Raise the receive buffer (--rcvbuf).'\n"
        "      - eval_time: 3m\n        alertname: XfrmCriticalAlerts\n        exp_alerts:\n"
        "          - exp_labels: {severity: critical, instance: 'gw:9873', netns: vpn, rule_title: Critical thing}\n"
        "            exp_annotations:\n"
        "              summary: 'xfrmwatch raised critical alerts: Critical thing'\n"
        "              description: '1 critical alerts of rule \"Critical thing\" on gw:9873 (netns \"vpn\")"
        " in 5 minutes.'\n"
        "      - eval_time: 3m\n        alertname: XfrmwatchOutputDropping\n        exp_alerts:\n"
        "          - exp_labels: {severity: warning, instance: 'gw:9873', job: xfrmwatch, output: webhook}\n"
        "            exp_annotations:\n"
        "              summary: 'xfrmwatch output webhook drops events'\n"
        "              description: '1 events dropped for output webhook on gw:9873 in 5 minutes (queue full"
        " or delivery given up): its destination is slow or down.'\n"
    )
    assert "'0 0 1 1 1'" in test.read_text() and "'_ _ 1 1 1'" in test.read_text()
    with trio.fail_after(60):
        p = await trio.run_process(
            [promtool_bin, "test", "rules", str(test)], capture_stdout=True, capture_stderr=True, check=False
        )
    assert p.returncode == 0, (p.stdout + p.stderr).decode() + test.read_text()


async def test_promtool_checks_and_tests_rules(tmp_path: Path, promtool_bin: str) -> None:
    with trio.fail_after(60):
        p = await trio.run_process(
            [promtool_bin, "check", "rules", str(RULES)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out = (p.stdout + p.stderr).decode()
        assert p.returncode == 0, out
        assert "SUCCESS: 6 rules found" in out
        test = tmp_path / "rules-test.yml"
        # increase() over the 5m window: the jump from 0 to 4 (the series starts inside the window)
        test.write_text(PROMTOOL_TEST.format(rules=RULES, drops="4"))
        p = await trio.run_process(
            [promtool_bin, "test", "rules", str(test)], capture_stdout=True, capture_stderr=True, check=False
        )
        out = (p.stdout + p.stderr).decode()
        assert p.returncode == 0, out


def test_grafana_dashboard_uses_real_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = set(metric_names(Metrics()))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(dash["panels"]) >= 5 and exprs
    used = set()
    for expr in exprs:
        for word in expr.replace("(", " ").replace("{", " ").replace("[", " ").split():
            if word.startswith("xfrmwatch_"):
                used.add(word)
    assert used and used <= names, used - names
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("events by type", "alerts by level", "sas by direction", "hard expiry", "drops"):
        assert topic in titles


# --- Alertmanager ----------------------------------------------------------------------------------------


async def test_alertmanager_fires_and_resolves(tmp_path: Path, alertmanager_bin: str) -> None:
    with trio.fail_after(60):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        async with service(
            alertmanager_argv(alertmanager_bin, tmp_path, port), tmp_path / "am.log", f"{base}/-/ready"
        ):
            cfg = AlertmanagerConfig(url=base, resolve_timeout=60, labels={"site": "lab"}, instance="gw1")
            out = AlertmanagerOutput(cfg)
            async with running(out, cfg) as publish:
                publish(alert(overdue("ns1", 7), "573d274c", "Rekey overdue", "high"))
                publish(
                    alert(
                        unreplaced("ns1", 8), "f1f065cf", "Tunnel down without a replacement", "critical"
                    )
                )
                publish(newsa(make_sa(99, "10.0.0.1", "10.0.0.2", 0x999, None), "ns1"))  # resolves nothing

                async def both() -> dict[str, dict[str, Any]]:
                    got = by_reqid(await am_alerts(base))
                    return got if {"7", "8"} <= set(got) else {}

                got = await until(both, "both alerts in Alertmanager")
                a = got["7"]
                assert a["labels"] == {
                    "alertname": "Rekey overdue", "severity": "high", "rule_id": "573d274c", "instance": "gw1",
                    "netns": "ns1", "reqid": "7", "src": "192.0.2.1", "dst": "192.0.2.2", "site": "lab",
                }  # fmt: skip
                assert a["annotations"]["summary"] == "Rekey overdue"
                assert "rekey_overdue" in a["annotations"]["description"]
                assert a["status"]["state"] == "active"
                assert got["8"]["labels"]["severity"] == "critical"
                assert got["8"]["labels"]["alertname"] == "Tunnel down without a replacement"

                # the same reqid in another namespace resolves nothing; then the right one
                publish(completed("other", 7))
                publish(completed("ns1", 7))

                async def seven_gone() -> dict[str, dict[str, Any]]:
                    got = by_reqid(await am_alerts(base))
                    return got if "7" not in got else {}

                got = await until(seven_gone, "rekey_overdue to resolve after rekey_completed")
                assert "8" in got, "tunnel_down must stay active"

                publish(tunnel_up("other", 8))
                publish(tunnel_up("ns1", 8))

                async def all_gone() -> bool:
                    return not await am_alerts(base)

                await until(all_gone, "tunnel_down to resolve after the tunnel is up again")
                assert not out.alerts, "resolved alerts are forgotten once delivered"
                assert out.rejected == 0


async def test_alertmanager_down_then_back(tmp_path: Path, alertmanager_bin: str) -> None:
    with trio.fail_after(90):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        am = Service(
            alertmanager_argv(alertmanager_bin, tmp_path / "1", port), tmp_path / "am.log", f"{base}/-/ready"
        )
        cfg = AlertmanagerConfig(url=base, resolve_timeout=4, retry_initial=0.2, retry_max=1.0, queue=16)
        out = AlertmanagerOutput(cfg)
        try:
            await am.start()
            async with running(out, cfg) as publish:
                publish(alert(overdue("ns1", 1), "r1", "Rekey overdue", "high"))

                async def has(*reqids: str) -> bool:
                    try:
                        return set(reqids) <= set(by_reqid(await am_alerts(base)))
                    except httpx.HTTPError:
                        return False

                await until(lambda: has("1"), "alert 1 in Alertmanager")
                await am.stop()

                # Alertmanager is down: the output keeps draining its queue (a blocked
                # consumer would make send_nowait raise WouldBlock after 16 events)
                publish(alert(overdue("ns1", 2), "r1", "Rekey overdue", "high"))
                t0 = trio.current_time()
                for i in range(200):
                    publish(newsa(make_sa(1000 + i, "10.0.0.1", "10.0.0.2", 0x1000 + i, None), "ns1"))
                    if i % 8 == 7:
                        await trio.sleep(0.01)
                assert trio.current_time() - t0 < 5
                await trio.sleep(2.5)  # a few failed attempts, with backoff
                assert out.posted == 1

                # back, with a fresh database: alert 2 is retried, alert 1 re-sent
                am = Service(
                    alertmanager_argv(alertmanager_bin, tmp_path / "2", port),
                    tmp_path / "am.log",
                    f"{base}/-/ready",
                )
                await am.start()
                await until(
                    lambda: has("1", "2"), "alerts 1 (re-sent) and 2 (retried) after the restart", within=15
                )
                labels = by_reqid(await am_alerts(base))["2"]["labels"]
                assert labels["alertname"] == "Rekey overdue" and labels["netns"] == "ns1"
        finally:
            with trio.CancelScope(shield=True):
                await am.stop()


async def test_alertmanager_memory_is_bounded_when_unreachable() -> None:
    with trio.fail_after(20):
        cfg = AlertmanagerConfig(
            url=f"http://127.0.0.1:{free_port()}", max_alerts=5, retry_initial=0.1, queue=8
        )
        m = Metrics()
        out = AlertmanagerOutput(cfg, m)
        async with running(out, cfg) as publish:
            for reqid in range(50):
                publish(alert(overdue("ns1", reqid), "r1", "Rekey overdue", "high"))
                await trio.sleep(0.005)
            await trio.sleep(0.5)
            assert len(out.alerts) == 5 and out.evicted == 45
            assert sorted(int(dict(k)["reqid"]) for k in out.alerts) == [45, 46, 47, 48, 49]
            assert len(out._pending) <= 5
            assert out.posted == 0
        # stopped with Alertmanager still unreachable: what was pending is dropped, and counted
        assert 5 == out.dropped
        assert 'xfrmwatch_output_dropped_total{output="alertmanager"} 5.0' in m.exposition().decode()


# --- webhook -----------------------------------------------------------------------------------------------


class Receiver:
    """A tiny HTTP/1.1 server (trio): records each request, answers the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, str, dict[str, str], bytes, int]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            while len(body) < int(headers.get("content-length", "0")):
                body += await stream.receive_some(65536)
            status = self.statuses.pop(0) if self.statuses else 200
            self.requests.append((method, path, headers, body, status))
            await stream.send_all(
                f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
            )


@asynccontextmanager
async def receiver(statuses: list[int]) -> AsyncIterator[tuple[Receiver, int]]:
    r = Receiver(statuses)
    async with trio.open_nursery() as n:
        listeners = await n.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
        yield r, listeners[0].socket.getsockname()[1]
        n.cancel_scope.cancel()


async def test_webhook_posts_json_retries_after_500_with_bearer_token(tmp_path: Path) -> None:
    with trio.fail_after(30):
        token = tmp_path / "token"
        token.write_text("s3cret-token\n")
        async with receiver([500, 503]) as (rx, port):
            cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", token_file=str(token), retry_initial=0.05,
                                headers={"X-Site": "lab"})  # fmt: skip
            out = WebhookOutput(cfg)
            a = alert(overdue("ns1", 7), "r1", "Rekey overdue", "high")
            async with running(out, cfg) as publish:
                publish(newsa(base_sa(), "ns1"))  # not an alert: not sent (select = "alerts")
                publish(a)
            # the queue was closed: run() returned once the event was delivered
            assert out.sent == 1
            assert [r[4] for r in rx.requests] == [500, 503, 200]
            for method, path, headers, body, _ in rx.requests:
                assert (method, path) == ("POST", "/hook")
                assert headers["authorization"] == "Bearer s3cret-token"
                assert headers["content-type"] == "application/json"
                assert headers["x-site"] == "lab"
                assert msgspec.json.decode(body, type=ev.AnyEvent) == a
            assert out.dropped == 0


async def test_webhook_gives_up_and_counts(tmp_path: Path) -> None:
    with trio.fail_after(30):
        m = Metrics()
        async with receiver([400]) as (rx, port):
            cfg = WebhookConfig(url=f"http://127.0.0.1:{port}/", retries=3, retry_initial=0.05, name="hook")
            out = WebhookOutput(cfg, m)
            async with running(out, cfg) as publish:
                publish(alert(overdue("ns1", 7), "r1", "Rekey overdue", "high"))
                publish(alert(overdue("ns1", 8), "r1", "Rekey overdue", "high"))
            # 400 is final (no retry); the next one succeeds
            assert [r[4] for r in rx.requests] == [400, 200]
            assert (out.sent, out.dropped) == (1, 1)
            assert 'xfrmwatch_output_dropped_total{output="hook"} 1.0' in m.exposition().decode()
        # nobody listening: 1 + 3 retries, then given up
        cfg = WebhookConfig(
            url=f"http://127.0.0.1:{free_port()}/", retries=3, retry_initial=0.05, name="hook"
        )
        out = WebhookOutput(cfg)
        async with running(out, cfg) as publish:
            publish(alert(overdue("ns1", 9), "r1", "Rekey overdue", "high"))
        assert (out.sent, out.dropped) == (0, 1)


# --- exec ------------------------------------------------------------------------------------------------


@pytest.fixture
def hook_log(monkeypatch: pytest.MonkeyPatch) -> structlog.testing.CapturingLogger:
    cap = structlog.testing.CapturingLogger()
    monkeypatch.setattr(exec_hook, "log", structlog.wrap_logger(cap, processors=[]))
    return cap


def logged(cap: structlog.testing.CapturingLogger, message: str) -> list[dict[str, Any]]:
    return [c.kwargs for c in cap.calls if c.kwargs.get("event") == message]


async def test_exec_gets_json_and_environment(
    tmp_path: Path, hook_log: structlog.testing.CapturingLogger
) -> None:
    with trio.fail_after(30):
        script = tmp_path / "hook.sh"
        script.write_text('#!/bin/sh\ncat > "$1.stdin"\nenv > "$1.env"\nexit 3\n')
        script.chmod(0o755)
        result = tmp_path / "result"
        cfg = ExecConfig(argv=[str(script), str(result)], env={"EXTRA": "yes"})
        out = ExecOutput(cfg)
        a = alert(overdue("ns1", 7), "573d274c", "Rekey overdue", "high")
        async with running(out, cfg) as publish:
            publish(newsa(base_sa(), "ns1"))  # not an alert: no run
            publish(a)
        stdin = await trio.Path(f"{result}.stdin").read_bytes()
        assert msgspec.json.decode(stdin, type=ev.AnyEvent) == a
        env_text = await trio.Path(f"{result}.env").read_text()
        env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
        assert {k: v for k, v in env.items() if k.startswith("XFRM_")} == {
            "XFRM_EVENT_TYPE": "alert", "XFRM_TIME": a.time, "XFRM_RULE_ID": "573d274c", "XFRM_RULE_LEVEL": "high",
            "XFRM_RULE_TITLE": "Rekey overdue", "XFRM_NETNS": "ns1", "XFRM_SPI": "0x00000007", "XFRM_REQID": "7",
            "XFRM_SRC": "192.0.2.1", "XFRM_DST": "192.0.2.2", "XFRM_PROTO": "esp",
            "XFRM_TUNNEL_ID": "esp/7/192.0.2.1/192.0.2.2",
        }  # fmt: skip
        assert env["EXTRA"] == "yes" and "PATH" in env
        assert "HOME" not in env or "HOME" not in os.environ, "only PATH/LANG are inherited by default"
        assert (out.ok, out.failed, out.timed_out) == (0, 1, 0)
        [call] = logged(hook_log, "exec hook failed")
        assert call["status"] == 3 and call["rule_id"] == "573d274c"


async def test_exec_timeout_kills_the_program(
    tmp_path: Path, hook_log: structlog.testing.CapturingLogger
) -> None:
    with trio.fail_after(20):
        pidfile = tmp_path / "pid"
        # a shell whose child sleeps: the whole process group must die
        cfg = ExecConfig(argv=["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
        out = ExecOutput(cfg)
        t0 = trio.current_time()
        async with running(out, cfg) as publish:
            publish(alert(overdue("ns1", 7), "r1", "Rekey overdue", "high"))
        assert trio.current_time() - t0 < 5
        assert out.timed_out == 1
        pid = int(pidfile.read_text())

        async def dead() -> bool:
            # gone, or a zombie waiting for whoever reaps orphans here
            try:
                stat = await trio.Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        await until(dead, "the killed hook's child to be dead", within=5, interval=0.05)
        assert logged(hook_log, "exec hook timed out: killed")


async def test_exec_concurrency_limit(tmp_path: Path, hook_log: structlog.testing.CapturingLogger) -> None:
    with trio.fail_after(30):
        trace = tmp_path / "trace"
        script = tmp_path / "slow.sh"
        script.write_text(f"#!/bin/sh\necho start >> {trace}\nsleep 0.3\necho end >> {trace}\n")
        script.chmod(0o755)
        cfg = ExecConfig(argv=[str(script)], concurrency=2)
        out = ExecOutput(cfg)
        async with running(out, cfg) as publish:
            for reqid in range(6):
                publish(alert(overdue("ns1", reqid), "r1", "Rekey overdue", "high"))
        running_now = peak = 0
        for line in trace.read_text().split():
            running_now += 1 if line == "start" else -1
            peak = max(peak, running_now)
        assert peak == 2 and out.ok == 6
        assert [c["status"] for c in logged(hook_log, "exec hook exited")] == [0] * 6
