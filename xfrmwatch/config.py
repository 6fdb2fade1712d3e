"""The daemon's configuration: TOML (``/etc/xfrmwatch/config.toml``), validated
with msgspec against the structs below.  Every problem is reported as
``file:line: reason``.

Example::

    [watch]
    netns = ["", "vpn"]        # "" is the daemon's own namespace
    all_netns = false          # true: every namespace under /run/netns, as they come and go
    aevents = false
    acquire = "auto"           # "auto" | "on" | "off"

    [rules]
    paths = []                 # default: the shipped pack
    overdue_share = 0.5

    [tunnels]
    history_factor = 1.5       # no lifetimes in the kernel (Libreswan): overdue at 1.5 x the learned interval
    liveness_interval = 10     # seconds between SA counter reads (0: never)
    stall_after = 30           # traffic_stalled after this long without inbound traffic

    [metrics]
    listen = "127.0.0.1:9873"

    [[output]]
    type = "journald"

    [[output]]
    type = "syslog"
    url = "tcp://logs.example.net:6514"
    select = "alerts"
    min_level = "medium"
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec

from .errors import UserError
from .netlink.socket import DEFAULT_RCVBUF
from .options import HistoryFactor, NotNegative, OverdueShare, Positive, ReceiveBuffer
from .output.base import OutputConfig
from .output.metrics import MetricsConfig, parse_listen
from .output.registry import OUTPUT_CONFIGS

DEFAULT_PATH = "/etc/xfrmwatch/config.toml"

_cfg = {"kw_only": True, "forbid_unknown_fields": True}


class ConfigError(UserError):
    """Configuration problems, one ``file:line: reason`` per line."""

    exit_code = 2

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class WatchConfig(msgspec.Struct, **_cfg):
    #: namespaces to watch: names under /run/netns, paths, or "" for our own
    netns: list[str] = msgspec.field(default_factory=lambda: [""])
    #: also every namespace under /run/netns, following additions and removals
    all_netns: bool = False
    #: how often /run/netns is rescanned (seconds)
    scan_interval: Positive = 2.0
    aevents: bool = False
    acquire: Literal["auto", "on", "off"] = "auto"
    #: netlink receive buffer (bytes)
    rcvbuf: ReceiveBuffer = DEFAULT_RCVBUF


class RulesConfig(msgspec.Struct, **_cfg):
    enabled: bool = True
    #: rule files or directories (default: the shipped pack)
    paths: list[str] = []
    #: rekey_overdue after this share of the soft->hard interval
    overdue_share: OverdueShare = 0.5
    #: default suppression period for repeated alerts (seconds; 0: off)
    suppress: NotNegative = 60.0


class TunnelsConfig(msgspec.Struct, **_cfg):
    """``[tunnels]``: the tunnel model (docs/tunnels.md)."""

    #: without kernel lifetimes: rekey_overdue at this multiple of the learned rekey interval
    history_factor: HistoryFactor = 1.5
    #: how often SA counters are read for rates and stalls (seconds; 0: never)
    liveness_interval: NotNegative = 10.0
    #: traffic_stalled after inbound is silent this long while outbound sends (seconds)
    stall_after: Positive = 30.0


class DaemonConfig(msgspec.Struct, **_cfg):
    #: SIGTERM: how long outputs may take to drain their queues (seconds)
    shutdown_timeout: Positive = 5.0


AnyOutput: Any = Union[tuple(OUTPUT_CONFIGS.values())]  # noqa: UP007


def _default_outputs() -> list[Any]:
    return [OUTPUT_CONFIGS["stdout"]()]


class Config(msgspec.Struct, **_cfg):
    watch: WatchConfig = msgspec.field(default_factory=WatchConfig)
    rules: RulesConfig = msgspec.field(default_factory=RulesConfig)
    tunnels: TunnelsConfig = msgspec.field(default_factory=TunnelsConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    output: list[AnyOutput] = msgspec.field(default_factory=_default_outputs)


# --- locating errors -----------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.\-\"]+)\s*\]?\]\s*(#.*)?$")


def locate(text: str, path: list[str | int]) -> int:
    """The line (1-based) of a config path like ['output', 1, 'url'] in TOML text."""
    lines = text.splitlines()
    table: list[str | int] = []
    counts: dict[str, int] = {}
    best = 1
    depth = 0  # inside a multi-line array value: its lines are not keys
    for n, line in enumerate(lines, 1):
        if depth > 0:
            depth += _brackets(line)
            continue
        m = _HEADER.match(line)
        if m:
            name = m.group(2).strip('"')
            if m.group(1):  # [[array]]
                idx = counts.get(name, -1) + 1
                counts[name] = idx
                table = [*name.split("."), idx]
            else:
                table = list(name.split("."))
            if table == path[: len(table)]:
                best = n
            continue
        key = line.split("=", 1)[0].strip().strip('"') if "=" in line else None
        if key is None:
            continue
        full = [*table, *key.split(".")]
        depth = max(0, _brackets(line.split("=", 1)[1]))
        if full == path[: len(full)]:
            return n
    return best


def _brackets(text: str) -> int:
    """Net count of [ minus ] outside strings and comments (for multi-line arrays)."""
    n = 0
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch == "[":
            n += 1
        elif ch == "]":
            n -= 1
    return n


def _path(msg: str) -> list[str | int]:
    m = re.search(r"at `\$(.*?)`", msg)
    if not m:
        return []
    out: list[str | int] = []
    for part in re.findall(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]", m.group(1)):
        out.append(part[0] if part[0] else int(part[1]))
    return out


def _semantic(cfg: Config) -> list[tuple[list[str | int], str]]:
    """Checks that span fields (types and ranges are the structs' own)."""
    problems: list[tuple[list[str | int], str]] = []
    try:
        parse_listen(cfg.metrics.listen)
    except (ValueError, UserError) as exc:
        problems.append((["metrics", "listen"], str(exc).removeprefix("metrics: ")))
    names: set[str] = set()
    outputs: list[OutputConfig] = cfg.output
    for i, o in enumerate(outputs):
        name = o.name or o.__struct_config__.tag
        if name in names:
            problems.append((["output", i, "name"], f"two outputs are named {name!r}: give each a distinct name"))
        names.add(str(name))
    return problems


def _field_type(where: list[str | int], data: Any) -> Any:
    """The declared type at a config path (an output's by its ``type``), or None."""
    tp: Any = Config
    node: Any = data
    for step in where:
        if isinstance(step, int):
            args = typing.get_args(tp)
            tp = args[0] if args else None
            node = node[step] if isinstance(node, list) and step < len(node) else None
            if tp is AnyOutput:
                tp = OUTPUT_CONFIGS.get(str(node.get("type"))) if isinstance(node, dict) else None
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            tp = typing.get_type_hints(tp, include_extras=True).get(step)
            node = node.get(step) if isinstance(node, dict) else None
        else:
            return None
        while typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
    return tp


def _choices(values: tuple[Any, ...]) -> str:
    words = [str(v) for v in values]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _value_at(data: Any, where: list[str | int]) -> Any:
    for step in where:
        if isinstance(step, int):
            data = data[step] if isinstance(data, list) and step < len(data) else None
        else:
            data = data.get(step) if isinstance(data, dict) else None
    return data


def _reason(exc: msgspec.ValidationError, data: Any) -> tuple[list[str | int], str]:
    """Where a validation error is, and what to say (choices spelled out)."""
    msg = str(exc)
    where = _path(msg)
    reason = re.sub(r"\s*- at `\$.*?`", "", msg)
    unknown = re.search(r"unknown field `([^`]+)`", reason)
    if unknown:
        return [*where, unknown.group(1)], reason
    tp = _field_type(where, data)
    if (where and where[-1] == "type") or "tag" in reason:
        return where, reason.replace("Invalid value", "unknown output type") + f" (types: {', '.join(OUTPUT_CONFIGS)})"
    if typing.get_origin(tp) is Literal:
        name = [w for w in where if isinstance(w, str)][-1]
        return where, f"{name} must be {_choices(typing.get_args(tp))}, not {_value_at(data, where)!r}"
    return where, reason + " (at {where})"


def _required(where: list[str | int], data: Any) -> bool:
    """Whether the field at ``where`` has no default (removing it is a mistake of its own)."""
    owner = _field_type(where[:-1], data)
    if not (isinstance(owner, type) and issubclass(owner, msgspec.Struct)) or isinstance(where[-1], int):
        return False
    return any(f.name == where[-1] and f.required for f in msgspec.structs.fields(owner))


def _remove(data: Any, where: list[str | int]) -> bool:
    """Remove the mistake at ``where`` so the next attempt finds the next one: the key
    (its default applies), or the whole table when the key is required."""
    if not where:
        return False
    if where[-1] == "type" or _required(where, data):
        return _remove(data, where[:-1])
    parent = _value_at(data, where[:-1])
    last = where[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        del parent[last]
        return True
    return _remove(data, where[:-1])


def parse(text: str, path: str = "<config>") -> Config:
    """Parse and validate configuration text; raise ConfigError listing every mistake as file:line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = m.group(1) if m else "1"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError([f"{path}:{line}: {reason}"]) from None
    errors: list[tuple[int, str]] = []
    cfg: Config | None = None
    # msgspec stops at the first mistake: take it out and look again; `outputs` maps the
    # [[output]] tables left to their places in the file
    outputs = list(range(len(data["output"]))) if isinstance(data.get("output"), list) else []
    for _ in range(100):
        try:
            cfg = msgspec.convert(data, Config, strict=True)
            break
        except msgspec.ValidationError as exc:
            where, reason = _reason(exc, data)
            in_file = list(where)
            if len(where) > 1 and where[0] == "output" and isinstance(where[1], int) and where[1] < len(outputs):
                in_file[1] = outputs[where[1]]
            errors.append((locate(text, in_file), reason.replace("{where}", ".".join(map(str, in_file)) or "top level")))
            before = len(data["output"]) if isinstance(data.get("output"), list) else 0
            if not _remove(data, where):
                break
            if isinstance(data.get("output"), list) and len(data["output"]) < before and isinstance(where[1], int):
                del outputs[where[1]]
    if cfg is not None:
        errors += [(locate(text, p), reason) for p, reason in _semantic(cfg)]
    if errors or cfg is None:
        raise ConfigError([f"{path}:{line}: {reason}" for line, reason in sorted(errors, key=lambda e: e[0])])
    return cfg


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file (create it, or pass --config PATH)"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    return parse(text, str(p))
