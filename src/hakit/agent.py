"""The per-node agent: supervisor + probes + lease + policy -> actions.

One agent process runs on every node. It reads the world (process exits,
``/status`` answers, the leader lease) into policy events, lets the pure policy
decide, and carries out the actions it returns. All decisions live in
``policy.py``; this module only does I/O and bookkeeping.

Three tasks feed one queue so the policy sees events one at a time:

- the supervisor's exit callback (a process exit is seen at once, no polling);
- the probe loop (``/status`` every ``health.interval``, faster while starting);
- the lease loop (take/renew the leader lease every ``renew_interval``; a lease
  that could not be renewed in time is reported lost *before* its TTL ends, so
  the app is stopped before another node may start it: self-fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from hakit.config import Config, Mode, NodeConfig
from hakit.contract import AppState
from hakit.coord.base import Coordinator, Event, NodeRecord
from hakit.errors import CoordinationError, InvalidTransition, SupervisorError
from hakit.notify import Notifier
from hakit.policy import (
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    LeaseGained,
    LeaseLost,
    Policy,
    PolicySettings,
    Record,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    Tick,
)
from hakit.probe import StatusProber, check_database
from hakit.supervisor import AppProcess, ExitInfo

log = logging.getLogger("hakit.agent")

PolicyEvent = (
    Boot | LeaseGained | LeaseLost | AppStarted | AppStartFailed | AppExited | StatusObserved | Tick
)

# While the app is starting, probe this often so RUNNING is noticed quickly.
STARTING_PROBE_INTERVAL = 0.1


def substitutions(cfg: Config, node: NodeConfig) -> dict[str, str]:
    """Values for the ``{placeholders}`` allowed in app commands and env."""
    return {
        "node": node.name,
        "host": node.host,
        "port": str(node.port),
        "route": node.route_name,
        "home": str(cfg.app.home),
        "database_url": cfg.app.database_url,
    }


def render_command(
    command: tuple[str, ...] | str | None, values: dict[str, str]
) -> tuple[str, ...] | str | None:
    if command is None:
        return None
    if isinstance(command, str):
        return command.format_map(values)
    return tuple(part.format_map(values) for part in command)


def log_dir(cfg: Config) -> Path:
    return cfg.cluster.state_dir / "logs"


class Agent:
    """Runs one node: call ``await agent.run()``; cancel or ``request_stop()`` to end."""

    def __init__(
        self,
        cfg: Config,
        node_name: str,
        coordinator: Coordinator,
        notifier: Notifier,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.node = cfg.node(node_name)
        self.coordinator = coordinator
        self.notifier = notifier
        self.monotonic = monotonic
        self.policy = Policy(PolicySettings.from_config(cfg), self.node.name)
        self.actor = f"agent:{self.node.name}"
        values = substitutions(cfg, self.node)
        log_dir(cfg).mkdir(parents=True, exist_ok=True)
        env = {key: value.format_map(values) for key, value in cfg.app.env.items()}
        env.setdefault("HAKIT_NODE", self.node.name)
        start = render_command(cfg.app.start, values)
        assert start is not None
        self.app = AppProcess(
            start=start,
            stop=render_command(cfg.app.stop, values),
            env=env,
            cwd=None,
            log_path=log_dir(cfg) / f"app-{self.node.name}.log",
            stop_timeout=cfg.app.stop_timeout,
            on_exit=self._on_exit,
        )
        self.prober = StatusProber(
            cfg.app.health, self.node.host, self.node.port, cfg.health.probe_timeout
        )
        self.events: asyncio.Queue[PolicyEvent] = asyncio.Queue()
        self.epoch = 0  # the epoch of the lease this agent holds (0: none)
        self.lease_deadline = 0.0  # monotonic time by which the lease must be renewed
        self.app_state = AppState.STOPPED
        self.app_detail = ""
        self._stop_requested = asyncio.Event()

    # --- event sources ------------------------------------------------------

    def _on_exit(self, info: ExitInfo) -> None:
        self.app_state = AppState.STOPPED
        self.events.put_nowait(
            AppExited(
                pid=info.pid,
                returncode=info.returncode,
                oom=info.oom,
                expected=info.expected,
                description=info.description,
            )
        )

    async def _probe_loop(self) -> None:
        interval = self.cfg.health.interval
        while True:
            if self.app.running:
                observation = await self.prober.probe()
                database_reachable: bool | None = None
                if observation.state is AppState.ERROR:
                    database_reachable = await check_database(
                        self.cfg.app.database_url, self.cfg.health.probe_timeout
                    )
                # A probe that raced with the process exit says nothing about the app.
                if self.app.running:
                    if observation.state != self.app_state:
                        self.app_state = observation.state
                        self.app_detail = observation.detail
                        self._publish()
                    self.events.put_nowait(
                        StatusObserved(observation.state, observation.detail, database_reachable)
                    )
            else:
                self.events.put_nowait(Tick())
            starting = self.app.running and self.app_state not in (
                AppState.RUNNING,
                AppState.FIRST_RUN,
                AppState.MAINTENANCE,
            )
            await asyncio.sleep(STARTING_PROBE_INTERVAL if starting else interval)

    async def _lease_loop(self) -> None:
        ttl = self.cfg.coordination.lease_ttl
        renew = self.cfg.coordination.renew_interval
        while True:
            now = self.monotonic()
            if self.epoch or self.policy.may_lead(now):
                await self._try_lease(now, ttl)
            elif self.epoch == 0:
                self._publish()
            await asyncio.sleep(renew)

    async def _try_lease(self, started: float, ttl: float) -> None:
        try:
            lease = await asyncio.to_thread(self.coordinator.acquire_or_renew, self.node.name, ttl)
        except CoordinationError as error:
            log.warning("could not renew the lease: %s", error)
            lease = None
            if self.epoch and self.monotonic() < self.lease_deadline:
                return  # still inside our TTL: try again at the next renewal
        if lease is not None and lease.holder == self.node.name:
            # Renewed: the lease is valid for ttl from when we asked, minus one
            # renewal interval of margin so we stop before anyone else may start.
            self.lease_deadline = started + ttl - self.cfg.coordination.renew_interval / 2
            if lease.epoch != self.epoch:
                previous, self.epoch = self.epoch, lease.epoch
                if previous:
                    self.events.put_nowait(
                        LeaseLost(previous, f"lease epoch moved from {previous} to {lease.epoch}")
                    )
                self.events.put_nowait(LeaseGained(lease.epoch))
            self._publish()
            return
        if self.epoch:
            lost, self.epoch = self.epoch, 0
            holder = f"{lease.holder} holds it" if lease is not None else "the store is unreachable"
            self.events.put_nowait(LeaseLost(lost, f"could not renew the lease: {holder}"))

    async def _deadline_watch(self) -> None:
        """Self-fence when the lease deadline passes even if the lease loop is stuck."""
        while True:
            await asyncio.sleep(self.cfg.coordination.renew_interval / 4)
            if self.epoch and self.monotonic() >= self.lease_deadline:
                lost, self.epoch = self.epoch, 0
                self.events.put_nowait(
                    LeaseLost(lost, "lease not renewed before its deadline (store too slow)")
                )

    # --- the loop -----------------------------------------------------------

    async def run(self) -> None:
        self._record("agent", f"agent for {self.node.name} started (pid {os.getpid()})")
        self.events.put_nowait(Boot())
        if self.cfg.cluster.mode is Mode.RESTART_ONLY:
            pass  # the single node takes the lease at its first lease-loop turn
        tasks = [
            asyncio.create_task(self._probe_loop(), name="probe"),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._deadline_watch(), name="deadline"),
        ]
        stop_waiter = asyncio.create_task(self._stop_requested.wait())
        try:
            while not self._stop_requested.is_set():
                getter = asyncio.create_task(self.events.get())
                done, _ = await asyncio.wait(
                    {getter, stop_waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in tasks:
                    if task in done:
                        task.result()  # a crashed loop is a bug: raise it
                if getter not in done:
                    getter.cancel()
                    continue
                await self._handle(getter.result())
        finally:
            stop_waiter.cancel()
            for task in tasks:
                task.cancel()
            await self._shutdown()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def _handle(self, event: PolicyEvent) -> None:
        try:
            actions = self.policy.handle(event, self.monotonic())
        except InvalidTransition as error:
            # A bug, not a cluster problem: keep the node supervised and say so.
            self._record("internal", str(error))
            return
        for action in actions:
            await self._execute(action)
        self._publish()

    async def _execute(self, action: object) -> None:
        if isinstance(action, StartApp):
            self._record("start", action.reason)
            self.app_state = AppState.STARTING
            self._publish()
            # The policy must hear how the start went before any other event.
            try:
                pid = await self.app.start()
            except SupervisorError as error:
                self.app_state = AppState.STOPPED
                await self._handle(AppStartFailed(str(error)))
            else:
                await self._handle(AppStarted(pid))
        elif isinstance(action, StopApp):
            self._record("stop", action.reason)
            self.app_state = AppState.STOPPING
            self._publish()
            if action.kill:
                await self.app.kill()
            else:
                await self.app.stop(action.reason)
        elif isinstance(action, StepDown):
            epoch, self.epoch = self.epoch, 0
            released = False
            if epoch:
                try:
                    released = await asyncio.to_thread(
                        self.coordinator.release, self.node.name, epoch
                    )
                except CoordinationError as error:
                    log.warning("could not release the lease: %s", error)
            self._record(
                "failover",
                action.reason
                + ("" if released else " (lease was not held; it will expire on its own)"),
                epoch=epoch,
            )
        elif isinstance(action, Alert):
            self._record(
                "alert",
                action.reason,
                data={"alert": action.kind, "manual_intervention": action.manual_intervention},
            )
            await self.notifier.alert(
                action.kind,
                self.node.name,
                action.reason,
                manual_intervention=action.manual_intervention,
                epoch=self.epoch,
            )
        elif isinstance(action, Record):
            self._record(action.kind, action.reason)
        else:
            raise TypeError(f"agent cannot execute {action!r}")

    async def _shutdown(self) -> None:
        """Planned stop: stop the app, then hand the lease over."""
        if self.app.running:
            self._record("stop", f"agent for {self.node.name} is shutting down; stopping the app")
            with contextlib.suppress(SupervisorError):
                await self.app.stop("agent shutdown")
        if self.epoch:
            with contextlib.suppress(CoordinationError):
                self.coordinator.release(self.node.name, self.epoch)
            self._record("lease", f"{self.node.name} released the lease on shutdown")
            self.epoch = 0
        self.app_state = AppState.STOPPED
        with contextlib.suppress(CoordinationError):
            self._publish(role="stopped")
        await self.prober.aclose()

    # --- reporting ----------------------------------------------------------

    def _publish(self, role: str | None = None) -> None:
        view = self.policy.view()
        record = NodeRecord(
            node=self.node.name,
            role=role or (view.role if self.epoch else "standby"),
            app_state=str(self.app_state),
            epoch=self.epoch,
            updated_at=time.time(),
            detail={
                "pid": self.app.pid,
                "agent_pid": os.getpid(),
                "policy": str(view.state),
                "message": self.app_detail,
            },
        )
        try:
            self.coordinator.publish_node(record)
        except CoordinationError as error:
            log.warning("could not publish node state: %s", error)

    def _record(self, kind: str, reason: str, *, epoch: int | None = None, data=None) -> None:
        log.info("%s: %s", kind, reason)
        event = Event(
            id=0,
            time=time.time(),
            node=self.node.name,
            kind=kind,
            reason=reason,
            epoch=self.epoch if epoch is None else epoch,
            actor=self.actor,
            data=data or {},
        )
        try:
            self.coordinator.append_event(event)
        except CoordinationError as error:
            log.warning("could not record event %r: %s", reason, error)
