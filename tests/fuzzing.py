"""Fuzzing the whole path: recorded messages, mutated, through decode -> mirror -> tunnel
model -> rules -> every renderer.

Used by the unit tier (a short run, tests/unit/test_fuzz_pipeline.py) and by
bench/fuzz.py (the long run, a million messages and more).  Everything is driven by one
seeded ``random.Random``, so a failure is replayed from its seed and message number.

The mutations: truncation (anywhere, the header included), a wrong ``nlmsg_len``, every
message type number on any body, attribute corruption at the top level and inside nested
attributes (XFRMA_SA / XFRMA_POLICY in DELSA / DELPOLICY, XFRMA_TMPL arrays): a length
below 4, past the end or off by a few, another type number (with or without the nested
flag), flipped payload bytes; a dropped or duplicated attribute; random byte flips; two
messages in one datagram, aligned or not.

What must hold: nothing raises out of any stage or renderer, and nothing is logged at
error level (the stages' guards log a bug and carry on: here that is a failure too);
every decoded item is an event; a message whose framing is broken (``nlmsg_len`` not
the datagram's length, a body shorter than its type's minimum, an attribute whose length
is below 4 or runs past the end) yields a ``malformed`` event.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from xfrmwatch import events as ev
from xfrmwatch.detect.alerting import Alerter
from xfrmwatch.detect.pack import load
from xfrmwatch.mirror import Mirror
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.output import tables
from xfrmwatch.output.ecs import EcsRenderer
from xfrmwatch.output.exec_hook import hook_env
from xfrmwatch.output.journald import JournalRenderer
from xfrmwatch.output.ocsf import OcsfRenderer
from xfrmwatch.output.render import TextRenderer
from xfrmwatch.output.syslog import SyslogRenderer
from xfrmwatch.pipeline import RulesStage, StateStage
from xfrmwatch.tunnels import TunnelModel

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HDR = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")
NESTED = {x.XFRM_MSG_DELSA: (24, x.XFRMA_SA, 224), x.XFRM_MSG_DELPOLICY: (64, x.XFRMA_POLICY, 168)}
#: where the attributes start in the messages whose decoder walks them (its fixed part's size)
ATTRS_AT = {
    x.XFRM_MSG_NEWSA: 224, x.XFRM_MSG_UPDSA: 224, x.XFRM_MSG_DELSA: 24, x.XFRM_MSG_EXPIRE: 232,
    x.XFRM_MSG_NEWPOLICY: 168, x.XFRM_MSG_UPDPOLICY: 168, x.XFRM_MSG_DELPOLICY: 64,
    x.XFRM_MSG_POLEXPIRE: 176, x.XFRM_MSG_ACQUIRE: 280, x.XFRM_MSG_NEWAE: 48, x.XFRM_MSG_REPORT: 60,
    x.XFRM_MSG_MIGRATE: 64, x.XFRM_MSG_FLUSHPOLICY: 0, x.XFRM_MSG_NEWSADINFO: 4, x.XFRM_MSG_NEWSPDINFO: 4,
}  # fmt: skip


def seeds() -> list[bytes]:
    """Every recorded message (one netlink message each, header included)."""
    return [p.read_bytes() for p in sorted(FIXTURES.rglob("*.bin"))]


def _attrs(msg: bytes, start: int) -> list[tuple[int, int, int]]:
    """(offset, length, type) of each well-formed attribute from ``start``."""
    out = []
    off = start
    while off + 4 <= len(msg):
        n, t = NLA.unpack_from(msg, off)
        if n < 4 or off + n > len(msg):
            break
        out.append((off, n, t))
        off += (n + 3) & ~3
    return out


class Mutator:
    """Turns a recorded message into a mutated datagram; says whether its framing is broken."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng
        self.kinds: list[Callable[[bytes], tuple[bytes, bool]]] = [
            self.truncate, self.bad_length, self.retype, self.attr_length, self.attr_type,
            self.attr_payload, self.nested, self.drop_or_duplicate, self.flip, self.splice,
        ]  # fmt: skip

    def __call__(self, msg: bytes, others: list[bytes]) -> tuple[bytes, bool, str]:
        self.others = others
        kind = self.r.choice(self.kinds)
        data, broken = kind(msg)
        return data, broken, kind.__name__

    @staticmethod
    def _with_len(msg: bytes, n: int) -> bytes:
        return struct.pack("=I", n & 0xFFFFFFFF) + msg[4:]

    @staticmethod
    def _walked(msg: bytes) -> bool:
        """Whether the decoder walks this message's attribute chain (so a bad one must show)."""
        return HDR.unpack_from(msg)[1] in ATTRS_AT

    def _top(self, msg: bytes) -> int:
        return 16 + ATTRS_AT.get(HDR.unpack_from(msg)[1], len(msg))

    @staticmethod
    def _framing_broken(data: bytes) -> bool:
        """The declared length cannot frame the datagram: less than a header, or past its end.
        (A shorter length leaves the rest to be read as more messages, which may be valid.)"""
        return len(data) < 16 or not 16 <= HDR.unpack_from(data)[0] <= len(data)

    def truncate(self, msg: bytes) -> tuple[bytes, bool]:
        data = msg[: self.r.randrange(1, len(msg))]
        return data, self._framing_broken(data)

    def bad_length(self, msg: bytes) -> tuple[bytes, bool]:
        n = self.r.choice([0, 1, 15, 16, len(msg) - 1, len(msg) + 1, len(msg) + 4, 0xFFFF, self.r.randrange(1 << 32)])
        data = self._with_len(msg, n)
        return data, self._framing_broken(data)

    def retype(self, msg: bytes) -> tuple[bytes, bool]:
        t = self.r.choice([*range(0, 50), self.r.randrange(1 << 16)])
        data = msg[:4] + struct.pack("=H", t) + msg[6:]
        return data, False  # may well be valid for another type

    def _pick(self, msg: bytes, start: int) -> tuple[int, int, int] | None:
        attrs = _attrs(msg, start)
        return self.r.choice(attrs) if attrs else None

    def attr_length(self, msg: bytes) -> tuple[bytes, bool]:
        a = self._pick(msg, self._top(msg))
        if a is None:
            return self.flip(msg)
        off, n, t = a
        new = self.r.choice([0, 1, 2, 3, n + 4 + len(msg), 0xFFFF, n - 1, n + 1, n + self.r.randrange(1, 64)])
        new &= 0xFFFF
        data = msg[:off] + NLA.pack(new, t) + msg[off + 4 :]
        return data, (new < 4 or off + new > len(msg)) and self._walked(msg)

    def attr_type(self, msg: bytes) -> tuple[bytes, bool]:
        a = self._pick(msg, self._top(msg))
        if a is None:
            return self.retype(msg)
        off, n, _ = a
        t = self.r.choice([*range(0, 40), 0x8000 | self.r.randrange(40), 0x4000 | self.r.randrange(40), self.r.randrange(1 << 16)])
        return msg[:off] + NLA.pack(n, t) + msg[off + 4 :], False

    def attr_payload(self, msg: bytes) -> tuple[bytes, bool]:
        a = self._pick(msg, self._top(msg))
        if a is None or a[1] <= 4:
            return self.flip(msg)
        off, n, _ = a
        data = bytearray(msg)
        for _ in range(self.r.randint(1, 8)):
            data[off + 4 + self.r.randrange(n - 4)] = self.r.randrange(256)
        return bytes(data), False

    def nested(self, msg: bytes) -> tuple[bytes, bool]:
        """Corrupt inside XFRMA_SA / XFRMA_POLICY (DELSA / DELPOLICY) or an XFRMA_TMPL array."""
        mtype = HDR.unpack_from(msg)[1]
        data = bytearray(msg)
        for off, n, t in _attrs(msg, self._top(msg)):
            if mtype in NESTED and t & 0x3FFF == NESTED[mtype][1]:
                inner = _attrs(msg, off + 4 + NESTED[mtype][2])  # the attributes inside
                if inner:
                    ioff, inn, it = self.r.choice(inner)
                    data[ioff : ioff + 4] = NLA.pack(self.r.choice([0, 3, inn + 200, self.r.randrange(1 << 16)]) & 0xFFFF, it)
                    return bytes(data), False  # the outer attribute's length still frames it
            if t & 0x3FFF == x.XFRMA_TMPL and n > 4:
                data[off + 4 + self.r.randrange(n - 4)] ^= 1 << self.r.randrange(8)
                if self.r.random() < 0.5:  # a template array that is not a multiple of 64
                    data[off : off + 2] = struct.pack("=H", max(4, n - self.r.randint(1, 63)))
                return bytes(data), False
        return self.attr_payload(msg)

    def drop_or_duplicate(self, msg: bytes) -> tuple[bytes, bool]:
        a = self._pick(msg, self._top(msg))
        if a is None:
            return self.truncate(msg)
        off, n, _ = a
        span = (n + 3) & ~3
        if self.r.random() < 0.5:
            body = msg[:off] + msg[off + span :]
        else:
            body = msg[: off + span] + msg[off : off + span] + msg[off + span :]
        return self._with_len(body, len(body)), False

    def flip(self, msg: bytes) -> tuple[bytes, bool]:
        data = bytearray(msg)
        for _ in range(self.r.randint(1, 8)):
            data[self.r.randrange(len(data))] ^= 1 << self.r.randrange(8)
        return bytes(data), self._framing_broken(bytes(data))

    def splice(self, msg: bytes) -> tuple[bytes, bool]:
        other = self.r.choice(self.others)
        pad = b"" if self.r.random() < 0.5 else bytes(-len(msg) % 4)
        return msg + pad + other, False  # two messages: framing of each may be fine


def renderers() -> dict[str, Callable[[ev.Event], Any]]:
    """Every way xfrmwatch renders an event."""
    text = TextRenderer()
    ecs, ocsf = EcsRenderer(hostname="fuzz"), OcsfRenderer(hostname="fuzz")
    enc = msgspec.json.Encoder()

    def table(e: ev.Event) -> object:
        sa = getattr(e, "sa", None)
        pol = getattr(e, "policy", None)
        return (tables.sa_row(sa) if isinstance(sa, ev.SA) else None,
                tables.policy_row(pol) if isinstance(pol, ev.Policy) else None)  # fmt: skip

    return {
        "json": enc.encode,
        "text": text,
        "text on a terminal": text.rich,
        "ecs": lambda e: enc.encode(ecs(e)),
        "ocsf": lambda e: enc.encode(ocsf(e)),
        "journald": JournalRenderer(),
        "syslog": SyslogRenderer(hostname="fuzz"),
        "exec environment": hook_env,
        "table row": table,
    }


@dataclass
class Result:
    messages: int = 0
    events: int = 0
    malformed: int = 0
    alerts: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Fuzzer:
    """Runs mutated messages through a fresh pipeline state (renewed every ``renew``)."""

    def __init__(self, seed: int, *, renew: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.seeds = seeds()
        self.mutate = Mutator(self.rng)
        self.decoder = Decoder("fuzz")
        self.ruleset = load(None)
        self.render = renderers()
        self.renew = renew
        self._fresh()

    def _fresh(self) -> None:
        mirror = Mirror(netns="fuzz")
        self.state = StateStage(mirror, TunnelModel(mirror))
        self.rules = RulesStage(Alerter(self.ruleset))

    def datagrams(self, n: int) -> Iterator[tuple[int, bytes, bool, str]]:
        for i in range(n):
            data, broken, kind = self.mutate(self.rng.choice(self.seeds), self.seeds)
            yield i, data, broken, kind

    def run(self, n: int, *, max_failures: int = 20) -> Result:
        res = Result()
        t0 = time.monotonic()
        now = 0.0
        with structlog.testing.capture_logs() as logs:
            for i, data, broken, kind in self.datagrams(n):
                res.by_kind[kind] = res.by_kind.get(kind, 0) + 1
                now += 30.0 if i % 97 == 0 else 0.001  # now and then far enough for timers
                where = f"seed {self.seed} message {i} ({kind}, {len(data)} bytes)"
                try:
                    decoded = self.decoder.decode(data, now, 1.8e9 + now)
                    if broken and not any(isinstance(e, ev.Malformed) for e in decoded):
                        res.failures.append(f"{where}: broken framing, yet no malformed event")
                    if not all(isinstance(e, ev.Event) for e in decoded):
                        res.failures.append(f"{where}: the decoder returned a non-event")
                    out = self.rules.process(self.state.apply(decoded, now, 1.8e9 + now), now)
                    out += self.rules.process(self.state.on_time(now, 1.8e9 + now), now)
                    for e in out:
                        for fmt, r in self.render.items():
                            try:
                                r(e)
                            except Exception as exc:
                                res.failures.append(f"{where}: {fmt} of {type(e).__name__}: {type(exc).__name__}: {exc}")
                    res.events += len(decoded)
                    res.malformed += sum(isinstance(e, ev.Malformed) for e in decoded)
                    res.alerts += sum(isinstance(e, ev.Alert) for e in out)
                except Exception as exc:
                    res.failures.append(f"{where}: {type(exc).__name__}: {exc}")
                errors = [entry for entry in logs if entry.get("log_level") in ("error", "critical")]
                if errors:
                    res.failures.append(f"{where}: logged {errors[0]}")
                logs.clear()
                res.messages += 1
                if (i + 1) % self.renew == 0:
                    self._fresh()
                    logs.clear()
                if len(res.failures) >= max_failures:
                    break
        res.seconds = time.monotonic() - t0
        return res
