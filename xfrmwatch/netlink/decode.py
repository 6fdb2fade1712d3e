"""Decode XFRM netlink messages into key-free :mod:`xfrmwatch.events` records.

This is the hot path: the fixed part of each message is unpacked with a
precompiled :class:`struct.Struct` built from the layouts in
:mod:`xfrmwatch.netlink.xfrm`, attributes are walked once.  Key-carrying
attributes are read for their name and lengths only; their bytes are never
sliced out of the buffer.  Malformed input yields a :class:`Malformed` event;
nothing raises out of :meth:`Decoder.decode`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .. import events as ev
from ..timestamps import utc, utc_precise
from . import xfrm as x
from .framing import NLA_HDR, NLA_TYPE_MASK, NLMSG_HDR, iter_messages


def _compile(fields: x.Fields) -> struct.Struct:
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


_USERSA_INFO = _compile(x.USERSA_INFO)
_USERSA_ID = _compile(x.USERSA_ID)
_USERPOLICY_INFO = _compile(x.USERPOLICY_INFO)
_USERPOLICY_ID = _compile(x.USERPOLICY_ID)
_SELECTOR = _compile(x.SELECTOR)
_USER_ACQUIRE_HEAD = _compile(x.USER_ACQUIRE[:5])  # id (daddr, spi, proto) + saddr
_USER_ACQUIRE_TAIL = struct.Struct("=IIII")  # aalgos ealgos calgos seq at 264
_AEVENT_ID = _compile(x.AEVENT_ID)
_USER_REPORT_PROTO = struct.Struct("=B")
_USER_MAPPING = _compile(x.USER_MAPPING)
_USER_TMPL = _compile(x.USER_TMPL)
_USER_MIGRATE = _compile(x.USER_MIGRATE)
_USER_KMADDRESS = _compile(x.USER_KMADDRESS)
_ALGO = _compile(x.ALGO)
_ALGO_AUTH = _compile(x.ALGO_AUTH)
_ENCAP = _compile(x.ENCAP_TMPL)
_USER_SEC_CTX = _compile(x.USER_SEC_CTX)
_REPLAY = _compile(x.REPLAY_STATE)
_REPLAY_ESN = _compile(x.REPLAY_STATE_ESN)
_MARK = _compile(x.MARK)
_LIFETIME_CUR = _compile(x.LIFETIME_CUR)
_OFFLOAD = _compile(x.USER_OFFLOAD)
_SPDINFO = _compile(x.SPDINFO)
_HINFO = _compile(x.HINFO)
_HTHRESH = _compile(x.HTHRESH)
_U8 = struct.Struct("=B")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

_ntohl = socket.ntohl
_ntohs = socket.ntohs
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_INF = x.XFRM_INF

FAMILY_NAMES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", 0: "unspec"}
FAMILY_NUMBERS = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unspec": 0}
IP_PROTO_NAMES = {
    0: "any",
    1: "icmp",
    4: "ipip",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    108: "comp",
    132: "sctp",
    135: "mh",
    136: "udplite",
}


class MalformedError(Exception):
    """Raised inside the decoder; turned into a Malformed event at the boundary."""


# --- small converters ------------------------------------------------------------

_addr_cache: dict[tuple[int, bytes], str] = {}


_ZERO12 = bytes(12)


def addr(family: int, raw: bytes) -> str:
    """Format a 16-byte xfrm_address_t for its family."""
    key = (family, raw)
    s = _addr_cache.get(key)
    if s is not None:
        return s
    if family == _AF_INET:
        s = _inet_ntop(_AF_INET, raw[:4])
    elif family == _AF_INET6:
        s = _inet_ntop(_AF_INET6, raw)
    elif raw[4:] == _ZERO12:
        s = _inet_ntop(_AF_INET, raw[:4])
    else:
        s = _inet_ntop(_AF_INET6, raw)
    if len(_addr_cache) > 8192:
        _addr_cache.clear()
    _addr_cache[key] = s
    return s


def family_name(family: int) -> str:
    return FAMILY_NAMES.get(family) or str(family)


def xfrm_proto(n: int) -> str:
    return x.XFRM_PROTO_NAMES.get(n) or str(n)


def ip_proto(n: int) -> str:
    return IP_PROTO_NAMES.get(n) or str(n)


def spi_hex(spi: int) -> str:
    return f"0x{spi:08x}"


_time_cache: dict[int, str | None] = {}


def _opt_time(seconds: int) -> str | None:
    s = _time_cache.get(seconds, "")
    if s != "":
        return s
    if seconds == 0:
        s = None
    else:
        try:
            s = utc(seconds)
        except (OverflowError, OSError, ValueError):
            s = None
    if len(_time_cache) > 4096:
        _time_cache.clear()
    _time_cache[seconds] = s
    return s


_flag_cache: dict[tuple[int, int], tuple[str, ...]] = {}


def _flags(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    if not value:
        return []
    key = (id(table), value)
    names = _flag_cache.get(key)
    if names is None:
        out = [name for bit, name in table if value & bit]
        known = 0
        for bit, _ in table:
            known |= bit
        if value & ~known:
            out.append(f"0x{value & ~known:x}")
        names = tuple(out)
        if len(_flag_cache) < 4096:
            _flag_cache[key] = names
    return list(names)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _named(table: tuple[str, ...], n: int) -> str:
    return table[n] if n < len(table) else str(n)


def _lim(v: int) -> int | None:
    return None if v == _INF else v


def _tlim(v: int) -> int | None:
    return None if v == _INF or v == 0 else v


# --- fixed parts -------------------------------------------------------------------


def sel_addrs(fam: int, saddr: bytes, daddr: bytes) -> tuple[str, str]:
    """A selector's source and destination addresses (16 bytes each) as text: an AF_UNSPEC
    selector whose addresses both fit in 4 bytes reads as IPv4."""
    if fam == _AF_INET or (fam == 0 and saddr[4:] == _ZERO12 and daddr[4:] == _ZERO12):
        return _inet_ntop(_AF_INET, saddr[:4]), _inet_ntop(_AF_INET, daddr[:4])
    return addr(fam, saddr), addr(fam, daddr)


#: what a selector is but its addresses: (family number, family, "/source prefix length",
#: "/destination prefix length", proto, sport, sport_mask, dport, dport_mask, ifindex, user)
SelectorRest = tuple[int, str, str, str, str, int, int, int, int, int, int]


def _sel_rest(v: tuple[Any, ...], i: int) -> SelectorRest:
    """The selector whose 12 unpacked values start at v[i], but its addresses."""
    dport, dmask, sport, smask, fam, pd, ps, proto, ifindex, user = v[i + 2 : i + 12]
    return (
        fam, FAMILY_NAMES.get(fam) or str(fam), f"/{ps}", f"/{pd}", IP_PROTO_NAMES.get(proto) or str(proto),
        _ntohs(sport), _ntohs(smask), _ntohs(dport), _ntohs(dmask), ifindex, user,
    )  # fmt: skip


def _build_selector(rest: SelectorRest, saddr: bytes, daddr: bytes) -> ev.Selector:
    fam, family, ps, pd, proto, sport, smask, dport, dmask, ifindex, user = rest
    src, dst = sel_addrs(fam, saddr, daddr)
    return ev.Selector(
        family=family, src=src + ps, dst=dst + pd, proto=proto, sport=sport, sport_mask=smask,
        dport=dport, dport_mask=dmask, ifindex=ifindex, user=user,
    )  # fmt: skip


def _selector(v: tuple[Any, ...], i: int) -> tuple[ev.Selector, int]:
    """Build a Selector from the 12 unpacked selector values starting at v[i]."""
    return _build_selector(_sel_rest(v, i), v[i + 1], v[i]), i + 12


def _lifetime(v: tuple[Any, ...], i: int) -> ev.Lifetime:
    return ev.Lifetime(
        soft_bytes=_lim(v[i]),
        hard_bytes=_lim(v[i + 1]),
        soft_packets=_lim(v[i + 2]),
        hard_packets=_lim(v[i + 3]),
        soft_add_seconds=_tlim(v[i + 4]),
        hard_add_seconds=_tlim(v[i + 5]),
        soft_use_seconds=_tlim(v[i + 6]),
        hard_use_seconds=_tlim(v[i + 7]),
    )


def _current(v: tuple[Any, ...], i: int) -> ev.Current:
    return ev.Current(
        bytes=v[i], packets=v[i + 1], add_time=_opt_time(v[i + 2]), use_time=_opt_time(v[i + 3])
    )


_SA_LFT = x.field_offset(x.USERSA_INFO, "lft_soft_byte_limit")
_SA_CUR = x.field_offset(x.USERSA_INFO, "cur_bytes")
_POL_LFT = x.field_offset(x.USERPOLICY_INFO, "lft_soft_byte_limit")
_POL_CUR = x.field_offset(x.USERPOLICY_INFO, "cur_bytes")

# Immutable sub-records repeat across messages (the same SA or policy is
# announced many times, a burst of policies shares lifetimes and add times):
# build each distinct one once, keyed by its raw bytes.
_sel_cache: dict[bytes, ev.Selector] = {}
_sel_rest_cache: dict[bytes, SelectorRest] = {}
_SEL_REST = x.field_offset(x.SELECTOR, "be_dport")  # after the two addresses
_lft_cache: dict[bytes, ev.Lifetime] = {}
_cur_cache: dict[bytes, ev.Current] = {}
_CACHE_MAX = 8192


def current_from(raw: bytes) -> ev.Current:
    """The current lifetime in a 32-byte xfrm_lifetime_cur."""
    return _current(_LIFETIME_CUR.unpack(raw), 0)


def _current_at(buf: bytes, off: int, v: tuple[Any, ...], i: int) -> ev.Current:
    raw = bytes(buf[off : off + 32])
    cur = _cur_cache.get(raw)
    if cur is None:
        cur = _current(v, i)
        if len(_cur_cache) > _CACHE_MAX:
            _cur_cache.clear()
        _cur_cache[raw] = cur
    return cur


def _selector_at(buf: bytes, off: int, v: tuple[Any, ...], i: int) -> ev.Selector:
    raw = bytes(buf[off : off + 56])
    sel = _sel_cache.get(raw)
    if sel is None:
        rest = _sel_rest_cache.get(tail := raw[_SEL_REST:])  # selectors of one shape, other addresses
        if rest is None:
            rest = _sel_rest(v, i)
            if len(_sel_rest_cache) > _CACHE_MAX:
                _sel_rest_cache.clear()
            _sel_rest_cache[tail] = rest
        sel = _build_selector(rest, v[i + 1], v[i])
        if len(_sel_cache) > _CACHE_MAX:
            _sel_cache.clear()
        _sel_cache[raw] = sel
    return sel


def _lifetime_at(buf: bytes, off: int, v: tuple[Any, ...], i: int) -> ev.Lifetime:
    raw = bytes(buf[off : off + 64])
    lft = _lft_cache.get(raw)
    if lft is None:
        lft = _lifetime(v, i)
        if len(_lft_cache) > _CACHE_MAX:
            _lft_cache.clear()
        _lft_cache[raw] = lft
    return lft


_MODES = x.MODE_NAMES
_SA_FLAGS = x.SA_FLAG_NAMES


def _sa_at(buf: bytes, off: int, attrs: dict[str, Any]) -> ev.SA:
    """The SA whose xfrm_usersa_info starts at ``off``, with its decoded attributes."""
    v = _USERSA_INFO.unpack_from(buf, off)
    # v: sel 0-11, id 12-14, saddr 15, lft 16-23, cur 24-27, stats 28-30,
    #    seq 31, reqid 32, family 33, mode 34, replay_window 35, flags 36
    id_daddr, id_spi, id_proto, saddr = v[12:16]
    family, mode = v[33], v[34]
    current = None
    if attrs:
        legacy = attrs.pop("auth_legacy", None)
        if "auth" not in attrs and legacy is not None:
            attrs["auth"] = legacy
        mark_value = attrs.pop("set_mark_value", None)
        mark_mask = attrs.pop("set_mark_mask", None)
        if mark_value is not None:
            attrs["set_mark"] = ev.Mark(value=mark_value, mask=0xFFFFFFFF if mark_mask is None else mark_mask)
        attrs.pop("srcaddr", None)
        current = attrs.pop("current", None)  # XFRMA_LTIME_VAL is fresher than the fixed part
    return ev.SA(
        family=FAMILY_NAMES.get(family) or str(family),
        src=addr(family, saddr),
        dst=addr(family, id_daddr),
        proto=x.XFRM_PROTO_NAMES.get(id_proto) or str(id_proto),
        spi=f"0x{_ntohl(id_spi):08x}",
        reqid=v[32],
        mode=_MODES[mode] if mode < len(_MODES) else str(mode),
        replay_window=v[35],
        flags=_flags(v[36], _SA_FLAGS),
        seq=v[31],
        sel=_selector_at(buf, off, v, 0),
        lifetime=_lifetime_at(buf, off + _SA_LFT, v, 16),
        current=_current_at(buf, off + _SA_CUR, v, 24) if current is None else current,
        stats=ev.Stats(replay_window=v[28], replay=v[29], integrity_failed=v[30]),
        **attrs,
    )


_DIRS = x.DIR_NAMES
_ACTIONS = x.ACTION_NAMES
_SHARES = x.SHARE_NAMES
_POLICY_FLAGS = x.POLICY_FLAG_NAMES


#: a policy's attributes as :func:`_policy_at` takes them: ptype, templates, the rest
PolicyAttrs = tuple[str, "list[ev.Template] | None", dict[str, Any]]


def split_policy_attrs(attrs: dict[str, Any]) -> PolicyAttrs:
    attrs.pop("lastused", None)
    return attrs.pop("ptype", "main"), attrs.pop("tmpl", None), attrs


def _policy_at(buf: bytes, off: int, attrs: PolicyAttrs) -> ev.Policy:
    """The policy whose xfrm_userpolicy_info starts at ``off``, with its attributes."""
    v = _USERPOLICY_INFO.unpack_from(buf, off)
    # v: sel 0-11, lft 12-19, cur 20-23, priority 24, index 25, dir 26,
    #    action 27, flags 28, share 29
    ptype, tmpl, rest = attrs
    d, a, sh = v[26], v[27], v[29]
    pol = ev.Policy(
        dir=_DIRS[d] if d < len(_DIRS) else str(d),
        action=_ACTIONS[a] if a < len(_ACTIONS) else str(a),
        index=v[25],
        priority=v[24],
        ptype=ptype,
        flags=_flags(v[28], _POLICY_FLAGS),
        share=_SHARES[sh] if sh < len(_SHARES) else str(sh),
        sel=_selector_at(buf, off, v, 0),
        lifetime=_lifetime_at(buf, off + _POL_LFT, v, 12),
        current=_current_at(buf, off + _POL_CUR, v, 20),
        tmpl=[] if tmpl is None else list(tmpl),
    )
    # the other attributes (mark, if_id, sec_ctx, unknown ones) are the exception
    return msgspec.structs.replace(pol, **rest) if rest else pol


def _sa_id(buf: bytes, off: int) -> ev.SaId:
    daddr, spi, family, proto = _USERSA_ID.unpack_from(buf, off)
    return ev.SaId(
        family=family_name(family),
        dst=addr(family, daddr),
        spi=spi_hex(_ntohl(spi)),
        proto=xfrm_proto(proto),
    )


def _policy_id(buf: bytes, off: int) -> ev.PolicyId:
    v = _USERPOLICY_ID.unpack_from(buf, off)
    sel, _ = _selector(v, 0)
    return ev.PolicyId(dir=_named(x.DIR_NAMES, v[13]), index=v[12], sel=sel)


# --- attributes -------------------------------------------------------------------


def iter_attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, payload offset, payload length) for each attribute in buf[off:end]."""
    while off < end:
        if end - off < 4:
            raise MalformedError(f"{end - off} trailing bytes after the last attribute")
        alen, atype = NLA_HDR.unpack_from(buf, off)
        if alen < 4:
            raise MalformedError(f"attribute type {atype & NLA_TYPE_MASK} has length {alen} < 4")
        if off + alen > end:
            raise MalformedError(
                f"attribute type {atype & NLA_TYPE_MASK} (length {alen}) runs past the end of the message"
            )
        yield atype & NLA_TYPE_MASK, off + 4, alen - 4
        off += (alen + 3) & ~3


def _need(n: int, length: int, what: str) -> None:
    if length < n:
        raise MalformedError(f"{what} attribute is {length} bytes, needs {n}")


def _a_aead(buf: bytes, o: int, n: int) -> ev.AeadAlg:
    _need(72, n, "XFRMA_ALG_AEAD")
    name, key_bits, icv = _ALGO_AUTH.unpack_from(buf, o)
    return ev.AeadAlg(name=_cstr(name), key_bits=key_bits, icv_bits=icv)


def _a_algo(buf: bytes, o: int, n: int) -> ev.Alg:
    _need(68, n, "XFRMA_ALG")
    name, key_bits = _ALGO.unpack_from(buf, o)
    return ev.Alg(name=_cstr(name), key_bits=key_bits)


def _a_auth(buf: bytes, o: int, n: int) -> ev.AuthAlg:
    _need(68, n, "XFRMA_ALG_AUTH")
    name, key_bits = _ALGO.unpack_from(buf, o)
    return ev.AuthAlg(name=_cstr(name), key_bits=key_bits)


def _a_auth_trunc(buf: bytes, o: int, n: int) -> ev.AuthAlg:
    _need(72, n, "XFRMA_ALG_AUTH_TRUNC")
    name, key_bits, trunc = _ALGO_AUTH.unpack_from(buf, o)
    return ev.AuthAlg(name=_cstr(name), key_bits=key_bits, trunc_bits=trunc)


def _a_encap(buf: bytes, o: int, n: int) -> ev.Encap:
    _need(24, n, "XFRMA_ENCAP")
    etype, sport, dport, oa = _ENCAP.unpack_from(buf, o)
    fam = _AF_INET if oa[4:] == _ZERO12 else _AF_INET6
    return ev.Encap(
        type=x.ENCAP_NAMES.get(etype) or str(etype),
        sport=_ntohs(sport),
        dport=_ntohs(dport),
        oa=addr(fam, oa),
    )


def _a_mark(buf: bytes, o: int, n: int) -> ev.Mark:
    _need(8, n, "XFRMA_MARK")
    v, m = _MARK.unpack_from(buf, o)
    return ev.Mark(value=v, mask=m)


def _a_u32(buf: bytes, o: int, n: int) -> int:
    _need(4, n, "u32")
    value: int = _U32.unpack_from(buf, o)[0]
    return value


def _a_u8(buf: bytes, o: int, n: int) -> int:
    _need(1, n, "u8")
    return int(buf[o])


def _a_sec_ctx(buf: bytes, o: int, n: int) -> ev.SecCtx:
    _need(8, n, "XFRMA_SEC_CTX")
    _, _, alg, doi, clen = _USER_SEC_CTX.unpack_from(buf, o)
    if 8 + clen > n:
        raise MalformedError("XFRMA_SEC_CTX context runs past the attribute")
    ctx = bytes(buf[o + 8 : o + 8 + clen]).rstrip(b"\0").decode("utf-8", "replace")
    return ev.SecCtx(doi=doi, alg=alg, ctx=ctx)


def _a_replay(buf: bytes, o: int, n: int) -> ev.Replay:
    _need(12, n, "XFRMA_REPLAY_VAL")
    oseq, seq, bitmap = _REPLAY.unpack_from(buf, o)
    return ev.Replay(oseq=oseq, seq=seq, bitmap=bitmap)


def _a_replay_esn(buf: bytes, o: int, n: int) -> ev.ReplayEsn:
    _need(24, n, "XFRMA_REPLAY_ESN_VAL")
    bmp_len, oseq, seq, oseq_hi, seq_hi, win = _REPLAY_ESN.unpack_from(buf, o)
    return ev.ReplayEsn(
        oseq=oseq, seq=seq, oseq_hi=oseq_hi, seq_hi=seq_hi, replay_window=win, bmp_len=bmp_len
    )


def _a_current(buf: bytes, o: int, n: int) -> ev.Current:
    _need(32, n, "XFRMA_LTIME_VAL")
    return _current(_LIFETIME_CUR.unpack_from(buf, o), 0)


def _a_lastused(buf: bytes, o: int, n: int) -> str | None:
    _need(8, n, "XFRMA_LASTUSED")
    return _opt_time(_U64.unpack_from(buf, o)[0])


def _a_xflags(buf: bytes, o: int, n: int) -> list[str]:
    return _flags(_a_u32(buf, o, n), x.SA_XFLAG_NAMES)


def _a_sa_dir(buf: bytes, o: int, n: int) -> str:
    d = _a_u8(buf, o, n)
    return x.SA_DIR_NAMES.get(d) or str(d)


def _a_offload(buf: bytes, o: int, n: int) -> ev.Offload:
    _need(5, n, "XFRMA_OFFLOAD_DEV")
    ifindex, flags = struct.unpack_from("=iB", buf, o)
    return ev.Offload(ifindex=ifindex, flags=flags)


def _a_addr(buf: bytes, o: int, n: int) -> str:
    _need(16, n, "address")
    raw = bytes(buf[o : o + 16])
    return addr(_AF_INET if raw[4:] == _ZERO12 else _AF_INET6, raw)


def _a_ptype(buf: bytes, o: int, n: int) -> str:
    t = _a_u8(buf, o, n)
    return x.PTYPE_NAMES.get(t) or str(t)


def _a_tmpl(buf: bytes, o: int, n: int) -> list[ev.Template]:
    if n % 64:
        raise MalformedError(f"XFRMA_TMPL length {n} is not a multiple of 64")
    out = []
    for p in range(o, o + n, 64):
        daddr, spi, proto, family, saddr, reqid, mode, share, optional, aa, ea, ca = (
            _USER_TMPL.unpack_from(buf, p)
        )
        out.append(
            ev.Template(
                family=family_name(family),
                src=addr(family, saddr),
                dst=addr(family, daddr),
                proto=xfrm_proto(proto),
                spi=spi_hex(_ntohl(spi)),
                reqid=reqid,
                mode=_named(x.MODE_NAMES, mode),
                share=_named(x.SHARE_NAMES, share),
                optional=bool(optional),
                aalgos=aa,
                ealgos=ea,
                calgos=ca,
            )
        )
    return out


def _a_migrate(buf: bytes, o: int, n: int) -> list[ev.MigrateEntry]:
    if n % 76:
        raise MalformedError(f"XFRMA_MIGRATE length {n} is not a multiple of 76")
    out = []
    for p in range(o, o + n, 76):
        od, os_, nd, ns, proto, mode, _, reqid, ofam, nfam = _USER_MIGRATE.unpack_from(buf, p)
        out.append(
            ev.MigrateEntry(
                proto=xfrm_proto(proto),
                mode=_named(x.MODE_NAMES, mode),
                reqid=reqid,
                old_family=family_name(ofam),
                old_src=addr(ofam, os_),
                old_dst=addr(ofam, od),
                new_family=family_name(nfam),
                new_src=addr(nfam, ns),
                new_dst=addr(nfam, nd),
            )
        )
    return out


def _a_kmaddress(buf: bytes, o: int, n: int) -> ev.KmAddress:
    _need(38, n, "XFRMA_KMADDRESS")
    local, remote, _, fam = struct.unpack_from("=16s16sIH", buf, o)
    return ev.KmAddress(family=family_name(fam), local=addr(fam, local), remote=addr(fam, remote))


Handler = Callable[[bytes, int, int], Any]

#: attribute number -> (field name, decoder).  Key attributes go through
#: decoders that read only the name and the lengths.
ATTRS: dict[int, tuple[str, Handler]] = {
    x.XFRMA_ALG_AEAD: ("aead", _a_aead),
    x.XFRMA_ALG_CRYPT: ("enc", _a_algo),
    x.XFRMA_ALG_AUTH: ("auth_legacy", _a_auth),
    x.XFRMA_ALG_AUTH_TRUNC: ("auth", _a_auth_trunc),
    x.XFRMA_ALG_COMP: ("comp", _a_algo),
    x.XFRMA_ENCAP: ("encap", _a_encap),
    x.XFRMA_TMPL: ("tmpl", _a_tmpl),
    x.XFRMA_SEC_CTX: ("sec_ctx", _a_sec_ctx),
    x.XFRMA_LTIME_VAL: ("current", _a_current),
    x.XFRMA_REPLAY_VAL: ("replay", _a_replay),
    x.XFRMA_REPLAY_ESN_VAL: ("replay_esn", _a_replay_esn),
    x.XFRMA_REPLAY_THRESH: ("replay_thresh", _a_u32),
    x.XFRMA_ETIMER_THRESH: ("etimer_thresh", _a_u32),
    x.XFRMA_MTIMER_THRESH: ("mtimer_thresh", _a_u32),
    x.XFRMA_COADDR: ("coaddr", _a_addr),
    x.XFRMA_SRCADDR: ("srcaddr", _a_addr),
    x.XFRMA_LASTUSED: ("lastused", _a_lastused),
    x.XFRMA_POLICY_TYPE: ("ptype", _a_ptype),
    x.XFRMA_MIGRATE: ("migrate", _a_migrate),
    x.XFRMA_KMADDRESS: ("kmaddress", _a_kmaddress),
    x.XFRMA_MARK: ("mark", _a_mark),
    x.XFRMA_SET_MARK: ("set_mark_value", _a_u32),
    x.XFRMA_SET_MARK_MASK: ("set_mark_mask", _a_u32),
    x.XFRMA_IF_ID: ("if_id", _a_u32),
    x.XFRMA_TFCPAD: ("tfcpad", _a_u32),
    x.XFRMA_SA_EXTRA_FLAGS: ("extra_flags", _a_xflags),
    x.XFRMA_SA_DIR: ("dir", _a_sa_dir),
    x.XFRMA_OFFLOAD_DEV: ("offload", _a_offload),
    x.XFRMA_NAT_KEEPALIVE_INTERVAL: ("nat_keepalive_interval", _a_u32),
    x.XFRMA_SA_PCPU: ("pcpu", _a_u32),
}

SA_ATTR_FIELDS = frozenset(
    {
        "aead", "enc", "auth", "auth_legacy", "comp", "encap", "sec_ctx", "current",
        "replay", "replay_esn", "replay_thresh", "etimer_thresh", "mtimer_thresh",
        "coaddr", "srcaddr", "lastused", "mark", "set_mark_value", "set_mark_mask",
        "if_id", "tfcpad", "extra_flags", "dir", "offload", "nat_keepalive_interval",
        "pcpu",
    }
)  # fmt: skip
POLICY_ATTR_FIELDS = frozenset({"tmpl", "sec_ctx", "ptype", "mark", "if_id", "lastused"})
AE_ATTR_FIELDS = frozenset(
    {"replay", "replay_esn", "current", "replay_thresh", "etimer_thresh", "mark", "if_id"}
)
REPORT_ATTR_FIELDS = frozenset({"coaddr"})
MIGRATE_ATTR_FIELDS = frozenset({"migrate", "kmaddress", "ptype", "encap", "mark", "if_id"})


_pattr_cache: dict[bytes, PolicyAttrs] = {}
#: a policy's attribute chain up to this long is looked up by its bytes (ptype, mark, a few templates)
_PATTR_MAX = 160


def policy_attrs(buf: bytes, off: int, end: int) -> PolicyAttrs:
    """A policy's attributes, remembered by their bytes when short: policies announced
    together share them.  (Policy attributes carry no key material; SA attributes, which
    do, are never cached.)  Not to be changed: the templates are copied where used."""
    if end - off > _PATTR_MAX:
        return split_policy_attrs(decode_attrs(buf, off, end, POLICY_ATTR_FIELDS))
    raw = bytes(buf[off:end])
    attrs = _pattr_cache.get(raw)
    if attrs is None:
        attrs = split_policy_attrs(decode_attrs(buf, off, end, POLICY_ATTR_FIELDS))
        if len(_pattr_cache) > _CACHE_MAX:
            _pattr_cache.clear()
        _pattr_cache[raw] = attrs
    return attrs


def decode_attrs(
    buf: bytes, off: int, end: int, allowed: frozenset[str], skip: int = -1
) -> dict[str, Any]:
    """Decode the attribute chain into {field: value}.

    Attributes not meaningful in this context, and unknown ones, are kept as
    ``unknown_attrs`` entries (number and length only).  ``skip`` names an
    attribute already consumed by the caller (XFRMA_SA / XFRMA_POLICY).
    """
    out: dict[str, Any] = {}
    unknown: list[ev.UnknownAttr] | None = None
    unpack_hdr = NLA_HDR.unpack_from
    while off < end:
        if end - off < 4:
            raise MalformedError(f"{end - off} trailing bytes after the last attribute")
        alen, atype = unpack_hdr(buf, off)
        atype &= NLA_TYPE_MASK
        if alen < 4:
            raise MalformedError(f"attribute type {atype} has length {alen} < 4")
        if off + alen > end:
            raise MalformedError(f"attribute type {atype} (length {alen}) runs past the end of the message")
        o = off + 4
        n = alen - 4
        off += (alen + 3) & ~3
        if atype == skip:
            continue
        entry = ATTRS.get(atype)
        if entry is None or entry[0] not in allowed:
            if atype == x.XFRMA_PAD:
                continue
            if unknown is None:
                unknown = []
            unknown.append(ev.UnknownAttr(type=atype, len=n))
            continue
        out[entry[0]] = entry[1](buf, o, n)
    if unknown:
        out["unknown_attrs"] = unknown
    return out



# --- messages ------------------------------------------------------------------------


_MIN_SIZE = x.MSG_MIN_SIZE
_SHAPED = (x.XFRM_MSG_NEWPOLICY, x.XFRM_MSG_UPDPOLICY)
#: a one-message policy datagram taken by its shape: header, xfrm_userpolicy_info, attributes
#: up to the length whose bytes :func:`policy_attrs` remembers
_POL_MIN = 16 + 168
_POL_MAX = _POL_MIN + _PATTR_MAX
_SEL_FAM_PLEN = struct.Struct("=HBB")  # a selector's family, destination and source prefix lengths
_replace = msgspec.structs.replace
#: (message type, selector but its addresses + lifetimes + priority, direction... + attributes)
#: -> (event class, policy of that shape, selector family is AF_INET, selector family,
#: "/source prefix", "/destination prefix")
_ShapeKey = tuple[int, bytes, bytes]
_pol_shape_cache: dict[_ShapeKey, tuple[type[ev.PolicyEvent], ev.Policy, bool, int, str, str]] = {}


class Decoder:
    """Turns raw netlink datagrams from a NETLINK_XFRM socket into events.

    ``netns`` is stamped on every event.  ``clock`` gives the monotonic time
    (trio's clock in the service); ``wallclock`` the UNIX time.
    """

    __slots__ = ("_handlers", "netns")

    def __init__(self, netns: str = "") -> None:
        self.netns = netns
        self._handlers: dict[int, Callable[[str, float, int, int, bytes, int, int], ev.Event]] = {
            x.XFRM_MSG_NEWSA: self._newsa,
            x.XFRM_MSG_UPDSA: self._updsa,
            x.XFRM_MSG_DELSA: self._delsa,
            x.XFRM_MSG_EXPIRE: self._expire,
            x.XFRM_MSG_NEWPOLICY: self._newpolicy,
            x.XFRM_MSG_UPDPOLICY: self._updpolicy,
            x.XFRM_MSG_DELPOLICY: self._delpolicy,
            x.XFRM_MSG_POLEXPIRE: self._polexpire,
            x.XFRM_MSG_FLUSHSA: self._flushsa,
            x.XFRM_MSG_FLUSHPOLICY: self._flushpolicy,
            x.XFRM_MSG_ACQUIRE: self._acquire,
            x.XFRM_MSG_NEWAE: self._newae,
            x.XFRM_MSG_REPORT: self._report,
            x.XFRM_MSG_MIGRATE: self._migrate,
            x.XFRM_MSG_MAPPING: self._mapping,
            x.XFRM_MSG_GETDEFAULT: self._default,
            x.XFRM_MSG_NEWSADINFO: self._sadinfo,
            x.XFRM_MSG_NEWSPDINFO: self._spdinfo,
        }

    # Each handler gets the common fields (time, mono, nlmsg_pid, nlmsg_seq), the buffer,
    # the body offset and end.  (Keyword arguments spelled out: unpacking a dict with ** into
    # a msgspec constructor costs about 0.7 us, a tenth of a small message's decoding.)

    def _newsa(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        return ev.NewSA(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            sa=_sa_at(b, o, decode_attrs(b, o + 224, e, SA_ATTR_FIELDS)),
        )  # fmt: skip

    def _updsa(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        return ev.UpdSA(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            sa=_sa_at(b, o, decode_attrs(b, o + 224, e, SA_ATTR_FIELDS)),
        )  # fmt: skip

    def _delsa(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        sa_id = _sa_id(b, o)
        sa = None
        start = o + 24
        for atype, ao, n in iter_attrs(b, start, e):
            if atype == x.XFRMA_SA:
                _need(224, n, "XFRMA_SA")
                sa = _sa_at(b, ao, decode_attrs(b, start, e, SA_ATTR_FIELDS, x.XFRMA_SA))
                break
        return ev.DelSA(time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq, id=sa_id, sa=sa)

    def _expire(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        sa = _sa_at(b, o, decode_attrs(b, o + 232, e, SA_ATTR_FIELDS))
        return ev.Expire(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            hard=bool(b[o + 224]), sa=sa,
        )  # fmt: skip

    def _newpolicy(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        return ev.NewPolicy(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            policy=_policy_at(b, o, policy_attrs(b, o + 168, e)),
        )  # fmt: skip

    def _updpolicy(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        return ev.UpdPolicy(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            policy=_policy_at(b, o, policy_attrs(b, o + 168, e)),
        )  # fmt: skip

    def _delpolicy(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        policy_id = _policy_id(b, o)
        pol = None
        start = o + 64
        for atype, ao, n in iter_attrs(b, start, e):
            if atype == x.XFRMA_POLICY:
                _need(168, n, "XFRMA_POLICY")
                pol = _policy_at(b, ao, split_policy_attrs(decode_attrs(b, start, e, POLICY_ATTR_FIELDS, x.XFRMA_POLICY)))
                break
        return ev.DelPolicy(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            policy_id=policy_id, policy=pol,
        )  # fmt: skip

    def _polexpire(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        pol = _policy_at(b, o, policy_attrs(b, o + 176, e))
        return ev.PolExpire(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            hard=bool(b[o + 168]), policy=pol,
        )  # fmt: skip

    def _flushsa(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        return ev.FlushSA(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            proto=xfrm_proto(b[o]),
        )  # fmt: skip

    def _flushpolicy(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        attrs = decode_attrs(b, o, e, frozenset({"ptype"}))
        return ev.FlushPolicy(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            ptype=attrs.get("ptype", "main"),
        )  # fmt: skip

    def _acquire(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        daddr, spi, proto, saddr = _USER_ACQUIRE_HEAD.unpack_from(b, o)
        sv = _SELECTOR.unpack_from(b, o + 40)
        sel, _ = _selector(sv, 0)
        aalgos, ealgos, calgos, seq = _USER_ACQUIRE_TAIL.unpack_from(b, o + 264)
        pol = _policy_at(b, o + 96, split_policy_attrs(decode_attrs(b, o + 280, e, POLICY_ATTR_FIELDS)))
        fam = FAMILY_NUMBERS.get(pol.tmpl[0].family if pol.tmpl else sel.family, 0)
        acq = ev.Acquire(
            family=family_name(fam),
            src=addr(fam, saddr),
            dst=addr(fam, daddr),
            proto=xfrm_proto(proto),
            spi=spi_hex(_ntohl(spi)),
            seq=seq,
            aalgos=aalgos,
            ealgos=ealgos,
            calgos=calgos,
        )
        return ev.AcquireEvent(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            acquire=acq, sel=sel, policy=pol,
        )  # fmt: skip

    def _newae(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        daddr, spi, fam, proto, saddr, flags, reqid = _AEVENT_ID.unpack_from(b, o)
        attrs = decode_attrs(b, o + 48, e, AE_ATTR_FIELDS)
        attrs.pop("unknown_attrs", None)
        ae = ev.AeInfo(
            family=family_name(fam),
            src=addr(fam, saddr),
            dst=addr(fam, daddr),
            spi=spi_hex(_ntohl(spi)),
            proto=xfrm_proto(proto),
            reqid=reqid,
            flags=_flags(flags, x.AE_FLAG_NAMES),
            **attrs,
        )
        return ev.NewAE(time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq, ae=ae)

    def _report(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        proto = b[o]
        sel, _ = _selector(_SELECTOR.unpack_from(b, o + 4), 0)
        attrs = decode_attrs(b, o + 60, e, REPORT_ATTR_FIELDS)
        return ev.Report(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            proto=xfrm_proto(proto), sel=sel, coaddr=attrs.get("coaddr"),
        )  # fmt: skip

    def _migrate(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        policy_id = _policy_id(b, o)
        attrs = decode_attrs(b, o + 64, e, MIGRATE_ATTR_FIELDS)
        return ev.Migrate(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            policy_id=policy_id,
            migrate=attrs.get("migrate", []),
            kmaddress=attrs.get("kmaddress"),
            ptype=attrs.get("ptype"),
            encap=attrs.get("encap"),
        )

    def _mapping(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        daddr, spi, fam, proto, reqid, old_s, new_s, old_p, new_p = _USER_MAPPING.unpack_from(b, o)
        sa_id = ev.SaId(
            family=family_name(fam),
            dst=addr(fam, daddr),
            spi=spi_hex(_ntohl(spi)),
            proto=xfrm_proto(proto),
        )
        return ev.Mapping(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            id=sa_id,
            reqid=reqid,
            old_src=addr(fam, old_s),
            old_sport=_ntohs(old_p),
            new_src=addr(fam, new_s),
            new_sport=_ntohs(new_p),
        )

    def _default(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        names = x.DEFAULT_NAMES
        return ev.DefaultPolicy(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            in_=_named(names, b[o]), fwd=_named(names, b[o + 1]), out=_named(names, b[o + 2]),
        )  # fmt: skip

    def _sadinfo(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        count = hinfo = None
        for atype, ao, n in iter_attrs(b, o + 4, e):
            if atype == x.XFRMA_SAD_CNT:
                count = _a_u32(b, ao, n)
            elif atype == x.XFRMA_SAD_HINFO:
                _need(8, n, "XFRMA_SAD_HINFO")
                hc, hm = _HINFO.unpack_from(b, ao)
                hinfo = ev.HashInfo(buckets=hc, max_buckets=hm)
        return ev.SadInfo(
            time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            count=count, hash=hinfo,
        )  # fmt: skip

    def _spdinfo(self, t: str, m: float, pid: int, seq: int, b: bytes, o: int, e: int) -> ev.Event:
        kw: dict[str, Any] = {}
        for atype, ao, n in iter_attrs(b, o + 4, e):
            if atype == x.XFRMA_SPD_INFO:
                _need(24, n, "XFRMA_SPD_INFO")
                i, ou, f, si, so, sf = _SPDINFO.unpack_from(b, ao)
                kw["counts"] = ev.SpdCounts(
                    in_=i, out=ou, fwd=f, in_socket=si, out_socket=so, fwd_socket=sf
                )
            elif atype == x.XFRMA_SPD_HINFO:
                _need(8, n, "XFRMA_SPD_HINFO")
                hc, hm = _HINFO.unpack_from(b, ao)
                kw["hash"] = ev.HashInfo(buckets=hc, max_buckets=hm)
            elif atype in (x.XFRMA_SPD_IPV4_HTHRESH, x.XFRMA_SPD_IPV6_HTHRESH):
                _need(2, n, "XFRMA_SPD_HTHRESH")
                lb, rb = _HTHRESH.unpack_from(b, ao)
                key = "ipv4_thresh" if atype == x.XFRMA_SPD_IPV4_HTHRESH else "ipv6_thresh"
                kw[key] = ev.HashThresh(lbits=lb, rbits=rb)
        return ev.SpdInfo(time=t, mono=m, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq, **kw)

    def _policy_shape(
        self, key: _ShapeKey, seq: int, pid: int, data: bytes, mono: float, wall: str
    ) -> ev.Event:
        """A NEWPOLICY or UPDPOLICY datagram of a shape not seen before, decoded; its policy is
        remembered for its shape (``key``) if it decoded.  See :meth:`decode`."""
        mtype = key[0]
        event = self.decode_message(mtype, seq, pid, data, 16, len(data), mono, wall)
        if isinstance(event, ev.PolicyEvent):
            fam, pd, ps = _SEL_FAM_PLEN.unpack_from(data, 56)
            if len(_pol_shape_cache) > _CACHE_MAX:
                _pol_shape_cache.clear()
            _pol_shape_cache[key] = (type(event), event.policy, fam == _AF_INET, fam, f"/{ps}", f"/{pd}")
        return event

    # --- entry points ------------------------------------------------------------

    def decode_message(
        self,
        msg_type: int,
        seq: int,
        pid: int,
        buf: bytes,
        off: int,
        end: int,
        mono: float,
        wall: str,
    ) -> ev.Event:
        """Decode one message whose body is buf[off:end].  Never raises."""
        handler = self._handlers.get(msg_type)
        if handler is not None and end - off >= _MIN_SIZE.get(msg_type, 0):
            try:
                return handler(wall, mono, pid, seq, buf, off, end)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, MalformedError) else f"{type(exc).__name__} while decoding"
        elif handler is None:
            reason = f"unknown message type {msg_type}"
        else:
            name = x.MSG_NAMES.get(msg_type, str(msg_type))
            reason = f"{name} body is {end - off} bytes, shorter than its minimum {_MIN_SIZE[msg_type]}"
        return ev.Malformed(
            time=wall, mono=mono, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
            reason=reason, msg_type=msg_type, length=end - off + 16,
        )  # fmt: skip

    def decode(self, data: bytes, mono: float, wall: float | None = None) -> list[ev.Event]:
        """Decode every message of one datagram.  Never raises.

        Netlink control messages (NOOP, DONE, ERROR) are skipped here; the
        request path in :mod:`xfrmwatch.netlink.socket` handles them.
        """
        wall_s = utc_precise(time.time() if wall is None else wall)
        if len(data) >= 16:
            mlen, mtype, _, seq, pid = NLMSG_HDR.unpack_from(data, 0)
            if mlen == len(data):  # one message: every multicast notification
                if mtype < 16:
                    return []
                if mtype in _SHAPED and _POL_MIN <= mlen <= _POL_MAX:
                    # A policy of a shape seen before (a burst of policies differs in the
                    # selector's addresses and the index only): that shape's policy with this
                    # message's addresses and index.  The shape is all the rest of the message
                    # but the header: the rest of the selector, lifetimes, priority,
                    # direction..., the attribute bytes.  (Policy messages carry no key material.)
                    key = (mtype, data[48:172], data[176:])
                    shape = _pol_shape_cache.get(key)
                    if shape is None:
                        return [self._policy_shape(key, seq, pid, data, mono, wall_s)]
                    cls, tpl, v4, fam, ps, pd = shape
                    if v4:
                        src, dst = _inet_ntop(_AF_INET, data[32:36]) + ps, _inet_ntop(_AF_INET, data[16:20]) + pd
                    else:
                        src, dst = sel_addrs(fam, data[32:48], data[16:32])
                        src += ps
                        dst += pd
                    return [
                        cls(
                            time=wall_s, mono=mono, netns=self.netns, nlmsg_pid=pid, nlmsg_seq=seq,
                            policy=_replace(
                                tpl, index=_U32.unpack_from(data, 172)[0], sel=_replace(tpl.sel, src=src, dst=dst),
                                flags=list(tpl.flags), tmpl=list(tpl.tmpl),
                            ),
                        )
                    ]  # fmt: skip
                return [self.decode_message(mtype, seq, pid, data, 16, mlen, mono, wall_s)]
        out: list[ev.Event] = []
        for item in iter_messages(data):
            if isinstance(item, str):
                out.append(
                    ev.Malformed(
                        time=wall_s, mono=mono, netns=self.netns, nlmsg_pid=0, nlmsg_seq=0,
                        reason=item, msg_type=0, length=len(data),
                    )
                )  # fmt: skip
                break
            mtype, _, seq, pid, off, end = item
            if mtype < 16:
                continue
            out.append(self.decode_message(mtype, seq, pid, data, off, end, mono, wall_s))
        return out
