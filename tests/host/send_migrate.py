"""Send one XFRM_MSG_MIGRATE request (test set-up: changes the kernel in a test netns).

    python3 send_migrate.py SEL_SRC SEL_DST DIR OLD_SRC OLD_DST NEW_SRC NEW_DST REQID KM_LOCAL KM_REMOTE

Built by hand with struct (independently of xfrmwatch's own layouts), IPv4 only,
proto ESP, tunnel mode.  Exits with the kernel's errno (0 on success).
"""

import ipaddress
import socket
import struct
import sys

sel_src, sel_dst, direction, old_s, old_d, new_s, new_d, reqid, km_l, km_r = sys.argv[1:]


def a16(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed + bytes(12)


s_net = ipaddress.IPv4Network(sel_src)
d_net = ipaddress.IPv4Network(sel_dst)
# struct xfrm_selector: daddr saddr dport dport_mask sport sport_mask family prefixlen_d prefixlen_s proto pad ifindex user
sel = struct.pack(
    "=16s16sHHHHHBBB3xiI",
    a16(str(d_net.network_address)), a16(str(s_net.network_address)),
    0, 0, 0, 0, socket.AF_INET, d_net.prefixlen, s_net.prefixlen, 0, 0, 0,
)  # fmt: skip
# struct xfrm_userpolicy_id: sel index dir pad
body = sel + struct.pack("=IB3x", 0, {"in": 0, "out": 1, "fwd": 2}[direction])
# struct xfrm_user_migrate: old_daddr old_saddr new_daddr new_saddr proto mode reserved reqid old_family new_family
mig = struct.pack(
    "=16s16s16s16sBBHIHH",
    a16(old_d), a16(old_s), a16(new_d), a16(new_s), 50, 1, 0, int(reqid), socket.AF_INET, socket.AF_INET,
)  # fmt: skip
# struct xfrm_user_kmaddress: local remote reserved family pad
km = struct.pack("=16s16sIH2x", a16(km_l), a16(km_r), 0, socket.AF_INET)


def nla(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + bytes(-n % 4)


payload = body + nla(17, mig) + nla(19, km)  # XFRMA_MIGRATE, XFRMA_KMADDRESS
msg = struct.pack("=IHHII", 16 + len(payload), 33, 0x1 | 0x4, 1, 0) + payload  # REQUEST|ACK
sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 6)
sk.bind((0, 0))
sk.sendto(msg, (0, 0))
reply = sk.recv(65536)
err = struct.unpack_from("=i", reply, 16)[0]
sys.exit(-err)
