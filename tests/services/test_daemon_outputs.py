"""`xfrmwatch run` with several outputs against a real rsyslog: a killed output service
delays nothing else, and catches up when it returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from support import ROOT, XFRMWATCH, fresh_netns, sh, validate_event
from test_outputs_http import receiver
from test_outputs_logging import Journald, free_port, rsyslog, tcp_accepts, wait_until


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for e in out:
        validate_event(e)
    return out


@asynccontextmanager
async def running_daemon(cfg: Path, log: Path) -> AsyncIterator[trio.Process]:
    """`xfrmwatch run --config CFG` until READY; SIGTERM at the end must exit 0."""
    logf = await trio.open_file(log, "wb")
    daemon = await trio.lowlevel.open_process(
        [*XFRMWATCH, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=logf.wrapped.fileno(),
        cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip
    try:
        await wait_until(lambda: '"ready"' in log.read_text(), "the daemon's READY", limit=30)
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            rc = await daemon.wait()
        await logf.aclose()
        assert 0 == rc, await trio.Path(log).read_text()


async def test_dead_syslog_relay_delays_nothing_and_catches_up(rsyslogd_bin: str, short_tmp: Path) -> None:
    """rsyslog killed: the file output keeps receiving at once; the queued syslog messages
    arrive when rsyslog returns; a webhook that never answers blocks nobody."""
    port = free_port()
    inputs = f'module(load="imtcp")\ninput(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
    ev_file = short_tmp / "events.jsonl"
    with fresh_netns() as netns, trio.fail_after(90):
        cfg = short_tmp / "c.toml"
        cfg.write_text(
            f'[watch]\nnetns = ["{netns}"]\n[metrics]\nenabled = false\n[rules]\nenabled = false\n'
            f'[[output]]\ntype = "file"\npath = "{ev_file}"\n'
            f'[[output]]\ntype = "syslog"\nurl = "tcp://127.0.0.1:{port}"\nbackoff_initial = 0.05\nbackoff_max = 0.3\n'
            f'[[output]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\nselect = "all"\n'
        )
        log = short_tmp / "daemon.log"
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, lambda: tcp_accepts(port)) as r, running_daemon(cfg, log):

            def policies(path: Path) -> int:
                return sum(e["type"] == "newpolicy" for e in _events(path))

            def relayed() -> int:
                return sum("newpolicy" in json.dumps(m) for m in r.received())

            for i in range(5):
                sh(f"ip -n {netns} xfrm policy add src 10.1.{i}.0/24 dst 10.2.0.0/24 dir out")
            await wait_until(lambda: policies(ev_file) == 5 and relayed() == 5, "5 policies in both")
            await r.stop(signal.SIGKILL)
            t0 = trio.current_time()
            for i in range(5, 10):
                sh(f"ip -n {netns} xfrm policy add src 10.1.{i}.0/24 dst 10.2.0.0/24 dir out")
            await wait_until(lambda: policies(ev_file) == 10, "5 more in the file while rsyslog is down")
            file_delay = trio.current_time() - t0
            assert file_delay < 3.0, f"the file output waited {file_delay:.1f} s for the dead relay"
            assert 5 == relayed()
            await r.start()
            await wait_until(lambda: relayed() == 10, "the queued messages at rsyslog", limit=30)
            print(f"\nfile output unaffected by the dead relay: 5 events in {file_delay:.2f} s; "
                  "the relay caught up after its restart")  # fmt: skip


def _dropped(text: str) -> dict[str, float]:
    """``xfrmwatch_output_dropped_total`` per output, from a scrape."""
    return {
        s.labels["output"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "xfrmwatch_output_dropped_total"
    }


async def test_every_sink_down_slow_or_failing_counts_its_drops_and_delays_nothing(
    rsyslogd_bin: str, journald_tools: None, short_tmp: Path
) -> None:
    """journald and rsyslog killed, a webhook answering 500, an exec hook that hangs, an
    Alertmanager that is not there: the file output still gets every event at once, and
    the drops of journald, syslog, webhook and exec reach xfrmwatch_output_dropped_total
    (the counter of each configured output exists at 0 from the start)."""
    port, mport = free_port(), free_port()
    inputs = f'module(load="imtcp")\ninput(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xw")\n'
    ev_file = short_tmp / "events.jsonl"
    jbase = short_tmp / "journald"
    jbase.mkdir()
    j = Journald(jbase)
    with fresh_netns() as netns, trio.fail_after(120):
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, lambda: tcp_accepts(port)) as r, receiver(
            [500] * 10_000
        ) as (_, hport):
            await j.start()
            small = 'queue = 2\nbackoff_initial = 0.05\nbackoff_max = 0.2\ndrain_timeout = 0.5\n'
            cfg = short_tmp / "c.toml"
            cfg.write_text(
                f'[watch]\nnetns = ["{netns}"]\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
                f'[[output]]\ntype = "file"\npath = "{ev_file}"\n'
                f'[[output]]\ntype = "journald"\nsocket = "{j.socket}"\n{small}'
                f'[[output]]\ntype = "syslog"\nurl = "tcp://127.0.0.1:{port}"\n{small}'
                f'[[output]]\ntype = "webhook"\nurl = "http://127.0.0.1:{hport}/"\nselect = "all"\nqueue = 2\n'
                'retries = 1\nretry_initial = 0.05\n'
                f'[[output]]\ntype = "exec"\nargv = ["/bin/sleep", "60"]\nselect = "all"\nqueue = 2\n'
                'concurrency = 1\ntimeout = 60\n'
                f'[[output]]\ntype = "alertmanager"\nurl = "http://127.0.0.1:{free_port()}"\nqueue = 2\n'
            )
            try:
                log = short_tmp / "daemon.log"
                async with running_daemon(cfg, log):
                    async with httpx.AsyncClient(timeout=5) as c:
                        before = _dropped((await c.get(f"http://127.0.0.1:{mport}/metrics")).text)
                    assert {"file": 0, "journald": 0, "syslog": 0, "webhook": 0, "exec": 0, "alertmanager": 0} == before
                    await j.stop(signal.SIGKILL)
                    await r.stop(signal.SIGKILL)
                    t0 = trio.current_time()
                    for i in range(30):
                        sh(f"ip -n {netns} xfrm policy add src 10.1.{i}.0/24 dst 10.2.0.0/24 dir out")
                    sh(f"ip -n {netns} xfrm policy flush")  # a high alert for the alert outputs
                    await wait_until(
                        lambda: sum(e["type"] == "newpolicy" for e in _events(ev_file)) == 30
                        and any(e["type"] == "alert" for e in _events(ev_file)),
                        "every event and the alert in the file",
                    )
                    file_delay = trio.current_time() - t0

                    async def drops() -> dict[str, float]:
                        async with httpx.AsyncClient(timeout=5) as c:
                            return _dropped((await c.get(f"http://127.0.0.1:{mport}/metrics")).text)

                    got: dict[str, float] = {}
                    with trio.move_on_after(20):
                        while not all(got.get(o, 0) > 0 for o in ("journald", "syslog", "webhook", "exec")):
                            got = await drops()
                            await trio.sleep(0.2)
                    assert all(got[o] > 0 for o in ("journald", "syslog", "webhook", "exec")), got
                    assert 0 == got["file"]
                    assert file_delay < 5.0, f"the file output waited {file_delay:.1f} s for the broken sinks"
                    print(f"\nfile output: 30 events and the alert in {file_delay:.2f} s; drops per output: {got}")
            finally:
                with trio.CancelScope(shield=True):
                    await j.stop()
