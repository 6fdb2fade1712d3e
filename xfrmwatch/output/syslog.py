"""``[[output]] type = "syslog"``: RFC 5424 messages over UDP, TCP, TLS or a local socket.

Example::

    [[output]]
    type = "syslog"
    url = "tls://logs.example.net:6514"   # udp://HOST[:514] tcp://HOST[:514] tls://HOST[:6514] unix:///dev/log
    facility = "daemon"                   # kern user mail daemon auth syslog lpr news uucp cron
                                          # authpriv ftp ntp security console solaris-cron local0..local7
    ca_file = "/etc/xfrmwatch/syslog-ca.pem"   # tls: default the system's CAs
    # verify = true                       # tls: check the server's certificate and name
    # server_name = ""                    # tls: the name to check (default: the url's host)
    # cert_file = "" ; key_file = ""      # tls: client certificate (mutual TLS)
    # message = "text"                    # or "json": MSG is the event as JSON (per ``format``)
    # unix_format = "local"               # or "rfc5424" (see below)
    # max_size = 8192                     # bytes per message; MSG is cut to fit
    # enterprise_id = 32473               # the SD-ID is xfrm@<enterprise_id> (see below)

A message (RFC 5424)::

    <28>1 2026-11-27T04:40:23.484017Z gw1 xfrmwatch 812 rekey_overdue
        [xfrm@32473 type="rekey_overdue" netns="vpn" spi="0x0000c0de" reqid="1"
        src="192.0.2.1" dst="192.0.2.2" proto="esp"] rekey_overdue: esp spi ...

* PRI: ``facility * 8 + severity``.  The facility defaults to ``daemon`` (3):
  xfrmwatch is a system daemon, and ``local0``-``local7`` are left to the site.
  The severity is the event's level as every output maps it
  (:mod:`xfrmwatch.levels`: critical 2, high 3, medium 4, low 5,
  informational 6; alerts by their rule's level, overrun and
  tunnel_down high, malformed, rekey_overdue and traffic_stalled medium, flushes
  low, other events informational).
* TIMESTAMP: the event's ``time``; HOSTNAME: ``hostname`` or the host's name;
  APP-NAME ``xfrmwatch``; PROCID: our pid; MSGID: the event type.
* STRUCTURED-DATA: one ``xfrm@<enterprise_id>`` element with ``type``, ``netns`` (omitted for the
  daemon's own namespace), ``spi``, ``reqid``, ``src``, ``dst``, ``proto``,
  ``dir``, ``tunnel_id`` (what the event is about, :func:`xfrmwatch.subject.subject`;
  each repeated when the event names several; RFC 5424 allows
  repeated SD-PARAMs), ``process``, and for alerts ``rule_id`` and ``level``.
  Values escape ``"``, ``\\`` and ``]`` with a backslash.  ``enterprise_id``
  defaults to 32473, the number RFC 5612 reserves for documentation and
  examples: a site with its own IANA Private Enterprise Number sets it, so the
  SD-ID is registered to it (RFC 5424 7.2.2).
* MSG: the UTF-8 byte order mark (RFC 5424 6.4: MSG is UTF-8), then
  ``<type>: <one-line summary>`` (or the event as JSON).

Transports: ``udp://`` one datagram per message (RFC 5426); ``tcp://`` and
``tls://`` octet-counting framing (``LEN SP MSG``, RFC 6587 / RFC 5425);
``unix://PATH`` one datagram per message.  On a local socket the default
format is the one ``syslog(3)`` sends (``<PRI>Mmm dd hh:mm:ss
xfrmwatch[PID]: MSG``, the SD element appended to MSG), because neither
journald's ``/dev/log`` nor rsyslog's imuxsock (with its default special
parser) parse RFC 5424 there; ``unix_format = "rfc5424"`` sends RFC 5424 for
receivers that do (rsyslog ``useSpecialParser="off"``, syslog-ng
``unix-dgram(... flags(syslog-protocol))``).

Delivery: one message at a time, in order.  While the receiver is unreachable
the message is retried with exponential backoff (``backoff_initial`` doubling
up to ``backoff_max``) and later events wait in the daemon's bounded queue
(dropped and counted there when it is full).  A stream connection whose peer
closed is noticed before writing and reopened, so messages queued while the
receiver was down are delivered when it is back.  Still, plain TCP/TLS syslog
has no acknowledgements: a message written just before the receiver dies can
be lost (use a RELP relay where that matters), and over UDP everything sent
while the receiver is down is lost.  When the queue is closed and the
receiver stays unreachable for ``drain_timeout`` seconds, the rest is dropped
and counted (``xfrmwatch_output_dropped_total``).  SIGHUP reconnects (and rereads
the TLS files).
"""

from __future__ import annotations

import abc
import errno
import os
import re
import select
import socket as _socket
import ssl
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
import structlog
import trio

from .. import events as ev
from ..backoff import Backoff
from ..levels import severity
from ..subject import subject
from .base import DropSink, NotNegative, OutputConfig, Positive
from .delivery import RetryingOutput, RetryingSender, Undeliverable
from .render import event_label, event_type, json_renderer, summary

log = structlog.get_logger("xfrmwatch.output.syslog")

Facility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
    "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip
#: facility name -> code (its position in :data:`Facility`, as RFC 5424 numbers them)
FACILITIES: dict[str, int] = {name: code for code, name in enumerate(typing.get_args(Facility))}
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
SCHEMES = ("udp", "tcp", "tls", "unix")

#: the default enterprise number of the SD-ID: RFC 5612's number for documentation
DEFAULT_ENTERPRISE_ID = 32473
#: the SD-ID of xfrmwatch's structured data, with the default enterprise number
SD_ID = f"xfrm@{DEFAULT_ENTERPRISE_ID}"
#: RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark
BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
#: RFC 5424 says every receiver must accept 480 octets
MIN_SIZE = 480

_SD_NAME = re.compile(r"[\x21-\x7e]{1,32}\Z")
_SD_NAME_FORBIDDEN = frozenset('= ]"')
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)\Z")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def sd_name_ok(name: str) -> bool:
    """An SD-NAME (SD-ID or PARAM-NAME): 1-32 printable US-ASCII, no ``=``, space, ``]``, ``"``."""
    return bool(_SD_NAME.match(name)) and not _SD_NAME_FORBIDDEN.intersection(name)


def sd_escape(value: str) -> str:
    """A PARAM-VALUE: ``\\``, ``"`` and ``]`` escaped with a backslash (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII only (others become ``_``), at most ``limit``."""
    s = "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit]
    return s or NILVALUE


def _cut(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes, not splitting a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    return data[: max(limit, 0)].decode("utf-8", "ignore").encode()


class SyslogRenderer:
    """An event -> one syslog message (bytes, unframed): RFC 5424, or the local
    ``syslog(3)`` format."""

    __slots__ = ("_json", "app_name", "facility", "hostname", "local", "max_size", "procid", "sd_id")

    def __init__(
        self,
        *,
        facility: int = FACILITIES["daemon"],
        hostname: str = "",
        app_name: str = "xfrmwatch",
        procid: int | None = None,
        json: Callable[[ev.Event], bytes] | None = None,
        local: bool = False,
        max_size: int = 8192,
        enterprise_id: int = DEFAULT_ENTERPRISE_ID,
    ) -> None:
        self.facility = facility
        self.hostname = _header_field(hostname or _socket.gethostname(), 255)
        self.app_name = _header_field(app_name, 48)
        self.procid = _header_field(str(os.getpid() if procid is None else procid), 128)
        self._json = json
        self.local = local
        self.max_size = max_size
        self.sd_id = f"xfrm@{enterprise_id}"

    def params(self, e: ev.Event) -> list[tuple[str, str]]:
        """The SD-PARAMs of the ``xfrm@<enterprise_id>`` element, in order (names may repeat)."""
        out = [("type", event_type(e))]
        if e.netns:
            out.append(("netns", e.netns))
        for key, values in subject(e).values().items():
            out.extend((key, v) for v in values)
        if e.process:
            out.append(("process", e.process))
        if isinstance(e, ev.Alert):
            out += [("rule_id", e.rule.id), ("level", e.rule.level)]
        return out

    def structured_data(self, e: ev.Event, limit: int | None = None) -> str:
        """The SD element; with ``limit`` (bytes), params that do not fit are left out
        (NILVALUE if not even an empty element fits)."""
        parts = [f"[{self.sd_id}"]
        size = len(parts[0]) + 1
        for k, v in self.params(e):
            p = f' {k}="{sd_escape(v)}"'
            n = len(p.encode())
            if limit is not None and size + n > limit:
                break
            parts.append(p)
            size += n
        if limit is not None and size > limit:
            return NILVALUE
        return "".join(parts) + "]"

    def text(self, e: ev.Event) -> str:
        if self._json is not None:
            return self._json(e).decode().rstrip("\n")
        s = " ".join(summary(e).splitlines())
        return f"{event_label(e)}: {s}" if s else event_label(e)

    def pri(self, e: ev.Event) -> int:
        return self.facility * 8 + severity(e).syslog

    def rfc5424(self, e: ev.Event) -> bytes:
        ts = e.time if _TIMESTAMP.match(e.time) else NILVALUE
        msgid = _header_field(event_type(e), 32)
        head = f"<{self.pri(e)}>1 {ts} {self.hostname} {self.app_name} {self.procid} {msgid} ".encode()
        head += self.structured_data(e, self.max_size - len(head)).encode()
        msg = self.text(e).encode("utf-8", "backslashreplace")
        room = self.max_size - len(head) - 1 - len(BOM)
        return head + b" " + BOM + _cut(msg, room) if msg and room > 0 else head

    def local_format(self, e: ev.Event) -> bytes:
        try:
            t = datetime.fromisoformat(e.time).astimezone()
            ts = f"{_MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S}"
        except ValueError:
            t = datetime.now().astimezone()
            ts = f"{_MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S}"
        head = f"<{self.pri(e)}>{ts} {self.app_name}[{self.procid}]: ".encode()
        msg = f"{self.text(e)} {self.structured_data(e)}".encode("utf-8", "backslashreplace")
        return head + _cut(msg, self.max_size - len(head))

    def __call__(self, e: ev.Event) -> bytes:
        return self.local_format(e) if self.local else self.rfc5424(e)


# --- configuration -----------------------------------------------------------------------------


class SyslogConfig(OutputConfig, tag="syslog"):
    """``[[output]] type = "syslog"``: RFC 5424 to a syslog receiver."""

    #: udp://HOST[:PORT], tcp://HOST[:PORT], tls://HOST[:PORT] or unix:///PATH
    url: str = "unix:///dev/log"
    facility: Facility = "daemon"
    #: HOSTNAME field (default: the host's name)
    hostname: str = ""
    app_name: Annotated[str, msgspec.Meta(min_length=1)] = "xfrmwatch"
    #: MSG: "text" (a one-line summary) or "json" (the event, per ``format``)
    message: Literal["text", "json"] = "text"
    #: unix:// only: "local" (the syslog(3) format) or "rfc5424"
    unix_format: Literal["local", "rfc5424"] = "local"
    #: bytes per message (before framing); MSG is cut to fit
    max_size: Annotated[int, msgspec.Meta(ge=MIN_SIZE)] = 8192
    #: the SD-ID is ``xfrm@<enterprise_id>``: your IANA Private Enterprise Number
    #: (default 32473, RFC 5612's number for documentation)
    enterprise_id: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_ENTERPRISE_ID
    #: tls:// only
    ca_file: str = ""
    verify: bool = True
    server_name: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: seconds
    backoff_initial: Positive = 0.5
    backoff_max: Positive = 30.0
    connect_timeout: Positive = 10.0
    send_timeout: Positive = 30.0
    drain_timeout: NotNegative = 10.0

    def __post_init__(self) -> None:
        scheme = parse_url(self.url)[0]
        if scheme != "tls" and (self.ca_file or self.cert_file or self.key_file or self.server_name):
            raise ValueError("ca_file, cert_file, key_file and server_name are for tls:// only")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")


def parse_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path)``; ValueError with the reason if invalid."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise ValueError(f"invalid url {url!r}: {exc}") from None
    scheme = u.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"url must start with {', '.join(s + '://' for s in SCHEMES)}: {url!r}")
    if scheme == "unix":
        if u.netloc or not u.path:
            raise ValueError(f"a unix url is unix:///absolute/path, not {url!r}")
        return scheme, "", 0, u.path
    if not u.hostname:
        raise ValueError(f"no host in {url!r}")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError(f"a {scheme} url is {scheme}://HOST[:PORT], not {url!r}")
    return scheme, u.hostname, port or DEFAULT_PORTS[scheme], ""


# --- transports -------------------------------------------------------------------------------


class _Transport(abc.ABC):
    @abc.abstractmethod
    async def send(self, data: bytes) -> None: ...

    def peer_closed(self) -> bool:
        return False

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class _Datagram(_Transport):
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    @classmethod
    async def open_unix(cls, path: str) -> _Datagram:
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            await sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    async def open_udp(cls, host: str, port: int) -> _Datagram:
        infos = await trio.socket.getaddrinfo(host, port, type=_socket.SOCK_DGRAM)
        error: OSError = OSError(f"{host}: no address")
        for family, type_, proto, _, addr in infos:
            sock = trio.socket.socket(family, type_ | _socket.SOCK_CLOEXEC, proto)
            try:
                await sock.connect(addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return cls(sock)
        raise error

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def aclose(self) -> None:
        self.sock.close()


class _Stream(_Transport):
    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self.sock = sock

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None, server_name: str) -> _Stream:
        tcp = await trio.open_tcp_stream(host, port)
        try:
            tcp.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
            if tls is None:
                return cls(tcp, tcp.socket)
            stream = trio.SSLStream(tcp, tls, server_hostname=server_name or host)
            await stream.do_handshake()
            return cls(stream, tcp.socket)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def peer_closed(self) -> bool:
        """The receiver closed (or reset) the connection: it never sends us data,
        so a FIN, an error or a hang-up pending on the socket means it is gone.
        Checked before each write, since the first write to a closed peer
        succeeds locally and is lost."""
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLRDHUP)
        return any(mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, mask in p.poll(0))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


# --- the output ---------------------------------------------------------------------------------

class SyslogOutput(RetryingOutput):
    type = "syslog"

    def __init__(self, config: SyslogConfig, drops: DropSink | None = None) -> None:
        super().__init__(config, drops)
        self.cfg = config
        self.scheme, self.host, self.port, self.path = parse_url(config.url)
        self.render = SyslogRenderer(
            facility=FACILITIES[config.facility],
            hostname=config.hostname,
            app_name=config.app_name,
            json=json_renderer(config.format, newline=False) if config.message == "json" else None,
            local=self.scheme == "unix" and config.unix_format == "local",
            max_size=config.max_size,
            enterprise_id=config.enterprise_id,
        )
        self.sender = RetryingSender(
            self, "syslog receiver", log=log, backoff=Backoff(config.backoff_initial, config.backoff_max),
            drain_timeout=config.drain_timeout, target=self.target,
        )  # fmt: skip
        self._conn: _Transport | None = None
        self._reconnect = False
        #: connections opened
        self.connects = 0

    @property
    def target(self) -> str:
        return self.path if self.scheme == "unix" else f"{self.scheme}://{self.host}:{self.port}"

    def reopen(self) -> None:
        self._reconnect = True

    def frame(self, data: bytes) -> bytes:
        if self.scheme in ("tcp", "tls"):
            return b"%d " % len(data) + data  # octet counting (RFC 6587 3.4.1)
        return data

    # --- connection -----------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        c = self.cfg
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=c.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not c.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if c.cert_file:
            ctx.load_cert_chain(c.cert_file, c.key_file or None)
        return ctx

    async def _connect(self) -> _Transport:
        if self._conn is not None and (self._reconnect or self._conn.peer_closed()):
            self._reconnect = False
            await self.disconnect()
        if self._conn is None:
            with trio.fail_after(self.cfg.connect_timeout):
                if self.scheme == "unix":
                    self._conn = await _Datagram.open_unix(self.path)
                elif self.scheme == "udp":
                    self._conn = await _Datagram.open_udp(self.host, self.port)
                else:
                    tls = self._tls_context() if self.scheme == "tls" else None
                    self._conn = await _Stream.open(self.host, self.port, tls, self.cfg.server_name)
            self.connects += 1
        return self._conn

    async def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def send(self, msg: bytes) -> None:
        conn = await self._connect()
        with trio.fail_after(self.cfg.send_timeout):
            try:
                await conn.send(msg)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise Undeliverable(f"syslog message too large ({len(msg)} bytes)") from None
                raise
