"""Add one XFRM policy as a named process that puts its PID in nlmsg_pid, as IKE daemons do
(test set-up: changes the kernel in a test netns).

    python3 named_change.py NAME SEL_SRC SEL_DST

Sets its process name (/proc/self/comm) to NAME, sends NEWPOLICY (dir out, IPv4, no template)
built by hand with struct, then stays alive for a second so that the name can be read.  Exits
with the kernel's errno (0 on success).
"""

import ctypes
import ipaddress
import os
import socket
import struct
import sys
import time

name, sel_src, sel_dst = sys.argv[1:]
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
s_net, d_net = ipaddress.IPv4Network(sel_src), ipaddress.IPv4Network(sel_dst)
pad = bytes(12)
sel = struct.pack(
    "=16s16sHHHHHBBB3xiI",
    d_net.network_address.packed + pad, s_net.network_address.packed + pad,
    0, 0, 0, 0, socket.AF_INET, d_net.prefixlen, s_net.prefixlen, 0, 0, 0,
)  # fmt: skip
inf = (1 << 64) - 1
lft = struct.pack("=8Q", inf, inf, inf, inf, 0, 0, 0, 0)
cur = bytes(32)
body = sel + lft + cur + struct.pack("=IIBBBB4x", 100, 0, 1, 0, 0, 0)  # priority index dir=out action flags share
assert len(body) == 168
msg = struct.pack("=IHHII", 16 + len(body), 19, 0x1 | 0x4, 1, os.getpid()) + body  # NEWPOLICY, REQUEST|ACK
sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 6)
sk.bind((0, 0))
sk.sendto(msg, (0, 0))
err = struct.unpack_from("=i", sk.recv(65536), 16)[0]
time.sleep(1.0)
sys.exit(-err)
