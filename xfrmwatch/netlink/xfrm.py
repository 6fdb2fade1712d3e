"""XFRM netlink definitions: message and attribute numbers, struct layouts.

The layouts are ``fields`` in pyroute2's form (native byte order, explicit
padding); :mod:`xfrmwatch.netlink.messages` makes pyroute2 ``nlmsg``/``nla`` classes
of them (kept apart: a one-shot listing never imports pyroute2), so pyroute2 encodes
the requests and can decode any message independently.  The fast
decoder in :mod:`xfrmwatch.netlink.decode` compiles the very same ``fields`` into
precompiled :class:`struct.Struct` objects.  Sizes are checked against the
kernel's (x86_64) in the unit tests.

Source: ``include/uapi/linux/xfrm.h``.  Never parse XFRM messages with
rtnetlink definitions: the type numbers collide.
"""

from __future__ import annotations

import struct

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33

XFRM_INF = (1 << 64) - 1

# --- message types -----------------------------------------------------------
XFRM_MSG_NEWSA = 16
XFRM_MSG_DELSA = 17
XFRM_MSG_GETSA = 18
XFRM_MSG_NEWPOLICY = 19
XFRM_MSG_DELPOLICY = 20
XFRM_MSG_GETPOLICY = 21
XFRM_MSG_ALLOCSPI = 22
XFRM_MSG_ACQUIRE = 23
XFRM_MSG_EXPIRE = 24
XFRM_MSG_UPDPOLICY = 25
XFRM_MSG_UPDSA = 26
XFRM_MSG_POLEXPIRE = 27
XFRM_MSG_FLUSHSA = 28
XFRM_MSG_FLUSHPOLICY = 29
XFRM_MSG_NEWAE = 30
XFRM_MSG_GETAE = 31
XFRM_MSG_REPORT = 32
XFRM_MSG_MIGRATE = 33
XFRM_MSG_NEWSADINFO = 34
XFRM_MSG_GETSADINFO = 35
XFRM_MSG_NEWSPDINFO = 36
XFRM_MSG_GETSPDINFO = 37
XFRM_MSG_MAPPING = 38
XFRM_MSG_SETDEFAULT = 39
XFRM_MSG_GETDEFAULT = 40

MSG_NAMES: dict[int, str] = {
    v: k[len("XFRM_MSG_") :]
    for k, v in dict(globals()).items()
    if k.startswith("XFRM_MSG_") and isinstance(v, int)
}

# --- multicast groups (setsockopt NETLINK_ADD_MEMBERSHIP takes the number) ----
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2
XFRMNLGRP_SA = 3
XFRMNLGRP_POLICY = 4
XFRMNLGRP_AEVENTS = 5
XFRMNLGRP_REPORT = 6
XFRMNLGRP_MIGRATE = 7
XFRMNLGRP_MAPPING = 8

GROUP_NAMES: dict[int, str] = {
    1: "acquire",
    2: "expire",
    3: "sa",
    4: "policy",
    5: "aevents",
    6: "report",
    7: "migrate",
    8: "mapping",
}

# --- attributes (enum xfrm_attr_type_t) --------------------------------------
XFRMA_NAMES: tuple[str, ...] = (
    "XFRMA_UNSPEC",
    "XFRMA_ALG_AUTH",
    "XFRMA_ALG_CRYPT",
    "XFRMA_ALG_COMP",
    "XFRMA_ENCAP",
    "XFRMA_TMPL",
    "XFRMA_SA",
    "XFRMA_POLICY",
    "XFRMA_SEC_CTX",
    "XFRMA_LTIME_VAL",
    "XFRMA_REPLAY_VAL",
    "XFRMA_REPLAY_THRESH",
    "XFRMA_ETIMER_THRESH",
    "XFRMA_SRCADDR",
    "XFRMA_COADDR",
    "XFRMA_LASTUSED",
    "XFRMA_POLICY_TYPE",
    "XFRMA_MIGRATE",
    "XFRMA_ALG_AEAD",
    "XFRMA_KMADDRESS",
    "XFRMA_ALG_AUTH_TRUNC",
    "XFRMA_MARK",
    "XFRMA_TFCPAD",
    "XFRMA_REPLAY_ESN_VAL",
    "XFRMA_SA_EXTRA_FLAGS",
    "XFRMA_PROTO",
    "XFRMA_ADDRESS_FILTER",
    "XFRMA_PAD",
    "XFRMA_OFFLOAD_DEV",
    "XFRMA_SET_MARK",
    "XFRMA_SET_MARK_MASK",
    "XFRMA_IF_ID",
    "XFRMA_MTIMER_THRESH",
    "XFRMA_SA_DIR",
    "XFRMA_NAT_KEEPALIVE_INTERVAL",
    "XFRMA_SA_PCPU",
    "XFRMA_IPTFS_DROP_TIME",
    "XFRMA_IPTFS_REORDER_WINDOW",
    "XFRMA_IPTFS_DONT_FRAG",
    "XFRMA_IPTFS_INIT_DELAY",
    "XFRMA_IPTFS_MAX_QSIZE",
    "XFRMA_IPTFS_PKT_SIZE",
)
XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_ALG_COMP = 3
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_SA = 6
XFRMA_POLICY = 7
XFRMA_SEC_CTX = 8
XFRMA_LTIME_VAL = 9
XFRMA_REPLAY_VAL = 10
XFRMA_REPLAY_THRESH = 11
XFRMA_ETIMER_THRESH = 12
XFRMA_SRCADDR = 13
XFRMA_COADDR = 14
XFRMA_LASTUSED = 15
XFRMA_POLICY_TYPE = 16
XFRMA_MIGRATE = 17
XFRMA_ALG_AEAD = 18
XFRMA_KMADDRESS = 19
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_MARK = 21
XFRMA_TFCPAD = 22
XFRMA_REPLAY_ESN_VAL = 23
XFRMA_SA_EXTRA_FLAGS = 24
XFRMA_PROTO = 25
XFRMA_ADDRESS_FILTER = 26
XFRMA_PAD = 27
XFRMA_OFFLOAD_DEV = 28
XFRMA_SET_MARK = 29
XFRMA_SET_MARK_MASK = 30
XFRMA_IF_ID = 31
XFRMA_MTIMER_THRESH = 32
XFRMA_SA_DIR = 33
XFRMA_NAT_KEEPALIVE_INTERVAL = 34
XFRMA_SA_PCPU = 35

#: Attributes whose payload holds key bytes.  Their bytes are never copied
#: out of the receive buffer: only name and lengths are read.
KEY_ATTRS = frozenset(
    {XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT, XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC}
)

# enum xfrm_sadattr_type_t / xfrm_spdattr_type_t (GETSAINFO / GETSPDINFO replies)
XFRMA_SAD_CNT = 1
XFRMA_SAD_HINFO = 2
XFRMA_SPD_INFO = 1
XFRMA_SPD_HINFO = 2
XFRMA_SPD_IPV4_HTHRESH = 3
XFRMA_SPD_IPV6_HTHRESH = 4

# --- value names -------------------------------------------------------------
IPSEC_PROTO_ANY = 255
XFRM_PROTO_NAMES: dict[int, str] = {
    4: "ipip",  # the kernel's internal tunnel state of a tunnel-mode IPComp SA
    41: "ipv6",
    50: "esp",
    51: "ah",
    108: "comp",
    43: "route2",
    60: "hao",
    255: "any",
    0: "any",
}
XFRM_PROTO_NUMBERS: dict[str, int] = {
    "esp": 50,
    "ah": 51,
    "comp": 108,
    "ipcomp": 108,
    "route2": 43,
    "hao": 60,
    "any": 255,
}
MODE_NAMES = ("transport", "tunnel", "ro", "in_trigger", "beet", "iptfs")
DIR_NAMES = ("in", "out", "fwd")
DIR_NUMBERS = {"in": 0, "out": 1, "fwd": 2}
SA_DIR_NAMES = {1: "in", 2: "out"}
ACTION_NAMES = ("allow", "block")
SHARE_NAMES = ("any", "session", "user", "unique")
PTYPE_NAMES = {0: "main", 1: "sub", 255: "any"}
DEFAULT_NAMES = ("unspec", "block", "accept")
ENCAP_NAMES = {1: "espinudp-nonike", 2: "espinudp", 7: "espintcp"}
SA_FLAG_NAMES = (
    (1, "noecn"),
    (2, "decap-dscp"),
    (4, "nopmtudisc"),
    (8, "wildrecv"),
    (16, "icmp"),
    (32, "af-unspec"),
    (64, "align4"),
    (128, "esn"),
)
SA_XFLAG_NAMES = ((1, "dont-encap-dscp"), (2, "oseq-may-wrap"), (4, "never-encap-dscp"))
POLICY_FLAG_NAMES = ((1, "localok"), (2, "icmp"))
AE_FLAG_NAMES = (
    (1, "rthr"),
    (2, "rval"),
    (4, "lval"),
    (8, "ethr"),
    (16, "cr"),
    (32, "ce"),
    (64, "cu"),
)


# --- struct layouts ----------------------------------------------------------
# Native byte order, explicit padding: ``"=" + "".join(fmt)`` gives the C layout.
# Fields named ``be_*`` are big-endian on the wire (SPIs and ports).
Fields = tuple[tuple[str, str], ...]


def field_offset(fields: Fields, name: str) -> int:
    """Where field ``name`` starts in a packed layout."""
    names = [n for n, _ in fields]
    return struct.calcsize("=" + "".join(fmt for _, fmt in fields[: names.index(name)]))



def _prefixed(prefix: str, fields: Fields) -> Fields:
    return tuple((prefix + name, fmt) for name, fmt in fields)


SELECTOR: Fields = (
    ("daddr", "16s"),
    ("saddr", "16s"),
    ("be_dport", "H"),
    ("be_dport_mask", "H"),
    ("be_sport", "H"),
    ("be_sport_mask", "H"),
    ("family", "H"),
    ("prefixlen_d", "B"),
    ("prefixlen_s", "B"),
    ("proto", "B"),
    ("__pad", "3x"),
    ("ifindex", "i"),
    ("user", "I"),
)  # 56
LIFETIME_CFG: Fields = (
    ("soft_byte_limit", "Q"),
    ("hard_byte_limit", "Q"),
    ("soft_packet_limit", "Q"),
    ("hard_packet_limit", "Q"),
    ("soft_add_expires_seconds", "Q"),
    ("hard_add_expires_seconds", "Q"),
    ("soft_use_expires_seconds", "Q"),
    ("hard_use_expires_seconds", "Q"),
)  # 64
LIFETIME_CUR: Fields = (
    ("bytes", "Q"),
    ("packets", "Q"),
    ("add_time", "Q"),
    ("use_time", "Q"),
)  # 32
XFRM_ID: Fields = (("daddr", "16s"), ("be_spi", "I"), ("proto", "B"), ("__pad", "3x"))  # 24
USERSA_INFO: Fields = (
    *_prefixed("sel_", SELECTOR),
    *_prefixed("id_", XFRM_ID),
    ("saddr", "16s"),
    *_prefixed("lft_", LIFETIME_CFG),
    *_prefixed("cur_", LIFETIME_CUR),
    ("stats_replay_window", "I"),
    ("stats_replay", "I"),
    ("stats_integrity_failed", "I"),
    ("seq", "I"),
    ("reqid", "I"),
    ("family", "H"),
    ("mode", "B"),
    ("replay_window", "B"),
    ("flags", "B"),
    ("__pad", "7x"),
)  # 224
USERSA_ID: Fields = (
    ("daddr", "16s"),
    ("be_spi", "I"),
    ("family", "H"),
    ("proto", "B"),
    ("__pad", "x"),
)  # 24
USERPOLICY_INFO: Fields = (
    *_prefixed("sel_", SELECTOR),
    *_prefixed("lft_", LIFETIME_CFG),
    *_prefixed("cur_", LIFETIME_CUR),
    ("priority", "I"),
    ("index", "I"),
    ("dir", "B"),
    ("action", "B"),
    ("flags", "B"),
    ("share", "B"),
    ("__pad", "4x"),
)  # 168
USERPOLICY_ID: Fields = (
    *_prefixed("sel_", SELECTOR),
    ("index", "I"),
    ("dir", "B"),
    ("__pad", "3x"),
)  # 64
USER_EXPIRE: Fields = (*USERSA_INFO, ("hard", "B"), ("__pad2", "7x"))  # 232
USER_POLEXPIRE: Fields = (*USERPOLICY_INFO, ("hard", "B"), ("__pad2", "7x"))  # 176
USER_ACQUIRE: Fields = (
    *_prefixed("id_", XFRM_ID),
    ("saddr", "16s"),
    *_prefixed("sel_", SELECTOR),
    *_prefixed("pol_", USERPOLICY_INFO),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
    ("seq", "I"),
)  # 280
AEVENT_ID: Fields = (
    *_prefixed("sa_", USERSA_ID),
    ("saddr", "16s"),
    ("flags", "I"),
    ("reqid", "I"),
)  # 48
USER_REPORT: Fields = (("proto", "B"), ("__pad", "3x"), *_prefixed("sel_", SELECTOR))  # 60
USER_MAPPING: Fields = (
    *_prefixed("id_", USERSA_ID),
    ("reqid", "I"),
    ("old_saddr", "16s"),
    ("new_saddr", "16s"),
    ("be_old_sport", "H"),
    ("be_new_sport", "H"),
)  # 64
USERSA_FLUSH: Fields = (("proto", "B"),)  # 1
USERPOLICY_DEFAULT: Fields = (("in", "B"), ("fwd", "B"), ("out", "B"))  # 3
INFO_FLAGS: Fields = (("flags", "I"),)  # 4 (GETSAINFO, GETSPDINFO and replies)
USER_TMPL: Fields = (
    *_prefixed("id_", XFRM_ID),
    ("family", "H"),
    ("__pad", "2x"),
    ("saddr", "16s"),
    ("reqid", "I"),
    ("mode", "B"),
    ("share", "B"),
    ("optional", "B"),
    ("__pad2", "x"),
    ("aalgos", "I"),
    ("ealgos", "I"),
    ("calgos", "I"),
)  # 64
USER_MIGRATE: Fields = (
    ("old_daddr", "16s"),
    ("old_saddr", "16s"),
    ("new_daddr", "16s"),
    ("new_saddr", "16s"),
    ("proto", "B"),
    ("mode", "B"),
    ("reserved", "H"),
    ("reqid", "I"),
    ("old_family", "H"),
    ("new_family", "H"),
)  # 76
USER_KMADDRESS: Fields = (
    ("local", "16s"),
    ("remote", "16s"),
    ("reserved", "I"),
    ("family", "H"),
    ("__pad", "2x"),
)  # 40
ALGO: Fields = (("alg_name", "64s"), ("alg_key_len", "I"))  # 68 + key
ALGO_AUTH: Fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))  # 72 + key
ALGO_AEAD: Fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))  # 72 + key
ENCAP_TMPL: Fields = (
    ("encap_type", "H"),
    ("be_encap_sport", "H"),
    ("be_encap_dport", "H"),
    ("__pad", "2x"),
    ("encap_oa", "16s"),
)  # 24
USER_SEC_CTX: Fields = (
    ("len", "H"),
    ("exttype", "H"),
    ("ctx_alg", "B"),
    ("ctx_doi", "B"),
    ("ctx_len", "H"),
)  # 8 + context string
REPLAY_STATE: Fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))  # 12
REPLAY_STATE_ESN: Fields = (
    ("bmp_len", "I"),
    ("oseq", "I"),
    ("seq", "I"),
    ("oseq_hi", "I"),
    ("seq_hi", "I"),
    ("replay_window", "I"),
)  # 24 + bitmap
MARK: Fields = (("v", "I"), ("m", "I"))  # 8
USER_OFFLOAD: Fields = (("ifindex", "i"), ("flags", "B"), ("__pad", "3x"))  # 8
USERPOLICY_TYPE: Fields = (("type", "B"), ("__pad", "x"), ("reserved1", "H"), ("reserved2", "B"), ("__pad2", "x"))  # 6
SPDINFO: Fields = (
    ("incnt", "I"),
    ("outcnt", "I"),
    ("fwdcnt", "I"),
    ("inscnt", "I"),
    ("outscnt", "I"),
    ("fwdscnt", "I"),
)  # 24
HINFO: Fields = (("cnt", "I"), ("mcnt", "I"))  # 8
HTHRESH: Fields = (("lbits", "B"), ("rbits", "B"))  # 2

def layout_size(fields: Fields) -> int:
    """The C size of a layout."""
    return struct.calcsize("=" + "".join(fmt for _, fmt in fields))


#: Key-carrying attribute -> where the key bytes start in its payload (after the algorithm
#: name and lengths).  XFRMA_ALG_COMP has the same layout and never a key.
KEY_OFFSETS: dict[int, int] = {
    XFRMA_ALG_AUTH: layout_size(ALGO),
    XFRMA_ALG_CRYPT: layout_size(ALGO),
    XFRMA_ALG_COMP: layout_size(ALGO),
    XFRMA_ALG_AEAD: layout_size(ALGO_AEAD),
    XFRMA_ALG_AUTH_TRUNC: layout_size(ALGO_AUTH),
}

#: sizes the kernel's xfrm_msg_min[] table demands (x86_64), per message type.
MSG_MIN_SIZE: dict[int, int] = {
    XFRM_MSG_NEWSA: 224,
    XFRM_MSG_UPDSA: 224,
    XFRM_MSG_DELSA: 24,
    XFRM_MSG_GETSA: 24,
    XFRM_MSG_NEWPOLICY: 168,
    XFRM_MSG_UPDPOLICY: 168,
    XFRM_MSG_DELPOLICY: 64,
    XFRM_MSG_GETPOLICY: 64,
    XFRM_MSG_ALLOCSPI: 232,
    XFRM_MSG_ACQUIRE: 280,
    XFRM_MSG_EXPIRE: 232,
    XFRM_MSG_POLEXPIRE: 176,
    XFRM_MSG_FLUSHSA: 1,
    XFRM_MSG_FLUSHPOLICY: 0,
    XFRM_MSG_NEWAE: 48,
    XFRM_MSG_GETAE: 48,
    XFRM_MSG_REPORT: 60,
    XFRM_MSG_MIGRATE: 64,
    XFRM_MSG_NEWSADINFO: 4,
    XFRM_MSG_GETSADINFO: 4,
    XFRM_MSG_NEWSPDINFO: 4,
    XFRM_MSG_GETSPDINFO: 4,
    XFRM_MSG_MAPPING: 64,
    XFRM_MSG_SETDEFAULT: 3,
    XFRM_MSG_GETDEFAULT: 3,
}
