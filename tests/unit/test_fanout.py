"""The daemon's fan-out: per-output queues, drops counted, failed outputs restarted, atomic swaps."""

from __future__ import annotations

from typing import ClassVar

import trio
from prometheus_client.parser import text_string_to_metric_families

from xfrmwatch import events as ev
from xfrmwatch.daemon import FanOut, OutputStartError
from xfrmwatch.output import registry
from xfrmwatch.output.base import Output, OutputConfig
from xfrmwatch.output.metrics import Metrics


class ListConfig(OutputConfig, tag="list", kw_only=True):
    fail_after: int = -1  # raise after this many events (once)
    fail_start: bool = False


SEEN: dict[str, list[str]] = {}
FAILED: set[str] = set()


class ListOutput(Output):
    """An output that appends event details to a list (and can be told to fail)."""

    type: ClassVar[str] = "list"

    async def run(self, recv: trio.MemoryReceiveChannel[ev.Event], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert isinstance(self.config, ListConfig)
        if self.config.fail_start:
            raise OSError("cannot open the thing")
        task_status.started()
        async with recv:
            async for e in recv:
                assert isinstance(e, ev.Overrun)
                SEEN.setdefault(self.name, []).append(e.detail)
                if len(SEEN[self.name]) == self.config.fail_after and self.name not in FAILED:
                    FAILED.add(self.name)
                    raise RuntimeError("disk full")


registry.OUTPUTS["list"] = ListOutput


def event(detail: str) -> ev.Event:
    return ev.Overrun(time="t", mono=0.0, netns="", nlmsg_pid=0, nlmsg_seq=0, detail=detail)


def dropped(m: Metrics) -> dict[str, float]:
    """``xfrmwatch_output_dropped_total`` per output, as a scrape reads it."""
    return {
        sample.labels["output"]: sample.value
        for fam in text_string_to_metric_families(m.exposition().decode())
        for sample in fam.samples
        if sample.name == "xfrmwatch_output_dropped_total"
    }


async def test_full_queue_drops_for_that_output_only(autojump_clock: trio.abc.Clock) -> None:
    """A stalled output's queue fills and drops are counted for it alone; the other gets everything."""
    SEEN.clear()
    m = Metrics()
    async with trio.open_nursery() as n:
        fan = FanOut(n, m)
        await fan.apply([ListConfig(name="fast", queue=100), ListConfig(name="tiny", queue=1)])
        for i in range(50):
            fan.publish(event(str(i)))  # no checkpoint: "tiny" cannot keep up
        await trio.sleep(1)
        fan.close_all()
    assert [str(i) for i in range(50)] == SEEN["fast"]
    drops = dropped(m)
    assert 50 == len(SEEN["tiny"]) + drops["tiny"]  # every event delivered or counted
    assert drops["tiny"] > 40 and 0 == drops["fast"]


async def test_failed_output_is_restarted(autojump_clock: trio.abc.Clock) -> None:
    """An output that fails mid-run is restarted with backoff; later events reach it again."""
    SEEN.clear()
    FAILED.clear()
    m = Metrics()
    async with trio.open_nursery() as n:
        fan = FanOut(n, m)
        await fan.apply([ListConfig(name="flaky", fail_after=3)])
        for i in range(3):
            fan.publish(event(f"a{i}"))
            await trio.sleep(0.1)
        await trio.sleep(5)  # restarted after its backoff
        fan.publish(event("after"))
        await trio.sleep(1)
        fan.close_all()
    assert ["a0", "a1", "a2", "after"] == SEEN["flaky"]


async def test_swap_is_atomic_when_a_new_output_cannot_start(autojump_clock: trio.abc.Clock) -> None:
    """Reload with an output that cannot start: error, and the running outputs stay as they were."""
    SEEN.clear()
    async with trio.open_nursery() as n:
        fan = FanOut(n, Metrics())
        await fan.apply([ListConfig(name="keep")])
        try:
            await fan.apply([ListConfig(name="keep", queue=5), ListConfig(name="bad", fail_start=True)])
        except OutputStartError as exc:
            assert "output 'bad' cannot start: OSError: cannot open the thing" == str(exc)
        else:
            raise AssertionError("no error")
        assert ["keep"] == sorted(fan.outputs) and 10000 == fan.outputs["keep"].config.queue
        fan.publish(event("still"))
        await trio.sleep(0.1)
        fan.close_all()
    assert ["still"] == SEEN["keep"]


def test_a_published_batch_is_counted_per_type_and_namespace() -> None:
    """A batch of events from two namespaces, an overrun among them: the scrape counts each type
    per namespace, and the overrun in its own counter too."""
    m = Metrics()

    def flush(netns: str) -> ev.Event:
        return ev.FlushPolicy(time="t", mono=0.0, netns=netns, nlmsg_pid=0, nlmsg_seq=0, ptype="main")

    m.events([flush("a"), flush("a"), flush("b"), event("lost"), flush("a")])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(m.exposition().decode())
        for s in fam.samples
        if s.name in ("xfrmwatch_events_total", "xfrmwatch_overruns_total")
    }
    assert {
        ("xfrmwatch_events_total", (("netns", "a"), ("type", "flushpolicy"))): 3.0,
        ("xfrmwatch_events_total", (("netns", "b"), ("type", "flushpolicy"))): 1.0,
        ("xfrmwatch_events_total", (("netns", ""), ("type", "overrun"))): 1.0,
        ("xfrmwatch_overruns_total", (("netns", ""),)): 1.0,
    } == samples
