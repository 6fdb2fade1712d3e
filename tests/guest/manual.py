"""Manual keying with ``ip xfrm`` between two namespaces (UML tier): no IKE daemon.

    from manual import manual_pair

    with manual_pair() as p:            # tunnel 10.10.1.0/24 <-> 10.10.2.0/24, SPIs 0x100/0x101
        t = p.send_traffic(count=100)
        p.rotate(reqid=1)               # Cilium-style: new SAs, out template switched, ...
        p.remove_old()                  # ... old SAs deleted after a delay (the caller's)
        p.teardown()                    # policies and SAs deleted, as an operator would

Layout: netpair.py (IPv4).  Each direction has one SA (AES-GCM-128, ``rfc4106(gcm(aes))``)
and the three policies (out, in, fwd) name its reqid.  Keys are random (``os.urandom``),
passed to ``ip -batch -`` on stdin, never on a command line, never printed or logged; the
pair keeps them only so that a test can check its outputs for them (``keys()``).

Cilium (its ``--enable-ipsec`` key rotation) adds the states of a new key index next to the
old ones, switches what the out path uses to the new SPI, and deletes the old states after
``ipsec-key-rotation-duration``.  ``rotate(reqid=...)`` does the same: new inbound and
outbound SAs with new SPIs (the same reqid, or a new one), the out policy updated
(``ip xfrm policy update``) to a template naming the new outbound SPI (and reqid), the in/fwd
policies updated likewise for a new reqid; ``remove_old()`` deletes the previous generation.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from netpair import SIDES, V4, NsPair, build_network
from support import fresh_netns

ALG = "rfc4106(gcm(aes))"


@dataclass(frozen=True)
class Generation:
    """One manually keyed CHILD_SA: an SA per direction, named by SPI, and its reqid."""

    reqid: int
    spi_lr: int  # left -> right
    spi_rl: int  # right -> left
    key_lr: str  # hex, 0x..., 20 bytes (16 key + 4 salt); never printed
    key_rl: str


def _key() -> str:
    return "0x" + os.urandom(20).hex()


class ManualPair(NsPair):
    def __init__(self, left: str, right: str, timeout: float) -> None:
        super().__init__(left, right, V4, timeout)
        self.generations: list[Generation] = []
        self._made = 0  # generations made so far (SPIs are never reused)
        self._all_keys: list[str] = []

    def keys(self) -> list[str]:
        """Every key this pair ever installed (hex), for leak checks."""
        return list(self._all_keys)

    @property
    def current(self) -> Generation:
        return self.generations[-1]

    def ip_batch(self, side: str, lines: list[str]) -> None:
        """Run ``ip -n NS -batch -`` with these commands on stdin (they may hold keys: on an
        error, only the failing line's number is shown, never its text)."""
        p = subprocess.run(
            ["ip", "-n", self.ns(side), "-batch", "-"], input="\n".join(lines) + "\n",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if p.returncode != 0:
            err = p.stderr
            for k in self._all_keys:
                err = err.replace(k, "<key>").replace(k[2:], "<key>")
            raise AssertionError(f"{side}: ip -batch failed ({p.returncode}): {err.strip()}")

    def _sa_lines(self, g: Generation, side: str) -> list[str]:
        a = self.addr
        sel_lr = f"sel src {a.left_net} dst {a.right_net}"
        sel_rl = f"sel src {a.right_net} dst {a.left_net}"
        del side  # both sides install both directions
        return [
            f"xfrm state add src {a.left_outer} dst {a.right_outer} proto esp spi {g.spi_lr:#x} "
            f"reqid {g.reqid} mode tunnel replay-window 32 aead '{ALG}' {g.key_lr} 128 {sel_lr}",
            f"xfrm state add src {a.right_outer} dst {a.left_outer} proto esp spi {g.spi_rl:#x} "
            f"reqid {g.reqid} mode tunnel replay-window 32 aead '{ALG}' {g.key_rl} 128 {sel_rl}",
        ]

    def _policy_lines(self, g: Generation, side: str, verb: str) -> list[str]:
        a = self.addr
        peer = "right" if side == "left" else "left"
        local, remote = a.net(side), a.net(peer)
        lo, ro = a.outer(side), a.outer(peer)
        spi_out = g.spi_lr if side == "left" else g.spi_rl
        return [
            f"xfrm policy {verb} src {local} dst {remote} dir out priority 100 "
            f"tmpl src {lo} dst {ro} proto esp spi {spi_out:#x} reqid {g.reqid} mode tunnel",
            f"xfrm policy {verb} src {remote} dst {local} dir in priority 100 "
            f"tmpl src {ro} dst {lo} proto esp reqid {g.reqid} mode tunnel",
            f"xfrm policy {verb} src {remote} dst {local} dir fwd priority 100 "
            f"tmpl src {ro} dst {lo} proto esp reqid {g.reqid} mode tunnel",
        ]

    def _new_generation(self, reqid: int) -> Generation:
        n = self._made
        self._made += 1
        g = Generation(reqid, 0x100 + 2 * n, 0x101 + 2 * n, _key(), _key())
        self._all_keys += [g.key_lr, g.key_rl]
        self.generations.append(g)
        return g

    def setup(self, reqid: int = 1) -> Generation:
        """The first generation: SAs, then out/in/fwd policies (NEWSA x2, NEWPOLICY x3 per side)."""
        g = self._new_generation(reqid)
        for side in SIDES:
            self.ip_batch(side, self._sa_lines(g, side) + self._policy_lines(g, side, "add"))
        return g

    def rotate(self, reqid: int | None = None) -> Generation:
        """Cilium-style key rotation, first half: the new SAs (new SPIs; ``reqid`` default: the
        current one), then the policies updated to name them.  The old SAs stay until
        ``remove_old()``."""
        g = self._new_generation(self.current.reqid if reqid is None else reqid)
        for side in SIDES:
            self.ip_batch(side, self._sa_lines(g, side))
        for side in SIDES:
            lines = self._policy_lines(g, side, "update")
            if reqid is None or reqid == self.generations[-2].reqid:
                lines = lines[:1]  # same reqid: only the out template (its SPI) changes
            self.ip_batch(side, lines)
        return g

    def remove_old(self) -> None:
        """Rotation, second half: delete every SA of the generations before the current one."""
        a = self.addr
        for g in self.generations[:-1]:
            for side in SIDES:
                self.ip_batch(side, [
                    f"xfrm state delete src {a.left_outer} dst {a.right_outer} proto esp spi {g.spi_lr:#x}",
                    f"xfrm state delete src {a.right_outer} dst {a.left_outer} proto esp spi {g.spi_rl:#x}",
                ])  # fmt: skip
        self.generations[:-1] = []

    def teardown(self) -> None:
        """Delete the policies, then the SAs, as an operator (or an agent shutting down) would."""
        a = self.addr
        g = self.current
        for side in SIDES:
            peer = "right" if side == "left" else "left"
            local, remote = a.net(side), a.net(peer)
            self.ip_batch(side, [
                f"xfrm policy delete src {local} dst {remote} dir out",
                f"xfrm policy delete src {remote} dst {local} dir in",
                f"xfrm policy delete src {remote} dst {local} dir fwd",
                f"xfrm state delete src {a.left_outer} dst {a.right_outer} proto esp spi {g.spi_lr:#x}",
                f"xfrm state delete src {a.right_outer} dst {a.left_outer} proto esp spi {g.spi_rl:#x}",
            ])  # fmt: skip
        self.generations = []

    def _stop_all(self) -> None:
        self._stop_helpers()


@contextmanager
def manual_pair(*, setup: bool = True, reqid: int = 1, timeout: float = 30) -> Iterator[ManualPair]:
    """Two namespaces joined by a veth (default routes both ways); with ``setup`` the first
    generation's SAs and policies are installed when this yields."""
    with ExitStack() as stack:
        left_ns = stack.enter_context(fresh_netns("mleft"))
        right_ns = stack.enter_context(fresh_netns("mright"))
        build_network(left_ns, right_ns, V4, default_routes=True)
        pair = ManualPair(left_ns, right_ns, timeout)
        stack.callback(pair._stop_all)
        if setup:
            pair.setup(reqid)
        yield pair
