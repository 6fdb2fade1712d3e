"""``xfrmwatch demo --live``: a scripted tunnel life between two throwaway namespaces.

This is a **test fixture that changes the kernel**, inside namespaces it creates and deletes:
xfrmwatch's monitoring path stays read-only (it watches the left namespace like ``monitor``).
Everything here goes through ``ip`` (iproute2):

- two namespaces ``xw-demo-left-*`` and ``xw-demo-right-*`` joined by a veth pair
  (192.0.2.1 <-> 192.0.2.2), each with its site's address on its loopback (10.10.1.1,
  10.10.2.1) and a route to the other site;
- an ESP tunnel between the sites: policies in, out and fwd on both sides (reqid 1), and a
  pair of SAs per generation, AES-GCM with **random keys** (``os.urandom``), written to
  ``ip -batch`` on its standard input (never on a command line, never printed); the left
  side's inbound SA has a soft time limit, so the kernel tells when to rekey, as
  strongSwan's SAs do;
- UDP datagrams from 10.10.1.1 to 10.10.2.1 every 0.2 s, echoed back, through the tunnel;
- the script: three rekeys as a key manager makes them (new SAs, then the old ones deleted),
  then the peer "dies": no more rekeys, the soft limit passes, then the hard one, and the
  kernel deletes the SAs; finally the left side gives up and removes its policies.

:func:`demo_namespaces` deletes both namespaces on the way out, however it is left (the
caller handles SIGINT/SIGTERM by cancelling).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog
import trio

from ..errors import CapabilityError, KernelError, UsageError
from ..netlink.netns import entered

log = structlog.get_logger("xfrmwatch.demo")

LEFT_OUTER, RIGHT_OUTER = "192.0.2.1", "192.0.2.2"
LEFT_INNER, RIGHT_INNER = "10.10.1.1", "10.10.2.1"
LEFT_NET, RIGHT_NET = "10.10.1.0/24", "10.10.2.0/24"
PORT = 7000
REKEYS = 3
AEAD = "rfc4106(gcm(aes))"


@dataclass
class DemoNet:
    """The two namespaces and what the script needs to know of them."""

    left: str
    right: str
    rekey: int  #: soft time limit of the left inbound SA (whole seconds, as the kernel takes them)
    generation: int = 0
    spis: dict[int, tuple[int, int]] = field(default_factory=dict)  # generation -> (left->right, right->left)

    @property
    def hard(self) -> int:
        return max(self.rekey + 2, round(self.rekey * 1.75))


async def ip(*args: str, stdin: bytes | None = None, what: str = "") -> None:
    """Run ``ip ARGS``; a failure raises with ip's own message (never the command's input)."""
    p = await trio.run_process(["ip", *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False)
    if p.returncode != 0:
        msg = "; ".join(line.strip() for line in p.stderr.decode(errors="replace").splitlines() if line.strip())
        raise KernelError(f"{what or 'ip ' + ' '.join(args[:3])}: {msg or f'exit {p.returncode}'}")


def check_can_run() -> None:
    if os.geteuid() != 0:
        raise CapabilityError(
            "demo --live creates network namespaces and IPsec SAs in them: run it as root "
            "(`xfrmwatch demo` without --live replays a recording and needs no privileges)"
        )
    if shutil.which("ip") is None:
        raise UsageError("demo --live needs iproute2's `ip` (apt-get install iproute2)")


@asynccontextmanager
async def demo_namespaces(rekey: int) -> AsyncIterator[DemoNet]:
    """Create the two namespaces and their network (no SAs yet); delete them at the end."""
    check_can_run()
    token = secrets.token_hex(3)
    net = DemoNet(f"xw-demo-left-{token}", f"xw-demo-right-{token}", rekey)
    made: list[str] = []
    try:
        for ns in (net.left, net.right):
            await ip("netns", "add", ns, what=f"creating namespace {ns}")
            made.append(ns)
        await ip("-n", net.left, "link", "add", "xwdemo0", "type", "veth", "peer", "name", "xwdemo1", "netns", net.right)
        for ns, dev, outer, inner, peer, peer_net in (
            (net.left, "xwdemo0", LEFT_OUTER, LEFT_INNER, RIGHT_OUTER, RIGHT_NET),
            (net.right, "xwdemo1", RIGHT_OUTER, RIGHT_INNER, LEFT_OUTER, LEFT_NET),
        ):
            batch = (
                f"link set lo up\naddr add {outer}/24 dev {dev}\nlink set {dev} up\n"
                f"addr add {inner}/32 dev lo\nroute add {peer_net} via {peer} src {inner}\n"
            )
            await ip("-n", ns, "-batch", "-", stdin=batch.encode(), what=f"network of {ns}")
        await _policies(net)
        yield net
    finally:
        with trio.CancelScope(shield=True):
            for ns in made:
                try:
                    await ip("netns", "del", ns, what=f"deleting namespace {ns}")
                except KernelError as exc:
                    log.error("could not delete a demo namespace", netns=ns, error=str(exc))


async def _policies(net: DemoNet) -> None:
    for ns, here, there, here_net, there_net in (
        (net.left, LEFT_OUTER, RIGHT_OUTER, LEFT_NET, RIGHT_NET),
        (net.right, RIGHT_OUTER, LEFT_OUTER, RIGHT_NET, LEFT_NET),
    ):
        out = f"tmpl src {here} dst {there} proto esp reqid 1 mode tunnel"
        back = f"tmpl src {there} dst {here} proto esp reqid 1 mode tunnel"
        batch = (
            f"xfrm policy add src {here_net} dst {there_net} dir out {out}\n"
            f"xfrm policy add src {there_net} dst {here_net} dir in {back}\n"
            f"xfrm policy add src {there_net} dst {here_net} dir fwd {back}\n"
        )
        await ip("-n", ns, "-batch", "-", stdin=batch.encode(), what=f"policies of {ns}")


async def install_generation(net: DemoNet) -> None:
    """A new pair of SAs on both sides (new SPIs, new random keys), as a key manager adds them."""
    net.generation += 1
    l2r, r2l = (secrets.randbelow(0xEFFFFFFF) + 0x1000_0000 for _ in range(2))
    net.spis[net.generation] = (l2r, r2l)
    keys = {spi: "0x" + os.urandom(20).hex() for spi in (l2r, r2l)}  # 128-bit key + 32-bit salt
    soft, hard = net.rekey, net.hard

    def sa(src: str, dst: str, spi: int, limits: str) -> str:
        return (
            f"xfrm state add src {src} dst {dst} proto esp spi 0x{spi:08x} reqid 1 mode tunnel "
            f"replay-window 32 aead '{AEAD}' {keys[spi]} 128 {limits}\n"
        )

    left = sa(RIGHT_OUTER, LEFT_OUTER, r2l, f"limit time-soft {soft} limit time-hard {hard}") + sa(
        LEFT_OUTER, RIGHT_OUTER, l2r, f"limit time-hard {hard}"
    )
    right = sa(LEFT_OUTER, RIGHT_OUTER, l2r, f"limit time-soft {(soft + hard) // 2} limit time-hard {hard}") + sa(
        RIGHT_OUTER, LEFT_OUTER, r2l, f"limit time-hard {hard}"
    )
    try:
        await ip("-n", net.left, "-batch", "-", stdin=left.encode(), what="adding the left SAs")
    except KernelError as exc:
        if net.generation == 1:
            raise KernelError(
                f"{exc} (this kernel cannot do ESP tunnels with {AEAD}: `xfrmwatch demo` without --live "
                "replays a recording instead)"
            ) from None
        raise
    await ip("-n", net.right, "-batch", "-", stdin=right.encode(), what="adding the right SAs")


async def delete_generation(net: DemoNet, generation: int, direction: str) -> None:
    """Delete one direction's SA of an old generation on both sides ("out": left -> right)."""
    l2r, r2l = net.spis[generation]
    src, dst, spi = (LEFT_OUTER, RIGHT_OUTER, l2r) if direction == "out" else (RIGHT_OUTER, LEFT_OUTER, r2l)
    for ns in (net.left, net.right):
        try:
            await ip("-n", ns, "xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp", "spi", f"0x{spi:08x}",
                     what="deleting an old SA")  # fmt: skip
        except KernelError as exc:
            if "No such process" not in str(exc):  # else: its hard limit came first, the kernel deleted it
                raise


async def traffic(net: DemoNet, *, interval: float = 0.2) -> None:
    """UDP datagrams through the tunnel, echoed back, until cancelled."""
    with entered(net.right):
        echo = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with entered(net.left):
        sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with echo, sender:
        await echo.bind((RIGHT_INNER, PORT))
        await sender.bind((LEFT_INNER, 0))

        async def echoing() -> None:
            while True:
                data, peer = await echo.recvfrom(2048)
                await echo.sendto(data, peer)

        async def draining() -> None:
            while True:
                await sender.recv(2048)

        async with trio.open_nursery() as n:
            n.start_soon(echoing)
            n.start_soon(draining)
            i = 0
            while True:
                try:
                    await sender.sendto(b"xfrmwatch demo %08d" % i, (RIGHT_INNER, PORT))
                except OSError:
                    pass  # no SA any more: the kernel refuses, as it does for a real application
                i += 1
                await trio.sleep(interval)


async def tunnel_life(net: DemoNet) -> None:
    """The script: set-up, ``REKEYS`` rekeys at the left side's soft expiry, then the peer
    dies: no replacement, soft then hard expiry, and the left side removes its policies."""
    await install_generation(net)
    installed = trio.current_time()
    for _ in range(REKEYS):
        await trio.sleep_until(installed + net.rekey + 0.3)  # the soft EXPIRE came: the key manager rekeys
        old = net.generation
        await install_generation(net)
        installed = trio.current_time()
        await delete_generation(net, old, "out")
        await trio.sleep(1.0)
        await delete_generation(net, old, "in")
    log.info("the peer dies now: no more rekeys", netns=net.left)
    await trio.sleep(net.hard + 2.0)  # soft EXPIRE, rekey_overdue, hard EXPIRE, tunnel_down
    batch = (
        f"xfrm policy delete src {LEFT_NET} dst {RIGHT_NET} dir out\n"
        f"xfrm policy delete src {RIGHT_NET} dst {LEFT_NET} dir in\n"
        f"xfrm policy delete src {RIGHT_NET} dst {LEFT_NET} dir fwd\n"
    )
    await ip("-n", net.left, "-batch", "-", stdin=batch.encode(), what="removing the left policies")
    await trio.sleep(1.0)


__all__ = ["DemoNet", "check_can_run", "demo_namespaces", "traffic", "tunnel_life"]
