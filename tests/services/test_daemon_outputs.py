"""`xfrmwatch run` with several outputs against a real rsyslog: a killed output service
delays nothing else, and catches up when it returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import trio
from support import ROOT, XFRMWATCH, fresh_netns, sh, validate_event
from test_outputs_logging import free_port, rsyslog, tcp_accepts, wait_until


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for e in out:
        validate_event(e)
    return out


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
        async with rsyslog(rsyslogd_bin, short_tmp, inputs, lambda: tcp_accepts(port)) as r:
            logf = await trio.open_file(log, "wb")
            daemon = await trio.lowlevel.open_process(
                [*XFRMWATCH, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=logf.wrapped.fileno(),
                cwd=ROOT, env=dict(os.environ),
            )  # fmt: skip
            try:
                await wait_until(lambda: '"ready"' in log.read_text(), "the daemon's READY", limit=30)

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
            finally:
                daemon.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    assert 0 == await daemon.wait(), log.read_text()
                await logf.aclose()
