"""`xfrmwatch run`: the headless daemon.

One root nursery holds two: the outputs (each with its own bounded queue) and
the pipelines (one per watched namespace, started and stopped as namespaces
come and go) plus the metrics endpoint and the signal handler.

* READY (sd_notify) once every pipeline has joined its groups and applied its
  first dump, and every output is started.
* SIGHUP: reload the configuration and rules atomically (a bad new file keeps
  the old one running, and the log says why), apply namespace changes, swap
  changed outputs, and reopen output files.
* SIGTERM/SIGINT: stop the pipelines, let the outputs drain their queues
  within ``daemon.shutdown_timeout``, exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from . import config as config_mod
from . import events as ev
from .backoff import Backoff
from .config import Config
from .detect.alerting import Alerter
from .errors import CapabilityError, UserError
from .netlink.netns import NETNS_RUN_DIR, entered
from .netlink.proc import ProcFile, xfrm_stat
from .output.base import Output, OutputConfig
from .output.registry import create
from .pipeline import PipelineConfig, start_pipeline
from .timestamps import utc_precise

if TYPE_CHECKING:
    from .detect.sigma import RuleSet
    from .mirror import Mirror

log = structlog.get_logger("xfrmwatch.daemon")

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class MetricsSink(Protocol):
    """What the daemon reports (:class:`xfrmwatch.output.metrics.Metrics` is the real one)."""

    def events(self, events: list[ev.Event]) -> None: ...
    def dropped(self, output: str, n: int) -> None: ...
    def queue(self, output: str, depth: int) -> None: ...
    def outputs_configured(self, names: Iterable[str]) -> None: ...
    def rules_loaded(self, rules: Iterable[tuple[str, str, str]]) -> None: ...
    def namespace_watched(self, netns: str) -> None: ...
    def mirror(self, netns: str, mirror: Mirror) -> None: ...
    def xfrm_stat(self, netns: str, counters: dict[str, int]) -> None: ...
    def forget(self, netns: str) -> None: ...
    async def serve(
        self, listen: str, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


class NoMetrics:
    """Metrics off: every report is ignored."""

    def events(self, events: list[ev.Event]) -> None:
        pass

    def dropped(self, output: str, n: int) -> None:
        pass

    def queue(self, output: str, depth: int) -> None:
        pass

    def outputs_configured(self, names: Iterable[str]) -> None:
        pass

    def rules_loaded(self, rules: Iterable[tuple[str, str, str]]) -> None:
        pass

    def namespace_watched(self, netns: str) -> None:
        pass

    def mirror(self, netns: str, mirror: Mirror) -> None:
        pass

    def xfrm_stat(self, netns: str, counters: dict[str, int]) -> None:
        pass

    def forget(self, netns: str) -> None:
        pass

    async def serve(
        self, listen: str, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(("", 0))


# --- systemd and capabilities -------------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Send a notification to systemd (a datagram to $NOTIFY_SOCKET); False if none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError as exc:
            log.warning("sd_notify failed", error=exc.strerror)
            return False
    return True


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_capabilities(cfg: Config) -> None:
    """One line if a needed capability is missing; a warning for unneeded ones."""
    caps = effective_caps()
    other_ns = cfg.watch.all_netns or any(n for n in cfg.watch.netns)
    if not caps & (1 << CAP_NET_ADMIN):
        raise CapabilityError(
            "xfrmwatch run needs CAP_NET_ADMIN (XFRM netlink); run it with "
            "AmbientCapabilities=CAP_NET_ADMIN (see contrib/systemd/xfrmwatch.service)"
        )
    if other_ns and not caps & (1 << CAP_SYS_ADMIN):
        raise CapabilityError(
            "watching other network namespaces needs CAP_SYS_ADMIN (setns); add it to "
            "AmbientCapabilities, or watch only the service's own namespace"
        )
    needed = (1 << CAP_NET_ADMIN) | ((1 << CAP_SYS_ADMIN) if other_ns else 0)
    extra = caps & ~needed
    if extra:
        log.warning(
            "running with more capabilities than needed",
            extra=bin(extra).count("1"),
            needed="CAP_NET_ADMIN" + (", CAP_SYS_ADMIN" if other_ns else ""),
        )


_PR_CAP_AMBIENT = 47  # linux/prctl.h
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def clear_ambient_capabilities() -> None:
    """The programs the daemon starts (ECS/OCSF render workers, exec hooks) get none of its
    capabilities: a process that is not root passes its ambient set (the unit's
    AmbientCapabilities=) across execve, so it is emptied; the daemon keeps its own effective
    and permitted sets."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:  # (Linux < 4.3: none to clear)
        log.debug("ambient capabilities not cleared", error=os.strerror(ctypes.get_errno()))


# --- fan-out to outputs ----------------------------------------------------------------------


@dataclass
class _Running:
    output: Output
    send: trio.MemorySendChannel[ev.Event]
    config: OutputConfig
    dropped: int = 0


class OutputStartError(UserError):
    """An output could not start (bad path, unreachable file system...)."""

    exit_code = 2


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class FanOut:
    """Publishes each event to every output that wants it, never blocking:
    a full queue drops the event for that output only, and counts it.

    Each output runs under a supervisor: if it fails after it started, it is
    restarted with backoff (what was in its queue then is counted as dropped).
    """

    def __init__(self, nursery: trio.Nursery, metrics: MetricsSink) -> None:
        self.nursery = nursery
        self.metrics = metrics
        self.outputs: dict[str, _Running] = {}

    async def apply(self, configs: list[OutputConfig]) -> None:
        """Start new and changed outputs first; only once all started, stop the removed
        and replaced ones (their queues drain).  If one cannot start, the running set
        is left as it was and :class:`OutputStartError` says why."""
        wanted = {(c.name or str(c.__struct_config__.tag)): c for c in configs}
        before = dict(self.outputs)
        changed = [n for n, c in wanted.items() if n not in before or before[n].config != c]
        started: list[tuple[str, trio.CancelScope]] = []
        try:
            for name in changed:
                scope = await self.nursery.start(self._supervise, name, wanted[name])
                started.append((name, scope))
        except BaseException:
            for name, scope in started:
                scope.cancel()
                if name in before:
                    self.outputs[name] = before[name]
                else:
                    self.outputs.pop(name, None)
            raise
        for name, run in before.items():
            if name not in wanted or name in changed:
                run.send.close()
                if name not in wanted:
                    del self.outputs[name]
                log.info("output stopped", output=name)
        for name in changed:
            log.info("output started", output=name, type=str(wanted[name].__struct_config__.tag))
        self.metrics.outputs_configured(self.outputs)

    async def _supervise(
        self,
        name: str,
        config: OutputConfig,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        backoff = Backoff(1.0, 30.0)
        first = True
        with trio.CancelScope() as scope:
            while True:
                try:
                    out = create(config, self)
                    send, recv = trio.open_memory_channel[ev.Event](config.queue)
                    run = _Running(out, send, config, dropped=self.outputs[name].dropped if name in self.outputs else 0)
                    async with trio.open_nursery() as n:
                        await n.start(out.run, recv)
                        self.outputs[name] = run
                        if first:
                            first = False
                            task_status.started(scope)
                    return  # its queue was closed and drained: done
                except Exception as exc:
                    reason = f"{type(_leaf(exc)).__name__}: {_leaf(exc)}"
                    if first:
                        raise OutputStartError(f"output {name!r} cannot start: {reason}") from None
                    lost = send.statistics().current_buffer_used
                    if lost:
                        self.dropped(name, lost)
                    log.error("output failed: restarting", output=name, error=reason, lost=lost)
                await backoff.sleep()

    def dropped(self, name: str, n: int) -> None:
        """Events an output could not deliver (full queue, retries exhausted, a crash):
        the :class:`~xfrmwatch.output.base.DropSink` of every output."""
        self.metrics.dropped(name, n)
        run = self.outputs.get(name)
        if run is not None:
            run.dropped += n
            if run.dropped in (n, 10, 100, 1000) or run.dropped % 10000 < n:
                log.warning("output dropping events", output=name, dropped=run.dropped)

    def publish(self, e: ev.Event) -> None:
        self.publish_all([e])

    def publish_all(self, events: list[ev.Event]) -> None:
        """:meth:`publish` each of ``events``, in order: one pass per output."""
        self.metrics.events(events)
        for name, run in self.outputs.items():
            send = run.send.send_nowait
            wants = None if run.config.wants_all() else run.config.wants
            for e in events:
                if wants is not None and not wants(e):
                    continue
                try:
                    send(e)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self.dropped(name, 1)

    def report(self) -> None:
        for name, run in self.outputs.items():
            self.metrics.queue(name, run.send.statistics().current_buffer_used)

    def reopen(self) -> None:
        for run in self.outputs.values():
            run.output.reopen()

    def close_all(self) -> None:
        for run in self.outputs.values():
            run.send.close()
        dropped = {n: r.dropped for n, r in self.outputs.items() if r.dropped}
        if dropped:
            log.warning("events dropped per output since start", **dropped)


# --- pipelines per namespace -------------------------------------------------------------------


@dataclass
class _Pipe:
    scope: trio.CancelScope
    alerter: Alerter | None
    config: Any = None
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class Daemon:
    cfg: Config
    path: str
    metrics: MetricsSink = field(default_factory=NoMetrics)
    fan: FanOut | None = None
    pipes: dict[str, _Pipe] = field(default_factory=dict)
    mirrors: dict[str, Any] = field(default_factory=dict)
    on_ready: Callable[[], None] | None = None

    def wanted_netns(self) -> set[str]:
        names = set(self.cfg.watch.netns)
        if self.cfg.watch.all_netns:
            try:
                names |= set(os.listdir(NETNS_RUN_DIR))
            except FileNotFoundError:
                pass
        return names

    #: the rules compiled for the current config: shared by every namespace (each has its own state)
    ruleset: RuleSet | None = None

    @staticmethod
    def _load_rules(cfg: Config) -> RuleSet | None:
        if not cfg.rules.enabled:
            return None
        from .detect.pack import load

        return load(cfg.rules.paths or None, default_suppress=cfg.rules.suppress)

    def _use_rules(self, ruleset: RuleSet | None) -> None:
        self.ruleset = ruleset
        if ruleset is not None:
            self.metrics.rules_loaded((r.rule_id, r.title, r.level) for r in ruleset.rules if r.output)

    def _alerter(self) -> Alerter | None:
        """The rules for one namespace: the shared rule set, a state of its own."""
        return None if self.ruleset is None else Alerter(self.ruleset)

    async def _pipeline(
        self, netns: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        w = self.cfg.watch
        pcfg = PipelineConfig(
            netns=netns or None,
            aevents=w.aevents,
            acquire={"auto": None, "on": True, "off": False}[w.acquire],
            rcvbuf=w.rcvbuf,
            overdue_share=self.cfg.rules.overdue_share,
            history_factor=self.cfg.tunnels.history_factor,
            liveness_interval=self.cfg.tunnels.liveness_interval,
            stall_after=self.cfg.tunnels.stall_after,
        )
        scope = trio.CancelScope()
        alerter = self._alerter()
        self.pipes[netns] = _Pipe(scope, alerter, pcfg)
        started = False
        try:
            with scope:
                async with trio.open_nursery() as n:
                    recv, mirror, source = await start_pipeline(n, pcfg, alerter)
                    self.mirrors[netns] = mirror
                    self.metrics.namespace_watched(netns)
                    log.info(
                        "watching", netns=netns, **source.describe(), sas=len(mirror.sas),
                        policies=len(mirror.policies),
                    )  # fmt: skip
                    task_status.started()
                    started = True
                    assert self.fan is not None
                    publish = self.fan.publish_all
                    async with recv:
                        async for batch in recv:
                            publish(batch)
        except UserError as exc:
            log.error("cannot watch namespace", netns=netns, error=str(exc))
            if not started:
                task_status.started()
        except Exception as exc:
            log.error("pipeline failed", netns=netns, error=f"{type(exc).__name__}: {exc}")
            if not started:
                task_status.started()
        finally:
            pipe = self.pipes.pop(netns, None)
            if pipe is not None:
                pipe.done.set()
            self.mirrors.pop(netns, None)
            self.metrics.forget(netns)

    async def sync_netns(self, nursery: trio.Nursery) -> None:
        wanted = self.wanted_netns()
        for name in list(self.pipes):
            if name not in wanted:
                log.info("namespace gone: stop watching", netns=name)
                self.pipes[name].scope.cancel()
        for name in sorted(wanted - set(self.pipes)):
            await nursery.start(self._pipeline, name)

    async def _watch_netns(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(self.cfg.watch.scan_interval)
            await self.sync_netns(nursery)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(5)
            if self.fan is not None:
                self.fan.report()
            for netns, mirror in list(self.mirrors.items()):
                self.metrics.mirror(netns, mirror)
                try:
                    with entered(netns or None):
                        pf = ProcFile("/proc/net/xfrm_stat")
                    self.metrics.xfrm_stat(netns, xfrm_stat(pf.read()))
                    pf.close()
                except UserError:
                    pass

    async def reload(self, nursery: trio.Nursery) -> None:
        """Apply a new configuration atomically, or keep the running one and say why."""
        try:
            new = config_mod.load(self.path)
            ruleset = self._load_rules(new)
            assert self.fan is not None
            await self.fan.apply(new.output)
        except UserError as exc:
            log.error("reload failed: keeping the running configuration", error=str(exc).replace("\n", "; "))
            return
        old_watch, old_rules, old_tunnels = self.cfg.watch, self.cfg.rules, self.cfg.tunnels
        self.cfg = new
        self._use_rules(ruleset)
        self.fan.reopen()
        restart = (
            new.watch != old_watch or new.rules.overdue_share != old_rules.overdue_share or new.tunnels != old_tunnels
        )
        stopping: list[_Pipe] = []
        for pipe in list(self.pipes.values()):
            if restart or (pipe.alerter is None) != (ruleset is None):
                pipe.scope.cancel()  # restarted below with the new settings (a fresh dump)
                stopping.append(pipe)
            elif pipe.alerter is not None and ruleset is not None:
                pipe.alerter.use(ruleset)
        with trio.move_on_after(10):
            for pipe in stopping:
                await pipe.done.wait()
        await self.sync_netns(nursery)
        log.info("configuration reloaded", path=self.path, pipelines_restarted=restart)

    async def _serve_signals(self, signals: Any, pipes_n: trio.Nursery) -> None:
        sd_notify("READY=1\nSTATUS=watching " + ", ".join(repr(n) for n in sorted(self.pipes)))
        assert self.fan is not None
        log.info("ready", namespaces=sorted(self.pipes), outputs=sorted(self.fan.outputs))
        pipes_n.start_soon(self._watch_netns, pipes_n)
        pipes_n.start_soon(self._housekeeping)
        if self.on_ready is not None:
            self.on_ready()
        async for sig in signals:
            if sig == signal.SIGHUP:
                sd_notify("RELOADING=1")
                await self.reload(pipes_n)
                sd_notify("READY=1")
            else:
                sd_notify("STOPPING=1")
                log.info("stopping", signal=signal.Signals(sig).name)
                return

    async def run(self) -> int:
        check_capabilities(self.cfg)
        clear_ambient_capabilities()
        self._use_rules(self._load_rules(self.cfg))  # bad rules: fail now, with file:line
        async with trio.open_nursery() as outputs_n:
            self.fan = FanOut(outputs_n, self.metrics)
            await self.fan.apply(self.cfg.output)
            # signals are received from here on, the first dumps included (a SIGTERM while
            # they are read stops at once, with status 0; a SIGHUP then is moot: the
            # configuration was just read)
            with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as pipes_n:
                    if self.cfg.metrics.enabled:
                        await pipes_n.start(self.metrics.serve, self.cfg.metrics.listen)
                    stopping: list[int] = []
                    async with trio.open_nursery() as starting:
                        starting.start_soon(_stop_while_starting, signals, starting.cancel_scope, stopping)
                        await self.sync_netns(pipes_n)
                        starting.cancel_scope.cancel()  # started: stop watching
                    if not stopping:
                        await self._serve_signals(signals, pipes_n)
                    else:
                        sd_notify("STOPPING=1")
                        log.info("stopping", signal=signal.Signals(stopping[0]).name)
                    pipes_n.cancel_scope.cancel()
            # pipelines stopped: let the outputs drain, within the deadline
            self.fan.close_all()
            outputs_n.cancel_scope.deadline = trio.current_time() + self.cfg.daemon.shutdown_timeout
        log.info("stopped", at=utc_precise(time.time()))
        return 0


async def _stop_while_starting(signals: Any, starting: trio.CancelScope, stopping: list[int]) -> None:
    """While the start runs (``starting`` is cancelled when it is over), a SIGTERM or SIGINT
    cancels it."""
    async for sig in signals:
        if sig != signal.SIGHUP:
            stopping.append(sig)
            starting.cancel()
            return
