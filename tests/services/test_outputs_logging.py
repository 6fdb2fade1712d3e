"""The journald and syslog outputs against the real receivers from Debian's packages.

* ``systemd-journald`` (package ``systemd``) runs standalone inside ``unshare -m``
  with a private ``/run`` (a temporary directory bound on it) and its own
  journald.conf (volatile storage, nothing forwarded, no rate limit); the test
  reads what it stored with ``journalctl -D``.  ``journalctl -x`` is checked
  against the shipped catalog compiled into a temporary database (bound over
  ``/var/lib/systemd`` in another private mount namespace).
* ``rsyslogd`` (packages ``rsyslog``, ``rsyslog-gnutls`` for TLS) listens on
  127.0.0.1 (UDP, TCP, TLS with a CA made here with the ``openssl`` CLI) and on
  unix sockets in a temporary directory, never on ``/dev/log``, and writes every
  message as ``%jsonmesg%`` (the parsed RFC 5424 fields) after ``mmpstrucdata``
  (the parsed structured data).

syslog-ng is not tested: Debian's ``syslog-ng-core`` conflicts with ``rsyslog``
(both provide ``system-log-daemon``), so they cannot be installed together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import msgspec
import pytest
import trio
from support import IS_ROOT, ROOT

from xfrmwatch import events as ev
from xfrmwatch import levels as lv
from xfrmwatch.detect.pack import shipped_rules
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output import journald as jd
from xfrmwatch.output.syslog import FACILITIES, SD_ID, SyslogConfig, SyslogOutput, sd_escape, sd_name_ok
from xfrmwatch.timestamps import utc_precise

CI = bool(os.environ.get("CI"))
TIMEOUT = 60  # seconds, for each test's I/O
CATALOG = ROOT / "contrib" / "systemd" / "xfrmwatch.catalog"
JOURNALD = "/lib/systemd/systemd-journald"
RSYSLOG_MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="services tier needs root")


def _missing(what: str, package: str) -> None:
    msg = f"{what} not installed (apt-get install {package})"
    if CI:
        pytest.fail(msg + " [CI is set: a missing service binary is a failure]")
    pytest.skip(msg)


def _need_bin(name: str, package: str) -> str:
    path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
    if path is None:
        _missing(name, package)
    assert path is not None
    return path


@pytest.fixture
def rsyslog_tls(rsyslogd_bin: str) -> str:
    if not any(RSYSLOG_MODULES.glob("lmnsd_gtls.so")) and not list(
        Path("/usr/lib").rglob("rsyslog/lmnsd_gtls.so")
    ):
        _missing("rsyslog's gtls driver", "rsyslog-gnutls")
    _need_bin("openssl", "openssl")
    return rsyslogd_bin


# --- events -----------------------------------------------------------------------------------

TEMPLATE: ev.SA = next(
    e.sa  # a real GCM tunnel SA recorded from the UML kernel
    for e in Decoder().decode((ROOT / "tests/fixtures/uml/sa/0002-NEWSA.bin").read_bytes(), 0.0, 0.0)
    if isinstance(e, ev.SaEvent)
)


def unique_spi() -> str:
    return f"0x{uuid.uuid4().int & 0x7FFFFFFF | 0x100:08x}"


def sa(spi: str, src: str = "192.0.2.1", dst: str = "192.0.2.2", reqid: int = 7) -> ev.SA:
    return msgspec.structs.replace(TEMPLATE, spi=spi, src=src, dst=dst, reqid=reqid)


def common(netns: str) -> dict[str, Any]:
    return {"time": utc_precise(time.time()), "mono": 0.0, "netns": netns, "nlmsg_pid": 0, "nlmsg_seq": 0}


def rule(level: str, title: str = "", rid: str = "") -> ev.RuleRef:
    return ev.RuleRef(
        id=rid or str(uuid.uuid4()), title=title or f"test rule {level}", level=level, tags=["xfrmwatch.test"]
    )


@asynccontextmanager
async def running(output: Any, size: int = 100) -> AsyncIterator[trio.MemorySendChannel[ev.Event]]:
    """The output's run() in a nursery; yields the queue's send side.  Leaving the
    block closes the queue and waits until the output has drained it."""
    send, recv = trio.open_memory_channel[ev.Event](size)
    async with trio.open_nursery() as n:
        await n.start(output.run, recv)
        async with send:
            yield send


async def wait_until(predicate: Callable[[], Any], what: str, limit: float = 20) -> Any:
    """Poll ``predicate`` (on trio's clock) until it returns something truthy."""
    with trio.move_on_after(limit):
        while True:
            got = predicate()
            if got:
                return got
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def append(path: Path) -> IO[bytes]:
    """A log file for a service's output (opened before it starts)."""
    return open(path, "ab")  # closed by the caller's with


async def stop_process(proc: trio.Process, sig: int = signal.SIGTERM) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- journald ------------------------------------------------------------------------------------

JOURNALD_CONF = """\
[Journal]
Storage=volatile
RuntimeMaxUse=64M
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
RateLimitBurst=0
"""


class Journald:
    """A standalone systemd-journald in a private mount namespace whose /run is
    ``<base>/run``: its socket and journal files are visible from here."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.run = base / "run"
        self.run.mkdir(exist_ok=True)
        self.conf = base / "journald.conf"
        self.conf.write_text(JOURNALD_CONF)
        self.log = base / "journald.log"
        self.proc: trio.Process | None = None

    @property
    def socket(self) -> Path:
        return self.run / "systemd" / "journal" / "socket"

    @property
    def journal_dir(self) -> Path:
        return self.run / "log" / "journal"

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    async def start(self) -> None:
        script = (
            "set -e; mount --make-rprivate /; "
            f"mount --bind {self.run} /run; "
            f"if [ -f /etc/systemd/journald.conf ]; then mount --bind {self.conf} /etc/systemd/journald.conf; fi; "
            "if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi; "
            f"exec {JOURNALD}"
        )
        with append(self.log) as f:
            self.proc = await trio.lowlevel.open_process(
                ["unshare", "-m", "sh", "-c", script], stdout=f, stderr=subprocess.STDOUT
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"systemd-journald exited: {self.log.read_text()}")
            return self._accepts()

        await wait_until(ready, "systemd-journald's socket", limit=15)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            await stop_process(self.proc, sig)
            self.proc = None

    async def journalctl(self, *args: str) -> str:
        p = await trio.run_process(
            ["journalctl", "-D", str(self.journal_dir), "--no-pager", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return p.stdout.decode()

    async def entries(self, *matches: str, count: int = 1) -> list[dict[str, Any]]:
        """The entries matching ``matches`` (``-o json -a``) once there are ``count``."""
        got: list[dict[str, Any]] = []
        with trio.move_on_after(20):
            while True:
                out = await self.journalctl("-o", "json", "-a", *matches)
                got = [json.loads(line) for line in out.splitlines() if line.strip()]
                if len(got) >= count:
                    return got
                await trio.sleep(0.1)
        raise AssertionError(f"journal has {len(got)} entries for {matches}, expected {count}")


@pytest.fixture
async def journald(journald_tools: None, short_tmp: Path) -> AsyncIterator[Journald]:
    j = Journald(short_tmp)
    with trio.fail_after(30):
        await j.start()
    try:
        yield j
    finally:
        with trio.CancelScope(shield=True):
            await j.stop()


def field(entry: dict[str, Any], name: str) -> Any:
    """A field of ``journalctl -o json``: a string, a list for a repeated field;
    byte arrays (non-printable values) decoded."""

    def one(v: Any) -> Any:
        return bytes(v).decode() if isinstance(v, list) and all(isinstance(b, int) for b in v) else v

    v = entry.get(name)
    if isinstance(v, list) and v and not isinstance(v[0], int):
        return [one(x) for x in v]
    return one(v)


def journald_output(j: Journald, **kw: Any) -> jd.JournaldOutput:
    return jd.JournaldOutput(
        jd.JournaldConfig(socket=str(j.socket), backoff_initial=0.05, backoff_max=0.2, **kw)
    )


async def test_journald_events_and_alerts(journald: Journald) -> None:
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    spi1, spi2 = unique_spi(), unique_spi()
    newsa = ev.NewSA(**common(ns), sa=sa(spi1))
    unreplaced = tunnel_down(ns, 7, spi2)
    overrun = ev.Overrun(**common(ns), detail="receive buffer full")
    malformed = ev.Malformed(**common(ns), reason="short", msg_type=16, length=3)
    flush = ev.FlushSA(**common(ns), proto="esp")
    multi = rule("high", title='weak "integrity"\nsecond line \\ ]')
    alert = ev.Alert(**common(ns), rule=multi, group={"sa.reqid": "7"}, events=[newsa, unreplaced])
    levels = {lvl: ev.Alert(**common(ns), rule=rule(lvl), events=[newsa]) for lvl in lv.SEVERITIES}
    out = journald_output(journald)
    with trio.fail_after(TIMEOUT):
        async with running(out) as send:
            for sent in (newsa, unreplaced, overrun, malformed, flush, alert, *levels.values()):
                await send.send(sent)
        entries = await journald.entries(f"XFRM_NETNS={ns}", count=11)
        by_spi = await journald.entries(f"XFRM_SPI={spi2}", count=2)
    assert out.sender.sent == 11 and out.dropped == 0 and out.sent_memfd == 0

    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_type.setdefault(field(entry, "XFRM_TYPE"), []).append(entry)
        assert field(entry, "SYSLOG_IDENTIFIER") == "xfrmwatch"
        assert "\n" not in field(entry, "MESSAGE")
        # the whole event survives as JSON
        msgspec.json.decode(field(entry, "XFRM_JSON").encode(), type=ev.AnyEvent)

    (e,) = by_type["newsa"]
    assert field(e, "PRIORITY") == "6"
    assert field(e, "MESSAGE_ID") == jd.message_id_for_type("newsa")
    assert field(e, "MESSAGE").startswith(f"newsa: esp spi {spi1} reqid 7 192.0.2.1 -> 192.0.2.2")
    assert field(e, "XFRM_SPI") == spi1
    assert field(e, "XFRM_REQID") == "7"
    assert field(e, "XFRM_SRC") == "192.0.2.1" and field(e, "XFRM_DST") == "192.0.2.2"
    assert field(e, "XFRM_PROTO") == "esp"
    assert field(e, "XFRM_KIND") == "event"
    assert msgspec.json.decode(field(e, "XFRM_JSON").encode(), type=ev.AnyEvent) == newsa

    expected_prio = {"tunnel_down": "3", "overrun": "3", "malformed": "4", "flushsa": "5"}
    for t, prio in expected_prio.items():
        (e,) = by_type[t]
        assert field(e, "PRIORITY") == prio, t
        assert field(e, "MESSAGE_ID") == jd.message_id_for_type(t)

    alerts = {field(a, "RULE_ID"): a for a in by_type["alert"]}
    a = alerts[multi.id]
    assert field(a, "PRIORITY") == "3"
    assert field(a, "MESSAGE_ID") == jd.message_id_for_rule(multi.id)
    assert field(a, "RULE_LEVEL") == "high"
    assert field(a, "RULE_TITLE") == multi.title  # multi-line: the length-prefixed form
    assert field(a, "RULE_TAG") == "xfrmwatch.test"
    assert field(a, "XFRM_SPI") == [spi1, spi2]  # repeated field: one per triggering event
    assert field(a, "MESSAGE").startswith("alert: [high] weak")
    for lvl, al in levels.items():
        got = alerts[al.rule.id]
        assert field(got, "PRIORITY") == str(lv.SEVERITIES[lvl].syslog), lvl
        assert field(got, "MESSAGE_ID") == jd.message_id_for_rule(al.rule.id)
    assert {"critical": 2, "high": 3, "medium": 4, "low": 5, "informational": 6} == {
        lvl: sev.syslog for lvl, sev in lv.SEVERITIES.items()
    }

    # a match on a repeated field finds the alert too
    assert sorted(field(x, "XFRM_TYPE") for x in by_spi) == ["alert", "tunnel_down"]


async def test_journald_large_entry_goes_through_memfd(journald: Journald) -> None:
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    big = "x" * 300_000  # > 250 KB: EMSGSIZE on the datagram socket
    small = ev.Overrun(**common(ns), detail="small")
    large = ev.Malformed(**common(ns), reason=big, msg_type=16, length=300_000)
    out = journald_output(journald)
    with trio.fail_after(TIMEOUT):
        async with running(out) as send:
            await send.send(small)
            await send.send(large)
        entries = await journald.entries(f"XFRM_NETNS={ns}", count=2)
    assert out.sender.sent == 2 and out.sent_memfd == 1
    (e,) = [x for x in entries if field(x, "XFRM_TYPE") == "malformed"]
    assert field(e, "MESSAGE") == f"malformed: type 16 length 300000: {big}"
    assert msgspec.json.decode(field(e, "XFRM_JSON").encode(), type=ev.AnyEvent) == large
    assert len(jd.JournalRenderer()(large)) > 600_000


async def test_journald_reconnects_with_backoff(journald_tools: None, short_tmp: Path) -> None:
    """journald absent at first, then killed and restarted: every entry arrives."""
    j = Journald(short_tmp)
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    out = journald_output(j)
    try:
        with trio.fail_after(TIMEOUT):
            async with running(out) as send:
                await send.send(ev.Overrun(**common(ns), detail="before journald"))
                await trio.sleep(0.3)  # no socket yet: retried with backoff, not raised
                assert out.sender.sent == 0
                await j.start()
                await wait_until(lambda: out.sender.sent == 1, "the first entry")
                await j.stop(signal.SIGKILL)
                for i in range(3):
                    await send.send(ev.Overrun(**common(ns), detail=f"while down {i}"))
                await trio.sleep(0.3)
                await j.start()
                await wait_until(lambda: out.sender.sent == 4, "the queued entries")
            entries = await j.entries(f"XFRM_NETNS={ns}", count=4)
    finally:
        with trio.CancelScope(shield=True):
            await j.stop()
    assert [field(e, "MESSAGE") for e in entries] == [
        "overrun: before journald",
        *(f"overrun: while down {i}" for i in range(3)),
    ]
    assert out.dropped == 0


async def test_journald_unreachable_never_raises_and_drains(short_tmp: Path) -> None:
    """No journald at all: the output keeps retrying, and once its queue is closed
    it gives up after drain_timeout, counting what it dropped."""
    out = jd.JournaldOutput(
        jd.JournaldConfig(
            socket=str(short_tmp / "nothing"), backoff_initial=0.05, backoff_max=0.1, drain_timeout=0.5
        )
    )
    with trio.fail_after(TIMEOUT):
        async with running(out) as send:
            for i in range(3):
                await send.send(ev.Overrun(**common("x"), detail=str(i)))
            await trio.sleep(0.3)
    assert out.sender.sent == 0 and out.dropped == 3


# --- the catalog ----------------------------------------------------------------------------------


def catalog_sections(text: str) -> dict[str, dict[str, str]]:
    """MESSAGE_ID -> header fields of each ``-- ID`` section of a catalog file."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    in_header = False
    for line in text.splitlines():
        if line.startswith("-- "):
            mid = line[3:].split()[0]
            assert mid not in sections, f"duplicate catalog section {mid}"
            current = sections[mid] = {}
            in_header = True
        elif current is not None and in_header:
            if not line:
                in_header = False
            else:
                k, _, v = line.partition(": ")
                current[k] = v
    return sections


def test_catalog_lists_every_message_id() -> None:
    sections = catalog_sections(CATALOG.read_text())
    for mid, headers in sections.items():
        assert len(mid) == 32 and int(mid, 16) >= 0 and mid == mid.lower(), mid
        assert headers.get("Subject") and headers.get("Defined-By") == "xfrmwatch", mid
    # every MESSAGE_ID the renderer produces for an event type ...
    types = [cls.__struct_config__.tag for cls in ev.AnyEvent.__args__]  # type: ignore[attr-defined]
    assert set(jd.catalog_event_types()) == set(types) - {"alert"}
    for t in jd.catalog_event_types():
        assert jd.message_id_for_type(t) in sections, (
            f"{t}: regenerate {CATALOG.name} (python -m xfrmwatch.output.journald)"
        )
    # ... and for the shipped rules
    for r in jd.read_rules([shipped_rules()]):
        assert jd.message_id_for_rule(str(r["id"])) in sections, (
            f"rule {r['title']}: regenerate {CATALOG.name}"
        )
    # the IDs are stable: never derive them differently
    assert jd.message_id_for_type("overrun") == "fa74275920095c0ab22b166c874d2646"


async def test_journalctl_explains_message_ids(journald: Journald, short_tmp: Path) -> None:
    root = short_tmp / "root"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    (root / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, root / "usr/lib/systemd/catalog")
    overrun_rule = next(r for r in jd.read_rules([shipped_rules()]) if "overrun" in str(r["title"]).lower())
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    overrun = ev.Overrun(**common(ns), detail="receive buffer full")
    alert = ev.Alert(
        **common(ns),
        rule=ev.RuleRef(id=overrun_rule["id"], title=overrun_rule["title"], level="medium"),
        events=[overrun],
    )
    with trio.fail_after(TIMEOUT):
        p = await trio.run_process(
            ["journalctl", f"--root={root}", "--update-catalog"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert p.returncode == 0, p.stderr.decode()
        listed = await trio.run_process(
            ["journalctl", f"--root={root}", "--list-catalog"], capture_stdout=True, check=True
        )
        ids = {line.split()[0] for line in listed.stdout.decode().splitlines() if line.strip()}
        assert {jd.message_id_for_type(t) for t in jd.catalog_event_types()} <= ids

        async with running(journald_output(journald)) as send:
            await send.send(overrun)
            await send.send(alert)
        await journald.entries(f"XFRM_NETNS={ns}", count=2)
        # journalctl -x reads /var/lib/systemd/catalog/database: give it ours in a private namespace
        db = root / "var/lib/systemd/catalog/database"
        script = (
            "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /var/lib/systemd; "
            f"mkdir /var/lib/systemd/catalog; cp {db} /var/lib/systemd/catalog/; "
            f"exec journalctl -D {journald.journal_dir} --no-pager -x -o short XFRM_NETNS={ns}"
        )
        p = await trio.run_process(
            ["unshare", "-m", "sh", "-c", script], capture_stdout=True, capture_stderr=True
        )
    text = p.stdout.decode()
    assert "Subject: IPsec events lost: netlink receive buffer overrun" in text, text
    assert f"Subject: Alert: {overrun_rule['title']}" in text, text
    assert "Raise the receive buffer" in text
    assert "Defined-By: xfrmwatch" in text


def test_native_protocol_encoding() -> None:
    assert jd.encode_field("XFRM_SPI", "0x1000") == b"XFRM_SPI=0x1000\n"
    v = 'two\nlines "]\\ \x00 é'.encode()
    assert jd.encode_field("RULE_TITLE", v) == b"RULE_TITLE\n" + len(v).to_bytes(8, "little") + v + b"\n"
    for bad in ("lower", "_TRUSTED", "1DIGIT", "X" * 65, "A-B"):
        with pytest.raises(ValueError):
            jd.encode_field(bad, "v")


# --- rsyslog -----------------------------------------------------------------------------------------

RSYSLOG_COMMON = """\
global(workDirectory="{base}" maxMessageSize="64k")
module(load="mmpstrucdata")
template(name="xwjson" type="string" string="%jsonmesg%\\n")
ruleset(name="xw") {{
    action(type="mmpstrucdata")
    action(type="omfile" file="{out}" template="xwjson")
}}
"""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def udp_bound(port: int) -> bool:
    with open("/proc/net/udp") as f:
        return any(line.split()[1].endswith(f":{port:04X}") for line in f.readlines()[1:])


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Rsyslog:
    """rsyslogd in the foreground with a configuration of our own: inputs bound to
    the ``xw`` ruleset, which writes ``%jsonmesg%`` lines to :attr:`out`."""

    def __init__(
        self, binary: str, base: Path, inputs: str, ready: Callable[[], bool], head: str = ""
    ) -> None:
        self.binary = binary
        self.base = base
        self.out = base / "received.jsonl"
        self.conf = base / "rsyslog.conf"
        self.conf.write_text(head + RSYSLOG_COMMON.format(base=base, out=self.out) + inputs)
        self.log = base / "rsyslog.log"
        self._ready = ready
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        with append(self.log) as f:
            self.proc = await trio.lowlevel.open_process(
                [self.binary, "-n", "-f", str(self.conf), "-i", str(self.base / "rsyslogd.pid")],
                stdout=f,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"rsyslogd exited: {self.log.read_text()}")
            return self._ready()

        await wait_until(ready, "rsyslogd's inputs", limit=15)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            await stop_process(self.proc, sig)
            self.proc = None

    def received(self) -> list[dict[str, Any]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def wait_received(self, count: int) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.received()) >= count, f"{count} messages at rsyslogd")
        return self.received()


@asynccontextmanager
async def rsyslog(
    binary: str, base: Path, inputs: str, ready: Callable[[], bool], head: str = ""
) -> AsyncIterator[Rsyslog]:
    r = Rsyslog(binary, base, inputs, ready, head)
    try:
        with trio.fail_after(30):
            await r.start()
        yield r
    finally:
        with trio.CancelScope(shield=True):
            await r.stop()


def parse_sd(sd: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """RFC 5424 STRUCTURED-DATA, parsed independently of the code under test."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    i = 0
    if sd == "-":
        return out
    while i < len(sd):
        assert sd[i] == "[", sd
        j = i + 1
        while sd[j] not in " ]":
            j += 1
        sd_id, i, params = sd[i + 1 : j], j, []
        while sd[i] == " ":
            eq = sd.index("=", i)
            name = sd[i + 1 : eq]
            assert sd_name_ok(name) and sd[eq + 1] == '"', sd
            i, value = eq + 2, []
            while sd[i] != '"':
                if sd[i] == "\\" and sd[i + 1] in '"\\]':
                    value.append(sd[i + 1])
                    i += 2
                else:
                    assert sd[i] not in '"]', f"unescaped {sd[i]!r} in {sd}"
                    value.append(sd[i])
                    i += 1
            params.append((name, "".join(value)))
            i += 1
        assert sd[i] == "]", sd
        i += 1
        out.append((sd_id, params))
    return out


def tunnel_down(ns: str, reqid: int, spi: str) -> ev.TunnelDown:
    return ev.TunnelDown(
        **common(ns), tunnel_id=f"esp/{reqid}/192.0.2.1/192.0.2.2", reqid=reqid, proto="esp", src="192.0.2.1",
        dst="192.0.2.2", spi_out=spi, reason="hard_expire", teardown=False, rekey_failed=True, spis=[spi],
    )  # fmt: skip


def syslog_events(ns: str) -> tuple[ev.NewSA, ev.TunnelDown, ev.Alert, list[ev.Event]]:
    spi1, spi2 = unique_spi(), unique_spi()
    newsa = ev.NewSA(**common(ns), sa=sa(spi1))
    unreplaced = tunnel_down(ns, 7, spi2)
    alert = ev.Alert(**common(ns), rule=rule("critical", rid='rule "1" \\ ]x'), events=[newsa, unreplaced])
    return newsa, unreplaced, alert, [newsa, unreplaced, alert]


def check_rfc5424(
    msgs: list[dict[str, Any]], ns: str, sent: list[ev.Event], facility: str, input_name: str, sd_id: str = SD_ID
) -> None:
    """What rsyslog parsed matches what was sent, field by field; MSG starts with the
    UTF-8 BOM (RFC 5424 6.4), which rsyslog keeps as U+FEFF."""
    assert len(msgs) == len(sent)
    fac = FACILITIES[facility]
    for m, e in zip(msgs, sent, strict=True):
        t = e.__struct_config__.tag
        assert m["inputname"] == input_name
        assert m["protocol-version"] == "1"
        assert m["app-name"] == "xfrmwatch"
        assert m["procid"] == str(os.getpid())
        assert m["msgid"] == t
        assert m["hostname"] == "xw-test-host"
        assert m["timereported"] == e.time
        assert int(m["pri"]) == fac * 8 + lv.severity(e).syslog
        assert m["syslogfacility"] == str(fac)
        assert m["msg"].startswith(f"\ufeff{t}: ")
        ((got_sd_id, params),) = parse_sd(m["structured-data"])
        assert sd_id == got_sd_id
        p: dict[str, list[str]] = {}
        for k, v in params:
            p.setdefault(k, []).append(v)
        assert p["type"] == [t] and p["netns"] == [ns]
        # mmpstrucdata (rsyslog's own parser) unescapes to the same values
        parsed = m["$!"]["rfc5424-sd"][sd_id]
        assert parsed["netns"] == ns and parsed["type"] == t
        if isinstance(e, ev.Alert):
            assert p["rule_id"] == [e.rule.id] and parsed["rule_id"] == e.rule.id
            assert p["level"] == ["critical"]
            spis = [x.sa.spi if isinstance(x, ev.NewSA) else x.spi_out for x in e.events]
            assert sorted(p["spi"]) == sorted(spis)
        elif isinstance(e, ev.NewSA):
            assert p["spi"] == [e.sa.spi] and p["reqid"] == ["7"] and p["proto"] == ["esp"]
            assert p["src"] == ["192.0.2.1"] and p["dst"] == ["192.0.2.2"]


ESCAPING_NS = 'ns "quoted" back\\slash ]bracket'


@pytest.mark.parametrize(("transport", "enterprise_id"), [("udp", None), ("tcp", 99999)])
async def test_rsyslog_udp_tcp(rsyslogd_bin: str, short_tmp: Path, transport: str, enterprise_id: int | None) -> None:
    """rsyslog's RFC 5424 parser reads every header field, the BOM and the SD element
    (with the default or a configured enterprise number)."""
    port = free_port()
    inputs = (
        'module(load="imudp")\nmodule(load="imtcp")\n'
        f'input(type="imudp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
        f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
    )
    ns = ESCAPING_NS
    *_, sent = syslog_events(ns)
    extra = {} if enterprise_id is None else {"enterprise_id": enterprise_id}
    out = SyslogOutput(
        SyslogConfig(url=f"{transport}://127.0.0.1:{port}", facility="local3", hostname="xw-test-host", **extra)
    )
    with trio.fail_after(TIMEOUT):
        ready = lambda: udp_bound(port) and tcp_accepts(port)  # noqa: E731
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, ready) as r:
            async with running(out) as send:
                for e in sent:
                    await send.send(e)
            msgs = await r.wait_received(len(sent))
    sd_id = SD_ID if enterprise_id is None else f"xfrm@{enterprise_id}"
    assert ("xfrm@32473" if enterprise_id is None else "xfrm@99999") == sd_id
    check_rfc5424(msgs, ns, sent, "local3", f"im{transport}", sd_id)
    assert out.sender.sent == 3 and out.dropped == 0


async def test_rsyslog_tcp_reconnects_after_restart(rsyslogd_bin: str, short_tmp: Path) -> None:
    """rsyslogd killed while connected: what is sent meanwhile waits and arrives,
    in order, once it is back on the same port."""
    port = free_port()
    inputs = f'module(load="imtcp")\ninput(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    out = SyslogOutput(
        SyslogConfig(
            url=f"tcp://127.0.0.1:{port}", hostname="xw-test-host", backoff_initial=0.05, backoff_max=0.3
        )
    )
    with trio.fail_after(TIMEOUT):
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, lambda: tcp_accepts(port)) as r:
            async with running(out) as send:
                for i in range(3):
                    await send.send(ev.Overrun(**common(ns), detail=f"first {i}"))
                await r.wait_received(3)
                await r.stop(signal.SIGKILL)
                for i in range(3):
                    await send.send(ev.Overrun(**common(ns), detail=f"while down {i}"))
                await trio.sleep(0.5)  # refused, retried with backoff
                assert out.sender.sent == 3
                await r.start()
                await wait_until(lambda: out.sender.sent == 6, "the queued messages")
                await send.send(ev.Overrun(**common(ns), detail="after"))
            msgs = await r.wait_received(7)
    assert [m["msg"].removeprefix("\ufeff") for m in msgs] == [
        *(f"overrun: first {i}" for i in range(3)),
        *(f"overrun: while down {i}" for i in range(3)),
        "overrun: after",
    ]
    assert out.connects == 2 and out.dropped == 0


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=xfrmwatch test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


@pytest.fixture
def certs(rsyslog_tls: str, short_tmp: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    d = short_tmp / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d,
    )  # fmt: skip
    return d


async def test_rsyslog_tls(rsyslog_tls: str, certs: Path, short_tmp: Path) -> None:
    port = free_port()
    head = (
        f'global(defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{certs}/ca.pem"\n'
        f'       defaultNetstreamDriverCertFile="{certs}/server.pem" defaultNetstreamDriverKeyFile="{certs}/server.key")\n'
    )
    inputs = (
        'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")\n'
        f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
    )
    ns = ESCAPING_NS
    *_, sent = syslog_events(ns)
    url = f"tls://127.0.0.1:{port}"
    good = SyslogOutput(SyslogConfig(url=url, ca_file=str(certs / "ca.pem"), hostname="xw-test-host"))
    wrong = SyslogOutput(
        SyslogConfig(
            url=url,
            ca_file=str(certs / "other-ca.pem"),
            backoff_initial=0.05,
            backoff_max=0.1,
            drain_timeout=0.5,
        )
    )
    with trio.fail_after(TIMEOUT):
        async with rsyslog(rsyslog_tls, short_tmp, inputs, lambda: tcp_accepts(port), head) as r:
            # a server certificate from the wrong CA: never delivered, never raised, given up on drain
            async with running(wrong) as send:
                await send.send(sent[0])
                await trio.sleep(0.5)
            assert wrong.sender.sent == 0 and wrong.dropped == 1
            async with running(good) as send:
                for e in sent:
                    await send.send(e)
            msgs = await r.wait_received(len(sent))
    check_rfc5424(msgs, ns, sent, "daemon", "imtcp")
    assert good.sender.sent == 3 and good.connects == 1


async def test_rsyslog_unix_sockets(rsyslogd_bin: str, short_tmp: Path) -> None:
    """unix:// in the local syslog(3) format (what /dev/log receivers parse by
    default), and in RFC 5424 for a socket whose receiver parses it."""
    local, r5424 = short_tmp / "local.sock", short_tmp / "r5424.sock"
    inputs = (
        'module(load="imuxsock" sysSock.use="off")\n'  # never the host's /dev/log
        f'input(type="imuxsock" socket="{local}" ruleset="xw")\n'
        f'input(type="imuxsock" socket="{r5424}" useSpecialParser="off" parseHostname="on" ruleset="xw")\n'
    )
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    newsa, unreplaced, _, _ = syslog_events(ns)
    out_local = SyslogOutput(SyslogConfig(url=f"unix://{local}"))
    out_5424 = SyslogOutput(
        SyslogConfig(url=f"unix://{r5424}", unix_format="rfc5424", hostname="xw-test-host")
    )
    with trio.fail_after(TIMEOUT):
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, lambda: local.exists() and r5424.exists()) as r:
            async with running(out_local) as send:
                await send.send(newsa)
                await send.send(unreplaced)
            await r.wait_received(2)
            async with running(out_5424) as send:
                await send.send(newsa)
            msgs = await r.wait_received(3)
    for m, e in zip(msgs[:2], (newsa, unreplaced), strict=True):
        t = e.__struct_config__.tag
        assert m["programname"] == "xfrmwatch"
        assert m["syslogtag"] == f"xfrmwatch[{os.getpid()}]:"
        assert int(m["pri"]) == FACILITIES["daemon"] * 8 + lv.severity(e).syslog
        assert m["msg"].lstrip().startswith(f"{t}: ")  # rsyslog keeps the space after the tag
        assert f'[{SD_ID} type="{t}" netns="{ns}"' in m["msg"]
    m = msgs[2]
    assert (m["app-name"], m["procid"], m["msgid"]) == ("xfrmwatch", str(os.getpid()), "newsa")
    assert m["$!"]["rfc5424-sd"][SD_ID]["spi"] == newsa.sa.spi
    assert m["hostname"] == "xw-test-host"  # (imuxsock ignores the sender's timestamp)


async def test_syslog_unreachable_never_raises_and_drains() -> None:
    port = free_port()  # nothing listens
    out = SyslogOutput(
        SyslogConfig(url=f"tcp://127.0.0.1:{port}", backoff_initial=0.05, backoff_max=0.1, drain_timeout=0.5)
    )
    with trio.fail_after(TIMEOUT):
        async with running(out) as send:
            for i in range(3):
                await send.send(ev.Overrun(**common("x"), detail=str(i)))
            await trio.sleep(0.3)
    assert out.sender.sent == 0 and out.dropped == 3


# --- syslog rendering and configuration (no service) ------------------------------------------------


def test_sd_escaping_and_names() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert sd_name_ok(SD_ID) and sd_name_ok("rule_id")
    for bad in ("", "a b", "a=b", 'a"b', "a]b", "x" * 33, "é"):
        assert not sd_name_ok(bad)
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    *_, sent = syslog_events(ns)
    out = SyslogOutput(SyslogConfig(url="udp://127.0.0.1:9", max_size=480))
    for e in sent:
        msg = out.render(e)
        assert len(msg) <= 480
        header = msg.decode().split(" ", 6)
        assert header[0].startswith("<") and header[0].endswith(">1")


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "http://x"},
        {"url": "tcp://"},
        {"url": "unix://relative"},
        {"url": "tcp://h:99999"},
        {"url": "tcp://h", "ca_file": "/x"},
        {"facility": "local9"},
        {"max_size": 100},
        {"message": "xml"},
    ],
)
def test_syslog_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "syslog", **bad}, SyslogConfig)


def test_syslog_message_formats() -> None:
    ns = f"xw-{uuid.uuid4().hex[:8]}"
    newsa, *_ = syslog_events(ns)
    as_json = SyslogOutput(SyslogConfig(url="tcp://127.0.0.1:9", message="json")).render(newsa)
    head, _, body = as_json.partition(b"] ")
    assert head.startswith(b"<30>1 ") and body.startswith(b"\xef\xbb\xbf")
    assert msgspec.json.decode(body[3:], type=ev.AnyEvent) == newsa
    local = SyslogOutput(SyslogConfig(url="unix:///dev/log")).render(newsa).decode()
    # <PRI>Mmm dd hh:mm:ss TAG[PID]: MSG, as syslog(3) sends it
    assert re.fullmatch(
        rf"<30>[A-Z][a-z]{{2}} [ 123]\d \d\d:\d\d:\d\d xfrmwatch\[{os.getpid()}\]: newsa: .*\]", local
    )
