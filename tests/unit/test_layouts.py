"""The struct layouts match the kernel's sizes (include/uapi/linux/xfrm.h, x86_64)."""

import struct

import pytest

from xfrmwatch.netlink import xfrm as x

KERNEL_SIZES = {
    "SELECTOR": 56,
    "USERSA_INFO": 224,
    "USERSA_ID": 24,
    "USERPOLICY_INFO": 168,
    "USERPOLICY_ID": 64,
    "USER_EXPIRE": 232,
    "USER_POLEXPIRE": 176,
    "USER_ACQUIRE": 280,
    "AEVENT_ID": 48,
    "USER_REPORT": 60,
    "USER_MAPPING": 64,
    "USER_TMPL": 64,
    "USER_MIGRATE": 76,
    "USER_KMADDRESS": 40,
    "ENCAP_TMPL": 24,
    "ALGO": 68,
    "ALGO_AUTH": 72,
    "ALGO_AEAD": 72,
    "USER_SEC_CTX": 8,
    "REPLAY_STATE": 12,
    "REPLAY_STATE_ESN": 24,
    "SPDINFO": 24,
}


@pytest.mark.parametrize("name,size", sorted(KERNEL_SIZES.items()))
def test_struct_size(name: str, size: int) -> None:
    """Packed with explicit padding, each layout has the C struct's size."""
    fields = getattr(x, name)
    assert size == struct.calcsize("=" + "".join(f for _, f in fields))
    # and native alignment agrees: no padding is left implicit
    assert size == struct.calcsize("".join(f for _, f in fields))


def test_message_minimums_match_layouts() -> None:
    """The per-type minimum body sizes agree with the layouts."""
    size = lambda f: struct.calcsize("=" + "".join(t for _, t in f))  # noqa: E731
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_NEWSA] == size(x.USERSA_INFO)
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_EXPIRE] == size(x.USER_EXPIRE)
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_ACQUIRE] == size(x.USER_ACQUIRE)
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_POLEXPIRE] == size(x.USER_POLEXPIRE)
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_NEWAE] == size(x.AEVENT_ID)
    assert x.MSG_MIN_SIZE[x.XFRM_MSG_MAPPING] == size(x.USER_MAPPING)


def test_attribute_numbers() -> None:
    """Attribute numbers follow enum xfrm_attr_type_t."""
    assert x.XFRMA_NAMES.index("XFRMA_ALG_AEAD") == x.XFRMA_ALG_AEAD == 18
    assert x.XFRMA_NAMES.index("XFRMA_IF_ID") == x.XFRMA_IF_ID == 31
    assert x.XFRMA_NAMES.index("XFRMA_SA_DIR") == x.XFRMA_SA_DIR == 33
    assert {1, 2, 18, 20} == x.KEY_ATTRS
