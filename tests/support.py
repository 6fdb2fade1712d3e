"""Shared test helpers: running the real CLI, namespaces, schema and key checks."""

from __future__ import annotations

import base64
import functools
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "xfrmwatch" / "schema" / "events.schema.json"
XFRMWATCH = [sys.executable, "-m", "xfrmwatch"]

IS_ROOT = os.geteuid() == 0
IN_UML = os.environ.get("XW_IN_UML") == "1"


@functools.cache
def event_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_event(obj: dict[str, Any]) -> None:
    """Every event the suite sees must validate against the committed schema."""
    errors = sorted(event_validator().iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"event does not match schema: {errors[0].message} in {obj}"


def key_forms(key_hex: str) -> list[str]:
    """The ways a key could leak: hex (both cases, with 0x), base64 (std and urlsafe)."""
    h = key_hex.lower().removeprefix("0x")
    raw = bytes.fromhex(h)
    forms = [h, h.upper(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]
    # a prefix long enough to be unmistakable catches a truncated leak too
    forms += [h[:16], base64.b64encode(raw[:12]).decode()]
    return forms


def assert_no_keys(texts: Iterable[str | bytes], keys: Iterable[str]) -> None:
    blob = "\n".join(t.decode(errors="replace") if isinstance(t, bytes) else t for t in texts)
    for key in keys:
        for form in key_forms(key):
            assert form not in blob, f"key material ({form[:6]}...) found in output"


def run_cli(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*XFRMWATCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw
    )


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell command (test set-up only), failing loudly."""
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


@contextmanager
def fresh_netns(prefix: str = "xw") -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sh(f"ip netns add {name}")
    sh(f"ip -n {name} link set lo up")
    try:
        yield name
    finally:
        sh(f"ip netns pids {name} | xargs -r kill -9", check=False)
        sh(f"ip netns del {name}", check=False)


class Monitor:
    """``xfrmwatch monitor --format json`` as a real subprocess.

    Start it, wait until it says it is monitoring (its groups are joined), act,
    then :meth:`wait_for` the events you expect.  Every JSON line read is
    validated against the event schema.
    """

    def __init__(self, *args: str) -> None:
        self.args = ["monitor", "--format", "json", *args]
        self.proc = subprocess.Popen(
            [*XFRMWATCH, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.events: list[dict[str, Any]] = []
        self.stdout_raw: list[bytes] = []
        self.stderr_raw = b""
        self._buf = b""
        self._ready()

    def _ready(self, timeout: float = 20) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        err = b""
        while b"monitoring" not in err:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"monitor did not start: {(err + self.stderr_raw).decode()}")
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if r:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    continue
                err += chunk
        self.stderr_raw = err

    def _read(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not r:
            return
        chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            time.sleep(0.01)
            return
        self.stdout_raw.append(chunk)
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                obj = json.loads(line)
                validate_event(obj)
                self.events.append(obj)

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15, count: int = 1
    ) -> list[dict[str, Any]]:
        """Read until ``count`` events satisfy ``pred``; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events if pred(e)]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                types = [e.get("type") for e in self.events]
                raise AssertionError(f"timed out; saw {len(self.events)} events: {types[-30:]}")
            self._read(min(left, 0.5))

    def of_type(self, t: str, timeout: float = 15, count: int = 1) -> list[dict[str, Any]]:
        return self.wait_for(lambda e: e["type"] == t, timeout=timeout, count=count)

    def drain(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(deadline - time.monotonic())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                out, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self.stdout_raw.append(out)
            self.stderr_raw += err

    def all_output(self) -> list[bytes]:
        return [*self.stdout_raw, self.stderr_raw]

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Recording:
    """``xfrmwatch record FILE ...`` as a real subprocess: started and ready (its groups joined
    and its initial dump written) on construction; :meth:`stop` sends SIGTERM and waits."""

    def __init__(self, path: Path, *args: str) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [*XFRMWATCH, "record", str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        self.stderr = b""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 20
        while b"recording" not in self.stderr:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"record did not start: {self.stderr.decode()}")
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if r:
                self.stderr += os.read(self.proc.stderr.fileno(), 65536)

    def stop(self, sig: int = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        self.stderr += err
        return self.proc.returncode

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


#: what differs between two watchers of the same messages: receipt times, the namespace's name
UNSTABLE = frozenset({"time", "mono", "netns"})


def comparable(e: Any) -> Any:
    """An event (JSON) without what differs between two watchers of the same messages, at
    every depth (an alert carries the events that raised it)."""
    if isinstance(e, dict):
        return {k: comparable(v) for k, v in e.items() if k not in UNSTABLE}
    if isinstance(e, list):
        return [comparable(v) for v in e]
    return e


def differences(a: Any, b: Any, tolerance: float, path: str = "") -> list[str]:
    """Where two comparable events differ; numbers that are not whole (durations, seconds
    left: computed from receipt times) may differ by ``tolerance``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), tolerance, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, tolerance, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        return [] if abs(a - b) <= tolerance else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def replay_json(path: Path, *args: str, timeout: float = 120) -> list[dict[str, Any]]:
    """`xfrmwatch replay PATH --fast --format json ARGS`: its events, each valid by the schema."""
    p = subprocess.run([*XFRMWATCH, "replay", str(path), "--fast", "--format", "json", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    for e in events:
        validate_event(e)
    return events


def assert_replay_matches_live(live: list[dict[str, Any]], replayed: list[dict[str, Any]], slack: float) -> float:
    """The same events in the same order, equal but for receipt times (numbers computed from
    them within ``slack``), each at its live offset from the first within ``slack`` seconds;
    returns the largest offset difference."""
    assert [e["type"] for e in replayed] == [e["type"] for e in live]
    diff = [(i, d) for i, (a, b) in enumerate(zip(replayed, live, strict=True))
            for d in differences(comparable(a), comparable(b), slack)]  # fmt: skip
    assert not diff, diff[:10]
    t_live, t_rep = live[0]["mono"], replayed[0]["mono"]
    drift = [(e["type"], round(b["mono"] - t_rep - (e["mono"] - t_live), 3)) for e, b in zip(live, replayed, strict=True)]
    worst = max(abs(d) for _, d in drift)
    assert worst < slack, drift
    return worst


def named_change(netns: str, name: str, src: str, dst: str) -> None:
    """tests/host/named_change.py in ``netns``: an out policy SRC -> DST added by a process
    named NAME that puts its PID in nlmsg_pid."""
    p = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, str(ROOT / "tests/host/named_change.py"), name, src, dst],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr


def tshark(path: Path, *args: str, lua: bool = True) -> list[str]:
    """``tshark -r PATH ARGS`` (with the project's XFRM names), its output lines."""
    cmd = ["tshark", "-r", str(path)]
    if lua:
        cmd += ["-X", f"lua_script:{ROOT / 'contrib/wireshark/xfrm.lua'}"]
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def need_tshark() -> None:
    """tshark is in scripts/test's packages: missing in CI is a failure, locally a skip."""
    import pytest

    if not have("tshark"):
        if os.environ.get("CI"):
            pytest.fail("tshark is needed in CI (apt-get install tshark)")
        pytest.skip("tshark not installed (apt-get install tshark)")


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


VOLATILE = {"current", "stats", "replay", "replay_esn", "lastused"}


def normalized(dump: dict[str, Any]) -> dict[str, Any]:
    """A dump or mirror snapshot without counters, keyed by identity, for comparison."""

    def strip(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if k not in VOLATILE}

    return {
        "sa": {(s["dst"], s["spi"], s["proto"], json.dumps(s.get("mark"))): strip(s) for s in dump["sa"]},
        "policy": {(p["ptype"], p["index"]): strip(p) for p in dump["policy"]},
    }


def mirror_state(m: Monitor, path: Path, timeout: float = 10) -> dict[str, Any]:
    """Ask a running monitor (started with --state-file PATH) for its mirror."""
    import signal

    if path.exists():
        path.unlink()
    m.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError("monitor did not write its state file")
        m.drain(0.05)
    return json.loads(path.read_text())


def kernel_dump(netns: str) -> dict[str, Any]:
    p = run_cli("dump", "--netns", netns, "--format", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def assert_same_state(kernel: dict[str, Any], mirror: dict[str, Any]) -> None:
    """Mirror and kernel dump agree; on a difference, name the entries and fields."""
    k, m = normalized(kernel), normalized(mirror)
    problems = []
    for part in ("sa", "policy"):
        for key in k[part].keys() | m[part].keys():
            a, b = k[part].get(key), m[part].get(key)
            if a is None or b is None:
                problems.append(f"{part} {key}: {'only in the mirror' if a is None else 'missing from the mirror'}")
            elif a != b:
                fields = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
                problems.append(f"{part} {key}: " + "; ".join(f"{f}: kernel {a.get(f)!r} mirror {b.get(f)!r}" for f in fields))
    assert not problems, "\n".join(problems)


#: key-carrying attribute -> offset of the key in its payload (include/uapi/linux/xfrm.h:
#: xfrm_algo is 68 bytes before its key, xfrm_algo_auth and xfrm_algo_aead 72)
KEY_OFFSETS = {1: 68, 2: 68, 18: 72, 20: 72}


def plant_keys(msg: bytes, marker: bytes, body: int) -> bytes:
    """The message with every key region filled with the marker, plus an unknown attribute.
    ``body``: the size of the fixed part (224 for NEWSA; 24 for DELSA, whose SA attributes follow
    its XFRMA_SA at top level)."""
    out = bytearray(msg)
    off = 16 + body
    while off + 4 <= len(out):
        alen, atype = struct.unpack_from("=HH", out, off)
        if alen < 4:
            break
        if atype & 0x3FFF in KEY_OFFSETS:
            start = off + 4 + KEY_OFFSETS[atype & 0x3FFF]
            for i in range(start, off + alen):
                out[i] = marker[(i - start) % len(marker)]
        off += (alen + 3) & ~3
    unknown = struct.pack("=HH", 4 + len(marker), 200) + marker + bytes(-len(marker) % 4)
    out += unknown
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def key_marker_forms(marker: bytes) -> list[bytes]:
    """The ways planted bytes could show: raw, hex (both cases), base64, escaped, colon-hex."""
    return [
        marker, marker.hex().encode(), marker.hex().upper().encode(),
        base64.b64encode(marker), repr(marker).encode()[2:-1], ":".join(f"{b:02x}" for b in marker).encode(),
    ]  # fmt: skip
