"""systemd tier: the shipped unit under a real systemd as PID 1.

One container for the whole tier (session fixture ``machine``): the cached Debian 12 root
from ``build_root.sh`` under a throw-away overlay, xfrmwatch installed in it from a wheel of
this checkout (``install.sh``: venv, unit, config, catalog, ``systemctl enable``), booted
with ``systemd-nspawn --boot --register=no --keep-unit --private-network``, and powered off
at the end.  Needs root, ``systemd-nspawn`` (systemd-container) and ``debootstrap``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import FIGURES, HERE, Machine, booted, build_root, build_wheelhouse, cleanup, install, overlay
from support import IN_UML, IS_ROOT


@pytest.fixture(scope="session")
def machine() -> Iterator[Machine]:
    lower = build_root()
    work = Path(tempfile.mkdtemp(prefix="xw-systemd-", dir="/var/tmp"))
    try:
        t0 = time.monotonic()
        build_wheelhouse(work / "wheelhouse")
        t1 = time.monotonic()
        (work / "ovl").mkdir()
        with overlay(lower, work / "ovl") as root:
            install(root, work / "wheelhouse", HERE / "config.toml")
            FIGURES["install"] = (
                f"wheelhouse {t1 - t0:.1f} s, install in the root {time.monotonic() - t1:.1f} s"
            )
            with booted(root, work / "console.log") as m:
                yield m
    finally:
        cleanup(work)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if not IS_ROOT:
        reason = "systemd tier needs root (systemd-nspawn, overlay mounts)"
    elif IN_UML:
        reason = "systemd tier runs on the host"
    elif not (shutil.which("systemd-nspawn") and shutil.which("debootstrap")):
        reason = "systemd-nspawn or debootstrap missing (apt-get install systemd-container debootstrap)"
    if reason:
        for item in items:
            if "tests/systemd/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("systemd tier: measured")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
