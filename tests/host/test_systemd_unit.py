"""The shipped systemd unit: hardening score and the settings the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from support import ROOT

UNIT = ROOT / "contrib" / "systemd" / "xfrmwatch.service"


def test_exposure_score_is_at_most_2() -> None:
    """`systemd-analyze security --offline=yes` rates the unit 2.0 or better (printed)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    p = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for xfrmwatch.service: ([0-9.]+)", p.stdout)
    assert m, p.stdout + p.stderr
    print(f"\nsystemd-analyze security --offline=yes: exposure {m.group(1)}")
    assert float(m.group(1)) <= 2.0


def test_unit_settings_the_daemon_needs() -> None:
    """Type=notify, only CAP_NET_ADMIN, the netlink family allowed, reload by SIGHUP, restart on a
    crash but not on a configuration or capability error (exit 2, 8, 3)."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3 8",
    ):
        assert line in text.splitlines(), line
