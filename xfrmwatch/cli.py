"""The ``xfrmwatch`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Awaitable, Callable
from functools import partial
from typing import IO, TYPE_CHECKING, Annotated, Any, BinaryIO, cast

import msgspec

from . import __version__, options
from . import events as ev
from .errors import (
    EXIT_CAPABILITY,
    EXIT_CAPTURE,
    EXIT_FINDINGS,
    EXIT_KERNEL,
    EXIT_NETNS,
    EXIT_NO_XFRM,
    EXIT_NOT_FOUND,
    EXIT_RULES,
    EXIT_RUNTIME,
    EXIT_USAGE,
    UsageError,
    UserError,
)
from .journal_stream import prefix as journal_prefix
from .netlink.request import DEFAULT_RCVBUF

# What a command needs is imported when it runs: a one-shot listing starts in a fraction
# of the time the live pipeline's modules (trio, structlog, rich, the rules) take to load.
if TYPE_CHECKING:
    import trio

    from .detect.alerting import Alerter
    from .filters import Filter
    from .mirror import Mirror
    from .netlink.decode import Decoder
    from .netlink.socket import XfrmSocket
    from .pipeline import PipelineConfig, Source, StateLink

EXIT_CODES = f"""\
exit codes:
  {0}  success
  {EXIT_RUNTIME}  runtime error
  {EXIT_USAGE}  bad arguments or filter values
  {EXIT_CAPABILITY}  missing capability (CAP_NET_ADMIN; CAP_SYS_ADMIN for --netns)
  {EXIT_NO_XFRM}  the kernel has no XFRM netlink (modprobe xfrm_user)
  {EXIT_NETNS}  unknown network namespace
  {EXIT_NOT_FOUND}  no such SA or policy (state get / policy get)
  {EXIT_KERNEL}  the kernel refused a request
  {EXIT_RULES}  a rule file is invalid (every error printed as file:line: reason)
  {EXIT_FINDINGS}  audit --fail-on: a finding reached that level
  {EXIT_CAPTURE}  a recording is not a readable netlink capture
"""

EPILOG = (
    """\
examples:
  xfrmwatch monitor                         live events, one per line
  xfrmwatch monitor --format json | jq .    JSON lines (the event schema)
  xfrmwatch monitor --type expire --proto esp --dst 192.0.2.0/24
  xfrmwatch monitor --netns vpn --aevents   another namespace, with replay counters
  xfrmwatch state list --reqid 7            SAs, as a table on a tty, JSON otherwise
  xfrmwatch state get --dst 192.0.2.1 --spi 0xc0de --proto esp --stats
  xfrmwatch policy list --dir out
  xfrmwatch info                            SAD/SPD counts, default policy, xfrm_stat

Everything is read-only: xfrmwatch never changes the SAD or SPD, and never
prints key material.

"""
    + EXIT_CODES
)


def _add_common(p: argparse.ArgumentParser, formats: tuple[str, ...], default: str) -> None:
    p.add_argument(
        "--netns",
        metavar="NAME|PATH",
        help="network namespace to watch: a name under /run/netns or a path (default: our own)",
    )
    p.add_argument(
        "--format", choices=formats, default=default, help=f"output format (default: {default})"
    )


def _add_filters(p: argparse.ArgumentParser, *, types: bool) -> None:
    g = p.add_argument_group("filters (combinable; all must match)")
    g.add_argument("--src", metavar="CIDR", help="SA source endpoint or policy selector source")
    g.add_argument("--dst", metavar="CIDR", help="SA destination endpoint or policy selector destination")
    g.add_argument("--proto", metavar="PROTO", help="esp, ah, comp, route2, hao")
    g.add_argument("--spi", metavar="SPI", help="SPI, decimal or 0x hex")
    g.add_argument("--reqid", metavar="N", help="request id")
    g.add_argument("--mark", metavar="VALUE[/MASK]", help="mark of the SA or policy")
    g.add_argument("--dev", metavar="IFNAME", help="interface of the selector (or SA offload)")
    g.add_argument("--dir", metavar="DIR", help="policy (or SA) direction: in, out, fwd")
    if types:
        g.add_argument(
            "--type",
            metavar="TYPE",
            action="append",
            default=[],
            help=f"event type, repeatable: {', '.join(ev.EVENT_TYPES)}",
        )


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """The pipeline's settings (groups, buffer, rules, tunnel model): monitor and top share these."""
    _add_listening(p)
    _add_rules(p)
    _add_tracking(p)
    _add_liveness(p)


def _add_listening(p: argparse.ArgumentParser) -> None:
    """Which groups to join and how big a buffer (monitor, top, record)."""
    acq = p.add_mutually_exclusive_group()
    acq.add_argument(
        "--acquire", dest="acquire", action="store_const", const=True, default=None,
        help="join the ACQUIRE group even if no key manager listens on it",
    )  # fmt: skip
    acq.add_argument(
        "--no-acquire", dest="acquire", action="store_const", const=False,
        help="never join the ACQUIRE group",
    )  # fmt: skip
    p.add_argument("--aevents", action="store_true", help="join the AEVENTS group (NEWAE)")
    p.add_argument(
        "--km-check", type=float, default=10.0, metavar="SECONDS",
        help="without --acquire/--no-acquire: how often to re-check for a key manager on ACQUIRE "
        "(joined once one listens, left when none does; default 10)",
    )  # fmt: skip
    p.add_argument(
        "--rcvbuf", type=int, default=DEFAULT_RCVBUF, metavar="BYTES",
        help=f"socket receive buffer (default {DEFAULT_RCVBUF // 2**20} MiB; forced past rmem_max)",
    )  # fmt: skip


def _add_rules(p: argparse.ArgumentParser) -> None:
    rl = p.add_mutually_exclusive_group()
    rl.add_argument(
        "--rules", metavar="PATH", action="append", default=[],
        help="Sigma rule file or directory, repeatable (default: the shipped pack)",
    )  # fmt: skip
    rl.add_argument("--no-rules", action="store_true", help="no rules: events only")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    """The tunnel model's settings (monitor, top, replay)."""
    p.add_argument(
        "--overdue-share", type=float, default=0.5, metavar="F",
        help="rekey_overdue fires when this share of the soft-to-hard time has passed (default 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--history-factor", type=float, default=1.5, metavar="F",
        help="without lifetimes in the kernel (Libreswan): rekey_overdue when an SA has lived F times "
        "its tunnel's learned rekey interval (default 1.5)",
    )  # fmt: skip
    p.add_argument(
        "--stall-after", type=float, default=30.0, metavar="SECONDS",
        help="traffic_stalled when inbound is silent this long while outbound sends (default 30)",
    )  # fmt: skip


def _add_liveness(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--liveness-interval", type=float, default=10.0, metavar="SECONDS",
        help="how often the SA counters are read for traffic rates and stalls (default 10; 0: never)",
    )  # fmt: skip


def _add_event_output(p: argparse.ArgumentParser) -> None:
    """How many events, and the state file (monitor, replay)."""
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N events")
    p.add_argument(
        "--state-file", metavar="PATH",
        help="write the mirrored SAD/SPD (JSON, the `dump` shape plus `synced` and the tunnel model's size "
        "`tunnels`) here on SIGUSR1 "
        "and at exit (SIGTERM, SIGHUP, SIGINT, --count)",
    )  # fmt: skip


def _help_width() -> int:
    """The width of help texts, as argparse finds it (shutil.get_terminal_size), less 2."""
    global _HELP_WIDTH
    if not _HELP_WIDTH:
        try:
            columns = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 80
        _HELP_WIDTH = columns - 2
    return _HELP_WIDTH


_HELP_WIDTH = 0


class _Help(argparse.HelpFormatter):
    """argparse's help layout with the width found once: argparse makes a formatter for
    every argument added, each asking shutil (imported for it) for the terminal's size,
    a few milliseconds of a one-shot listing's start."""

    def __init__(self, prog: str, **kw: Any) -> None:
        kw.setdefault("width", _help_width())
        super().__init__(prog, **kw)


class _RawHelp(_Help, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """An argument parser whose default help layout is :class:`_Help` (its subcommands' too)."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Help)
        super().__init__(**kw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xfrmwatch",
        description="A structured, key-free, alerting view of the Linux kernel's IPsec (XFRM) state.",
        epilog=EPILOG,
        formatter_class=_RawHelp,
    )
    parser.add_argument("--version", action="version", version=f"xfrmwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    fmt = _RawHelp

    mon = sub.add_parser(
        "monitor",
        help="stream XFRM events as they happen",
        description=textwrap.dedent(
            """\
            Stream every XFRM netlink event, decoded and key-free, one per line.

            Groups joined: EXPIRE, SA, POLICY, REPORT, MIGRATE, MAPPING always;
            ACQUIRE only if a key manager already listens on it (or --acquire),
            because listening changes what the kernel does with unmatched traffic;
            AEVENTS only with --aevents (it makes the kernel emit NEWAE per busy SA).
            A receive-buffer overrun is never hidden: it prints an "overrun" event."""
        ),
        epilog="examples:\n  xfrmwatch monitor --format json --type newsa --type delsa\n"
        "  xfrmwatch monitor --netns vpn --spi 0xc0de\n"
        "  xfrmwatch monitor --type tunnel_up --type tunnel_down --type rekey_overdue   tunnel life only\n"
        "  xfrmwatch monitor --stall-after 10 --liveness-interval 2   warn fast of a dead peer\n\n" + EXIT_CODES,
        formatter_class=fmt,
    )
    _add_common(mon, ("text", "json"), "text")
    _add_filters(mon, types=True)
    _add_pipeline_options(mon)
    _add_event_output(mon)
    mon.add_argument(
        "--out-buffer", type=int, default=64, metavar="BATCHES",
        help="batches of rendered lines held for a slow stdout before the pipeline waits (default 64); "
        "a consumer that stays behind makes the kernel drop events, reported as `overrun` and repaired by `resync`",
    )  # fmt: skip
    mon.set_defaults(func=cmd_monitor)

    top = sub.add_parser(
        "top",
        help="live dashboard: tunnels, alerts, events",
        description=textwrap.dedent(
            """\
            A full-screen view of the same pipeline as `monitor`: every tunnel with its
            state (up, rekeying, overdue, down), SPIs, countdowns to the next rekey and to
            the soft and hard expiry, traffic rates and rekeys; the open alerts; the latest
            events; SA/policy counts, key managers, xfrm_stat error counters that moved,
            overruns and resyncs.  Tunnels are sorted by urgency (down, overdue, then the
            soonest deadline).

            Keys: q quit, / filter, s sort, Tab namespace, a alerts only, ? help.
            Without a terminal, use --once (one frame on stdout)."""
        ),
        epilog="examples:\n  xfrmwatch top\n  xfrmwatch top --all-netns\n"
        "  xfrmwatch top --netns vpn --reqid 7 --liveness-interval 2\n"
        "  xfrmwatch top --once | less -R      one frame, for scripts (COLUMNS/LINES set its size)\n\n"
        + EXIT_CODES,
        formatter_class=fmt,
    )
    where = top.add_mutually_exclusive_group()
    where.add_argument(
        "--netns", metavar="NAME|PATH",
        help="network namespace to watch: a name under /run/netns or a path (default: our own)",
    )  # fmt: skip
    where.add_argument(
        "--all-netns", action="store_true",
        help="our own namespace and every one under /run/netns, followed as they come and go",
    )  # fmt: skip
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument(
        "--svg", metavar="FILE", help="write the last frame shown (with --once: the frame) to FILE as an SVG picture",
    )  # fmt: skip
    _add_filters(top, types=True)
    _add_pipeline_options(top)
    top.set_defaults(func=cmd_top)

    rec = sub.add_parser(
        "record",
        help="record every XFRM netlink message into a pcap file (key bytes zeroed)",
        description=textwrap.dedent(
            """\
            Record every XFRM netlink message of the namespace into FILE, a pcap file
            with LINKTYPE_NETLINK as an nlmon capture has it (tcpdump, tshark and
            Wireshark read it): first a dump of the SAD/SPD (so that a replay starts
            from the same state), then every multicast message as received. Key bytes
            are zeroed before anything is written (lengths kept), and so are the
            payloads of attributes xfrmwatch does not know. A receive-buffer overrun is
            recorded too, followed by a fresh dump. Stops on SIGINT/SIGTERM, --count or
            --duration. The format is described in docs/recordings.md; play it back with
            `xfrmwatch replay FILE`."""
        ),
        epilog="examples:\n  xfrmwatch record session.pcap\n"
        "  xfrmwatch record --netns vpn --duration 600 vpn.pcap\n"
        "  xfrmwatch record - | tshark -r - -X lua_script:contrib/wireshark/xfrm.lua\n\n" + EXIT_CODES,
        formatter_class=fmt,
    )
    rec.add_argument("file", metavar="FILE", help="pcap file to write, or - for standard output")
    rec.add_argument(
        "--netns", metavar="NAME|PATH",
        help="network namespace to record: a name under /run/netns or a path (default: our own)",
    )  # fmt: skip
    _add_listening(rec)
    _add_liveness(rec)
    rec.add_argument("--count", type=int, default=0, metavar="N", help="stop after N XFRM messages")
    rec.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    rec.set_defaults(func=cmd_record)

    rep = sub.add_parser(
        "replay",
        help="play a recording (or an nlmon capture) through the pipeline, as if live",
        description=textwrap.dedent(
            """\
            Play FILE (from `xfrmwatch record`, or a pcap/pcapng capture of an nlmon
            interface) through the whole pipeline as if it were live: mirror, tunnel
            tracking, rules, and the output of `monitor`. The recorded times drive the
            clock, so time-based verdicts (rekey_overdue, tunnel_down) fall at the
            offsets they fell at live; event times are the recorded ones. Real time by
            default; --speed N plays N times as fast, --fast as fast as possible (same
            events). Needs no privileges. See docs/recordings.md."""
        ),
        epilog="examples:\n  xfrmwatch replay session.pcap --fast\n"
        "  xfrmwatch replay session.pcap --speed 10 --type tunnel_down --type rekey_overdue\n"
        "  xfrmwatch replay capture.pcapng --fast --format json --state-file end.json\n\n" + EXIT_CODES,
        formatter_class=fmt,
    )
    rep.add_argument("file", metavar="FILE", help="pcap or pcapng file with LINKTYPE_NETLINK")
    rep.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="N", help="play N times as fast (default 1)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible, with the same events")
    rep.add_argument(
        "--top", action="store_true",
        help="show the replay in the dashboard of `xfrmwatch top` (needs a terminal; not with --fast)",
    )  # fmt: skip
    _add_filters(rep, types=True)
    _add_event_output(rep)
    _add_rules(rep)
    _add_tracking(rep)
    rep.set_defaults(func=cmd_replay, netns=None)

    demo = sub.add_parser(
        "demo",
        help="see what xfrmwatch does: a real IKE session replayed, explained (no root, no IPsec)",
        description=textwrap.dedent(
            """\
            Replay a real IKEv2 session shipped with xfrmwatch (two strongSwan
            daemons: set-up, rekeys, then one of them dies) through the whole
            pipeline, sped up to about a minute, and say on screen what happens.
            Needs no privileges and no IPsec on this machine.

            --live (root, a kernel with ESP): build two throwaway network namespaces,
            drive a scripted tunnel life in them with `ip xfrm` (random keys, never
            printed), watch it, and delete everything at the end (also on Ctrl-C
            and SIGTERM)."""
        ),
        epilog="examples:\n  xfrmwatch demo\n  xfrmwatch demo --fast\n  sudo xfrmwatch demo --live\n\n" + EXIT_CODES,
        formatter_class=fmt,
    )
    dpace = demo.add_mutually_exclusive_group()
    dpace.add_argument("--speed", type=float, metavar="N", help="play N times as fast (default: about a minute in all)")
    dpace.add_argument("--fast", action="store_true", help="as fast as possible")
    demo.add_argument("--live", action="store_true", help="a scripted tunnel life in throwaway namespaces (root, ESP)")
    demo.add_argument(
        "--lines", action="store_true",
        help="the events as lines, as `monitor` prints them (the default without a terminal), not the dashboard",
    )  # fmt: skip
    demo.add_argument(
        "--rekey", type=int, default=8, metavar="SECONDS",
        help="--live: the SAs' soft lifetime in whole seconds, hence the rekey interval (default 8)",
    )  # fmt: skip
    demo.set_defaults(
        func=cmd_demo, netns=None, format="text", count=0, state_file=None, rules=[], no_rules=False,
    )  # fmt: skip


    state = sub.add_parser("state", help="list or get SAs (read-only)")
    ssub = state.add_subparsers(dest="action", metavar="ACTION")
    ssub.required = True
    sl = ssub.add_parser("list", help="list SAs", formatter_class=fmt, epilog=EXIT_CODES)
    _add_common(sl, ("auto", "table", "json"), "auto")
    _add_filters(sl, types=False)
    sl.add_argument("--stats", action="store_true", help="add GETAE replay/lifetime counters")
    sl.set_defaults(func=cmd_state_list)
    sg = ssub.add_parser(
        "get",
        help="get one SA by destination, SPI and protocol",
        formatter_class=fmt,
        epilog="example:\n  xfrmwatch state get --dst 192.0.2.1 --spi 0xc0de --proto esp --stats\n\n"
        + EXIT_CODES,
    )
    _add_common(sg, ("auto", "table", "json"), "auto")
    sg.add_argument("--dst", required=True, metavar="ADDR")
    sg.add_argument("--spi", required=True, metavar="SPI")
    sg.add_argument("--proto", default="esp", metavar="PROTO")
    sg.add_argument("--mark", metavar="VALUE[/MASK]")
    sg.add_argument("--stats", action="store_true", help="add GETAE replay/lifetime counters")
    sg.set_defaults(func=cmd_state_get)

    pol = sub.add_parser("policy", help="list or get policies (read-only)")
    psub = pol.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    pl = psub.add_parser("list", help="list policies", formatter_class=fmt, epilog=EXIT_CODES)
    _add_common(pl, ("auto", "table", "json"), "auto")
    _add_filters(pl, types=False)
    pl.set_defaults(func=cmd_policy_list)
    pg = psub.add_parser(
        "get",
        help="get one policy by index, or by selector and direction",
        formatter_class=fmt,
        epilog="examples:\n  xfrmwatch policy get --dir out --index 1\n"
        "  xfrmwatch policy get --dir in --src 10.0.2.0/24 --dst 10.0.1.0/24\n\n" + EXIT_CODES,
    )
    _add_common(pg, ("auto", "table", "json"), "auto")
    pg.add_argument("--dir", required=True, metavar="DIR")
    pg.add_argument("--index", metavar="N")
    pg.add_argument("--src", metavar="CIDR")
    pg.add_argument("--dst", metavar="CIDR")
    pg.add_argument("--mark", metavar="VALUE[/MASK]")
    pg.add_argument("--ptype", choices=("main", "sub"), default="main")
    pg.set_defaults(func=cmd_policy_get)

    dump = sub.add_parser("dump", help="SAs and policies together", formatter_class=fmt, epilog=EXIT_CODES)
    _add_common(dump, ("auto", "table", "json"), "auto")
    _add_filters(dump, types=False)
    dump.set_defaults(func=cmd_dump)

    info = sub.add_parser(
        "info",
        help="SAD/SPD counts, hash sizes, default policy and /proc/net/xfrm_stat",
        formatter_class=fmt,
        epilog=EXIT_CODES,
    )
    _add_common(info, ("auto", "table", "json"), "auto")
    info.set_defaults(func=cmd_info)

    run = sub.add_parser(
        "run",
        help="the daemon: pipeline, rules and outputs from a config file",
        formatter_class=fmt,
        description=textwrap.dedent(
            """\
            Run headless: watch the configured namespaces, track rekeys, evaluate
            rules, and feed every output (file, journald, syslog, webhook, exec,
            Alertmanager, Prometheus metrics) from its own bounded queue.
            SIGHUP reloads the configuration and rules (a bad file keeps the old
            one) and reopens files; SIGTERM drains the queues and exits 0.
            Logs are JSON lines on stderr."""
        ),
        epilog="examples:\n  xfrmwatch run\n  xfrmwatch run --config ./xfrmwatch.toml\n\n" + EXIT_CODES,
    )
    run.add_argument(
        "--config", metavar="PATH",
        help="configuration file (default /etc/xfrmwatch/config.toml; built-in defaults if it does not exist)",
    )  # fmt: skip
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.set_defaults(func=cmd_run)

    conf = sub.add_parser("config", help="validate a configuration file")
    csub = conf.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    cc = csub.add_parser(
        "check", help="validate the configuration and its rules; errors as file:line",
        formatter_class=fmt, epilog=EXIT_CODES,
    )  # fmt: skip
    cc.add_argument("--config", metavar="PATH", default="/etc/xfrmwatch/config.toml")
    cc.set_defaults(func=cmd_config_check)

    audit = sub.add_parser(
        "audit",
        help="one-shot compliance check of the current SAD/SPD",
        formatter_class=fmt,
        description=textwrap.dedent(
            """\
            Check the current SAD/SPD with the same Sigma rules as the monitor:
            weak algorithms, replay protection off, missing lifetimes, SAs without
            policies, templates without SAs, broad bypass policies, default policy
            accept, no key manager listening, non-zero /proc/net/xfrm_stat errors."""
        ),
        epilog="examples:\n  xfrmwatch audit\n  xfrmwatch audit --format json --fail-on high   # for cron/CI\n\n"
        + EXIT_CODES,
    )
    _add_common(audit, ("auto", "table", "json"), "auto")
    audit.add_argument("--rules", metavar="PATH", action="append", default=[], help="rule file or directory")
    audit.add_argument(
        "--fail-on", metavar="LEVEL", choices=("informational", "low", "medium", "high", "critical"),
        help=f"exit {EXIT_FINDINGS} when a finding has this level or higher",
    )  # fmt: skip
    audit.set_defaults(func=cmd_audit)

    rules = sub.add_parser("rules", help="check and test Sigma rule files")
    rsub = rules.add_subparsers(dest="action", metavar="ACTION")
    rsub.required = True
    rc = rsub.add_parser(
        "check", help="validate rule files; every error as file:line", formatter_class=fmt,
        epilog="example:\n  xfrmwatch rules check /etc/xfrmwatch/rules\n\n" + EXIT_CODES,
    )  # fmt: skip
    rc.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: the shipped pack)")
    rc.set_defaults(func=cmd_rules_check)
    rt = rsub.add_parser(
        "test", help="run rules over recorded event files and compare with expected hits",
        formatter_class=fmt,
        epilog="A case is CASES/NAME.jsonl (events as `monitor --format json` prints them);\n"
        "CASES/expected.toml names the alerts each case must raise per rule file:\n"
        '  ["weak-encryption.pos"]\n  weak-encryption = 2\n\n' + EXIT_CODES,
    )  # fmt: skip
    rt.add_argument("cases", nargs="?", metavar="CASES", help="directory of cases (default: the shipped pack's tests)")
    rt.add_argument("--rules", metavar="PATH", action="append", default=[], help="rule file or directory")
    rt.set_defaults(func=cmd_rules_test)

    schema = sub.add_parser("schema", help="print the JSON Schema of events")
    schema.add_argument("--markdown", action="store_true", help="the field reference instead")
    schema.set_defaults(func=cmd_schema)
    return parser


# --- helpers ---------------------------------------------------------------------------


def build_filter(args: argparse.Namespace) -> Filter:
    from .filters import Filter, parse_cidr, parse_dir, parse_int, parse_mark, parse_proto, parse_type
    from .netlink.netns import entered

    ifindex = None
    if getattr(args, "dev", None):
        with entered(args.netns):
            try:
                ifindex = socket.if_nametoindex(args.dev)
            except OSError:
                where = f" in network namespace {args.netns!r}" if args.netns else ""
                raise UsageError(f"--dev: no interface named {args.dev!r}{where}") from None
    return Filter(
        src=parse_cidr(args.src, "--src") if args.src else None,
        dst=parse_cidr(args.dst, "--dst") if args.dst else None,
        proto=parse_proto(args.proto) if args.proto else None,
        spi=parse_int(args.spi, "--spi") if args.spi else None,
        reqid=parse_int(args.reqid, "--reqid") if args.reqid else None,
        mark=parse_mark(args.mark) if args.mark else None,
        ifindex=ifindex,
        dir=parse_dir(args.dir) if args.dir else None,
        types=frozenset(parse_type(t) for t in getattr(args, "type", []) or []),
    )


def _table_wanted(args: argparse.Namespace) -> bool:
    if args.format == "auto":
        return sys.stdout.isatty()
    return bool(args.format == "table")


def _write_json_lines(objs: list[Any]) -> None:
    enc = msgspec.json.Encoder()
    out = sys.stdout.buffer
    for o in objs:
        out.write(enc.encode(o) + b"\n")
    out.flush()


def _filter_sas(flt: Filter, sas: list[ev.SA]) -> list[ev.SA]:
    """The SAs a filter keeps, each seen as the event that announces it (what filters read)."""
    return [s for s in sas if flt.match(ev.NewSA(time="", mono=0.0, netns="", nlmsg_pid=0, nlmsg_seq=0, sa=s))]


def _filter_policies(flt: Filter, pols: list[ev.Policy]) -> list[ev.Policy]:
    return [
        p for p in pols if flt.match(ev.NewPolicy(time="", mono=0.0, netns="", nlmsg_pid=0, nlmsg_seq=0, policy=p))
    ]


# --- commands ----------------------------------------------------------------------------


class PipelineOptions(msgspec.Struct):
    """The ranges of the pipeline's numeric options (`monitor`, `top`)."""

    overdue_share: options.OverdueShare
    rcvbuf: options.ReceiveBuffer
    km_check: options.Positive
    history_factor: options.HistoryFactor
    liveness_interval: options.NotNegative
    stall_after: options.Positive


class MonitorOptions(PipelineOptions):
    """The ranges of `monitor`'s numeric options."""

    #: 0: no limit
    count: Annotated[int, msgspec.Meta(ge=0)]
    out_buffer: Annotated[int, msgspec.Meta(ge=1)]


def _check_ranges(args: argparse.Namespace, ranges: type[msgspec.Struct]) -> None:
    """A number out of its range (``ranges`` names the options and their types): one line."""
    problem = options.check({k: vars(args)[k] for k in ranges.__struct_fields__}, ranges)
    if problem is not None:
        raise UsageError(problem)


#: At exit, how long the lines still buffered may take to reach a slow stdout (seconds).
FLUSH_TIMEOUT = 2.0


async def cmd_monitor(args: argparse.Namespace) -> int:
    """The pipeline, then its events on stdout.

    A slow reader of stdout never blocks the event loop: rendered lines wait in a bounded
    queue (``--out-buffer`` batches) written by a worker thread.  When that is full the
    pipeline waits in turn; if the consumer stays behind long enough, the kernel's socket
    buffer fills and its loss is reported as an ``overrun`` and repaired by a ``resync``
    (nothing is ever dropped silently, and the mirror stays exact).
    """
    from .pipeline import PipelineConfig

    flt = build_filter(args)
    _check_options(args, MonitorOptions)
    cfg = PipelineConfig(
        netns=args.netns, aevents=args.aevents, acquire=args.acquire, rcvbuf=args.rcvbuf,
        overdue_share=args.overdue_share, km_check=args.km_check, history_factor=args.history_factor,
        stall_after=args.stall_after, liveness_interval=args.liveness_interval,
    )  # fmt: skip
    return await _stream_events(args, flt, cfg, None, "monitoring", out_buffer=args.out_buffer)


async def cmd_replay(args: argparse.Namespace) -> int:
    """A recording through the same pipeline and output as ``monitor``, on the replay clock
    (``main`` runs it on :func:`xfrmwatch.replay.replay_clock`).  Lines are written from the
    event loop itself: with ``--fast`` the clock then only moves once every line is out, so
    the pipeline sees exactly the recorded timing."""
    import trio

    from .capture import Capture
    from .pipeline import PipelineConfig
    from .replay import ReplaySource

    if args.dev:
        raise UsageError("--dev names an interface of a live namespace; in a replay, filter with --type, --spi, ...")
    flt = build_filter(args)
    _check_options(args, ReplayOptions)
    if args.top:
        _top_can_replay(args)
    capture = await trio.to_thread.run_sync(Capture.load, args.file)
    cfg = PipelineConfig(
        overdue_share=args.overdue_share, history_factor=args.history_factor, stall_after=args.stall_after,
    )  # fmt: skip
    if args.top:
        title = f"xfrmwatch replay {os.path.basename(args.file)} x{args.speed:g}"
        return await _replay_top(args, flt, cfg, ReplaySource(capture), title, speed=args.speed)
    return await _stream_events(args, flt, cfg, ReplaySource(capture), "replaying", out_buffer=0)


def _top_can_replay(args: argparse.Namespace) -> None:
    if args.fast:
        raise UsageError("--top shows the replay as it plays: give a --speed instead of --fast")
    if not (os.isatty(0) and os.isatty(1)):
        raise UsageError("--top needs a terminal on stdin and stdout")


async def _replay_top(
    args: argparse.Namespace,
    flt: Filter,
    cfg: PipelineConfig,
    source: Any,
    title: str,
    *,
    speed: float,
    narrate: Callable[[ev.Event], str | None] | None = None,
) -> int:
    """A recording (``source``, a :class:`~xfrmwatch.replay.ReplaySource`) in the dashboard of
    `top`, its redraws paced in real time whatever the replay's speed."""
    from .filters import Filter
    from .pipeline import start_pipeline
    from .top.app import Dashboard, LogLines, run

    rules = load_alerter(args)

    async def starter(
        nursery: trio.Nursery, netns: str, link: StateLink
    ) -> tuple[trio.MemoryReceiveChannel[list[ev.Event]], int | None]:
        recv, _, _ = await start_pipeline(nursery, cfg, rules, link=link, source=source)
        nursery.start_soon(_say_when_over, dash, source)
        return recv, None

    dash = Dashboard(match=None if flt == Filter() else flt, title=title, clock_rate=speed, narrate=narrate)
    with LogLines(dash) as logs:
        try:
            return await run(dash, starter, [source.netns])
        finally:
            logs.replay(sys.stderr)


async def _say_when_over(dash: Any, source: Any) -> None:
    import trio

    await trio.sleep_until(source.mono(source.capture.end))
    dash.notice = "the recording has ended (the dashboard shows its last state): q quits"
    dash.wake()


async def cmd_demo(args: argparse.Namespace) -> int:
    """The shipped recording replayed with a narration, or (``--live``) a scripted tunnel life
    in throwaway namespaces, watched the same way."""
    import trio

    from .demo import narrate
    from .filters import Filter
    from .pipeline import PipelineConfig

    if args.live:
        return await _demo_live(args)
    from .demo.session import intro, session
    from .replay import ReplaySource

    capture = await trio.to_thread.run_sync(session)
    speed = "as fast as possible" if args.fast else f"at {args.speed or session_speed():g} times real speed"
    if not (args.lines or args.fast) and os.isatty(0) and os.isatty(1):
        _say(intro(capture, speed, dashboard=True))
        code = await _replay_top(
            args, Filter(), PipelineConfig(), ReplaySource(capture, "demo"), "xfrmwatch demo",
            speed=args.speed or session_speed(), narrate=narrate.Narrator(),
        )  # fmt: skip
        _say(OUTRO)
        return code
    _say(intro(capture, speed))
    code = await _stream_events(
        args, Filter(), PipelineConfig(), ReplaySource(capture, "demo"), None, out_buffer=0,
        narrate=narrate.Narrator(),
    )  # fmt: skip
    _say(OUTRO)
    return code


OUTRO = (
    "That was a recording. On a machine with IPsec: `xfrmwatch top` (the dashboard, live), `xfrmwatch monitor` "
    "(live events), `xfrmwatch record FILE` and `xfrmwatch replay FILE [--top]`; `xfrmwatch demo --live` (root) "
    "plays a tunnel's life in throwaway namespaces."
)


def session_speed() -> float:
    """How fast the shipped session plays by default: about a minute in all."""
    from .demo.session import session

    cap = session()
    return max(1.0, round((cap.end - cap.start) / 60.0, 1))


async def _demo_live(args: argparse.Namespace) -> int:
    import trio

    from .demo import live, narrate
    from .filters import Filter
    from .pipeline import PipelineConfig

    if not 2 <= args.rekey <= 600:
        raise UsageError("--rekey must be between 2 and 600 seconds")
    live.check_can_run()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    outer.cancel_scope.cancel()
                    return

            outer.start_soon(stop_on_signal)
            async with live.demo_namespaces(args.rekey) as net:
                _say(
                    f"Two throwaway namespaces, {net.left} and {net.right}, joined by a veth pair, each "
                    "with a site address behind it; an ESP tunnel between the sites, keyed with `ip xfrm` "
                    f"(random keys, never shown), rekeyed every {net.rekey:g} s, traffic through it. "
                    f"xfrmwatch watches {net.left}, read-only, as `monitor` would. Ctrl-C stops it; the "
                    "namespaces are deleted in any case."
                )
                done = trio.Event()
                cfg = PipelineConfig(netns=net.left, acquire=False, liveness_interval=2.0)

                async def script() -> None:
                    async with trio.open_nursery() as n:
                        n.start_soon(live.traffic, net)
                        await live.tunnel_life(net)
                        n.cancel_scope.cancel()
                    done.set()

                async with trio.open_nursery() as inner:
                    ready = trio.Event()
                    inner.start_soon(_start_after, ready, script)
                    code = await _stream_events(
                        args, Filter(), cfg, None, None, out_buffer=0, narrate=narrate.Narrator(),
                        until=done, started=ready,
                    )  # fmt: skip
                    inner.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    _say("The demo namespaces are deleted.")
    return code


async def _start_after(ready: trio.Event, fn: Callable[[], Awaitable[None]]) -> None:
    await ready.wait()
    await fn()


def _say(text: str) -> None:
    """A line of the demo's own, on standard output."""
    if sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(f"[bold]{text}[/bold]")
    else:
        sys.stdout.write(f"== {text}\n")
        sys.stdout.flush()


class RecordOptions(msgspec.Struct):
    """The ranges of `record`'s numeric options."""

    rcvbuf: options.ReceiveBuffer
    count: Annotated[int, msgspec.Meta(ge=0)]
    km_check: options.Positive
    liveness_interval: options.NotNegative
    duration: options.Positive | None


class ReplayOptions(msgspec.Struct):
    """The ranges of `replay`'s numeric options."""

    overdue_share: options.OverdueShare
    count: Annotated[int, msgspec.Meta(ge=0)]
    history_factor: options.HistoryFactor
    stall_after: options.Positive


def _check_options(args: argparse.Namespace, ranges: type[msgspec.Struct]) -> None:
    """Argument mistakes, before anything is opened: the numbers' ranges, the state file's directory."""
    _check_ranges(args, ranges)
    if getattr(args, "state_file", None) and not os.path.isdir(os.path.dirname(os.path.abspath(args.state_file))):
        raise UsageError(f"--state-file: directory of {args.state_file!r} does not exist")


async def _stream_events(
    args: argparse.Namespace,
    flt: Filter,
    cfg: PipelineConfig,
    source: Source | None,
    announce: str | None,
    *,
    out_buffer: int,
    narrate: Callable[[ev.Event], str | None] | None = None,
    until: trio.Event | None = None,
    started: trio.Event | None = None,
) -> int:
    """Run the pipeline from ``source`` (None: the live namespace) and print its events
    (``--format``, filters, ``--count``), the state file on SIGUSR1 and at the end.
    ``out_buffer`` > 0: lines go through a worker thread with that many batches queued;
    0: they are written from the event loop.  ``narrate``: a sentence to print after an
    event (the demo).  ``until``: stop once this is set (a source that never ends);
    ``started``: set once the pipeline is ready (groups joined, first dump applied)."""
    import structlog
    import trio

    from .filters import Filter
    from .mirror import Mirror
    from .output.render import JsonRenderer, TextRenderer
    from .pipeline import start_pipeline

    tty = args.format == "text" and sys.stdout.isatty()
    renderer = JsonRenderer() if args.format == "json" else TextRenderer()
    json_lines = msgspec.json.Encoder().encode_lines if args.format == "json" else None  # one call per batch
    console = None
    if tty:
        from rich.console import Console

        console = Console(file=cast("IO[str]", _FdText(sys.stdout.fileno())), highlight=False, soft_wrap=True)
    rules = load_alerter(args)
    match = None if flt == Filter() else flt.match
    mirror = Mirror(netns=source.netns if source is not None else args.netns or "")
    stop = _Stop()
    stalled = _Stalled()
    async with trio.open_nursery() as root:
        out_send, out_recv = trio.open_memory_channel[list[Any]](max(out_buffer, 1))
        writer_done = trio.Event()
        if out_buffer:
            root.start_soon(_write_stdout, out_recv, console, writer_done)
        else:
            out_recv.close()
            writer_done.set()
        with trio.CancelScope() as running:
            await root.start(_monitor_signals, mirror, args.state_file, running, stop)
            if until is not None:
                root.start_soon(_cancel_when, until, running)
            async with trio.open_nursery() as pipe:
                recv, _, src = await start_pipeline(pipe, cfg, rules, mirror=mirror, source=source)
                if announce is not None:
                    structlog.get_logger("xfrmwatch").info(
                        announce, netns=args.netns or "", **src.describe(),
                        sas=len(mirror.sas), policies=len(mirror.policies),
                    )  # fmt: skip
                if started is not None:
                    started.set()
                left = args.count or -1
                async with recv:
                    async for batch in recv:
                        shown = batch if match is None else [e for e in batch if match(e)]
                        if not shown:
                            continue
                        if left > 0:
                            shown = shown[:left]
                            left -= len(shown)
                        if narrate is None:
                            if console is not None:
                                parts = [renderer.rich(e) for e in shown]  # type: ignore[union-attr]
                            elif json_lines is not None:
                                parts = [json_lines(shown)]
                            else:
                                parts = [renderer(e) for e in shown]
                        else:
                            parts = _narrated(shown, renderer, console, narrate)
                        if not out_buffer:
                            _print_parts(parts, console)
                        else:
                            try:
                                out_send.send_nowait(parts)
                            except trio.WouldBlock:
                                stalled.begin(out_buffer)
                                await out_send.send(parts)
                            else:
                                stalled.end()
                        if left == 0:
                            break
                pipe.cancel_scope.cancel()
        out_send.close()
        with trio.move_on_after(FLUSH_TIMEOUT):
            await writer_done.wait()
        if args.state_file:
            _write_state(mirror, args.state_file)
        root.cancel_scope.cancel()
    return stop.code


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _narrated(
    events: list[ev.Event], renderer: Any, console: Any, narrate: Callable[[ev.Event], str | None]
) -> list[Any]:
    """Each event's line, then what it means when there is something to say."""
    parts: list[Any] = []
    for e in events:
        parts.append(renderer.rich(e) if console is not None else renderer(e))
        said = narrate(e)
        if said is not None:
            if console is not None:
                from rich.text import Text

                parts.append(Text(f"  \u25b6 {said}", style="bold cyan"))
            else:
                parts.append(f"  > {said}\n".encode())
    return parts


def _check_top_args(args: argparse.Namespace) -> None:
    """Argument mistakes, before anything is opened."""
    _check_ranges(args, PipelineOptions)
    if args.svg and not os.path.isdir(os.path.dirname(os.path.abspath(args.svg))):
        raise UsageError(f"--svg: directory of {args.svg!r} does not exist")
    if not args.once and not (os.isatty(0) and os.isatty(1)):
        raise UsageError("top needs a terminal on stdin and stdout; --once prints one frame without one")


async def cmd_top(args: argparse.Namespace) -> int:
    """The live dashboard (xfrmwatch/top): one pipeline per namespace, as `monitor` runs it."""
    import dataclasses

    from .detect.alerting import Alerter
    from .filters import Filter
    from .pipeline import PipelineConfig, start_pipeline
    from .top.app import Dashboard, LogLines, all_namespaces, run

    flt = build_filter(args)
    _check_top_args(args)
    ruleset = None
    if not args.no_rules:
        from .detect.pack import load

        ruleset = load(args.rules)
    base = PipelineConfig(
        aevents=args.aevents, acquire=args.acquire, rcvbuf=args.rcvbuf, overdue_share=args.overdue_share,
        km_check=args.km_check, history_factor=args.history_factor, stall_after=args.stall_after,
        liveness_interval=args.liveness_interval,
    )  # fmt: skip

    async def starter(
        nursery: trio.Nursery, netns: str, link: StateLink
    ) -> tuple[trio.MemoryReceiveChannel[list[ev.Event]], int | None]:
        cfg = dataclasses.replace(base, netns=netns or None)
        rules = None if ruleset is None else Alerter(ruleset)
        recv, _, source = await start_pipeline(nursery, cfg, rules, link=link)
        return recv, source.portid

    dash = Dashboard(match=None if flt == Filter() else flt)
    names = sorted(all_namespaces()) if args.all_netns else [args.netns or ""]
    if args.once:
        return await run(dash, starter, names, follow=False, once=True, svg=args.svg)
    with LogLines(dash) as logs:
        try:
            return await run(dash, starter, names, follow=args.all_netns, svg=args.svg)
        finally:
            logs.replay(sys.stderr)


class _Stalled:
    """Says once when stdout stops being read (the pipeline then waits, and a long enough
    stall makes the kernel drop events: reported as an overrun) and once when it resumes."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None

    def begin(self, batches: int) -> None:
        import structlog
        import trio

        if self.since is None:
            self.since = trio.current_time()
            structlog.get_logger("xfrmwatch").warning(
                "stdout is not being read: the pipeline waits (the kernel drops events, reported as an "
                "overrun, if it stays behind)", buffered_batches=batches,
            )  # fmt: skip

    def end(self) -> None:
        import structlog
        import trio

        if self.since is not None:
            structlog.get_logger("xfrmwatch").info(
                "stdout is read again", after=round(trio.current_time() - self.since, 3)
            )
            self.since = None


class _Stop:
    """How the monitor was asked to stop: its exit status."""

    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code = 0


async def _monitor_signals(
    mirror: Mirror,
    state_file: str | None,
    running: trio.CancelScope,
    stop: _Stop,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """From before the first dump to the end: SIGUSR1 writes the state file; SIGTERM and
    SIGHUP stop with status 0, SIGINT with 130 (the caller flushes and writes the state file)."""
    import trio

    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
        task_status.started()
        async for sig in signals:
            if sig == signal.SIGUSR1:
                if state_file:
                    _write_state(mirror, state_file)
                continue
            stop.code = 130 if sig == signal.SIGINT else 0
            running.cancel()


def _write_fd(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` with plain write(2) calls: no Python-level buffer whose lock
    a write blocked on a stalled pipe could hold when the interpreter exits."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _FdText:
    """A text file for rich's Console that writes straight to a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        _write_fd(self.fd, text.encode())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        return self.fd


async def _write_stdout(recv: trio.MemoryReceiveChannel[list[Any]], console: Any, done: trio.Event) -> None:
    """Write rendered batches to stdout from a worker thread, joining whatever is queued."""
    import trio

    fd = sys.stdout.fileno()
    sys.stdout.flush()

    async with recv:
        async for parts in recv:
            while True:
                try:
                    parts += recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await trio.to_thread.run_sync(_print_parts, parts, console, fd, abandon_on_cancel=True)
    done.set()


def _print_parts(parts: list[Any], console: Any, fd: int | None = None) -> None:
    """Rendered lines to stdout: through rich on a terminal, else as bytes."""
    if console is not None:
        for t in parts:
            console.print(t)
    else:
        _write_fd(sys.stdout.fileno() if fd is None else fd, b"".join(parts))


def _output_file(path: str) -> BinaryIO:
    """The binary file to write (``-``: standard output, never a terminal)."""
    if path == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write a pcap file to a terminal: give a FILE, or pipe it (record - | tshark -r -)")
        return sys.stdout.buffer
    try:
        return open(path, "wb")  # the caller closes it
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


async def cmd_record(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    import structlog
    import trio

    from .record import RecordConfig, RecordStats, record

    _check_options(args, RecordOptions)
    out = _output_file(args.file)
    cfg = RecordConfig(
        netns=args.netns, aevents=args.aevents, acquire=args.acquire, rcvbuf=args.rcvbuf,
        km_check=args.km_check, count=args.count, liveness_interval=args.liveness_interval,
        duration=math.inf if args.duration is None else args.duration,
    )  # fmt: skip
    stats = RecordStats()
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def run(task_status: trio.TaskStatus[XfrmSocket] = trio.TASK_STATUS_IGNORED) -> None:
                    await record(out, cfg, stats, task_status=task_status)
                    nursery.cancel_scope.cancel()  # --count or --duration reached

                sub = await nursery.start(run)
                structlog.get_logger("xfrmwatch").info(
                    "recording", file=args.file, netns=args.netns or "", groups=sorted(sub.groups)
                )
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    structlog.get_logger("xfrmwatch").info("recorded", file=args.file, **dataclasses.asdict(stats))
    return 0


def _write_state(mirror: Mirror, path: str) -> None:
    """Write the mirror (the dump shape) atomically: a new file in the same directory,
    renamed over ``path`` (never following a link planted at a fixed temporary name)."""
    import tempfile

    import structlog

    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".xfrmwatch-state-", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(mirror.as_dump()) + b"\n")
        os.replace(tmp, path)
    except OSError as exc:
        structlog.get_logger("xfrmwatch").error("cannot write the state file", path=path, error=exc.strerror)


def load_alerter(args: argparse.Namespace) -> Alerter | None:
    from .detect.alerting import Alerter

    if args.no_rules:
        return None
    from .detect.pack import load

    return Alerter(load(args.rules))


async def _with_socket(args: argparse.Namespace, fn: Callable[[XfrmSocket, Decoder], Awaitable[int]]) -> int:
    from .netlink.decode import Decoder
    from .netlink.socket import XfrmSocket

    with XfrmSocket.open(args.netns) as sock:
        return await fn(sock, Decoder(args.netns or ""))


async def cmd_state_list(args: argparse.Namespace) -> int:
    """The SAD, streamed: each reply datagram's SAs are written as they arrive."""
    from .filters import Filter
    from .netlink import query
    from .netlink.socket import XfrmSocket
    from .output import tables

    flt = build_filter(args)
    keep = None if flt == Filter() else partial(_filter_sas, flt)

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        out = sys.stdout.buffer
        table = tables.sa_table(out, stats=args.stats, style=sys.stdout.isatty()) if _table_wanted(args) else None
        enc = msgspec.json.Encoder()
        ae_sock = XfrmSocket.open(args.netns) if args.stats else None  # GETAE beside the running dump
        try:
            async for sas in query.stream_sas(sock, dec):
                if keep is not None:
                    sas = keep(sas)
                stats = [await query.get_ae(ae_sock, dec, sa) for sa in sas] if ae_sock is not None else None
                if table is not None:
                    table.rows([tables.sa_row(sa, stats[i] if stats else None) for i, sa in enumerate(sas)])
                elif stats is None:
                    out.write(enc.encode_lines(sas))
                else:
                    out.write(enc.encode_lines([{"sa": sa, "ae": ae} for sa, ae in zip(sas, stats, strict=True)]))
        finally:
            if ae_sock is not None:
                ae_sock.close()
        if table is not None:
            table.close("SAs")
        out.flush()
        return 0

    return await _with_socket(args, run)


async def cmd_state_get(args: argparse.Namespace) -> int:
    from .filters import parse_cidr, parse_int, parse_mark, parse_proto
    from .netlink import query
    from .output import tables

    spi = parse_int(args.spi, "--spi")
    proto = parse_proto(args.proto)
    mark = parse_mark(args.mark) if args.mark else None
    parse_cidr(args.dst, "--dst")

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        sa = await query.get_sa(sock, dec, args.dst, spi, proto, mark)
        ae = await query.get_ae(sock, dec, sa) if args.stats else None
        if _table_wanted(args):
            table = tables.sa_table(sys.stdout.buffer, stats=ae is not None, style=sys.stdout.isatty())
            table.rows([tables.sa_row(sa, ae)])
            table.close("SA")
        elif ae is None:
            _write_json_lines([sa])
        else:
            _write_json_lines([{"sa": sa, "ae": ae}])
        return 0

    return await _with_socket(args, run)


async def cmd_policy_list(args: argparse.Namespace) -> int:
    """The SPD, streamed: each reply datagram's policies are written as they arrive."""
    from .filters import Filter
    from .netlink import query
    from .output import tables

    flt = build_filter(args)
    keep = None if flt == Filter() else partial(_filter_policies, flt)

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        out = sys.stdout.buffer
        table = tables.policy_table(out, style=sys.stdout.isatty()) if _table_wanted(args) else None
        enc = msgspec.json.Encoder()
        async for pols in query.stream_policies(sock, dec):
            if keep is not None:
                pols = keep(pols)
            if table is not None:
                table.rows([tables.policy_row(p) for p in pols])
            else:
                out.write(enc.encode_lines(pols))
        if table is not None:
            table.close("policies")
        out.flush()
        return 0

    return await _with_socket(args, run)


async def cmd_policy_get(args: argparse.Namespace) -> int:
    from .filters import parse_cidr, parse_dir, parse_int, parse_mark
    from .netlink import query
    from .output import tables

    direction = parse_dir(args.dir)
    index = parse_int(args.index, "--index") if args.index else None
    for opt in ("src", "dst"):
        if getattr(args, opt):
            parse_cidr(getattr(args, opt), f"--{opt}")
    mark = parse_mark(args.mark) if args.mark else None

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        pol = await query.get_policy(
            sock, dec, dir=direction, index=index, src=args.src, dst=args.dst, mark=mark, ptype=args.ptype
        )
        if _table_wanted(args):
            table = tables.policy_table(sys.stdout.buffer, style=sys.stdout.isatty())
            table.rows([tables.policy_row(pol)])
            table.close("policy")
        else:
            _write_json_lines([pol])
        return 0

    return await _with_socket(args, run)


async def cmd_dump(args: argparse.Namespace) -> int:
    """SAs then policies, streamed (as JSON: one object, written piece by piece)."""
    from .filters import Filter
    from .netlink import query
    from .output import tables

    flt = build_filter(args)
    keep_sas = None if flt == Filter() else partial(_filter_sas, flt)
    keep_pols = None if flt == Filter() else partial(_filter_policies, flt)

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        out = sys.stdout.buffer
        enc = msgspec.json.Encoder()
        style = sys.stdout.isatty()
        if _table_wanted(args):
            sa_t = tables.sa_table(out, style=style)
            async for sas in query.stream_sas(sock, dec):
                sa_t.rows([tables.sa_row(sa) for sa in (sas if keep_sas is None else keep_sas(sas))])
            sa_t.close("SAs")
            pol_t = tables.policy_table(out, style=style)
            async for pols in query.stream_policies(sock, dec):
                pol_t.rows([tables.policy_row(p) for p in (pols if keep_pols is None else keep_pols(pols))])
            pol_t.close("policies")
            return 0
        out.write(b'{"netns":' + enc.encode(args.netns or "") + b',"sa":[')
        sep = b""
        async for sas in query.stream_sas(sock, dec):
            for sa in sas if keep_sas is None else keep_sas(sas):
                out.write(sep + enc.encode(sa))
                sep = b","
        out.write(b'],"policy":[')
        sep = b""
        async for pols in query.stream_policies(sock, dec):
            for p in pols if keep_pols is None else keep_pols(pols):
                out.write(sep + enc.encode(p))
                sep = b","
        out.write(b"]}\n")
        out.flush()
        return 0

    return await _with_socket(args, run)


async def cmd_info(args: argparse.Namespace) -> int:
    from .netlink import query
    from .netlink.netns import entered
    from .netlink.proc import ProcFile, xfrm_stat
    from .output import tables

    with entered(args.netns):
        stat_file = ProcFile("/proc/net/xfrm_stat")
        stat_text = stat_file.read()
        stat_file.close()

    async def run(sock: XfrmSocket, dec: Decoder) -> int:
        sad = await query.sad_info(sock, dec)
        spd = await query.spd_info(sock, dec)
        default = await query.default_policy(sock, dec)
        info = {
            "netns": args.netns or "",
            "sad": {"count": sad.count, "hash": sad.hash},
            "spd": {
                "counts": spd.counts,
                "hash": spd.hash,
                "ipv4_thresh": spd.ipv4_thresh,
                "ipv6_thresh": spd.ipv6_thresh,
            },
            "default_policy": None
            if default is None
            else {"in": default.in_, "fwd": default.fwd, "out": default.out},
            "xfrm_stat": xfrm_stat(stat_text) if stat_text else None,
        }
        if _table_wanted(args):
            tables.print_info(msgspec.to_builtins(info))
        else:
            _write_json_lines([info])
        return 0

    return await _with_socket(args, run)


def _load_config(path: str | None) -> tuple[Any, str]:
    import structlog

    from .config import DEFAULT_PATH, Config, load

    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            structlog.get_logger("xfrmwatch").info("no configuration file: using defaults", path=DEFAULT_PATH)
            return Config(), DEFAULT_PATH
        path = DEFAULT_PATH
    return load(path), path


async def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    cfg, path = _load_config(args.config)
    from .output.metrics import Metrics

    return await Daemon(cfg, path, metrics=Metrics(expiry_top=cfg.metrics.expiry_top)).run()


async def cmd_config_check(args: argparse.Namespace) -> int:
    from .config import load
    from .detect.pack import load as load_rules
    from .output.registry import create

    cfg = load(args.config)
    rules = load_rules(cfg.rules.paths or None) if cfg.rules.enabled else None
    for o in cfg.output:
        create(o)  # constructs each output (checks files, URLs) without starting it
    print(
        f"{args.config}: OK ({len(cfg.output)} outputs, "
        f"{'no rules' if rules is None else f'{len(rules)} rules'}, "
        f"namespaces {cfg.watch.netns}{' + all under /run/netns' if cfg.watch.all_netns else ''})"
    )
    return 0


async def cmd_audit(args: argparse.Namespace) -> int:
    import trio

    from . import levels
    from .audit import read_state_records
    from .detect.alerting import Alerter
    from .detect.pack import load
    from .output import tables

    alerter = Alerter(load(args.rules, default_suppress=0.0))
    findings: list[ev.Alert] = []
    for record in await read_state_records(args.netns):
        findings += [a for a in alerter(record, trio.current_time()) if isinstance(a, ev.Alert)]
    findings.sort(key=lambda a: -levels.rank(a.rule.level))
    if _table_wanted(args):
        tables.print_findings(findings, args.netns or "")
    else:
        _write_json_lines(findings)
    if args.fail_on and any(levels.at_least(a.rule.level, args.fail_on) for a in findings):
        return EXIT_FINDINGS
    return 0


async def cmd_rules_check(args: argparse.Namespace) -> int:
    from .detect.pack import load, shipped_rules

    rules = load(args.paths)
    where = ", ".join(args.paths) if args.paths else str(shipped_rules())
    if len(rules) == 0:
        raise UsageError(f"no rules found in {where} (rule files end in .yml or .yaml)")
    print(f"{len(rules)} rules OK in {where}")
    return 0


async def cmd_rules_test(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .detect.cases import run_cases
    from .detect.pack import shipped_rules

    cases = Path(args.cases) if args.cases else shipped_rules() / "tests"
    results = run_cases(args.rules, cases)
    for r in results:
        if r.ok:
            print(f"ok    {r.name}")
        else:
            print(f"FAIL  {r.name}: expected {r.expected or 'no alerts'}, got {r.got or 'no alerts'}")
    failed = sum(not r.ok for r in results)
    print(f"rules test: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


async def cmd_schema(args: argparse.Namespace) -> int:
    import json
    if args.markdown:
        from .schema_doc import markdown

        sys.stdout.write(markdown())
        return 0
    sys.stdout.write(json.dumps(ev.json_schema(), indent=2, sort_keys=True) + "\n")
    return 0


# --- entry point --------------------------------------------------------------------------


def configure_logging(fmt: str = "console", file: Any = None, *, quiet: bool = False) -> None:
    """Log lines to stderr (or ``file``: the dashboard keeps them while the screen is its own);
    ``quiet``: warnings and errors only (the demo's screen is its story)."""
    import logging

    import structlog

    from .journal_stream import PriorityPrefix

    out = sys.stderr if file is None else file
    renderer: Any = (
        PriorityPrefix(structlog.processors.JSONRenderer())
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=file is None and sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING if quiet else logging.NOTSET),
        cache_logger_on_first_use=file is None,
    )


def _user_error(exc: BaseException) -> UserError | None:
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _user_error(sub)
            if found is not None:
                return found
    return None


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


#: what each listing command writes the fast way, from the dump's bytes (xfrmwatch/snapshot.py)
_SNAPSHOTS = {"cmd_policy_list": "policy_list", "cmd_state_list": "state_list", "cmd_dump": "dump"}
_FILTERS = ("src", "dst", "proto", "spi", "reqid", "mark", "dev", "dir")


def _snapshot(args: argparse.Namespace) -> Callable[[], int] | None:
    """A listing without filters (or ``--stats``): written straight from the dump's bytes,
    with no event loop (the general way, with filters, is the command's own function)."""
    name = _SNAPSHOTS.get(getattr(args.func, "__name__", ""))
    if name is None or any(getattr(args, f, None) for f in _FILTERS) or getattr(args, "stats", False):
        return None
    from . import snapshot

    fn = getattr(snapshot, name)
    logger: list[Any] = []

    def log() -> Any:  # structlog is configured (and imported) when there is something to say
        if not logger:
            configure_logging(getattr(args, "log_format", "console"))
            import structlog

            logger.append(structlog.get_logger("xfrmwatch.netlink.query"))
        return logger[0]

    def run() -> int:
        from .netlink.request import dump_replies, dump_socket

        table = _table_wanted(args)
        with dump_socket(args.netns) as sock:
            code: int = fn(
                partial(dump_replies, sock), table, sys.stdout.isatty(), sys.stdout.buffer, log, netns=args.netns or ""
            )
        return code

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        snapshot = _snapshot(args)
        if snapshot is not None:
            return snapshot()
        import trio

        configure_logging(getattr(args, "log_format", "console"), quiet=args.func is cmd_demo)
        clock = None
        if args.func is cmd_replay or (args.func is cmd_demo and not args.live):
            from .replay import replay_clock

            clock = replay_clock(speed=session_speed() if args.speed is None else args.speed, fast=args.fast)
        return int(trio.run(args.func, args, clock=clock) or 0)
    except BaseException as exc:
        err = _user_error(exc)
        if err is not None:
            for line in str(err).splitlines() or [type(err).__name__]:
                print(f"{journal_prefix('error')}xfrmwatch: {line}", file=sys.stderr)
            return err.exit_code
        if _only(exc, KeyboardInterrupt):
            return 130
        if _only(exc, BrokenPipeError):
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            except OSError:
                pass
            return 0
        if isinstance(exc, SystemExit):
            raise
        if os.environ.get("XFRMWATCH_DEBUG"):
            raise
        # Exception messages never carry key bytes (the decoder copies none), but
        # the type alone is enough here; XFRMWATCH_DEBUG=1 shows the traceback.
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        print(
            f"{journal_prefix('critical')}xfrmwatch: internal error ({type(leaf).__name__}); "
            "rerun with XFRMWATCH_DEBUG=1 for a traceback and report it",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


__all__ = ["EXIT_CAPABILITY", "EXIT_KERNEL", "EXIT_NETNS", "EXIT_NOT_FOUND", "EXIT_NO_XFRM", "build_parser", "main"]
