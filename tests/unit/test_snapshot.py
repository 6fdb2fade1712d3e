"""The listings' fast way (xfrmwatch/snapshot.py) against the general way, on recorded
messages and on mutations of them.

The reference is what `policy list`, `state list` and `dump` printed before the fast way
existed, built here from the general pieces: each reply datagram's records from
``query.policies_in`` / ``query.sas_in`` (the decoder), written by msgspec (JSON) or by
the table's ``rows``; ``scan_reply`` ends the dump.  Both must print the same bytes and
log the same warnings, for every format.
"""

from __future__ import annotations

import io
import os
import random
import struct
from typing import Any

import msgspec
import pytest
from fuzzing import Mutator, seeds
from structlog.testing import capture_logs

from xfrmwatch import snapshot
from xfrmwatch.errors import UserError
from xfrmwatch.netlink import query
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.decode import Decoder
from xfrmwatch.netlink.request import DUMP_SEQ, scan_reply
from xfrmwatch.output import tables

HDR = struct.Struct("=IHHII")
KINDS = {
    "policy": (snapshot.PolicyLines, query.policies_in, tables.policy_table, tables.policy_row, "policies"),
    "sa": (snapshot.SaLines, query.sas_in, tables.sa_table, tables.sa_row, "SAs"),
}
FORMATS = ("json", "table", "dump")
ROUNDS = int(os.environ.get("XFRMWATCH_SNAPSHOT_ROUNDS", "40"))  # more: a longer fuzz run


class Said:
    """A logger keeping what it is told (the fast way's warnings)."""

    def __init__(self) -> None:
        self.said: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.said.append((event, kw))


def general(
    kind: str, fmt: str, datagrams: list[bytes]
) -> tuple[bytes, list[tuple[str, dict[str, Any]]], str | None]:
    """What the general way prints (and warns, and raises) for these reply datagrams."""
    _, records_in, table_of, row, noun = KINDS[kind]
    out = io.BytesIO()
    enc = msgspec.json.Encoder()
    decoder = Decoder()
    table = table_of(out) if fmt == "table" else None
    what = snapshot.PolicyLines.what if kind == "policy" else snapshot.SaLines.what
    error = None
    sep = b""
    with capture_logs() as logs:
        try:
            for data in datagrams:
                done, interrupted = scan_reply(data, DUMP_SEQ, what)
                if interrupted:
                    raise UserError("interrupted")
                records = records_in(decoder, data, 0.0)
                if table is not None:
                    table.rows([row(r) for r in records])
                elif fmt == "json":
                    out.write(enc.encode_lines(records))
                else:
                    for r in records:
                        out.write(sep + enc.encode(r))
                        sep = b","
                if done:
                    break
            if table is not None:
                table.close(noun)
        except UserError as exc:
            error = type(exc).__name__ if str(exc) != "interrupted" else "interrupted"
    said = [
        (e["event"], {k: e[k] for k in ("reason", "msg_type", "length")})
        for e in logs
        if e["log_level"] == "warning"
    ]
    return out.getvalue(), said, error


def fast(
    kind: str, fmt: str, datagrams: list[bytes]
) -> tuple[bytes, list[tuple[str, dict[str, Any]]], str | None]:
    """What the fast way prints (and warns, and raises) for the same datagrams."""
    lines_of, _, table_of, _, _ = KINDS[kind]
    out = io.BytesIO()
    said = Said()
    lines = lines_of(
        table_of(out) if fmt == "table" else None, out, lambda: said, sep="," if fmt == "dump" else "\n"
    )
    error = None
    try:
        for data in datagrams:
            if lines.feed(data):
                break
        lines.close()
    except UserError as exc:
        error = type(exc).__name__ if "changed during the dump" not in str(exc) else "interrupted"
    return out.getvalue(), said.said, error


def _messages(kind: str) -> list[bytes]:
    """The recorded messages a dump of ``kind`` would carry (NEWPOLICY / NEWSA: notifications
    and dump replies have the same body), with the dump's flags and sequence number."""
    want = x.XFRM_MSG_NEWPOLICY if kind == "policy" else x.XFRM_MSG_NEWSA
    out = []
    for m in seeds():
        if len(m) >= 16 and HDR.unpack_from(m)[1] == want:
            out.append(_reframed(m))
    return out


def _reframed(m: bytes, flags: int = 2, seq: int = DUMP_SEQ) -> bytes:
    mlen, mtype, _, _, pid = HDR.unpack_from(m)
    return HDR.pack(mlen, mtype, flags, seq, pid) + m[16:]


def _own_fields_changed(kind: str, m: bytes, i: int, *, addresses: bool = True) -> bytes:
    """Another entry of the same shape: its own fields (addresses' last byte, unless not
    ``addresses``, index or SPI, reqid, sequence number) changed."""
    b = bytearray(m)
    o = 16
    if addresses:
        b[o + 3] = (b[o + 3] + i) & 0xFF  # selector destination
        b[o + 16 + 3] = (b[o + 19] + 2 * i) & 0xFF  # selector source
    if kind == "policy":
        struct.pack_into("=II", b, o + 152, i, 8 * i + 1)  # priority, index
    else:
        if addresses:
            b[o + 56 + 3] = (b[o + 59] + i) & 0xFF  # the SA's destination
            b[o + 80 + 3] = (b[o + 83] + 3 * i) & 0xFF  # and source
        struct.pack_into(">I", b, o + 72, 0x1000 + i)  # SPI
        struct.pack_into("=II", b, o + 204, i, i + 7)  # seq, reqid
    return bytes(b)


def _datagrams(msgs: list[bytes], per: int) -> list[bytes]:
    """``msgs`` in datagrams of ``per`` messages, the last one ending with NLMSG_DONE."""
    out = [b"".join(m + bytes(-len(m) % 4) for m in msgs[i : i + per]) for i in range(0, len(msgs), per)]
    done = HDR.pack(20, 3, 2, DUMP_SEQ, 0) + bytes(4)
    return [*out, done] if not out else [*out[:-1], out[-1] + done]


def _compare(kind: str, fmt: str, datagrams: list[bytes]) -> None:
    assert general(kind, fmt, datagrams) == fast(kind, fmt, datagrams)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per", [1, 7, 100])
def test_recorded_entries_print_the_same(kind: str, fmt: str, per: int) -> None:
    """Every recorded policy or SA (IPv4 and IPv6, templates, marks, keys, ESN, encap...),
    each seen several times with its own fields changed (so each shape gets its template),
    prints exactly as the general way prints it."""
    msgs = _messages(kind)
    assert len(msgs) >= (10 if kind == "policy" else 30)
    entries = [_own_fields_changed(kind, m, i) for i in range(4) for m in msgs]
    _compare(kind, fmt, _datagrams(entries, per))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_templates_are_used(kind: str, fmt: str) -> None:
    """The comparison above covers the fast way: key-free shapes seen twice have a
    template, and later entries of the shape are written from it."""
    lines_of = KINDS[kind][0]
    out = io.BytesIO()
    table = KINDS[kind][2](out) if fmt == "table" else None
    lines = lines_of(table, out, Said, sep="," if fmt == "dump" else "\n")
    for d in _datagrams([_own_fields_changed(kind, m, i) for i in range(4) for m in _messages(kind)], 7):
        lines.feed(d)
    assert sum(t is not None for t in lines.templates.values()) >= 3


@pytest.mark.parametrize("kind", KINDS)
def test_end_of_dump_and_errors(kind: str) -> None:
    """NLMSG_DONE stops the dump where the general way stops; an NLMSG_ERROR or an
    interrupted dump raises there, with the datagrams before it printed."""
    msgs = [_own_fields_changed(kind, m, i) for i in range(3) for m in _messages(kind)]
    dgs = _datagrams(msgs, 5)
    err = HDR.pack(36, 2, 0, DUMP_SEQ, 0) + struct.pack("=i", -1) + bytes(16)
    for fmt in FORMATS:
        _compare(kind, fmt, [*dgs[:3], dgs[-1], *dgs[3:]])  # DONE early: the rest unread
        _compare(kind, fmt, [*dgs[:2], dgs[2] + err, *dgs[3:]])  # EPERM in the third datagram
        intr = _reframed(msgs[0], flags=2 | 16)
        _compare(kind, fmt, [*dgs[:2], dgs[2] + intr, *dgs[3:]])
        other_seq = _reframed(msgs[1], flags=0, seq=99)  # not our request's: no end
        _compare(kind, fmt, [dgs[0] + other_seq, *dgs[1:]])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_mutated_messages_print_and_warn_the_same(kind: str, fmt: str) -> None:
    """Recorded messages of every type, mutated (truncated, bad lengths, retyped, broken
    attributes, spliced), among good entries: the same lines, the same warnings."""
    rng = random.Random(f"snapshot-{kind}-{fmt}")
    mutate = Mutator(rng)
    pool = seeds()
    good = _messages(kind)
    for round_ in range(ROUNDS):
        datagrams: list[bytes] = []
        for _ in range(rng.randint(1, 6)):
            parts = []
            for _ in range(rng.randint(1, 8)):
                if rng.random() < 0.6:
                    parts.append(_own_fields_changed(kind, rng.choice(good), rng.randrange(8)))
                else:
                    data, _, _ = mutate(rng.choice(pool), pool)
                    if len(data) >= 16 and rng.random() < 0.7:
                        data = _reframed(
                            data, flags=rng.choice([2, 2, 2, 0, 18]), seq=rng.choice([DUMP_SEQ, 5])
                        )
                    parts.append(data)
            datagrams.append(b"".join(p + bytes(-len(p) % 4) for p in parts[:-1]) + parts[-1])
        got = general(kind, fmt, datagrams), fast(kind, fmt, datagrams)
        assert got[0] == got[1], f"round {round_}"


def test_json_templates_keep_unusual_text() -> None:
    """A '%' or a non-ASCII character in a template's constant text (a security context)
    is written as the general way writes it."""
    msgs = [m for m in _messages("policy") if b"%" not in m]
    pol = msgs[0]
    # the security context attribute (XFRMA_SEC_CTX, 8): header, then len/exttype/alg/doi/ctx_len, then ctx
    ctx = "sys%u_r:é%s".encode()
    body = struct.pack("=HBBBH", 8 + len(ctx), 8, 1, 1, len(ctx)) + ctx
    attr = struct.pack("=HH", 4 + len(body), x.XFRMA_SEC_CTX) + body
    attr += bytes(-len(attr) % 4)
    m = pol + attr
    m = struct.pack("=I", len(m)) + m[4:]
    entries = [_own_fields_changed("policy", m, i) for i in range(5)]
    for fmt in FORMATS:
        _compare("policy", fmt, _datagrams(entries, 2))


def _runs(kind: str, lengths: list[int]) -> list[bytes]:
    """Runs of entries of one shape each (every recorded shape in turn), of the given
    lengths; in every other run, the addresses are the same all along."""
    out = []
    for j, m in enumerate(_messages(kind)):
        out += [_own_fields_changed(kind, m, i, addresses=j % 2 == 0) for i in range(lengths[j % len(lengths)])]
    return out


def _fast_lines(kind: str, fmt: str, datagrams: list[bytes]) -> snapshot.Lines:
    lines_of = KINDS[kind][0]
    out = io.BytesIO()
    lines = lines_of(KINDS[kind][2](out) if fmt == "table" else None, out, Said, sep="," if fmt == "dump" else "\n")
    for d in datagrams:
        if lines.feed(d):
            break
    return lines


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per", [3, 16, 100])
def test_runs_of_one_shape_print_the_same(kind: str, fmt: str, per: int) -> None:
    """Runs of entries of one shape (IPv4 and IPv6, each recorded shape), long and short,
    cut across datagrams, written a run at a time, print what the general way prints."""
    entries = _runs(kind, [1, 9, 2, 30, 5])
    dgs = _datagrams(entries, per)
    _compare(kind, fmt, dgs)
    lines = _fast_lines(kind, fmt, dgs)
    shapes = sum(t is not None and t[-1] is not None for t in lines.templates.values())
    assert shapes >= 1
    assert lines.batched >= shapes


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_runs_broken_in_the_middle(kind: str, fmt: str) -> None:
    """A run broken by an entry of another shape, by one whose bytes differ in its shape
    (a flag, a lifetime, a padding byte, the header's flags or sequence number), or by a
    malformed one, goes on after it; each prints as the general way prints it."""
    rng = random.Random(f"runs-{kind}-{fmt}")
    msgs = _messages(kind)
    for round_ in range(ROUNDS):
        base = rng.choice(msgs)
        same = rng.random() < 0.5  # the addresses the same all along (until broken)
        run = [_own_fields_changed(kind, base, i, addresses=not same) for i in range(rng.randint(2, 40))]
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(run))
            b = bytearray(run[at])
            how = rng.randrange(4)
            if how == 0:
                b = bytearray(_own_fields_changed(kind, rng.choice(msgs), at))
            elif how == 1:
                pos = rng.randrange(4, len(b))
                b[pos] ^= 1 << rng.randrange(8)
            elif how == 2:
                b = bytearray(_reframed(bytes(b), flags=rng.choice([0, 2 | 16, 2 | 256]), seq=rng.choice([DUMP_SEQ, 7])))
            else:
                b = b[: rng.randrange(16, len(b))]
                struct.pack_into("=I", b, 0, len(b))
            run[at] = bytes(b)
        dgs = _datagrams(run, rng.choice([1, 4, 13, 50]))
        got = general(kind, fmt, dgs), fast(kind, fmt, dgs)
        assert got[0] == got[1], f"round {round_}"


@pytest.mark.parametrize("kind", KINDS)
def test_runs_end_of_dump_and_errors(kind: str) -> None:
    """In runs too: NLMSG_DONE stops the dump, an NLMSG_ERROR or an interrupted entry in a
    run's datagram raises with nothing of that datagram printed."""
    msgs = _runs(kind, [12])
    dgs = _datagrams(msgs, 10)
    err = HDR.pack(36, 2, 0, DUMP_SEQ, 0) + struct.pack("=i", -1) + bytes(16)
    for fmt in FORMATS:
        _compare(kind, fmt, [*dgs[:3], dgs[-1], *dgs[3:]])
        _compare(kind, fmt, [*dgs[:2], dgs[2] + err, *dgs[3:]])
        intr = _reframed(msgs[25], flags=2 | 16)
        _compare(kind, fmt, [*dgs[:2], dgs[2] + intr, *dgs[3:]])
        _compare(kind, fmt, [*dgs[:2], dgs[2][:100] + intr + dgs[2][100:], *dgs[3:]])


# --- tunnel-mode policies: their templates' addresses and reqid are own fields ---------

INF = (1 << 64) - 1
_TMPL = struct.Struct("=16sIB3xH2x16sIBBBxIII")  # xfrm_user_tmpl (netlink/xfrm.py's USER_TMPL)


def _packed(fields: x.Fields, **values: Any) -> bytes:
    """A C struct of ``fields`` (netlink/xfrm.py's layouts), zero but ``values``."""
    out = b""
    for name, f in fields:
        if f.endswith("x"):
            out += bytes(struct.calcsize("=" + f))
        else:
            out += struct.pack("=" + f, values.get(name, b"" if f.endswith("s") else 0))
    return out


def _ip(text: str) -> bytes:
    import socket

    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_pton(fam, text).ljust(16, b"\0")


def _tunnel_policy(
    i: int, direction: int, *, peer6: bool = False, mode: int = 1, optional: int = 0, templates: int = 1
) -> bytes:
    """A tunnel-mode policy as the kernel dumps it (`ip xfrm policy add src NET_L dst NET_R
    dir D tmpl src LOCAL dst PEER proto esp reqid I mode tunnel`): tunnel ``i``'s subnets,
    peer and reqid; ``direction`` 0 in, 1 out, 2 fwd; ``templates`` chained (the second
    an AH one, optional)."""
    net_l, net_r = _ip(f"172.16.{i >> 8}.{i & 255}"), _ip(f"172.17.{i >> 8}.{i & 255}")
    local, peer = (_ip("2001:db8::1"), _ip(f"2001:db8:1::{i:x}")) if peer6 else (_ip("10.0.0.1"), _ip(f"10.1.{i >> 8}.{i & 255}"))
    outbound = direction == 1
    sel_src, sel_dst = (net_l, net_r) if outbound else (net_r, net_l)
    t_src, t_dst = (local, peer) if outbound else (peer, local)
    fam = 10 if peer6 else 2
    info = _packed(
        x.USERPOLICY_INFO,
        sel_daddr=sel_dst, sel_saddr=sel_src, sel_family=2, sel_prefixlen_d=32, sel_prefixlen_s=32,
        lft_soft_byte_limit=INF, lft_hard_byte_limit=INF, lft_soft_packet_limit=INF, lft_hard_packet_limit=INF,
        cur_add_time=1_700_000_000 + i, priority=0, index=8 * i + direction, dir=direction,
    )  # fmt: skip
    tmpls = b""
    for k in range(templates):
        proto, opt = (50, optional) if k == 0 else (51, 1)
        tmpls += _TMPL.pack(t_dst, 0, proto, fam, t_src, i + 1 + 1000 * k, mode, 0, opt, INF & 0xFFFFFFFF, INF & 0xFFFFFFFF, INF & 0xFFFFFFFF)
    attrs = struct.pack("=HH", 4 + len(tmpls), x.XFRMA_TMPL) + tmpls
    ptype = struct.pack("=HHBxHBx", 10, x.XFRMA_POLICY_TYPE, 0, 0, 0)[:10]
    attrs += ptype + bytes(2)
    body = info + attrs
    return HDR.pack(16 + len(body), x.XFRM_MSG_NEWPOLICY, 2, DUMP_SEQ, 0) + body


def _tunnels(n: int, **kw: Any) -> list[bytes]:
    """``n`` tunnels' policies as a dump gives them: in, out and fwd interleaved."""
    return [_tunnel_policy(i, d, **kw) for i in range(n) for d in (1, 0, 2)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("per", [1, 5, 64, 400])
def test_tunnel_mode_policies_print_the_same(fmt: str, per: int) -> None:
    """Tunnel-mode policies of many peers (IPv4 and IPv6), in/out/fwd interleaved, with
    one template or a chain of two, print what the general way prints; their peers and
    reqids are own fields: a few shapes for all the tunnels, written from templates."""
    entries = _tunnels(150) + _tunnels(40, peer6=True) + _tunnels(30, templates=2)
    entries += [_tunnel_policy(i, 1) for i in range(150, 300)]  # a long run of one shape
    dgs = _datagrams(entries, per)
    _compare("policy", fmt, dgs)
    lines = _fast_lines("policy", fmt, dgs)
    assert len(lines.templates) <= 9 + 3  # 3 directions x (v4, v6, 2 templates), and shapes seen once
    templated = [t for t in lines.templates.values() if t is not None and t[3] is not None]
    assert len(templated) >= 9
    if fmt != "table" or per > 1:
        assert all(t[-1] is not None for t in templated)  # each with its batch
    if per >= 64:
        assert lines.batched >= 100
        assert any(b is not None for b in lines.periods.values())  # out, in, fwd written at once


@pytest.mark.parametrize("fmt", FORMATS)
def test_tunnel_periods_broken(fmt: str) -> None:
    """Interleaved directions (periods of 3 shapes) broken by an entry of another shape,
    a changed byte, a missing or an extra entry: each prints as the general way prints it."""
    rng = random.Random(f"periods-{fmt}")
    for round_ in range(ROUNDS):
        entries = _tunnels(rng.randint(2, 60), peer6=rng.random() < 0.3, templates=rng.choice([1, 1, 2]))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(entries))
            how = rng.randrange(4)
            if how == 0:
                entries[at] = _tunnel_policy(at, rng.randrange(3), mode=0)
            elif how == 1:
                b = bytearray(entries[at])
                b[rng.randrange(4, len(b))] ^= 1 << rng.randrange(8)
                entries[at] = bytes(b)
            elif how == 2:
                del entries[at]
            else:
                entries.insert(at, _tunnel_policy(at, rng.randrange(3)))
        dgs = _datagrams(entries, rng.choice([2, 7, 30, 64, 200]))
        got = general("policy", fmt, dgs), fast("policy", fmt, dgs)
        assert got[0] == got[1], f"round {round_}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_tunnel_templates_differing_in_their_shape(fmt: str) -> None:
    """Templates differing in a shape's byte (mode, optional flag, protocol, SPI, family,
    algorithms) are other shapes: each prints as the general way prints it, in runs and
    interleaved."""
    rng = random.Random(f"tunnel-{fmt}")
    variants = [
        {}, {"mode": 0}, {"optional": 1}, {"mode": 4}, {"peer6": True}, {"templates": 2}, {"templates": 2, "optional": 1},
    ]  # fmt: skip
    entries = [_tunnel_policy(i, rng.randrange(3), **rng.choice(variants)) for i in range(400)]
    entries += [_tunnel_policy(i, 2, **variants[j]) for j in range(len(variants)) for i in range(20)]
    tmpl_at = 16 + x.MSG_MIN_SIZE[x.XFRM_MSG_NEWPOLICY] + 4
    for k in range(0, len(entries), 7):  # a byte of the template's shape changed: SPI, algorithms, family
        b = bytearray(entries[k])
        b[tmpl_at + rng.choice([16, 19, 20, 24, 52, 56, 63])] ^= 1 << rng.randrange(8)
        entries[k] = bytes(b)
    for per in (3, 50, 1000):
        dgs = _datagrams(entries, per)
        _compare("policy", fmt, dgs)
    lines = _fast_lines("policy", fmt, _datagrams(entries, 50))
    assert sum(t is not None for t in lines.templates.values()) >= len(variants)


# --- keyed SAs: their keys are left out of the shape, and never kept --------------------


def _rekeyed(m: bytes, rng: random.Random) -> tuple[bytes, list[bytes]]:
    """An SA message with fresh random keys in its algorithm attributes, and those keys."""
    b = bytearray(m)
    keys = []
    a = 16 + x.MSG_MIN_SIZE[x.XFRM_MSG_NEWSA]
    while a + 4 <= len(b):
        alen, atype = struct.unpack_from("=HH", b, a)
        if alen < 4 or a + alen > len(b):
            break
        key_at = snapshot._KEY_AT.get(atype & 0x3FFF)
        if key_at is not None and alen > key_at:
            key = rng.randbytes(alen - key_at)
            b[a + key_at : a + alen] = key
            keys.append(key)
        a += (alen + 3) & ~3
    return bytes(b), keys


def _kept_bytes(obj: Any, seen: set[int]) -> list[bytes]:
    """Every byte string an object keeps, reached through its attributes and containers
    (texts as UTF-8, integers as their bytes, a struct's format, a buffer's contents)."""
    if id(obj) in seen or obj is None or isinstance(obj, (bool, float)):
        return []
    seen.add(id(obj))
    if isinstance(obj, (bytes, bytearray)):
        return [bytes(obj)]
    if isinstance(obj, str):
        return [obj.encode("utf-8", "surrogatepass")]
    if isinstance(obj, int):
        return [obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True)]
    if isinstance(obj, io.BytesIO):
        return [obj.getvalue()]
    if isinstance(obj, struct.Struct):
        return [obj.format.encode()]
    out: list[bytes] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _kept_bytes(k, seen) + _kept_bytes(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            out += _kept_bytes(v, seen)
    elif callable(obj):
        out += _kept_bytes(getattr(obj, "__self__", None), seen)
        for cell in getattr(obj, "__closure__", None) or ():
            out += _kept_bytes(cell.cell_contents, seen)
    else:
        for name in [*getattr(obj, "__dict__", {}), *getattr(type(obj), "__slots__", ())]:
            out += _kept_bytes(getattr(obj, name, None), seen)
    return out


def _keyed(rng: random.Random, rounds: int) -> tuple[list[bytes], list[bytes]]:
    """Each recorded keyed SA, ``rounds`` times with its own fields and keys changed."""
    entries, keys = [], []
    msgs = _messages("sa")
    for i in range(rounds):
        for m in msgs:
            e, k = _rekeyed(_own_fields_changed("sa", m, i), rng)
            if k:
                entries.append(e)
                keys += k
    return entries, keys


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("per", [1, 6, 100])
def test_keyed_sas_print_the_same_and_keep_no_key(fmt: str, per: int) -> None:
    """SAs carrying keys (encryption, authentication, AEAD; each entry its own random
    keys) print what the general way prints, from templates and batches, and no 12 bytes
    of any key are kept anywhere in the listing's objects (caches, templates, batches'
    masks and shapes, the decoder) nor in its output."""
    rng = random.Random(f"keys-{fmt}-{per}")
    entries, keys = _keyed(rng, 4)
    runs, run_keys = [], []
    for m in _messages("sa")[::3]:  # and runs of one keyed shape
        for i in range(12):
            e, k = _rekeyed(_own_fields_changed("sa", m, i, addresses=i % 2 == 0), rng)
            if k:
                runs.append(e)
                run_keys += k
    assert len(keys) >= 40 and run_keys
    dgs = _datagrams(entries + runs, per)
    _compare("sa", fmt, dgs)
    lines = _fast_lines("sa", fmt, dgs)
    keyed = {k for k, t in lines.templates.items() if t is not None}
    assert len(keyed) >= 5
    if per > 6:
        assert lines.batched >= 20
    kept = b"\n".join(_kept_bytes(lines, set()))
    assert len(kept) > 10_000 and lines.decoder
    windows = {key[i : i + 8] for key in keys + run_keys for i in range(0, len(key) - 7, 4)}  # (any 12 bytes)
    assert not [w for w in windows if w in kept]
