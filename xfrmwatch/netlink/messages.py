"""pyroute2 ``nlmsg``/``nla`` classes of the XFRM layouts (:mod:`xfrmwatch.netlink.xfrm`):
used to encode requests, and by the tests as an independent decoder."""

from __future__ import annotations

from pyroute2.netlink import nla, nlmsg

from .xfrm import (
    AEVENT_ID,
    ALGO,
    ALGO_AEAD,
    ALGO_AUTH,
    ENCAP_TMPL,
    INFO_FLAGS,
    LIFETIME_CUR,
    MARK,
    REPLAY_STATE,
    USER_ACQUIRE,
    USER_EXPIRE,
    USER_POLEXPIRE,
    USERPOLICY_DEFAULT,
    USERPOLICY_ID,
    USERPOLICY_INFO,
    USERPOLICY_TYPE,
    USERSA_ID,
    USERSA_INFO,
    XFRM_MSG_ACQUIRE,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_EXPIRE,
    XFRM_MSG_GETAE,
    XFRM_MSG_GETDEFAULT,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_GETSADINFO,
    XFRM_MSG_GETSPDINFO,
    XFRM_MSG_NEWAE,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_NEWSADINFO,
    XFRM_MSG_NEWSPDINFO,
    XFRM_MSG_POLEXPIRE,
    XFRM_MSG_UPDPOLICY,
    XFRM_MSG_UPDSA,
    XFRMA_NAMES,
    Fields,
)


def _nla_struct(name: str, fields: Fields) -> type[nla]:
    return type(name, (nla,), {"fields": fields})


_NLA_TYPES: dict[str, type[nla]] = {
    "XFRMA_ALG_AUTH": _nla_struct("xfrm_algo", ALGO),
    "XFRMA_ALG_CRYPT": _nla_struct("xfrm_algo", ALGO),
    "XFRMA_ALG_COMP": _nla_struct("xfrm_algo", ALGO),
    "XFRMA_ALG_AEAD": _nla_struct("xfrm_algo_aead", ALGO_AEAD),
    "XFRMA_ALG_AUTH_TRUNC": _nla_struct("xfrm_algo_auth", ALGO_AUTH),
    "XFRMA_ENCAP": _nla_struct("xfrm_encap_tmpl", ENCAP_TMPL),
    "XFRMA_MARK": _nla_struct("xfrm_mark", MARK),
    "XFRMA_REPLAY_VAL": _nla_struct("xfrm_replay_state", REPLAY_STATE),
    "XFRMA_LTIME_VAL": _nla_struct("xfrm_lifetime_cur", LIFETIME_CUR),
    "XFRMA_POLICY_TYPE": _nla_struct("xfrm_userpolicy_type", USERPOLICY_TYPE),
    "XFRMA_ADDRESS_FILTER": _nla_struct(
        "xfrm_address_filter",
        (("saddr", "16s"), ("daddr", "16s"), ("family", "H"), ("splen", "B"), ("dplen", "B")),
    ),
}
_NLA_SCALARS = {
    "XFRMA_REPLAY_THRESH": "uint32",
    "XFRMA_ETIMER_THRESH": "uint32",
    "XFRMA_LASTUSED": "uint64",
    "XFRMA_TFCPAD": "uint32",
    "XFRMA_SA_EXTRA_FLAGS": "uint32",
    "XFRMA_PROTO": "uint8",
    "XFRMA_SET_MARK": "uint32",
    "XFRMA_SET_MARK_MASK": "uint32",
    "XFRMA_IF_ID": "uint32",
    "XFRMA_MTIMER_THRESH": "uint32",
    "XFRMA_SA_DIR": "uint8",
    "XFRMA_NAT_KEEPALIVE_INTERVAL": "uint32",
    "XFRMA_SA_PCPU": "uint32",
}


class _xfrm_msg(nlmsg):  # type: ignore[misc]
    """Common base: every XFRM message shares the attribute space."""


for _name, _cls in _NLA_TYPES.items():
    setattr(_xfrm_msg, _name, _cls)
_xfrm_msg.nla_map = tuple(
    (n, name, _NLA_SCALARS.get(name, name if name in _NLA_TYPES else "hex"))
    for n, name in enumerate(XFRMA_NAMES)
)


def _msg_class(name: str, fields: Fields) -> type[nlmsg]:
    # address fields default to all-zero bytes (pyroute2's default 0 is not bytes)
    defaults = {n: b"" for n, fmt in fields if fmt.endswith("s")}
    return type(name, (_xfrm_msg,), {"fields": fields, "defaults": defaults})


usersa_info_msg = _msg_class("usersa_info_msg", USERSA_INFO)
usersa_id_msg = _msg_class("usersa_id_msg", USERSA_ID)
userpolicy_info_msg = _msg_class("userpolicy_info_msg", USERPOLICY_INFO)
userpolicy_id_msg = _msg_class("userpolicy_id_msg", USERPOLICY_ID)
user_expire_msg = _msg_class("user_expire_msg", USER_EXPIRE)
user_polexpire_msg = _msg_class("user_polexpire_msg", USER_POLEXPIRE)
user_acquire_msg = _msg_class("user_acquire_msg", USER_ACQUIRE)
aevent_id_msg = _msg_class("aevent_id_msg", AEVENT_ID)
info_flags_msg = _msg_class("info_flags_msg", INFO_FLAGS)
userpolicy_default_msg = _msg_class("userpolicy_default_msg", USERPOLICY_DEFAULT)

#: pyroute2 message class per message type, for an independent decode.
MSG_CLASSES: dict[int, type[nlmsg]] = {
    XFRM_MSG_NEWSA: usersa_info_msg,
    XFRM_MSG_UPDSA: usersa_info_msg,
    XFRM_MSG_DELSA: usersa_id_msg,
    XFRM_MSG_GETSA: usersa_id_msg,
    XFRM_MSG_NEWPOLICY: userpolicy_info_msg,
    XFRM_MSG_UPDPOLICY: userpolicy_info_msg,
    XFRM_MSG_DELPOLICY: userpolicy_id_msg,
    XFRM_MSG_GETPOLICY: userpolicy_id_msg,
    XFRM_MSG_EXPIRE: user_expire_msg,
    XFRM_MSG_POLEXPIRE: user_polexpire_msg,
    XFRM_MSG_ACQUIRE: user_acquire_msg,
    XFRM_MSG_NEWAE: aevent_id_msg,
    XFRM_MSG_GETAE: aevent_id_msg,
    XFRM_MSG_GETSADINFO: info_flags_msg,
    XFRM_MSG_GETSPDINFO: info_flags_msg,
    XFRM_MSG_NEWSADINFO: info_flags_msg,
    XFRM_MSG_NEWSPDINFO: info_flags_msg,
    XFRM_MSG_GETDEFAULT: userpolicy_default_msg,
}
