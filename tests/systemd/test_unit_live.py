"""The shipped unit run by a real systemd (PID 1 of a booted Debian 12 container): readiness,
the sandbox as run, restart, reload, and the journal.

Expected values come from the unit file, the installed catalog, the kernel's capability
numbers and the syslog severities documented for the journald output, never from the
daemon's code.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from container import FIGURES, REPO, UNIT, Machine, field_values, log_record, timestamp
from support import validate_event

CAP_NET_ADMIN = 12  # linux/capability.h
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
CONFIG = "/etc/xfrmwatch/config.toml"


def catalog_ids() -> dict[str, str]:
    """Subject -> MESSAGE_ID, from the shipped catalog (the file the container installed)."""
    text = (REPO / "contrib" / "systemd" / "xfrmwatch.catalog").read_text()
    return {m[1]: m[0] for m in re.findall(r"^-- ([0-9a-f]{32})\nSubject: (.*)$", text, re.M)}


def records(m: Machine, after: str) -> list[dict[str, object]]:
    """The daemon's own log lines since a cursor, each with the journal's PRIORITY."""
    out = []
    for e in m.journal(after=after):
        rec = log_record(e)
        if rec is not None:
            out.append({**rec, "PRIORITY": e["PRIORITY"], "_PID": e["_PID"]})
    return out


def wait_record(m: Machine, event: str, after: str, timeout: float = 20) -> dict[str, object]:
    m.wait_journal(lambda e: (log_record(e) or {}).get("event") == event, after=after, timeout=timeout)
    return next(r for r in records(m, after) if r["event"] == event)


def main_pid(m: Machine) -> int:
    return int(m.show("MainPID")["MainPID"])


def proc_status(m: Machine, pid: int) -> dict[str, str]:
    text = m.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@pytest.fixture
def config(machine: Machine) -> Iterator[Path]:
    """The installed configuration file (host view); restored, and the unit running, afterwards."""
    path = machine.file(CONFIG)
    installed = path.read_text()
    yield path
    path.write_text(installed)
    if machine.show("ActiveState")["ActiveState"] != "active":
        machine.run("systemctl", "reset-failed", UNIT, check=False)
        machine.run("systemctl", "start", UNIT)
    else:
        c = machine.cursor()
        machine.run("systemctl", "reload", UNIT)
        wait_record(machine, "configuration reloaded", c)


def test_boot_started_the_enabled_unit(machine: Machine) -> None:
    """The container boots to `running` (no failed unit) and the enabled unit is active with its status."""
    assert "running" == machine.boot_state
    s = machine.show(
        "ActiveState", "SubState", "Result", "StatusText", "UnitFileState", "Type", "ExecMainStartTimestamp",
        "ActiveEnterTimestamp",
    )  # fmt: skip
    assert ("active", "running", "success", "enabled", "notify") == (
        s["ActiveState"], s["SubState"], s["Result"], s["UnitFileState"], s["Type"]
    )  # fmt: skip
    assert s["StatusText"].startswith("watching")
    ready = timestamp(s["ActiveEnterTimestamp"]) - timestamp(s["ExecMainStartTimestamp"])
    FIGURES["READY delay at boot"] = f"{ready.total_seconds():.3f} s from exec to READY (empty SPD)"


def test_ready_only_after_the_first_dump(machine: Machine) -> None:
    """With 10,000 policies in the SPD, `systemctl start` returns (the unit is active) only after
    the daemon logged its first dump complete: READY follows the dump."""
    c = machine.cursor()
    machine.run("systemctl", "stop", UNIT)
    stopped = machine.show("ActiveState", "Result", "ExecMainStatus")
    assert ("inactive", "success", "0") == (
        stopped["ActiveState"],
        stopped["Result"],
        stopped["ExecMainStatus"],
    )
    wait_record(machine, "stopped", c)

    n = 10_000
    batch = machine.file("/root/policies.batch")
    batch.write_text(
        "".join(
            f"xfrm policy add src 10.{i >> 8}.{i & 255}.1/32 dst 10.250.0.1/32 dir out\n" for i in range(n)
        )
    )
    machine.run("ip", "-batch", "/root/policies.batch")
    in_kernel = machine.run("ip", "xfrm", "policy", "list").stdout.count("\nsrc ") + 1
    assert in_kernel >= n
    try:
        c = machine.cursor()
        machine.run("systemctl", "start", UNIT)  # blocks until READY=1 (or failure)
        s = machine.show("ActiveState", "ExecMainStartTimestamp", "ActiveEnterTimestamp", "StatusText")
        assert "active" == s["ActiveState"]
        watching = wait_record(machine, "watching", c)
        assert in_kernel == watching["policies"]
        dumped_at = datetime.fromisoformat(str(watching["timestamp"]))
        started, active = timestamp(s["ExecMainStartTimestamp"]), timestamp(s["ActiveEnterTimestamp"])
        assert started < dumped_at <= active, (started, dumped_at, active)
        FIGURES["READY delay"] = (
            f"{(active - started).total_seconds():.3f} s from exec to READY with {in_kernel} policies "
            f"(dump applied {(dumped_at - started).total_seconds():.3f} s after exec)"
        )
    finally:
        machine.run("ip", "xfrm", "policy", "flush")


def test_dynamic_user_with_only_cap_net_admin(machine: Machine) -> None:
    """The running process: a dynamic user named xfrmwatch, CAP_NET_ADMIN and nothing else in
    its effective, permitted and bounding sets (none in its ambient set), no new privileges, a seccomp filter, and a read-only file system but its logs."""
    pid = main_pid(machine)
    st = proc_status(machine, pid)
    uids = {int(u) for u in st["Uid"].split()}
    assert 1 == len(uids) and uids <= set(DYNAMIC_UIDS), st["Uid"]
    (uid,) = uids
    assert machine.run("getent", "passwd", str(uid)).stdout.startswith("xfrmwatch:")
    for cap_set in ("CapEff", "CapPrm", "CapBnd"):
        assert 1 << CAP_NET_ADMIN == int(st[cap_set], 16), f"{cap_set}: {st[cap_set]}"
    # the unit's AmbientCapabilities= gave it CAP_NET_ADMIN; it empties its ambient set so that
    # the programs it starts (render workers, exec hooks) do not inherit it
    assert 0 == int(st["CapAmb"], 16), f"CapAmb: {st['CapAmb']}"
    assert ("1", "2") == (st["NoNewPrivs"], st["Seccomp"])

    mounts = {}
    for line in machine.run("cat", f"/proc/{pid}/mountinfo").stdout.splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")
    assert "ro" in mounts["/"]
    logs = [p for p in mounts if p.endswith("/var/log/private/xfrmwatch")]
    assert logs and "rw" in mounts[logs[0]], sorted(mounts)
    # journald's own record of the sender agrees
    entry = machine.journal(f"_PID={pid}")[-1]
    assert f"{1 << CAP_NET_ADMIN:x}" == entry["_CAP_EFFECTIVE"]


def test_sandbox_reads_the_spd_but_xfrmwatch_never_writes_it(machine: Machine) -> None:
    """Under the unit's own sandbox (its [Service] section, only the command changed) the installed
    xfrmwatch dumps the SPD and refuses every SPD-changing request before sending: the SPD is unchanged.
    (The kernel would let any CAP_NET_ADMIN holder write: read-only is xfrmwatch's own guarantee.)"""
    unit = (REPO / "contrib" / "systemd" / "xfrmwatch.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    probe_unit = (
        unit.replace(exec_start, "ExecStart=/opt/xfrmwatch/bin/python3 /usr/local/lib/xfrmwatch-probe.py")
        .replace("Type=notify", "Type=oneshot")
        .replace("Restart=on-failure", "Restart=no")
    )
    probe_unit = "\n".join(line for line in probe_unit.splitlines() if not line.startswith("ExecReload="))
    machine.file("/etc/systemd/system/xfrmwatch-probe.service").write_text(probe_unit + "\n")
    machine.file("/usr/local/lib/xfrmwatch-probe.py").write_text(PROBE)
    machine.run("ip", "xfrm", "policy", "add", "src", "198.18.0.1/32", "dst", "198.18.0.2/32", "dir", "in")
    try:
        before = machine.run("ip", "xfrm", "policy", "list").stdout
        machine.run("systemctl", "daemon-reload")
        p = machine.run("systemctl", "start", "xfrmwatch-probe.service", check=False, timeout=60)
        lines = [
            str(e["MESSAGE"]) for e in machine.journal("_TRANSPORT=stdout", unit="xfrmwatch-probe.service")
        ]
        assert 0 == p.returncode and lines, (p.stderr, lines)
        result = json.loads(lines[-1])
        assert before.count("\nsrc ") + 1 == result["read"]
        assert {"XFRM_MSG_NEWPOLICY", "XFRM_MSG_UPDPOLICY", "XFRM_MSG_DELPOLICY", "XFRM_MSG_FLUSHPOLICY",
                "XFRM_MSG_SETDEFAULT", "XFRM_MSG_NEWSA", "XFRM_MSG_FLUSHSA"} == set(result["refused"])  # fmt: skip
        assert [] == result["sent"]
        assert before == machine.run("ip", "xfrm", "policy", "list").stdout
    finally:
        machine.file("/etc/systemd/system/xfrmwatch-probe.service").unlink()
        machine.run("systemctl", "daemon-reload")
        machine.run("ip", "xfrm", "policy", "flush")


PROBE = """\
import json, trio
from xfrmwatch.netlink import query
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink import messages as xm
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.socket import XfrmSocket

WRITES = ("XFRM_MSG_NEWPOLICY", "XFRM_MSG_UPDPOLICY", "XFRM_MSG_DELPOLICY", "XFRM_MSG_FLUSHPOLICY",
          "XFRM_MSG_SETDEFAULT", "XFRM_MSG_NEWSA", "XFRM_MSG_FLUSHSA")

async def main():
    out = {"read": None, "refused": [], "sent": []}
    with XfrmSocket.open() as sock:
        out["read"] = len(await query.dump_policies(sock, Decoder()))
        for name in WRITES:
            try:
                await sock.request(xm.userpolicy_id_msg(), getattr(x, name))
                out["sent"].append(name)
            except ValueError:
                out["refused"].append(name)
    print(json.dumps(out), flush=True)

trio.run(main)
"""


@pytest.mark.parametrize("signal_name", ["SEGV", "KILL"])
def test_restarted_after_a_crash(machine: Machine, signal_name: str) -> None:
    """A main process killed by SIGSEGV or SIGKILL is restarted per Restart=on-failure after
    RestartSec, and the new process delivers events."""
    before = machine.show("MainPID", "NRestarts", "RestartUSec", "Restart")
    assert "on-failure" == before["Restart"]
    restart_sec = float(before["RestartUSec"].removesuffix("s"))
    c = machine.cursor()
    t0 = time.monotonic()
    machine.run("kill", f"-{signal_name}", before["MainPID"])
    after = machine.wait_unit(
        lambda s: s["ActiveState"] == "active" and s["MainPID"] not in ("0", before["MainPID"]),
        "MainPID", "ActiveState", "NRestarts", timeout=30,
    )  # fmt: skip
    delay = time.monotonic() - t0
    assert int(before["NRestarts"]) + 1 == int(after["NRestarts"])
    assert delay >= restart_sec
    exited = machine.wait_journal(lambda e: "EXIT_STATUS" in e, after=c)
    assert str(signal.Signals[f"SIG{signal_name}"].value) == exited["EXIT_STATUS"]
    assert exited["EXIT_CODE"] in ("killed", "dumped")
    FIGURES[f"restart after SIG{signal_name}"] = (
        f"{delay:.2f} s from kill to active again (RestartSec={restart_sec:g}s)"
    )

    c = machine.cursor()
    machine.run("ip", "xfrm", "policy", "add", "src", "198.18.1.1/32", "dst", "198.18.1.2/32", "dir", "out")
    try:
        e = machine.wait_journal(
            lambda e: "newpolicy" in field_values(e, "XFRM_TYPE"), "XFRM_SRC=198.18.1.1/32", after=c
        )
        assert after["MainPID"] == e["_PID"]
    finally:
        machine.run("ip", "xfrm", "policy", "flush")


def test_reload_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one(
    machine: Machine, config: Path
) -> None:
    """`systemctl reload` (SIGHUP) applies a new output without a restart; a bad file then is
    refused with file:line at priority err, and the running configuration stays in force."""
    pid = main_pid(machine)
    good = config.read_text() + (
        '\n[[output]]\nname = "reloaded"\ntype = "file"\npath = "/var/log/xfrmwatch/reloaded.jsonl"\n'
    )
    config.write_text(good)
    c = machine.cursor()
    machine.run("systemctl", "reload", UNIT)
    wait_record(machine, "configuration reloaded", c)
    machine.wait_unit(lambda s: s["ActiveState"] == "active", "ActiveState")
    assert pid == main_pid(machine)
    try:
        machine.run(
            "ip", "xfrm", "policy", "add", "src", "198.18.2.1/32", "dst", "198.18.2.2/32", "dir", "out"
        )
        wait_file_event(machine, "/var/log/xfrmwatch/reloaded.jsonl", "198.18.2.1/32")

        bad = good + "\n[daemon]\nshutdown_timeout = 5.0\nno_such_setting = 1\n"
        bad_line = bad.splitlines().index("no_such_setting = 1") + 1
        config.write_text(bad)
        c = machine.cursor()
        machine.run("systemctl", "reload", UNIT)
        failed = wait_record(machine, "reload failed: keeping the running configuration", c)
        assert f"{CONFIG}:{bad_line}:" in str(failed["error"])
        assert "3" == failed["PRIORITY"]  # err
        machine.wait_unit(lambda s: s["ActiveState"] == "active", "ActiveState")
        assert pid == main_pid(machine)
        machine.run(
            "ip", "xfrm", "policy", "add", "src", "198.18.3.1/32", "dst", "198.18.3.2/32", "dir", "out"
        )
        wait_file_event(machine, "/var/log/xfrmwatch/reloaded.jsonl", "198.18.3.1/32")
    finally:
        machine.run("ip", "xfrm", "policy", "flush")


def test_ecs_output_rendered_by_its_worker_inside_the_unit(machine: Machine, config: Path) -> None:
    """An ECS file output with `render = "process"` under the unit's sandbox: the daemon starts
    its render worker inside the unit (its cgroup, the same dynamic user, no new privileges,
    the seccomp filter, no capability), the ECS document of a new policy reaches the file (ECS `source.ip`,
    `destination.ip`, `related.ip` of a /32 selector), and the reload that removes the output
    ends the worker."""
    pid = main_pid(machine)
    installed = config.read_text()
    path = "/var/log/xfrmwatch/ecs.jsonl"
    render = "process"
    config.write_text(
        installed
        + f'\n[[output]]\nname = "ecs"\ntype = "file"\npath = "{path}"\nformat = "ecs"\nrender = "{render}"\n'
    )
    c = machine.cursor()
    machine.run("systemctl", "reload", UNIT)
    wait_record(machine, "configuration reloaded", c)
    try:
        machine.run(
            "ip", "xfrm", "policy", "add", "src", "198.18.4.1/32", "dst", "198.18.4.2/32", "dir", "out"
        )
        deadline = time.monotonic() + 15
        while True:
            docs = [json.loads(line) for line in machine.run("cat", path, check=False).stdout.splitlines()]
            doc = next((d for d in docs if d.get("source", {}).get("ip") == "198.18.4.1"), None)
            if doc is not None:
                break
            assert time.monotonic() < deadline, f"no ECS document of 198.18.4.1 in {path}: {docs[-3:]}"
            time.sleep(0.1)
        assert "198.18.4.2" == doc["destination"]["ip"]
        assert {"198.18.4.1", "198.18.4.2"} <= set(doc["related"]["ip"])

        workers = [
            int(w)
            for w in machine.run("pgrep", "-P", str(pid), "-f", "render_worker", check=False).stdout.split()
        ]
        assert 1 == len(workers), workers
        main_st, worker_st = proc_status(machine, pid), proc_status(machine, workers[0])
        assert main_st["Uid"] == worker_st["Uid"]
        assert ("1", "2") == (worker_st["NoNewPrivs"], worker_st["Seccomp"])
        # it renders and writes to a descriptor it was given: none of the daemon's capabilities
        for cap_set in ("CapEff", "CapPrm", "CapAmb"):
            assert 0 == int(worker_st[cap_set], 16), f"{cap_set}: {worker_st[cap_set]}"
        assert 1 << CAP_NET_ADMIN == int(main_st["CapEff"], 16)
        cgroup = machine.run("cat", f"/proc/{pid}/cgroup").stdout
        assert cgroup == machine.run("cat", f"/proc/{workers[0]}/cgroup").stdout
    finally:
        machine.run("ip", "xfrm", "policy", "flush")
        config.write_text(installed)
        c = machine.cursor()
        machine.run("systemctl", "reload", UNIT)
        wait_record(machine, "configuration reloaded", c)
    deadline = time.monotonic() + 10
    while machine.run("pgrep", "-f", "render_worker", check=False).stdout.strip():
        assert time.monotonic() < deadline, "the render worker outlived its output"
        time.sleep(0.1)
    assert pid == main_pid(machine)


def wait_file_event(m: Machine, path: str, src: str, timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        text = m.run("cat", path, check=False).stdout
        for line in text.splitlines():
            e = json.loads(line)
            if e["type"] == "newpolicy" and e["policy"]["sel"]["src"] == src:
                validate_event(e)
                return dict(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"no newpolicy from {src} in {path}:\n{text[-2000:]}")
        time.sleep(0.1)


def test_bad_config_at_start_fails_once_with_one_line(machine: Machine, config: Path) -> None:
    """A bad configuration at start: the unit fails with exit 2 and is not restarted in a loop
    (RestartPreventExitStatus), and the journal has one line at priority err naming file:line."""
    bad = config.read_text() + "\n[watch]\nacquire_group = true\n"
    bad_line = bad.splitlines().index("acquire_group = true") + 1
    config.write_text(bad)
    c = machine.cursor()
    p = machine.run("systemctl", "restart", UNIT, check=False)
    assert 0 != p.returncode
    s = machine.show("ActiveState", "Result", "ExecMainStatus", "NRestarts", "InvocationID")
    assert ("failed", "exit-code", "2") == (s["ActiveState"], s["Result"], s["ExecMainStatus"])
    assert "0" == s["NRestarts"]  # `systemctl restart` zeroes it; an automatic restart would count
    lines = machine.journal("_TRANSPORT=stdout", f"_SYSTEMD_INVOCATION_ID={s['InvocationID']}", after=c)
    assert 1 == len(lines), [e["MESSAGE"] for e in lines]
    assert str(lines[0]["MESSAGE"]).startswith(f"xfrmwatch: {CONFIG}:{bad_line}: ")
    assert "3" == lines[0]["PRIORITY"]  # err


def test_events_in_the_journal_with_fields_and_catalog(machine: Machine) -> None:
    """A policy added and a larval SA that hard-expires inside the container reach the journal as
    structured entries of the unit: XFRM_* fields, the catalog's MESSAGE_ID, `journalctl -x` text."""
    ids = catalog_ids()
    pid = main_pid(machine)
    machine.sysctl_net("net.core.xfrm_acq_expires", "1")
    c = machine.cursor()
    machine.run(
        "ip", "xfrm", "policy", "add", "src", "192.0.2.10/32", "dst", "192.0.2.20/32", "dir", "out",
        "tmpl", "src", "198.51.100.1", "dst", "198.51.100.2", "proto", "esp", "reqid", "7", "mode", "tunnel",
    )  # fmt: skip
    machine.run("ip", "xfrm", "state", "allocspi", "src", "192.0.2.30", "dst", "192.0.2.40", "proto", "esp",
                "min", "0x4242", "max", "0x4242")  # fmt: skip
    try:
        pol = machine.wait_journal(lambda e: True, "XFRM_TYPE=newpolicy", "XFRM_SRC=192.0.2.10/32", after=c)
        assert ids["IPsec policy added"] == pol["MESSAGE_ID"]
        assert (UNIT, "xfrmwatch", str(pid), "journal") == (
            pol["_SYSTEMD_UNIT"], pol["SYSLOG_IDENTIFIER"], pol["_PID"], pol["_TRANSPORT"]
        )  # fmt: skip
        assert {"192.0.2.10/32", "198.51.100.1"} <= set(field_values(pol, "XFRM_SRC"))
        assert {"192.0.2.20/32", "198.51.100.2"} <= set(field_values(pol, "XFRM_DST"))
        assert (["out"], ["7"], ["event"]) == (
            field_values(pol, "XFRM_DIR"),
            field_values(pol, "XFRM_REQID"),
            field_values(pol, "XFRM_KIND"),
        )
        event = json.loads(pol["XFRM_JSON"])
        validate_event(event)
        assert ("192.0.2.10/32", "198.51.100.2") == (
            event["policy"]["sel"]["src"],
            event["policy"]["tmpl"][0]["dst"],
        )

        exp = machine.wait_journal(
            lambda e: True, "XFRM_TYPE=expire", "XFRM_SPI=0x00004242", after=c, timeout=20
        )
        assert ids["IPsec SA lifetime expired"] == exp["MESSAGE_ID"]
        event = json.loads(exp["XFRM_JSON"])
        validate_event(event)
        assert (True, "192.0.2.40") == (event["hard"], event["sa"]["dst"])

        text = machine.run(
            "journalctl", "-x", "--no-pager", "-u", UNIT, f"MESSAGE_ID={pol['MESSAGE_ID']}"
        ).stdout
        assert "Subject: IPsec policy added" in text and "Defined-By: xfrmwatch" in text
    finally:
        machine.run("ip", "xfrm", "policy", "flush")
        machine.run("ip", "xfrm", "state", "flush")


def test_priorities_in_the_journal(machine: Machine) -> None:
    """PRIORITY follows the documented table: a policy event info (6), a flush notice (5), the
    high-level alert it raises err (3); the daemon's info log lines 6."""
    ids = catalog_ids()
    c = machine.cursor()
    machine.run("ip", "xfrm", "policy", "add", "src", "198.18.4.1/32", "dst", "198.18.4.2/32", "dir", "out")
    machine.run("ip", "xfrm", "policy", "flush")
    alert = machine.wait_journal(
        lambda e: True, f"MESSAGE_ID={ids['Alert: Security policy database flushed']}", after=c
    )
    new = machine.journal("XFRM_TYPE=newpolicy", "XFRM_SRC=198.18.4.1/32", after=c)
    flush = machine.journal("XFRM_TYPE=flushpolicy", after=c)
    # (the previous test's clean-up flush may land after the cursor too: every flush is a notice)
    assert (["6"], {"5"}) == ([e["PRIORITY"] for e in new], {e["PRIORITY"] for e in flush})
    assert ("3", "high", "alert") == (alert["PRIORITY"], alert["RULE_LEVEL"], alert["XFRM_KIND"])
    assert ids["IPsec policy database flushed"] == flush[0]["MESSAGE_ID"]
    infos = [r for r in records(machine, "") if r["level"] == "info"]
    assert infos and {"6"} == {r["PRIORITY"] for r in infos}


def test_exposure_score_as_run(machine: Machine) -> None:
    """`systemd-analyze security` of the loaded unit, asked of the container's systemd: 2.0 or better."""
    out = machine.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    m = re.search(r"Overall exposure level for xfrmwatch\.service: ([0-9.]+)", out)
    assert m, out
    FIGURES["systemd-analyze security (as run)"] = f"exposure {m.group(1)}"
    assert float(m.group(1)) <= 2.0
