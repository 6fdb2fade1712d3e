"""xfrmwatch never sends a request that changes the SAD or SPD."""

import ast
import itertools
from typing import Any

import pytest
import trio
from support import ROOT

from xfrmwatch.netlink import messages as xm
from xfrmwatch.netlink import xfrm as x
from xfrmwatch.netlink.request import blocking_dump, encode_request
from xfrmwatch.netlink.socket import READ_ONLY_REQUESTS, XfrmSocket

WRITES = [
    t for name, t in vars(x).items()
    if name.startswith("XFRM_MSG_") and isinstance(t, int) and t not in READ_ONLY_REQUESTS
]  # fmt: skip


def test_only_get_requests_are_allowed() -> None:
    """The allowed set is exactly the GET requests."""
    assert {x.XFRM_MSG_GETSA, x.XFRM_MSG_GETPOLICY, x.XFRM_MSG_GETAE, x.XFRM_MSG_GETSADINFO,
            x.XFRM_MSG_GETSPDINFO, x.XFRM_MSG_GETDEFAULT} == set(READ_ONLY_REQUESTS)  # fmt: skip
    assert x.XFRM_MSG_NEWSA in WRITES and x.XFRM_MSG_SETDEFAULT in WRITES and x.XFRM_MSG_FLUSHPOLICY in WRITES


@pytest.mark.parametrize("msg_type", WRITES)
async def test_request_refuses_every_other_type(msg_type: int) -> None:
    """request() raises before anything is sent, for every non-GET message type."""

    class NoSend:
        async def sendto(self, *a: object) -> None:
            raise AssertionError("sent")

    sock = XfrmSocket.__new__(XfrmSocket)
    sock._sock = NoSend()  # type: ignore[assignment]
    sock._seq = itertools.count(1)
    sock.portid = 0
    with pytest.raises(ValueError, match="read-only"):
        await sock.request(xm.usersa_id_msg(), msg_type)
    await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("msg_type", WRITES)
def test_blocking_dump_refuses_every_other_type(msg_type: int) -> None:
    """The listing commands' blocking dump builds its request the same way: refused before
    anything is sent."""

    class NoSend:
        def getsockname(self) -> tuple[int, int]:
            return (0, 0)

        def sendto(self, *a: object) -> None:
            raise AssertionError("sent")

    with pytest.raises(ValueError, match="read-only"):
        next(iter(blocking_dump(NoSend(), xm.usersa_id_msg(), msg_type, what="test")))  # type: ignore[arg-type]


def test_every_request_is_built_by_encode_request() -> None:
    """Both senders send only what encode_request built (where the rule is enforced)."""
    for name in ("socket.py", "request.py"):
        text = (ROOT / "xfrmwatch/netlink" / name).read_text()
        sends = [line for line in text.splitlines() if ".sendto(" in line]
        assert sends and all("request" in line for line in sends), (name, sends)
    assert "request = encode_request(" in (ROOT / "xfrmwatch/netlink/socket.py").read_text()


def test_request_is_the_only_place_that_sends_to_netlink() -> None:
    """No other code in the package sends on a socket (sendto/sendmsg/send) to netlink, but
    the rtnetlink address dump (a GET as well: see the next test)."""
    senders = []
    for path in (ROOT / "xfrmwatch").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("sendto", "sendmsg", "send"):
                senders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    netlink = [s for s in senders if s.startswith("xfrmwatch/netlink/")]
    senders_of_netlink = [
        "xfrmwatch/netlink/addresses.py",
        "xfrmwatch/netlink/request.py",
        "xfrmwatch/netlink/socket.py",
    ]
    assert senders_of_netlink == sorted({s.split(":")[0] for s in netlink})
    others = {s.split(":")[0] for s in senders} - set(senders_of_netlink)
    # the outputs send to journald/syslog/notify sockets, the demo UDP datagrams: never AF_NETLINK
    for f in others:
        assert "AF_NETLINK" not in (ROOT / f).read_text(), f


def test_the_address_dump_only_asks() -> None:
    """The one rtnetlink message xfrmwatch sends is an RTM_GETADDR dump request (type 22,
    NLM_F_REQUEST|NLM_F_DUMP), and it is sent from one place, built by request()."""
    import struct

    from xfrmwatch.netlink import addresses

    mlen, mtype, flags, seq, _ = struct.unpack_from("=IHHII", addresses.request(7))
    assert (mtype, flags, seq) == (22, 0x301, 7) and mlen == len(addresses.request(7))
    text = (ROOT / "xfrmwatch/netlink/addresses.py").read_text()
    assert text.count(".send(") == 1 and "await sock.send(req)" in text and "req = request(seq)" in text


@pytest.mark.parametrize(
    ("msg_type", "msg"), [(x.XFRM_MSG_GETPOLICY, xm.userpolicy_id_msg), (x.XFRM_MSG_GETSA, xm.usersa_id_msg)]
)
def test_a_whole_dump_request_is_what_pyroute2_encodes(msg_type: int, msg: Any) -> None:
    """The listings' dump request, built without pyroute2 (a zeroed fixed part), is byte
    for byte the request pyroute2 encodes from the same layout; a change type is refused."""
    assert encode_request(msg(), msg_type, 1, 4242, dump=True) == encode_request(None, msg_type, 1, 4242, dump=True)
    with pytest.raises(ValueError, match="read-only"):
        encode_request(None, x.XFRM_MSG_DELSA, 1, 4242, dump=True)
