"""Services tier: the outputs against real services from Debian's packages
(``prometheus`` 2.42 with ``promtool``, ``prometheus-alertmanager`` 0.25), each
started by the test on 127.0.0.1 with a temporary directory and free ports, and
stopped after it; plus a webhook receiver and exec hooks run for real.

Without root the tier is skipped.  A missing binary skips the tests that need
it, with the package to install; with ``CI`` set it fails them instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT

CI = bool(os.environ.get("CI"))

#: binary -> Debian package
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "rsyslogd": "rsyslog",
    "/lib/systemd/systemd-journald": "systemd",
    "journalctl": "systemd",
    "unshare": "util-linux",
}


def need(binary: str) -> str:
    """The binary's path; skip (fail under CI) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        msg = f"{binary} not installed (apt-get install {PACKAGES.get(binary, binary)})"
        if CI:
            pytest.fail(msg + " [CI is set: a missing service binary is a failure]")
        pytest.skip(msg)
    return path


@pytest.fixture
def prometheus_bin() -> str:
    return need("prometheus")


@pytest.fixture
def promtool_bin() -> str:
    return need("promtool")


@pytest.fixture
def alertmanager_bin() -> str:
    return need("prometheus-alertmanager")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    for item in items:
        if "tests/services/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason="services tier needs root"))


@pytest.fixture
def rsyslogd_bin() -> str:
    """rsyslogd, for the tests that run their own instance."""
    return need("rsyslogd")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="xw-log-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def journald_tools() -> None:
    """A standalone systemd-journald can be run (its binary, journalctl, unshare)."""
    for binary in ("/lib/systemd/systemd-journald", "journalctl", "unshare"):
        need(binary)
