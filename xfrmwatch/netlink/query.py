"""Read-only queries of the kernel's SAD/SPD: dumps, single gets, counters.

Every function sends GET requests only (see
:data:`xfrmwatch.netlink.socket.READ_ONLY_REQUESTS`) and returns decoded,
key-free records.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
import trio

from .. import events as ev
from ..errors import KernelError, NotFoundError, UsageError
from . import messages as xm
from . import xfrm as x
from .decode import FAMILY_NUMBERS, Decoder
from .socket import XfrmSocket

log = structlog.get_logger("xfrmwatch.netlink.query")


def _decode_all(decoder: Decoder, datagrams: list[bytes]) -> list[ev.Event]:
    out: list[ev.Event] = []
    mono = trio.current_time()
    wall = time.time()
    for data in datagrams:
        out.extend(decoder.decode(data, mono, wall))
    return out


def _raise_malformed(events: list[ev.Event], what: str) -> None:
    for e in events:
        if isinstance(e, ev.Malformed):
            raise KernelError(f"{what}: malformed reply from the kernel: {e.reason}")


def addr_bytes(text: str) -> tuple[int, bytes]:
    """Parse an address for a request: (family, 16-byte xfrm_address_t)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"not an IP address: {text!r}") from None
    if ip.version == 4:
        return socket.AF_INET, ip.packed + bytes(12)
    return socket.AF_INET6, ip.packed


def _skip_malformed(events: list[ev.Event], what: str) -> None:
    """One undecodable entry must not hide the others: say so, keep the rest."""
    for e in events:
        if isinstance(e, ev.Malformed):
            log.warning(f"{what}: skipped a malformed entry", reason=e.reason, msg_type=e.msg_type, length=e.length)


def sas_in(decoder: Decoder, data: bytes, mono: float, wall: float | None = None) -> list[ev.SA]:
    """The SAs of one dump reply datagram (a malformed entry is said and skipped)."""
    events = decoder.decode(data, mono, wall)
    _skip_malformed(events, "state dump")
    return [e.sa for e in events if isinstance(e, ev.SaEvent)]


def policies_in(decoder: Decoder, data: bytes, mono: float, wall: float | None = None) -> list[ev.Policy]:
    """The policies of one dump reply datagram (a malformed entry is said and skipped)."""
    events = decoder.decode(data, mono, wall)
    _skip_malformed(events, "policy dump")
    return [e.policy for e in events if isinstance(e, ev.PolicyEvent)]


async def stream_sas(sock: XfrmSocket, decoder: Decoder) -> AsyncIterator[list[ev.SA]]:
    """The SAD, one reply datagram's SAs at a time (bounded memory for any size)."""
    msg = xm.usersa_id_msg()
    async for data in sock.replies(msg, x.XFRM_MSG_GETSA, dump=True, what="state dump (GETSA)"):
        yield sas_in(decoder, data, trio.current_time())


async def stream_policies(sock: XfrmSocket, decoder: Decoder) -> AsyncIterator[list[ev.Policy]]:
    """The SPD, one reply datagram's policies at a time (bounded memory for any size)."""
    msg = xm.userpolicy_id_msg()
    async for data in sock.replies(msg, x.XFRM_MSG_GETPOLICY, dump=True, what="policy dump (GETPOLICY)"):
        yield policies_in(decoder, data, trio.current_time())


async def dump_sas(sock: XfrmSocket, decoder: Decoder) -> list[ev.SA]:
    out: list[ev.SA] = []
    async for part in stream_sas(sock, decoder):
        out += part
    return out


async def dump_policies(sock: XfrmSocket, decoder: Decoder) -> list[ev.Policy]:
    out: list[ev.Policy] = []
    async for part in stream_policies(sock, decoder):
        out += part
    return out


async def get_sa(
    sock: XfrmSocket,
    decoder: Decoder,
    dst: str,
    spi: int,
    proto: str,
    mark: tuple[int, int] | None = None,
) -> ev.SA:
    msg = xm.usersa_id_msg()
    fam, raw = addr_bytes(dst)
    msg["daddr"] = raw
    msg["be_spi"] = socket.htonl(spi)
    msg["family"] = fam
    msg["proto"] = x.XFRM_PROTO_NUMBERS[proto]
    if mark is not None:
        msg["attrs"] = [("XFRMA_MARK", {"v": mark[0], "m": mark[1]})]
    what = f"state get dst {dst} spi 0x{spi:08x} proto {proto}"
    events = _decode_all(decoder, await sock.request(msg, x.XFRM_MSG_GETSA, what=what))
    _raise_malformed(events, what)
    for e in events:
        if isinstance(e, ev.SaEvent):
            return e.sa
    raise NotFoundError(f"{what}: no such SA")


async def get_ae(sock: XfrmSocket, decoder: Decoder, sa: ev.SA) -> ev.AeInfo:
    """GETAE: the replay and lifetime counters of one SA."""
    msg = xm.aevent_id_msg()
    fam, raw = addr_bytes(sa.dst)
    msg["sa_daddr"] = raw
    msg["sa_be_spi"] = socket.htonl(int(sa.spi, 16))
    msg["sa_family"] = FAMILY_NUMBERS.get(sa.family, fam)
    msg["sa_proto"] = x.XFRM_PROTO_NUMBERS.get(sa.proto, 50)
    msg["saddr"] = addr_bytes(sa.src)[1]
    msg["reqid"] = sa.reqid
    if sa.mark is not None:
        msg["attrs"] = [("XFRMA_MARK", {"v": sa.mark.value, "m": sa.mark.mask})]
    what = f"GETAE for SA spi {sa.spi}"
    events = _decode_all(decoder, await sock.request(msg, x.XFRM_MSG_GETAE, what=what))
    _raise_malformed(events, what)
    for e in events:
        if isinstance(e, ev.NewAE):
            return e.ae
    raise NotFoundError(f"{what}: no reply")


async def get_policy(
    sock: XfrmSocket,
    decoder: Decoder,
    *,
    dir: str,
    index: int | None = None,
    src: str | None = None,
    dst: str | None = None,
    mark: tuple[int, int] | None = None,
    ptype: str = "main",
) -> ev.Policy:
    """GETPOLICY by index, or by selector (src/dst prefixes) and direction."""
    msg = xm.userpolicy_id_msg()
    msg["dir"] = x.DIR_NUMBERS[dir]
    if index is not None:
        msg["index"] = index
        what = f"policy get index {index} dir {dir}"
    else:
        if src is None or dst is None:
            raise UsageError("policy get needs --index, or both --src and --dst (and --dir)")
        s = ipaddress.ip_network(src, strict=False)
        d = ipaddress.ip_network(dst, strict=False)
        if s.version != d.version:
            raise UsageError("policy get: --src and --dst must be of the same address family")
        fam = socket.AF_INET if s.version == 4 else socket.AF_INET6
        pad = bytes(12) if s.version == 4 else b""
        msg["sel_saddr"] = s.network_address.packed + pad
        msg["sel_daddr"] = d.network_address.packed + pad
        msg["sel_prefixlen_s"] = s.prefixlen
        msg["sel_prefixlen_d"] = d.prefixlen
        msg["sel_family"] = fam
        what = f"policy get src {src} dst {dst} dir {dir}"
    attrs: list[tuple[str, object]] = [("XFRMA_POLICY_TYPE", {"type": 1 if ptype == "sub" else 0})]
    if mark is not None:
        attrs.append(("XFRMA_MARK", {"v": mark[0], "m": mark[1]}))
    msg["attrs"] = attrs
    events = _decode_all(decoder, await sock.request(msg, x.XFRM_MSG_GETPOLICY, what=what))
    _raise_malformed(events, what)
    for e in events:
        if isinstance(e, ev.PolicyEvent):
            return e.policy
    raise NotFoundError(f"{what}: no such policy")


async def _info(sock: XfrmSocket, decoder: Decoder, msg_type: int, cls: type[ev.Event]) -> Any:
    msg = xm.info_flags_msg()
    msg["flags"] = 0xFFFFFFFF
    for e in _decode_all(decoder, await sock.request(msg, msg_type)):
        if isinstance(e, cls):
            return e
    raise KernelError(f"{x.MSG_NAMES[msg_type]}: no reply")


async def sad_info(sock: XfrmSocket, decoder: Decoder) -> ev.SadInfo:
    """GETSAINFO: SA count and hash sizes."""
    info: ev.SadInfo = await _info(sock, decoder, x.XFRM_MSG_GETSADINFO, ev.SadInfo)
    return info


async def spd_info(sock: XfrmSocket, decoder: Decoder) -> ev.SpdInfo:
    """GETSPDINFO: policy counts and hash information."""
    info: ev.SpdInfo = await _info(sock, decoder, x.XFRM_MSG_GETSPDINFO, ev.SpdInfo)
    return info


async def default_policy(sock: XfrmSocket, decoder: Decoder) -> ev.DefaultPolicy | None:
    """GETDEFAULT (kernels >= 5.16); None where the kernel does not know it."""
    msg = xm.userpolicy_default_msg()
    try:
        events = _decode_all(decoder, await sock.request(msg, x.XFRM_MSG_GETDEFAULT))
    except KernelError:
        return None
    for e in events:
        if isinstance(e, ev.DefaultPolicy):
            return e
    return None


__all__ = [
    "default_policy",
    "dump_policies",
    "dump_sas",
    "get_ae",
    "get_policy",
    "get_sa",
    "policies_in",
    "sad_info",
    "sas_in",
    "spd_info",
    "stream_policies",
    "stream_sas",
]
