"""The event model: immutable, typed, key-free records.

Every record the decoder produces is one of the :data:`Event` classes below.
Field names here are the vocabulary of the whole tool: the JSON output, the
filters, the rules and the docs use exactly these names (nested fields as
dotted paths, e.g. ``sa.spi`` or ``policy.sel.src``).

Conventions:

* addresses are strings; selectors are CIDR strings (``10.0.0.0/24``);
* SPIs are lower-case hex strings (``0x0000c0de``), as ``ip xfrm`` prints them;
* lifetime limits are ``null`` when unlimited (the kernel's XFRM_INF, and 0
  for time limits);
* times are ISO 8601 in UTC; ``mono`` is trio's clock at receipt (seconds);
* there is no field that can carry key bytes: algorithms keep name, key
  length and ICV/truncation length only.

The JSON Schema in ``xfrmwatch/schema/events.schema.json`` is generated from
these classes (``xfrmwatch schema``) and checked against them in the tests.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
from msgspec import Struct, field

from .timestamps import utc_precise

SCHEMA_VERSION = 1

_record = {"frozen": True, "kw_only": True, "omit_defaults": True, "forbid_unknown_fields": True, "gc": False}


class Selector(Struct, **_record):
    """Traffic selector of an SA or a policy."""

    family: str
    src: str
    dst: str
    proto: str
    sport: int
    sport_mask: int
    dport: int
    dport_mask: int
    ifindex: int
    user: int
    dev: str | None = None


class Lifetime(Struct, **_record):
    """Configured limits; ``null`` means unlimited."""

    soft_bytes: int | None
    hard_bytes: int | None
    soft_packets: int | None
    hard_packets: int | None
    soft_add_seconds: int | None
    hard_add_seconds: int | None
    soft_use_seconds: int | None
    hard_use_seconds: int | None


class Current(Struct, **_record):
    """Counters and times as the kernel last reported them."""

    bytes: int
    packets: int
    add_time: str | None
    use_time: str | None


class Stats(Struct, **_record):
    replay_window: int
    replay: int
    integrity_failed: int


class Alg(Struct, **_record):
    """An encryption (``enc``) or compression (``comp``) algorithm, no key."""

    name: str
    key_bits: int


class AuthAlg(Struct, **_record):
    """An authentication algorithm, no key.  ``trunc_bits`` from AUTH_TRUNC."""

    name: str
    key_bits: int
    trunc_bits: int | None = None


class AeadAlg(Struct, **_record):
    """A combined-mode algorithm, no key."""

    name: str
    key_bits: int
    icv_bits: int


class Encap(Struct, **_record):
    type: str
    sport: int
    dport: int
    oa: str


class Mark(Struct, **_record):
    value: int
    mask: int


class SecCtx(Struct, **_record):
    doi: int
    alg: int
    ctx: str


class Replay(Struct, **_record):
    oseq: int
    seq: int
    bitmap: int


class ReplayEsn(Struct, **_record):
    oseq: int
    seq: int
    oseq_hi: int
    seq_hi: int
    replay_window: int
    bmp_len: int


class Offload(Struct, **_record):
    ifindex: int
    flags: int
    dev: str | None = None


class UnknownAttr(Struct, **_record):
    """An attribute this version does not know: number and length, never bytes."""

    type: int
    len: int


class Template(Struct, **_record):
    """One template (``tmpl``) of a policy: the SA it asks for."""

    family: str
    src: str
    dst: str
    proto: str
    spi: str
    reqid: int
    mode: str
    share: str
    optional: bool
    aalgos: int
    ealgos: int
    calgos: int


class SA(Struct, **_record):
    """A security association, key-free."""

    family: str
    src: str
    dst: str
    proto: str
    spi: str
    reqid: int
    mode: str
    replay_window: int
    flags: list[str]
    seq: int
    sel: Selector
    lifetime: Lifetime
    current: Current
    stats: Stats
    aead: AeadAlg | None = None
    enc: Alg | None = None
    auth: AuthAlg | None = None
    comp: Alg | None = None
    encap: Encap | None = None
    mark: Mark | None = None
    set_mark: Mark | None = None
    if_id: int | None = None
    sec_ctx: SecCtx | None = None
    replay: Replay | None = None
    replay_esn: ReplayEsn | None = None
    replay_thresh: int | None = None
    etimer_thresh: int | None = None
    mtimer_thresh: int | None = None
    lastused: str | None = None
    extra_flags: list[str] | None = None
    dir: str | None = None
    offload: Offload | None = None
    coaddr: str | None = None
    nat_keepalive_interval: int | None = None
    pcpu: int | None = None
    tfcpad: int | None = None
    unknown_attrs: list[UnknownAttr] | None = None


class SaId(Struct, **_record):
    """How the kernel names one SA: (dst, spi, proto) plus family."""

    family: str
    dst: str
    spi: str
    proto: str


class Policy(Struct, **_record):
    """A security policy."""

    dir: str
    action: str
    index: int
    priority: int
    ptype: str
    flags: list[str]
    share: str
    sel: Selector
    lifetime: Lifetime
    current: Current
    tmpl: list[Template]
    mark: Mark | None = None
    if_id: int | None = None
    sec_ctx: SecCtx | None = None
    unknown_attrs: list[UnknownAttr] | None = None


class PolicyId(Struct, **_record):
    """How a DELPOLICY names a policy: by index, or by selector and dir."""

    dir: str
    index: int
    sel: Selector


class MigrateEntry(Struct, **_record):
    proto: str
    mode: str
    reqid: int
    old_family: str
    old_src: str
    old_dst: str
    new_family: str
    new_src: str
    new_dst: str


class KmAddress(Struct, **_record):
    family: str
    local: str
    remote: str


class Acquire(Struct, **_record):
    """What an ACQUIRE asks the key manager for."""

    family: str
    src: str
    dst: str
    proto: str
    spi: str
    seq: int
    aalgos: int
    ealgos: int
    calgos: int


class AeInfo(Struct, **_record):
    """Replay and lifetime counters of one SA (NEWAE, GETAE reply)."""

    family: str
    src: str
    dst: str
    spi: str
    proto: str
    reqid: int
    flags: list[str]
    replay: Replay | None = None
    replay_esn: ReplayEsn | None = None
    current: Current | None = None
    replay_thresh: int | None = None
    etimer_thresh: int | None = None
    mark: Mark | None = None
    if_id: int | None = None


class SpdCounts(Struct, **_record):
    in_: int = field(name="in")
    out: int
    fwd: int
    in_socket: int
    out_socket: int
    fwd_socket: int


class HashInfo(Struct, **_record):
    buckets: int
    max_buckets: int


class HashThresh(Struct, **_record):
    lbits: int
    rbits: int


# --- events ---------------------------------------------------------------------


class Event(Struct, tag_field="type", **{**_record, "omit_defaults": False}):
    """Fields every event has.  ``type`` names the event (see the subclasses).

    ``nlmsg_pid``/``nlmsg_seq`` are the netlink header's port id and sequence:
    the requester's port id on SA and policy changes (0 for the kernel's own
    events and for ``ip``); on ``newae`` they are meaningless, and on events
    xfrmwatch derives itself (rekey tracking, alerts) they are 0.
    ``kind`` is ``event`` for what happened, ``alert`` for a rule's finding,
    ``state`` for a snapshot record of ``xfrmwatch audit``.
    ``process`` names the requester (``/proc/<nlmsg_pid>/comm``) on SA and policy
    changes while that process still runs; null otherwise.
    """

    time: str
    mono: float
    netns: str
    kind: str = "event"
    nlmsg_pid: int
    nlmsg_seq: int
    process: str | None = None


def own_fields(netns: str, mono: float, wall: float) -> dict[str, Any]:
    """The :class:`Event` fields of an event xfrmwatch makes itself (derived, overrun,
    resync, audit state, alert): no netlink header (``nlmsg_pid``/``nlmsg_seq`` 0);
    ``mono`` on trio's clock, ``wall`` in seconds since the epoch."""
    return {"time": utc_precise(wall), "mono": mono, "netns": netns, "nlmsg_pid": 0, "nlmsg_seq": 0}


class SaEvent(Event):
    sa: SA


class NewSA(SaEvent, tag="newsa"):
    """An SA was added (XFRM_MSG_NEWSA), or one entry of a state dump."""


class UpdSA(SaEvent, tag="updsa"):
    """An SA was updated (XFRM_MSG_UPDSA): IKE daemons fill reserved inbound SPIs so."""


class DelSA(Event, tag="delsa"):
    """An SA was deleted (XFRM_MSG_DELSA)."""

    id: SaId
    sa: SA | None = None


class Expire(Event, tag="expire"):
    """An SA reached a soft (``hard`` false) or hard limit; a hard one deletes it."""

    hard: bool
    sa: SA


class PolicyEvent(Event):
    policy: Policy


class NewPolicy(PolicyEvent, tag="newpolicy"):
    """A policy was added, or one entry of a policy dump."""


class UpdPolicy(PolicyEvent, tag="updpolicy"):
    """A policy was updated."""


class DelPolicy(Event, tag="delpolicy"):
    """A policy was deleted."""

    policy_id: PolicyId
    policy: Policy | None = None


class PolExpire(Event, tag="polexpire"):
    """A policy reached a soft or hard limit; a hard one deletes it."""

    hard: bool
    policy: Policy


class FlushSA(Event, tag="flushsa"):
    """The SAD was flushed; ``proto`` says which protocol (``any`` for all)."""

    proto: str


class FlushPolicy(Event, tag="flushpolicy"):
    """The SPD was flushed (policies of type ``ptype``)."""

    ptype: str


class AcquireEvent(Event, tag="acquire"):
    """The kernel asks the key manager for an SA: traffic matched a policy with no SA."""

    acquire: Acquire
    sel: Selector
    policy: Policy


class NewAE(Event, tag="newae"):
    """Replay/lifetime counters of an SA (async event, or GETAE reply)."""

    ae: AeInfo


class Report(Event, tag="report"):
    proto: str
    sel: Selector
    coaddr: str | None = None


class Migrate(Event, tag="migrate"):
    """A key manager asked to migrate SAs and a policy to new endpoints."""

    policy_id: PolicyId
    migrate: list[MigrateEntry]
    kmaddress: KmAddress | None = None
    ptype: str | None = None
    encap: Encap | None = None


class Mapping(Event, tag="mapping"):
    """A NAT mapping of an ESP-in-UDP SA changed."""

    id: SaId
    reqid: int
    old_src: str
    old_sport: int
    new_src: str
    new_sport: int


class DefaultPolicy(Event, tag="default_policy"):
    """The default policy per direction: ``accept``, ``block`` or ``unspec``.
    ``switched_to_accept`` lists the directions this change turned to accept."""

    in_: str = field(name="in")
    fwd: str
    out: str
    switched_to_accept: list[str] = []


class SadInfo(Event, tag="sadinfo"):
    """GETSAINFO reply: SA count and hash table sizes."""

    count: int | None = None
    hash: HashInfo | None = None


class SpdInfo(Event, tag="spdinfo"):
    """GETSPDINFO reply: policy counts per direction and hash information."""

    counts: SpdCounts | None = None
    hash: HashInfo | None = None
    ipv4_thresh: HashThresh | None = None
    ipv6_thresh: HashThresh | None = None


class Overrun(Event, tag="overrun"):
    """The receive buffer overflowed (ENOBUFS): events were lost, how many is unknown."""

    detail: str


class Malformed(Event, tag="malformed"):
    """A message that could not be decoded; ``msg_type`` and ``length`` are from its header."""

    reason: str
    msg_type: int
    length: int


class Resync(Event, tag="resync"):
    """The mirror was rebuilt from a fresh dump after an overrun; what had drifted."""

    missing: list[str]
    stale: list[str]
    sas: int
    policies: int


# --- events derived by the tunnel model (xfrmwatch/tunnels.py) -------------------------

#: What a tunnel (one IKE CHILD_SA, or one manually keyed SA pair) is doing now.
TunnelState = Literal["establishing", "up", "rekeying", "overdue", "down"]
#: Why a tunnel ended: the kernel's hard limit, a DELSA, a flush, or its policies
#: removed, switched to a hold template (no SA: packets raise ACQUIREs) or to block;
#: ``unknown`` when events were lost (overrun) and the resync found it gone.
DownReason = Literal[
    "hard_expire", "deleted", "flushed", "policy_removed", "policy_hold", "policy_block", "unknown"
]
#: What a rekey deadline was computed from: the kernel's time limits, the byte or
#: packet limits projected at the observed rate, or the tunnel's own rekey history.
DeadlineBasis = Literal["time", "bytes", "packets", "history"]


class TunnelEvent(Event, kw_only=True):
    """Fields every tunnel event has.

    A tunnel is one IKE CHILD_SA (or a manually keyed SA pair): the SAs of one
    ``reqid`` and ``proto`` between two outer addresses, through all its
    generations (rekeys).  ``src`` is the local outer address and ``dst`` the
    remote one when the namespace's addresses tell (otherwise the lower and the
    higher address); ``tunnel_id`` names the tunnel within its namespace.
    ``spi_in``/``spi_out`` are the current generation's SPIs (null when absent).
    """

    tunnel_id: str
    reqid: int
    proto: str
    src: str
    dst: str
    spi_in: str | None = None
    spi_out: str | None = None


class TunnelUp(TunnelEvent, tag="tunnel_up", kw_only=True):
    """A tunnel's first generation of SAs was installed (both directions, or one
    direction that stayed alone for the settle time)."""

    mode: str


class RekeyStarted(TunnelEvent, tag="rekey_started", kw_only=True):
    """The current generation reached its soft limit (``basis``) and has no
    replacement yet: this side starts the rekey.  ``spi`` is the SA that expired."""

    spi: str
    basis: DeadlineBasis
    seconds_to_hard: float | None = None


class RekeyCompleted(TunnelEvent, tag="rekey_completed", kw_only=True):
    """A new generation (same reqid and endpoints, new SPIs) replaced the old one.

    One per rekey and side: SAs of a rekey collision (both peers rekeying at
    once) are folded into it (``collision``).  ``initiator`` is true when this
    side saw the soft EXPIRE first, false when the old SAs were visibly short of
    their soft limit, null when the kernel cannot tell (no lifetimes, as with
    Libreswan).  ``duration_seconds`` runs from the soft EXPIRE (initiator) or
    from the first new SA.  ``rekeys`` counts this tunnel's rekeys so far."""

    old_spis: list[str]
    new_spis: list[str]
    initiator: bool | None
    duration_seconds: float
    collision: bool = False
    rekeys: int = 1


class RekeyOverdue(TunnelEvent, tag="rekey_overdue", kw_only=True):
    """The current generation should have been replaced by now and was not.

    ``basis`` says how that is known: ``time`` (the configured share of the time
    from the soft to the hard limit has passed), ``bytes``/``packets`` (the same,
    projected from the observed rate), ``history`` (no limit in the kernel: the
    SA outlived its predecessors' rekey interval, ``expected_seconds``, by the
    configured factor).  ``seconds_to_hard`` is null when no hard limit is known."""

    spi: str
    basis: DeadlineBasis
    seconds_since_soft: float | None = None
    seconds_to_hard: float | None = None
    expected_seconds: float | None = None


class TunnelDown(TunnelEvent, tag="tunnel_down", kw_only=True):
    """The tunnel's last generation went away with no replacement.

    ``reason`` says what removed it.  ``teardown`` is true when the whole CHILD_SA
    was removed on purpose-looking terms (every SA and its policies deleted, or
    the out policy left as a hold template) while no rekey was pending;
    ``rekey_failed`` when it ended while a rekey was due (soft-expired, overdue,
    past its learned interval, or with inbound traffic stalled).  ``partial`` when
    SAs of the other direction remain (one direction deleted on its own).
    ``spis`` lists the SAs that went away; ``acquires`` counts the ACQUIREs for
    its selector that followed (attached here, not reported one by one);
    ``replaced_by`` the tunnel that took over its out policy (a manual key rotation to
    a new reqid), which makes its end a teardown."""

    reason: DownReason
    teardown: bool
    rekey_failed: bool
    partial: bool = False
    spis: list[str] = []
    age_seconds: float | None = None
    rekeys: int = 0
    acquires: int = 0
    replaced_by: str | None = None


class TrafficStalled(TunnelEvent, tag="traffic_stalled", kw_only=True):
    """Inbound traffic stopped while outbound keeps sending (a dead peer or path),
    for at least ``silent_seconds``; counters read every liveness interval."""

    silent_seconds: float
    out_bytes_since: int


class TrafficResumed(TunnelEvent, tag="traffic_resumed", kw_only=True):
    """Inbound traffic came back after a ``traffic_stalled``."""

    silent_seconds: float


#: every event the tunnel model derives
TUNNEL_EVENTS: tuple[type[TunnelEvent], ...] = (
    TunnelUp, RekeyStarted, RekeyCompleted, RekeyOverdue, TunnelDown, TrafficStalled, TrafficResumed,
)  # fmt: skip


# --- snapshot records for `xfrmwatch audit` (kind "state") ---------------------------


class SaState(Event, tag="sa_state", kw_only=True):
    """One SA of a snapshot, with what the audit computed about it."""

    kind: str = "state"
    sa: SA
    direction: str
    policy_matched: bool


class PolicyState(Event, tag="policy_state", kw_only=True):
    """One policy of a snapshot.  ``protects``: it has templates (traffic gets IPsec);
    ``prefix_min``: the shorter of the selector's two prefix lengths;
    ``tmpl_without_sa``: a template whose SA is absent while a key manager is expected."""

    kind: str = "state"
    policy: Policy
    protects: bool
    prefix_min: int
    tmpl_without_sa: bool
    key_manager: bool


class NetnsState(Event, tag="netns_state", kw_only=True):
    """The namespace as a whole: default policy, key manager presence, error counters."""

    kind: str = "state"
    default_in: str | None
    default_fwd: str | None
    default_out: str | None
    key_manager: bool
    key_manager_groups: list[str]
    xfrm_stat: dict[str, int]
    xfrm_stat_errors: int
    xfrm_stat_nonzero: list[str]


class RuleRef(Struct, **_record):
    """The rule behind an alert."""

    id: str
    title: str
    level: str
    tags: list[str] = []


TriggerEvent = Union[
    "NewSA", "UpdSA", "DelSA", "Expire", "NewPolicy", "UpdPolicy", "DelPolicy", "PolExpire",
    "FlushSA", "FlushPolicy", "AcquireEvent", "NewAE", "Report", "Migrate", "Mapping",
    "DefaultPolicy", "SadInfo", "SpdInfo", "Overrun", "Malformed", "Resync", "RekeyStarted",
    "RekeyCompleted", "RekeyOverdue", "TunnelUp", "TunnelDown", "TrafficStalled",
    "TrafficResumed", "SaState", "PolicyState", "NetnsState",
]  # fmt: skip


class Alert(Event, tag="alert", kw_only=True):
    """A rule matched.  ``group`` holds the correlation's group-by values;
    ``events`` the triggering events (at most 20); ``suppressed`` how many
    repeated firings for the same rule and group were held back before this one."""

    kind: str = "alert"
    rule: RuleRef
    group: dict[str, str] = {}
    suppressed: int = 0
    events: list[TriggerEvent] = []


AnyEvent = Union[  # noqa: UP007 - a runtime union object for msgspec and typing.get_args
    NewSA,
    UpdSA,
    DelSA,
    Expire,
    NewPolicy,
    UpdPolicy,
    DelPolicy,
    PolExpire,
    FlushSA,
    FlushPolicy,
    AcquireEvent,
    NewAE,
    Report,
    Migrate,
    Mapping,
    DefaultPolicy,
    SadInfo,
    SpdInfo,
    Overrun,
    Malformed,
    Resync,
    RekeyStarted,
    RekeyCompleted,
    RekeyOverdue,
    TunnelUp,
    TunnelDown,
    TrafficStalled,
    TrafficResumed,
    SaState,
    PolicyState,
    NetnsState,
    Alert,
]

EVENT_TYPES: tuple[str, ...] = tuple(
    cls.__struct_config__.tag
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
)


def json_schema() -> dict[str, object]:
    """The JSON Schema of every event, generated from these classes."""
    schema: dict[str, object] = msgspec.json.schema(AnyEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:xfrmwatch:events:{SCHEMA_VERSION}"
    schema["title"] = f"xfrmwatch event (schema version {SCHEMA_VERSION})"
    return schema
