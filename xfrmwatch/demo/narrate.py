"""The demo's narration: what an event means, in plain words, for someone watching.

:class:`Narrator` is given every event the pipeline puts out and returns a sentence for the
ones worth explaining (the tunnel's life, losses), ``None`` for the others.  It only reads
events: it works on any source, a replay or the live namespace.
"""

from __future__ import annotations

from .. import events as ev


def _spis(e: ev.TunnelEvent) -> str:
    return f"in {e.spi_in or '-'}, out {e.spi_out or '-'}"


def _secs(v: float | None) -> str:
    return "no hard limit known" if v is None else f"{v:.0f} s before the hard limit"


class Narrator:
    """One sentence per event worth explaining (see the module)."""

    def __init__(self) -> None:
        self._down: set[str] = set()

    def __call__(self, e: ev.Event) -> str | None:
        if isinstance(e, ev.TunnelUp):
            return (
                f"Tunnel up: {e.src} <-> {e.dst} (reqid {e.reqid}, {e.mode} mode), SPIs {_spis(e)}. "
                "The key manager installed one SA per direction; xfrmwatch now follows its lifetimes."
            )
        if isinstance(e, ev.RekeyStarted):
            return (
                f"SA {e.spi} reached its soft {e.basis} limit: the kernel says so (soft EXPIRE), and this "
                f"side's key manager must now negotiate new SAs ({_secs(e.seconds_to_hard)})."
            )
        if isinstance(e, ev.RekeyCompleted):
            who = {True: "this side", False: "the peer", None: "one side"}[e.initiator]
            return (
                f"Rekey {e.rekeys} done, started by {who}, in {e.duration_seconds * 1000:.0f} ms: new SPIs "
                f"{', '.join(e.new_spis)} replace {', '.join(e.old_spis)}. No alarm: a normal rekey."
            )
        if isinstance(e, ev.RekeyOverdue):
            return (
                f"SA {e.spi} should have been replaced by now and was not ({_secs(e.seconds_to_hard)}): "
                "the key manager cannot finish the rekey. Is the peer still there?"
            )
        if isinstance(e, ev.TunnelDown):
            self._down.add(e.tunnel_id)
            why = {
                "hard_expire": "its SAs hit their hard limit and the kernel deleted them",
                "deleted": "its SAs were deleted",
                "flushed": "the SAD was flushed",
                "policy_removed": "its policies were removed",
                "policy_hold": "its out policy now holds packets for a new SA that never comes",
                "policy_block": "its out policy now blocks",
                "unknown": "the resync after a loss found it gone",
            }[e.reason]
            verdict = "after a failed rekey" if e.rekey_failed else "on purpose" if e.teardown else "unexpectedly"
            return f"Tunnel down {verdict}: {why}. Traffic between the two sites is no longer protected, or no longer flows."
        if isinstance(e, ev.TrafficStalled):
            return f"Inbound traffic stopped {e.silent_seconds:.0f} s ago while outbound keeps going: a dead peer or path."
        if isinstance(e, ev.TrafficResumed):
            return "Inbound traffic is back."
        if isinstance(e, ev.AcquireEvent):
            return "Packets still match the policy but no SA is left: the kernel asks the key manager for one (ACQUIRE)."
        if isinstance(e, ev.DelPolicy) and self._down:
            self._down.clear()
            return "The tunnel's policies are removed: its key manager has given up on the peer."
        if isinstance(e, ev.Overrun):
            return "Events were lost (the receive buffer overflowed): the mirror is rebuilt from a fresh dump."
        if isinstance(e, ev.Resync):
            return f"Resynced: {len(e.missing)} entries were missing, {len(e.stale)} stale."
        return None


__all__ = ["Narrator"]
