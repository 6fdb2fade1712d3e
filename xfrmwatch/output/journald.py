"""``[[output]] type = "journald"``: events as structured journal entries.

Example::

    [[output]]
    type = "journald"
    # socket = "/run/systemd/journal/socket"   # the default
    # identifier = "xfrmwatch"                 # SYSLOG_IDENTIFIER
    # json_field = true                        # XFRM_JSON: the whole event as JSON

Each event is one datagram in the journal's *native protocol* (``KEY=value``
lines; a value containing a newline or other binary data is sent in the
length-prefixed form ``KEY\\n<u64 little-endian length><bytes>\\n``) on the
journal's datagram socket.  An entry too large for one datagram (``EMSGSIZE``,
e.g. an alert carrying 20 events, or a huge field) is written to a sealed memfd
whose descriptor is passed with ``SCM_RIGHTS``, exactly as ``sd_journal_send()``
does.

Fields (see :class:`JournalRenderer`)::

    MESSAGE            "<type>: <one-line summary>" (``expire/hard``, ``polexpire/soft``)
    PRIORITY           see below
    MESSAGE_ID         fixed per event type, and per rule for alerts (see below)
    SYSLOG_IDENTIFIER  xfrmwatch
    XFRM_TYPE, XFRM_KIND, XFRM_NETNS (omitted for the daemon's own namespace),
    XFRM_SPI, XFRM_REQID, XFRM_SRC, XFRM_DST, XFRM_PROTO, XFRM_DIR,
    XFRM_TUNNEL_ID: what the event is about (:func:`xfrmwatch.subject.subject`),
    each repeated when an event names several, e.g. a policy's templates or an
    alert's triggering events; ``journalctl XFRM_SPI=0x0000c0de`` matches any,
    XFRM_PROCESS, RULE_ID, RULE_LEVEL, RULE_TITLE, RULE_TAG (repeated),
    XFRM_JSON          the whole event as JSON (the documented schema)

PRIORITY: the syslog severity of the event's level (:mod:`xfrmwatch.levels`, the
table every output uses): critical 2 (crit), high 3 (err), medium 4 (warning),
low 5 (notice), informational 6 (info).  Alerts have their rule's level; events
are informational except overrun and tunnel_down (high), malformed, rekey_overdue
and traffic_stalled (medium), flushsa and flushpolicy (low).

MESSAGE_ID: ``uuid5(MESSAGE_ID_NAMESPACE, "event:<type>")`` for an event
type, ``uuid5(MESSAGE_ID_NAMESPACE, "rule:<rule id>")`` for an alert of a
rule, without dashes.  ``contrib/systemd/xfrmwatch.catalog`` explains every
event type and every shipped rule for ``journalctl -x``; install it in
``/usr/lib/systemd/catalog/`` and run ``journalctl --update-catalog``.  For
your own rules: ``python -m xfrmwatch.output.journald RULE_DIR... >
/usr/local/lib/systemd/catalog/xfrmwatch-local.catalog``.

Delivery (:class:`~xfrmwatch.output.delivery.RetryingSender`): one entry at a
time, in order.  While journald is unreachable (no socket, ``ECONNREFUSED``
after a restart) the entry is retried with exponential backoff
(``backoff_initial`` doubling up to ``backoff_max``) and later events wait in
the daemon's bounded queue (dropped and counted there when it is full).  When
the queue is closed (shutdown, or the output removed on reload) and journald
stays unreachable for ``drain_timeout`` seconds, the rest is dropped.  Every
drop reaches ``xfrmwatch_output_dropped_total``.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import re
import socket as _socket
import struct
import sys
import textwrap
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import structlog
import trio

from .. import events as ev
from ..backoff import Backoff
from ..levels import severity
from ..subject import subject
from .base import DropSink, NotNegative, OutputConfig, Positive
from .delivery import RetryingOutput, RetryingSender, Undeliverable
from .render import event_label, event_type, summary

log = structlog.get_logger("xfrmwatch.output.journald")

DEFAULT_SOCKET = "/run/systemd/journal/socket"

#: the namespace of every MESSAGE_ID xfrmwatch sends (uuid5 of NAMESPACE_URL,
#: "urn:xfrmwatch:journal:message-id"); never change it: IDs must stay stable
MESSAGE_ID_NAMESPACE = uuid.UUID("fcf7a3a5-3bbe-584b-81cf-9874f17446d4")


def message_id_for_type(event_type_name: str) -> str:
    """The fixed MESSAGE_ID (32 hex digits) of an event type."""
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, f"event:{event_type_name}").hex


def message_id_for_rule(rule_id: str) -> str:
    """The fixed MESSAGE_ID (32 hex digits) of alerts of one rule."""
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, f"rule:{rule_id}").hex


def message_id(e: ev.Event) -> str:
    if isinstance(e, ev.Alert):
        return message_id_for_rule(e.rule.id)
    return message_id_for_type(event_type(e))


# --- native protocol ----------------------------------------------------------------------------

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field in the native protocol: ``NAME=value\\n``, or the binary-safe
    ``NAME\\n<le64 length>value\\n`` when the value holds a newline."""
    if not _FIELD_NAME.match(name):
        raise ValueError(f"invalid journal field name {name!r}")
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
    key = name.encode("ascii")
    if b"\n" in raw:
        return b"".join((key, b"\n", struct.pack("<Q", len(raw)), raw, b"\n"))
    return b"".join((key, b"=", raw, b"\n"))


def encode_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields)


class JournalRenderer:
    """An event -> its journal fields (a list of ``(NAME, value)``, names may repeat),
    and ``renderer(e)`` -> the native-protocol datagram."""

    __slots__ = ("_json", "identifier", "json_field")

    def __init__(self, identifier: str = "xfrmwatch", json_field: bool = True) -> None:
        self.identifier = identifier
        self.json_field = json_field
        self._json = msgspec.json.Encoder()

    def fields(self, e: ev.Event) -> list[tuple[str, str | bytes]]:
        text = " ".join(summary(e).splitlines())
        out: list[tuple[str, str | bytes]] = [
            ("MESSAGE", f"{event_label(e)}: {text}" if text else event_label(e)),
            ("PRIORITY", str(severity(e).syslog)),
            ("MESSAGE_ID", message_id(e)),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("XFRM_TYPE", event_type(e)),
            ("XFRM_KIND", e.kind),
        ]
        if e.netns:
            out.append(("XFRM_NETNS", e.netns))
        for key, values in subject(e).values().items():
            name = "XFRM_" + key.upper()
            out.extend((name, v) for v in values)
        if e.process:
            out.append(("XFRM_PROCESS", e.process))
        if isinstance(e, ev.Alert):
            out += [("RULE_ID", e.rule.id), ("RULE_LEVEL", e.rule.level), ("RULE_TITLE", e.rule.title)]
            out.extend(("RULE_TAG", t) for t in e.rule.tags)
        if self.json_field:
            out.append(("XFRM_JSON", self._json.encode(e)))
        return out

    def __call__(self, e: ev.Event) -> bytes:
        return encode_entry(self.fields(e))


# --- the output ------------------------------------------------------------------------------------


class JournaldConfig(OutputConfig, tag="journald"):
    """``[[output]] type = "journald"``: native journal entries."""

    #: the journal's native datagram socket
    socket: Annotated[str, msgspec.Meta(min_length=1)] = DEFAULT_SOCKET
    #: SYSLOG_IDENTIFIER (one line)
    identifier: Annotated[str, msgspec.Meta(pattern=r"^[^\n\x00]+$")] = "xfrmwatch"
    #: add XFRM_JSON, the whole event as JSON
    json_field: bool = True
    #: reconnect backoff: first delay and cap (seconds)
    backoff_initial: Positive = 0.5
    backoff_max: Positive = 30.0
    #: one send may take this long (journald busy) before it counts as failed
    send_timeout: Positive = 10.0
    #: after the queue is closed, how long to keep retrying an unreachable journald
    drain_timeout: NotNegative = 10.0


#: errors that mean "the entry does not fit in one datagram": use a memfd
_TOO_BIG = frozenset({errno.EMSGSIZE, errno.ENOBUFS})
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class JournaldOutput(RetryingOutput):
    type = "journald"

    def __init__(self, config: JournaldConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.cfg = config
        self.render = JournalRenderer(config.identifier, config.json_field)
        self.sender = RetryingSender(
            self, "journald", log=log, backoff=Backoff(config.backoff_initial, config.backoff_max),
            drain_timeout=config.drain_timeout, socket=config.socket,
        )  # fmt: skip
        self._sock: trio.socket.SocketType | None = None
        #: entries sent through a memfd (too large for one datagram)
        self.sent_memfd = 0

    # --- connection -----------------------------------------------------------------------

    async def _connect(self) -> trio.socket.SocketType:
        if self._sock is None:
            sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
            try:
                await sock.connect(self.cfg.socket)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    async def disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def send(self, payload: bytes) -> None:
        sock = await self._connect()
        with trio.fail_after(self.cfg.send_timeout):
            try:
                await sock.send(payload)
            except OSError as exc:
                if exc.errno not in _TOO_BIG:
                    raise
                await self._send_memfd(sock, payload)

    async def _send_memfd(self, sock: trio.socket.SocketType, payload: bytes) -> None:
        """The large-entry path: the entry in a sealed memfd, its descriptor sent alone."""
        try:
            fd = os.memfd_create("xfrmwatch-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise Undeliverable(f"memfd_create: {exc.strerror} (entry of {len(payload)} bytes)") from exc
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            except OSError as exc:
                raise Undeliverable(f"memfd: {exc.strerror} (entry of {len(payload)} bytes)") from exc
            fds = array.array("i", [fd])
            await sock.sendmsg([], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            self.sent_memfd += 1
        finally:
            os.close(fd)


# --- the catalog ---------------------------------------------------------------------------------

DOCUMENTATION = "man:ip-xfrm(8)"

#: event type -> (Subject, advice added after the event's description)
CATALOG_SUBJECTS: dict[str, tuple[str, str]] = {
    "newsa": ("IPsec SA added", "Normal when an IKE daemon negotiates or rekeys a CHILD_SA."),
    "updsa": ("IPsec SA updated", "IKE daemons update reserved (larval) inbound SAs this way."),
    "delsa": ("IPsec SA deleted", "Normal after a rekey; unexpected deletions may cut traffic."),
    "expire": (
        "IPsec SA lifetime expired",
        "A soft expiry asks the key manager to rekey; a hard expiry deletes the SA.",
    ),
    "newpolicy": ("IPsec policy added", ""),
    "updpolicy": ("IPsec policy updated", ""),
    "delpolicy": ("IPsec policy deleted", "Traffic it protected may now leave unencrypted."),
    "polexpire": ("IPsec policy lifetime expired", ""),
    "flushsa": (
        "IPsec SA database flushed",
        "Every SA of the protocol was removed: protected traffic stops until SAs are negotiated again.",
    ),
    "flushpolicy": (
        "IPsec policy database flushed",
        "Every policy was removed: traffic is no longer required to be protected.",
    ),
    "acquire": (
        "Kernel requests an IPsec SA (ACQUIRE)",
        "Traffic matched a policy that has no SA yet; the key manager should negotiate one.",
    ),
    "newae": ("IPsec SA replay and lifetime counters", ""),
    "report": ("IPsec report from the kernel", ""),
    "migrate": ("IPsec SA and policy migration requested", ""),
    "mapping": (
        "IPsec NAT mapping changed",
        "The peer's address or port behind NAT changed for an ESP-in-UDP SA.",
    ),
    "default_policy": (
        "IPsec default policy changed",
        "A direction switched to accept lets traffic without a policy pass unprotected.",
    ),
    "sadinfo": ("IPsec SA database information", ""),
    "spdinfo": ("IPsec policy database information", ""),
    "overrun": (
        "IPsec events lost: netlink receive buffer overrun",
        "xfrmwatch could not keep up and the kernel dropped events; it resynchronises "
        "from a fresh dump. Raise the receive buffer (watch.rcvbuf, --rcvbuf).",
    ),
    "malformed": (
        "Undecodable XFRM netlink message",
        "The message was skipped. Please report it with the kernel version.",
    ),
    "resync": ("IPsec state resynchronised after an overrun", ""),
    "rekey_started": ("IPsec SA rekey started", ""),
    "rekey_completed": ("IPsec SA rekeyed", ""),
    "rekey_overdue": (
        "IPsec SA rekey overdue",
        "Check the IKE daemon and the peer: when the hard lifetime ends, traffic is dropped.",
    ),
    "tunnel_up": ("IPsec tunnel up", ""),
    "tunnel_down": (
        "IPsec tunnel down",
        "The tunnel's SAs are gone with no replacement. Unless it was torn down on purpose, "
        "check the IKE daemon's log and the peer.",
    ),
    "traffic_stalled": (
        "IPsec tunnel: inbound traffic stalled",
        "Packets go out but none come back: the peer or the path may be dead.",
    ),
    "traffic_resumed": ("IPsec tunnel: inbound traffic resumed", ""),
    "sa_state": ("IPsec SA (audit snapshot)", ""),
    "policy_state": ("IPsec policy (audit snapshot)", ""),
    "netns_state": ("IPsec namespace state (audit snapshot)", ""),
}

_EVENT_CLASSES: dict[str, type[msgspec.Struct]] = {
    cls.__struct_config__.tag: cls
    for cls in ev.AnyEvent.__args__  # type: ignore[attr-defined]
}


def _doc(text: str | None) -> str:
    paras = [" ".join(p.split()) for p in textwrap.dedent(text or "").split("\n\n")]
    return "\n\n".join(textwrap.fill(p.replace("``", ""), 79) for p in paras if p)


def _section(mid: str, subject: str, body: str) -> str:
    return (
        f"-- {mid}\nSubject: {subject}\nDefined-By: xfrmwatch\nDocumentation: {DOCUMENTATION}\n\n"
        f"{body.strip()}\n"
    )


def catalog_event_types() -> list[str]:
    """Every event type the journal output has a fixed MESSAGE_ID for (all but ``alert``)."""
    return [t for t in ev.EVENT_TYPES if t != "alert"]


def catalog_text(rules: Sequence[dict[str, Any]] = ()) -> str:
    """The journal catalog: one section per event type, one per rule (dicts with
    ``id``, ``title``, ``level``, ``description``)."""
    parts = [
        "# journal catalog of xfrmwatch (https://www.freedesktop.org/wiki/Software/systemd/catalog/)\n"
        "# install in /usr/lib/systemd/catalog/, then: journalctl --update-catalog\n"
        "# generated by: python -m xfrmwatch.output.journald [RULE_DIR...]\n"
    ]
    for t in catalog_event_types():
        subject, advice = CATALOG_SUBJECTS.get(t, (f"xfrmwatch event {t}", ""))
        cls = _EVENT_CLASSES.get(t)
        body = _doc(cls.__doc__ if cls is not None else "")
        body += f"\n\nEvent type: {t} (XFRM_TYPE). XFRM_JSON holds the whole event."
        if advice:
            body += "\n\n" + textwrap.fill(advice, 79)
        parts.append(_section(message_id_for_type(t), subject, body))
    for r in sorted(rules, key=lambda r: str(r.get("id", ""))):
        rid = str(r["id"])
        body = _doc(str(r.get("description") or ""))
        body += (
            f"\n\nRule {rid} (RULE_ID), level {r.get('level', 'medium')} (RULE_LEVEL). "
            "XFRM_JSON holds the alert with its triggering events."
        )
        parts.append(_section(message_id_for_rule(rid), f"Alert: {r.get('title', rid)}", body))
    return "\n".join(parts)


def read_rules(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rule id, title, level, description of every ``*.yml`` rule under ``paths``."""
    import yaml

    out: list[dict[str, Any]] = []
    for p in map(Path, paths):
        files = sorted(p.glob("*.yml")) + sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and "id" in doc:
                    out.append(doc)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the catalog for the shipped rule pack (or the given rule files/directories)."""
    from ..detect.pack import shipped_rules

    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(catalog_text(read_rules(args or [shipped_rules()])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
