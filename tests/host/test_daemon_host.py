"""`xfrmwatch run` on the host kernel: config, namespaces coming and going, SIGHUP, SIGTERM, READY."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import ROOT, XFRMWATCH, run_cli, sh, validate_event


class Daemon:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log = config.with_suffix(".log")
        self.proc = subprocess.Popen(
            [*XFRMWATCH, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.wait_log(lambda r: r.get("event") == "ready")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def wait_log(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.records():
                if pred(r):
                    return r
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"not in the log: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for e in out:
        validate_event(e)
    return out


def wait_events(path: Path, pred: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(path):
            if pred(e):
                return e
        time.sleep(0.05)
    raise AssertionError(f"no matching event in {path}: {[e['type'] for e in events(path)][-20:]}")


@pytest.fixture
def extra_netns() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for n in made:
        sh(f"ip netns del {n}", check=False)


def test_run_watches_configured_and_new_namespaces(netns: str, tmp_path: Path, extra_netns: list[str]) -> None:
    """Events and alerts reach their outputs, named by namespace; a namespace that
    appears under /run/netns is picked up, and dropped when it goes."""
    ev_file, alert_file = tmp_path / "events.jsonl", tmp_path / "alerts.jsonl"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[watch]\nnetns = ["{netns}"]\nall_netns = true\nscan_interval = 0.2\n[metrics]\nenabled = false\n'
        f'[[output]]\ntype = "file"\npath = "{ev_file}"\nselect = "events"\n'
        f'[[output]]\ntype = "file"\nname = "alerts"\npath = "{alert_file}"\nselect = "alerts"\nmin_level = "high"\n'
    )
    d = Daemon(cfg)
    try:
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        e = wait_events(ev_file, lambda e: e["type"] == "newpolicy")
        assert netns == e["netns"]
        sh(f"ip -n {netns} xfrm policy flush")
        a = wait_events(alert_file, lambda e: e["type"] == "alert")
        assert ("Security policy database flushed", netns) == (a["rule"]["title"], a["netns"])
        assert all(x["type"] == "alert" and x["rule"]["level"] in ("high", "critical") for x in events(alert_file))
        assert not [x for x in events(ev_file) if x["type"] == "alert"]
        late = f"xwlate-{uuid.uuid4().hex[:6]}"
        sh(f"ip netns add {late}")
        extra_netns.append(late)
        d.wait_log(lambda r: r.get("event") == "watching" and r.get("netns") == late)
        sh(f"ip -n {late} xfrm policy add src 10.5.0.0/24 dst 10.6.0.0/24 dir in")
        assert late == wait_events(ev_file, lambda e: e["type"] == "newpolicy" and e["netns"] == late)["netns"]
        sh(f"ip netns del {late}")
        d.wait_log(lambda r: r.get("event") == "namespace gone: stop watching" and r.get("netns") == late)
    finally:
        assert 0 == d.stop()


def test_sighup_reload_keeps_old_config_when_new_is_bad(netns: str, tmp_path: Path) -> None:
    """A bad config on SIGHUP is refused (logged) and the daemon keeps running; a good one
    applies: here an output file is renamed (logrotate) and reopened."""
    ev_file = tmp_path / "events.jsonl"
    cfg = tmp_path / "c.toml"
    good = f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n[[output]]\ntype = "file"\npath = "{ev_file}"\n'
    cfg.write_text(good)
    d = Daemon(cfg)
    try:
        cfg.write_text(good + "[watch2]\n")
        d.proc.send_signal(signal.SIGHUP)
        bad = d.wait_log(lambda r: r.get("event", "").startswith("reload failed"))
        assert f"{cfg}:8: Object contains unknown field `watch2`" in bad["error"]
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        wait_events(ev_file, lambda e: e["type"] == "newpolicy")
        ev_file.rename(tmp_path / "events.jsonl.1")
        cfg.write_text(good)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log(lambda r: r.get("event") == "configuration reloaded")
        sh(f"ip -n {netns} xfrm policy add src 10.3.0.0/24 dst 10.4.0.0/24 dir out")
        e = wait_events(ev_file, lambda e: e["type"] == "newpolicy")
        assert "10.3.0.0/24" == e["policy"]["sel"]["src"]
        assert 1 == len(events(tmp_path / "events.jsonl.1"))
    finally:
        assert 0 == d.stop()


def test_ready_notification_and_prompt_sigterm(netns: str, tmp_path: Path) -> None:
    """READY=1 reaches $NOTIFY_SOCKET once groups are joined and the dump applied; SIGTERM exits 0 fast."""
    sock_path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(20)
    sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n[[output]]\ntype = "file"\npath = "{tmp_path}/e.jsonl"\n')
    d = Daemon(cfg, env={"NOTIFY_SOCKET": sock_path})
    try:
        msg = s.recv(4096).decode()
        assert msg.startswith("READY=1")
        watching = d.wait_log(lambda r: r.get("event") == "watching")
        assert 1 == watching["policies"]  # the initial dump was applied before READY
    finally:
        t0 = time.monotonic()
        assert 0 == d.stop()
        assert time.monotonic() - t0 < 6
        s.close()


def test_config_check_errors_name_file_and_line(tmp_path: Path) -> None:
    """`config check`: every mistake as file:line, exit 2, no traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[watch]\nacquire = "sometimes"\n\n[[output]]\ntype = "file"\npath = "/tmp/x"\nselect = "few"\n')
    p = run_cli("config", "check", "--config", str(cfg))
    assert 2 == p.returncode
    lines = p.stderr.strip().splitlines()
    assert [f"xfrmwatch: {cfg}:2: acquire must be auto, on or off, not 'sometimes'",
            f"xfrmwatch: {cfg}:7: select must be all, alerts or events, not 'few'"] == lines  # fmt: skip
    cfg.write_text('[[output]]\ntype = "carrier-pigeon"\n')
    p = run_cli("config", "check", "--config", str(cfg))
    assert 2 == p.returncode and f"{cfg}:2: unknown output type" in p.stderr
    p = run_cli("config", "check", "--config", str(tmp_path / "missing.toml"))
    assert 2 == p.returncode and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_run_without_cap_net_admin(tmp_path: Path) -> None:
    """Without CAP_NET_ADMIN the daemon says so in one line and exits 3."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[metrics]\nenabled = false\n')
    p = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", *XFRMWATCH, "run", "--config", str(cfg)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert 3 == p.returncode
    assert "CAP_NET_ADMIN" in p.stderr.strip().splitlines()[-1]


def test_output_that_cannot_start(netns: str, tmp_path: Path) -> None:
    """At start: one line naming the output, exit 2.  On reload: refused, the old outputs keep working."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[metrics]\nenabled = false\n[[output]]\ntype = "file"\npath = "{blocker}/events.jsonl"\n')
    p = subprocess.run([*XFRMWATCH, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert 2 == p.returncode, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("xfrmwatch: output 'file' cannot start:") and "Traceback" not in p.stderr

    ev_file = tmp_path / "events.jsonl"
    good = f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n[[output]]\ntype = "file"\npath = "{ev_file}"\n'
    cfg.write_text(good)
    d = Daemon(cfg)
    try:
        cfg.write_text(good + f'[[output]]\ntype = "file"\nname = "second"\npath = "{blocker}/x.jsonl"\n')
        d.proc.send_signal(signal.SIGHUP)
        bad = d.wait_log(lambda r: r.get("event", "").startswith("reload failed"))
        assert "output 'second' cannot start" in bad["error"]
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        wait_events(ev_file, lambda e: e["type"] == "newpolicy")
    finally:
        assert 0 == d.stop()


def test_ecs_file_output_in_a_worker_process(netns: str, tmp_path: Path) -> None:
    """An ECS file output rendered by its worker process: the same bytes the daemon renders
    from the native events it wrote beside them; SIGHUP (logrotate) continues in a new file;
    SIGTERM as soon as the native output has a burst's last event: the ECS output writes
    every event before the daemon exits 0."""
    from xfrmwatch import events as ev
    from xfrmwatch.output.render import json_lines_renderer

    ecs_file, json_file = tmp_path / "ecs.jsonl", tmp_path / "events.jsonl"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n'
        f'[[output]]\ntype = "file"\nname = "ecs"\npath = "{ecs_file}"\nformat = "ecs"\nrender = "process"\n'
        f'[[output]]\ntype = "file"\nname = "native"\npath = "{json_file}"\n'
    )
    batch = tmp_path / "batch"
    batch.write_text("".join(f"xfrm policy add src 10.9.{i >> 8}.{i & 255}/32 dst 10.8.0.1/32 dir out\n" for i in range(2000)))
    d = Daemon(cfg)
    try:
        sh(f"ip -n {netns} xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out")
        wait_events(json_file, lambda e: e["type"] == "newpolicy")
        deadline = time.monotonic() + 15
        while b"xfrm-newpolicy" not in (ecs_file.read_bytes() if ecs_file.exists() else b""):
            assert time.monotonic() < deadline, "no ECS line"
            time.sleep(0.05)
        ecs_file.rename(tmp_path / "ecs.jsonl.1")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log(lambda r: r.get("event") == "configuration reloaded")
        sh(f"ip -n {netns} -batch {batch}")
        deadline = time.monotonic() + 30
        while json_file.read_bytes().count(b'"type":"newpolicy"') < 2001:
            assert time.monotonic() < deadline, "the burst did not reach the native output"
            time.sleep(0.01)
    finally:
        assert 0 == d.stop()
    native = [msgspec.json.decode(line, type=ev.AnyEvent) for line in json_file.read_bytes().splitlines()]
    assert 2001 == sum(isinstance(e, ev.NewPolicy) for e in native)
    render = json_lines_renderer("ecs")
    assert render(native) == (tmp_path / "ecs.jsonl.1").read_bytes() + ecs_file.read_bytes()
    assert 1 == (tmp_path / "ecs.jsonl.1").read_bytes().count(b"xfrm-newpolicy")
