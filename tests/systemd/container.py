"""A Debian 12 root booted with ``systemd-nspawn --boot``: systemd as its PID 1, its own
network namespace (XFRM on the host kernel), and xfrmwatch installed in it as a user
would install it.

The root made by ``build_root.sh`` (cached) is never written: the container boots an
overlay on top of it, which is unmounted and thrown away at the end.  The host drives the
container with ``nsenter`` into its PID 1's namespaces (``systemd-nspawn --register=no``
leaves no machined registration, so ``machinectl`` and ``systemctl -M`` cannot reach it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT = "xfrmwatch.service"

#: figures measured during the run, printed in the tier's summary
FIGURES: dict[str, str] = {}


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


class Machine:
    """The booted container.  ``run`` executes a command inside it (all its namespaces)."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], console: Path) -> None:
        self.root = root  # the overlay the container runs on (visible from the host)
        self.proc = proc
        self.console = console
        self.leader = 0  # the container's PID 1, as the host sees it
        self.boot_state = ""

    # --- commands ---------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", f"PATH={CONTAINER_PATH}", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(
                f"in the container, {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}"
            )
        return p

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, check=check, timeout=timeout)

    def sysctl_net(self, name: str, value: str) -> None:
        """Set a per-netns sysctl in the container's network namespace (its /proc/sys is read-only)."""
        path = "/proc/sys/" + name.replace(".", "/")
        subprocess.run(
            ["nsenter", "-t", str(self.leader), "-n", "--", "sh", "-c", f"echo {value} > {path}"],
            check=True, timeout=10,
        )  # fmt: skip

    def file(self, path: str) -> Path:
        """A path inside the container, as the host sees it (through the overlay)."""
        return self.root / path.lstrip("/")

    # --- systemd ----------------------------------------------------------------------------

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        out = self.run(
            "systemctl", "show", "--timestamp=us+utc", unit, *(f"--property={p}" for p in props)
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_unit(
        self, pred: Callable[[dict[str, str]], bool], *props: str, timeout: float = 30
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(*props)
            if pred(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{UNIT} never reached the expected state: {state}")
            time.sleep(0.05)

    # --- the journal --------------------------------------------------------------------------

    def cursor(self) -> str:
        out = self.run("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout.strip()
        return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out else ""

    def journal(self, *matches: str, after: str = "", unit: str | None = UNIT) -> list[dict[str, Any]]:
        """Entries as ``journalctl -o json`` gives them (``-u`` includes PID 1's messages about
        the unit), after a cursor, having every ``FIELD=value`` of *matches* (a repeated field:
        any of its values).  The matches are applied here: journalctl 252 combines
        ``--after-cursor`` and field matches wrongly (it misses entries)."""
        args = ["journalctl", "-o", "json", "--no-pager", "--all"]
        if unit:
            args += ["-u", unit]
        if after:
            args.append(f"--after-cursor={after}")
        out = self.run(*args).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        wanted = [m.split("=", 1) for m in matches]
        return [e for e in entries if all(v in field_values(e, k) for k, v in wanted)]

    def wait_journal(
        self, pred: Callable[[dict[str, Any]], bool], *matches: str, after: str = "", timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.journal(*matches, after=after):
                if pred(entry):
                    return entry
            if time.monotonic() > deadline:
                tail = [e.get("MESSAGE", "")[:160] for e in self.journal(after=after)][-15:]
                raise AssertionError(
                    "no matching journal entry; the unit's last entries:\n" + "\n".join(tail)
                )
            time.sleep(0.1)


def field_values(entry: dict[str, Any], field: str) -> list[str]:
    """A journal field's values (``journalctl -o json`` gives a list when a field repeats)."""
    v = entry.get(field)
    return [str(x) for x in v] if isinstance(v, list) else [] if v is None else [str(v)]


def timestamp(value: str) -> datetime:
    """A systemd timestamp as ``systemctl show --timestamp=us+utc`` prints it."""
    return datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC)


def log_record(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's own JSON log line carried in a journal entry's MESSAGE, if it is one."""
    msg = entry.get("MESSAGE")
    if entry.get("_TRANSPORT") != "stdout" or not isinstance(msg, str) or not msg.startswith("{"):
        return None
    try:
        rec = json.loads(msg)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


# --- set-up -----------------------------------------------------------------------------------


def build_root() -> Path:
    start = time.monotonic()
    p = subprocess.run([str(HERE / "build_root.sh")], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"build_root.sh failed: {p.stderr.strip()}")
    FIGURES["root"] = (
        f"{p.stdout.strip()} ({'built' if 'built in' in p.stderr else 'cached'}, {time.monotonic() - start:.1f} s)"
    )
    return Path(p.stdout.strip())


def build_wheelhouse(dest: Path) -> None:
    """The wheel of this checkout and of its dependencies (the container has no network)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "-w", str(dest), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip


@contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    for d in ("upper", "work", "merged"):
        (work / d).mkdir()
    merged = work / "merged"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}", str(merged)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=False, timeout=30)


def nspawn(root: Path, *args: str) -> list[str]:
    return ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--private-network",
            "--link-journal=no", *args]  # fmt: skip


def install(root: Path, wheelhouse: Path, config: Path) -> None:
    """``install.sh`` inside the root (no network, not booted): the README's deployment steps."""
    p = subprocess.run(
        nspawn(root, f"--bind-ro={wheelhouse}:/srv/wheelhouse", f"--bind-ro={REPO / 'contrib'}:/srv/contrib",
               f"--bind-ro={config}:/srv/config.toml", f"--bind-ro={HERE / 'install.sh'}:/srv/install.sh",
               "/bin/sh", "/srv/install.sh"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if p.returncode != 0:
        raise RuntimeError(f"installing xfrmwatch in the container failed:\n{p.stdout}\n{p.stderr}")


@contextmanager
def booted(root: Path, console: Path, timeout: float = 90) -> Iterator[Machine]:
    start = time.monotonic()
    proc = subprocess.Popen(
        nspawn(root, "--boot", "--console=pipe", "--machine=xfrmwatch-test"),
        stdin=subprocess.DEVNULL, stdout=console.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    m = Machine(root, proc, console)
    try:
        deadline = start + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {proc.returncode}: {console.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the container did not boot in {timeout} s: {console.read_text()[-2000:]}"
                )
            if not m.leader:
                kids = _children(proc.pid)
                m.leader = kids[0] if kids else 0
            if m.leader:
                p = m.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
                if p.stdout.strip() in ("running", "degraded"):
                    state = p.stdout.strip()
                    break
            time.sleep(0.1)
        FIGURES["boot"] = (
            f"{time.monotonic() - start:.2f} s from systemd-nspawn to is-system-running={state} ("
            + m.run("systemd-analyze", "time", check=False).stdout.splitlines()[0].strip()
            + ")"
        )
        m.boot_state = state
        yield m
    finally:
        poweroff(m)


def poweroff(m: Machine) -> None:
    """``systemctl poweroff`` inside; the container must end with exit 0.  Only if it does not
    end in time is systemd-nspawn (our child) terminated, then killed."""
    if m.proc.poll() is None and m.leader:
        m.run("systemctl", "poweroff", check=False, timeout=30)
    try:
        rc = m.proc.wait(timeout=30)
        FIGURES["poweroff"] = f"systemd-nspawn exit {rc}"
    except subprocess.TimeoutExpired:
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(timeout=15)
        FIGURES["poweroff"] = "did not power off in 30 s: systemd-nspawn terminated"


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
