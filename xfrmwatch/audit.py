"""`xfrmwatch audit`: a one-shot compliance check of the current SAD/SPD.

The snapshot becomes ``sa_state``, ``policy_state`` and ``netns_state``
records (the same vocabulary as events, plus what the audit computes), and the
same Sigma rules as the live monitor are applied to them.
"""

from __future__ import annotations

import time

import trio

from . import events as ev
from .netlink import query
from .netlink import xfrm as x
from .netlink.decode import Decoder
from .netlink.netns import entered
from .netlink.proc import ProcFile, key_managers, xfrm_listeners, xfrm_stat
from .netlink.socket import XfrmSocket

KM_GROUPS = {x.XFRMNLGRP_ACQUIRE: "acquire", x.XFRMNLGRP_EXPIRE: "expire"}


def _tmpl_serves(t: ev.Template, sa: ev.SA) -> bool:
    return (
        t.proto == sa.proto
        and (t.reqid == 0 or t.reqid == sa.reqid)
        and (t.mode == sa.mode)
        and (t.mode != "tunnel" or (t.dst == sa.dst and (t.src in ("0.0.0.0", "::") or t.src == sa.src)))
    )


def _prefix(cidr: str) -> int:
    try:
        return int(cidr.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 0


def build_states(
    netns: str,
    sas: list[ev.SA],
    policies: list[ev.Policy],
    default: ev.DefaultPolicy | None,
    listeners_text: str,
    stat_text: str,
    local_addrs: frozenset[str],
    own_portid: int,
) -> list[ev.Event]:
    now = trio.current_time()
    common = ev.own_fields(netns, now, time.time())
    km_groups = sorted(
        {
            name
            for k in key_managers(xfrm_listeners(listeners_text), own_portid=own_portid)
            for g, name in KM_GROUPS.items()
            if k.listener.listens_on(g)
        }
    )
    key_manager = bool(km_groups)
    real = [s for s in sas if s.spi != "0x00000000" and s.proto in ("esp", "ah", "comp")]
    out: list[ev.Event] = []
    for sa in real:
        direction = sa.dir or ("in" if sa.dst in local_addrs else "out" if sa.src in local_addrs else "unknown")
        matched = any(_tmpl_serves(t, sa) for p in policies for t in p.tmpl)
        out.append(ev.SaState(**common, sa=sa, direction=direction, policy_matched=matched))
    for p in policies:
        missing = any(not t.optional and not any(_tmpl_serves(t, sa) for sa in real) for t in p.tmpl)
        out.append(
            ev.PolicyState(
                **common,
                policy=p,
                protects=bool(p.tmpl),
                prefix_min=min(_prefix(p.sel.src), _prefix(p.sel.dst)),
                tmpl_without_sa=missing,
                key_manager=key_manager,
            )
        )
    stats = xfrm_stat(stat_text)
    out.append(
        ev.NetnsState(
            **common,
            default_in=default.in_ if default else None,
            default_fwd=default.fwd if default else None,
            default_out=default.out if default else None,
            key_manager=key_manager,
            key_manager_groups=km_groups,
            xfrm_stat=stats,
            xfrm_stat_errors=sum(stats.values()),
            xfrm_stat_nonzero=sorted(k for k, v in stats.items() if v),
        )
    )
    return out


async def read_state_records(netns: str | None) -> list[ev.Event]:
    """Read the namespace once and build its state records."""
    from .pipeline import local_addresses

    with entered(netns):
        lf, sf = ProcFile("/proc/net/netlink"), ProcFile("/proc/net/xfrm_stat")
        listeners_text, stat_text = lf.read(), sf.read()
        lf.close()
        sf.close()
    with XfrmSocket.open(netns) as sock:
        dec = Decoder(netns or "")
        sas = await query.dump_sas(sock, dec)
        pols = await query.dump_policies(sock, dec)
        default = await query.default_policy(sock, dec)
        portid = sock.portid
    try:
        addrs = await local_addresses(netns)
    except Exception:
        addrs = frozenset()
    return build_states(netns or "", sas, pols, default, listeners_text, stat_text, addrs, portid)
