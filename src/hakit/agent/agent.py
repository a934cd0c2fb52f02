"""The per-node agent: supervisor + probes + lease + policy -> actions.

One agent process runs on every node. It reads the world (process exits,
``/status`` answers, the leader lease) into policy events, lets the pure policy
decide, and carries out the actions it returns. All decisions live in the
policy (hakit.policy); the agent only does I/O and bookkeeping. This module wires
the parts together: the policy's actions are carried out by ``ActionRunner``
(hakit.agent.actions), the lease's life is kept by ``LeaseKeeper`` (hakit.agent.lease),
the operator's side by ``OperatorSide`` (hakit.agent.operator_side), what it does once
as it starts (the sweep of leftovers, the cold start's ``Boot``) by
hakit.agent.startup, and the app's command line and environment are built beside
its supervisor (hakit.supervisor.launch).

Tasks feed one queue so the policy sees events one at a time:

- the supervisor's exit callback (a process exit is seen at once, no polling);
- the probe loop (``/status`` every ``health.interval``, faster while starting);
- the lease loop (take/renew the leader lease every ``renew_interval``; a lease
  that could not be renewed in time is reported lost *before* its TTL ends, so
  the app is stopped before another node may start it: self-fencing; a lease taken
  over from a node whose lease expired is acted on only once that node is fenced,
  hakit.fencing.fence; all of it hakit.agent.lease);
- the heartbeat (hakit.agent.heartbeat: the lease deadline, checked first on waking
  from a freeze, and this agent's own stalls, hakit.agent.stall); beside it, in a thread of its
  own, the lease watchdog (hakit.fencing.watchdog.LeaseWatchdog) kills the app at the deadline
  even if this loop is held up (the hard guarantee: no code of this loop is trusted
  to run in time);
- the operator loop (the operator's intents in the store every ``renew_interval``:
  pause, resume, switchover, forced failover; hakit.operator.intents), beside the admin
  API that writes them (hakit.operator.admin_api, on the node's ``admin_port``); it also
  reads the routers' data-path reports (hakit.health.datapath): an active node the
  routers cannot reach while its app answers here hands over to a standby they
  reach (PathLost -> a ``path-loss`` handover). The active node's agent also
  removes the reports of routers silent for an hour (crashed, or gone with
  their host), so the cluster state lists the routers that exist
  (hakit.agent.operator_side).

Every call to the coordination store runs on one thread of its own, in the order
issued (hakit.agent.storeio): node records and events are queued without waiting, reads
and lease calls are awaited. A slow or locked store (SQLite's busy timeout is 5 s)
so never holds back the probes, the supervisor or the heartbeat.

The data path also decides two lease questions. A standby takes over an
expired lease only when no fresh router report shows its holder still
answering (an agent stall is not a death; the deferral is recorded once). An
agent that wakes after its lease deadline renews the lease under its own epoch
if nobody took over, and keeps its app; otherwise it kills the app first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from hakit.agent.actions import ActionRunner
from hakit.agent.backups import BackupSchedule
from hakit.agent.drills import DrillSchedule
from hakit.agent.failsafe import FailsafeSide
from hakit.agent.heartbeat import Heartbeat
from hakit.agent.lease import LeaseKeeper, Wake
from hakit.agent.operator_side import OperatorSide
from hakit.agent.replication import ReplicationSide
from hakit.agent.reporting import Reporter
from hakit.agent.snapshots import SnapshotSchedule, active_epoch
from hakit.agent.stall import STALL_THRESHOLD, StallDetector
from hakit.agent.startup import boot_event, sweep_leftovers
from hakit.agent.storeio import StoreIO
from hakit.config import Config, Mode, Storage
from hakit.contract import AppState
from hakit.coord.base import Coordinator, NodeRecord
from hakit.errors import HakitError, SupervisorError
from hakit.fencing.fence import AGENT_ID_KEY, PENDING_KEY, Fencer
from hakit.health.probe import StatusProber, check_database
from hakit.history.kinds import CAUSE, EventCause, EventKind
from hakit.notify import Notifier
from hakit.policy import (
    Action,
    AppExited,
    Boot,
    LeaseGained,
    Policy,
    PolicyEvent,
    PolicySettings,
    StatusObserved,
    Tick,
)
from hakit.policy.failsafe import boot_hold
from hakit.service.sdnotify import ServiceNotifier
from hakit.supervisor.exits import ExitInfo
from hakit.supervisor.launch import app_process_for, log_dir

log = logging.getLogger("hakit.agent")

# While the app is starting, probe this often so RUNNING is noticed quickly.
STARTING_PROBE_INTERVAL = 0.1
# The app answers locally: the routers' failures since then are a lost path (hakit.health.datapath).
ANSWERING = frozenset({AppState.RUNNING, AppState.FIRST_RUN})
# On shutdown, wait at most this long for the store to take the queued writes.
SHUTDOWN_FLUSH = 5.0


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
        self.policy = Policy(PolicySettings.from_config(cfg, node_name), self.node.name)
        self.actor = f"agent:{self.node.name}"
        self.app = app_process_for(cfg, self.node, self._on_exit, threshold=STALL_THRESHOLD)
        self.prober = StatusProber(
            cfg.app.health, self.node.host, self.node.port, cfg.health.probe_timeout
        )
        self.events: asyncio.Queue[PolicyEvent | Wake] = asyncio.Queue()
        self.app_state = AppState.STOPPED
        self.app_detail = ""
        # Wall time since which the app has answered /status here without a break (valid
        # while app_state is in ANSWERING): routers' failures from before do not count.
        self._answering_since = 0.0
        self._stop_requested = asyncio.Event()
        self.agent_id = uuid.uuid4().hex  # this process, in its records: see fence.stood_down
        # Every store call of this agent, in one thread, in issue order (hakit.agent.storeio): a
        # slow or locked store never holds back this loop (probes, exits, the heartbeat).
        self.store = StoreIO(name=f"store-io-{self.node.name}")
        # Its record and history events, queued on that thread (hakit.agent.reporting).
        self.reporter = Reporter(
            self.node.name,
            coordinator,
            self.store,
            actor=self.actor,
            same_record_pause=cfg.coordination.renew_interval / 2,
            monotonic=monotonic,
        )
        self.fencer = Fencer(
            cfg,
            self.node.name,
            coordinator,
            lambda kind, reason, data: self._record(kind, reason, epoch=0, data=data),
            log_dir(cfg) / f"fence-{self.node.name}.log",
            call=self.store.call,
        )
        # Stalls of this agent itself (hakit.agent.stall): probes overlapping one do not count.
        self.stalls = StallDetector()
        # systemd's readiness and watchdog (Type=notify, WatchdogSec=): a no-op elsewhere.
        self.service = ServiceNotifier.from_environment()
        # The lease deadline on time, the watchdog's pings, this agent's own stalls.
        self.heartbeat = Heartbeat(
            self.node.name,
            self.stalls,
            self.service,
            lambda kind, reason, data: self._record(kind, reason, data=data),
            monotonic,
        )
        # The leader lease: its epoch and deadline, promotion, self-fencing and the
        # watchdog thread (hakit.agent.lease).
        self.lease = LeaseKeeper(
            cfg,
            self.node.name,
            coordinator,
            self.store,
            self.policy,
            self.app,
            self.fencer,
            self.stalls,
            self.events,
            monotonic=monotonic,
            record=self._record,
            publish=self._publish,
            alert=self._execute,
            tick=self.heartbeat.tick,
        )
        self.heartbeat.lease = self.lease
        # The operator's intents, draining, the routers' path (hakit.agent.operator_side).
        self.operator = OperatorSide(
            cfg,
            self.node,
            coordinator,
            self.store,
            self.policy,
            self.lease,
            self.fencer,
            self.events,
            monotonic=monotonic,
            record=self._record,
            publish=self._publish,
            answering_since=self._answering,
        )
        # Failsafe mode (hakit.agent.failsafe): rounds of confirmations while the store is
        # unreachable, and this node's answers to the active's.
        self.failsafe = FailsafeSide(
            cfg,
            self.node.name,
            coordinator,
            self.store,
            self.policy,
            self.lease,
            token=_admin_token(cfg, cfg.coordination.failsafe, "failsafe mode"),
            monotonic=monotonic,
            record=self._record,
            alert=self._execute,
        )
        if self.failsafe.enabled:
            self.operator.failsafe_answer = self.failsafe.answer
        # Replicated storage (hakit.agent.replication): the active ships generations, a
        # standby applies them; its copy's age gates a takeover.
        self.replication = ReplicationSide(
            cfg,
            self.node,
            coordinator,
            self.store.call,
            # Captures once the app answers (its database exists), under the epoch held.
            active_epoch=lambda: (
                self.lease.epoch if self.lease.epoch and self.app_state in ANSWERING else 0
            ),
            cold=lambda: not self.app.running and not self.lease.epoch,
            served_epoch=lambda: self.served_epoch,
            record=self._record,
            token=_admin_token(
                cfg, cfg.cluster.storage is Storage.REPLICATED, "replicated storage"
            ),
            held_epoch=lambda: self.lease.epoch,
            handover=lambda: self.operator.intents.handover,
            publish=self._publish,
        )
        if self.replication.enabled:
            self.lease.takeover_gate = self.replication.allows_takeover
            self.operator.served_repository = self.replication.repository
        # [snapshot] interval: the running active captures, in a process of its own
        # (hakit.agent.snapshots).
        self.snapshots = SnapshotSchedule(
            cfg,
            self.node.name,
            active=lambda: active_epoch(self.policy.view(), self.lease.epoch),
            record=self._record,
            alert=self._execute,
        )
        # [backup] interval and health checks (hakit.agent.backups).
        self.backups = BackupSchedule(
            cfg,
            self.node.name,
            active=lambda: active_epoch(self.policy.view(), self.lease.epoch),
            record=self._record,
            alert=self._execute,
        )
        # [backup] drill_interval: the standbys drill (hakit.agent.drills); a node that holds
        # the lease, its app running or not yet, is no standby.
        self.drills = DrillSchedule(
            cfg,
            self.node.name,
            active=lambda: self.lease.epoch,
            record=self._record,
            alert=self._execute,
        )
        self.served_epoch = 0  # the highest epoch this node was active under (kept in the store)
        # The policy's events decided and its actions carried out (hakit.agent.actions).
        self.actions = ActionRunner(
            self.node.name,
            self.node.port,
            self.policy,
            self.app,
            self.lease,
            self.operator,
            self.replication,
            notifier,
            monotonic=monotonic,
            record=self._record,
            publish=self._publish,
            set_app_state=self._set_app_state,
        )

    # --- event sources ------------------------------------------------------

    def _on_exit(self, info: ExitInfo) -> None:
        fenced = self.app.take_fenced()
        if fenced is not None and self.lease.epoch:
            # The shim killed the app at the lease deadline (this agent was frozen or
            # stuck): the lease is lost before the exit is heard, as for the watchdog.
            self.lease.self_fence(fenced)
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
                probe_started = self.monotonic()
                observation = await self.prober.probe()
                database_reachable: bool | None = None
                if observation.state is AppState.ERROR:
                    database_reachable = await check_database(
                        self.cfg.database_url_of(self.node), self.cfg.health.probe_timeout
                    )
                # A probe that raced with the process exit says nothing about the app,
                # nor does a timeout while this agent itself was stalled (hakit.agent.stall).
                if self.app.running and not self.heartbeat.stalled_timeout(
                    observation, probe_started
                ):
                    if observation.state != self.app_state:
                        if observation.state in ANSWERING and self.app_state not in ANSWERING:
                            # Every other change of app_state (start, stop, exit) is to a
                            # state outside ANSWERING: this is the start of an unbroken run.
                            self._answering_since = time.time()
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
            if self.lease.epoch or self.policy.may_lead(now):
                await self.lease.try_lease(now, ttl)
            elif self.lease.epoch == 0:
                self._publish()
            await asyncio.sleep(renew)

    def _set_app_state(self, state: AppState) -> None:
        self.app_state = state

    def _answering(self) -> float | None:
        """Since when the app has answered /status here without a break (None: it does not)."""
        return self._answering_since if self.app_state in ANSWERING else None

    # --- the loop -----------------------------------------------------------

    async def run(self) -> None:
        self.lease.start(asyncio.get_running_loop())
        self._record(EventKind.AGENT, f"agent for {self.node.name} started (pid {os.getpid()})")
        if self.failsafe.enabled:
            # A promise made before this agent (re)started is forgotten: keep it anyway.
            self.policy.hold_failsafe(
                boot_hold(self.monotonic(), self.failsafe.times),
                "failsafe mode: an agent that starts may have promised an active before",
            )
        await sweep_leftovers(
            self.cfg, self.node, self.app.cgroup_path, record=self._record, alert=self._execute
        )
        # A cluster paused before this agent started: the policy hears it before Boot.
        await self.operator.feed_intents(
            await self.operator.read_intents(), time.time(), boot=await self._boot_event()
        )
        if self.cfg.cluster.mode is Mode.RESTART_ONLY:
            pass  # the single node takes the lease at its first lease-loop turn
        await self.operator.start_admin_api()
        tasks = [
            asyncio.create_task(self._probe_loop(), name="probe"),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self.heartbeat.run(), name="deadline"),
            asyncio.create_task(self._operator_loop(), name="operator"),
        ]
        if self.failsafe.enabled:
            tasks.append(asyncio.create_task(self.failsafe.run(), name="failsafe"))
        if self.replication.enabled:
            tasks.append(asyncio.create_task(self.replication.run(), name="replication"))
        if self.snapshots.enabled:
            tasks.append(asyncio.create_task(self.snapshots.run(), name="snapshots"))
        tasks.append(asyncio.create_task(self.backups.run(), name="backups"))  # idle if off
        tasks.append(asyncio.create_task(self.drills.run(), name="drills"))  # idle if off
        stop_waiter = asyncio.create_task(self._stop_requested.wait())
        # Started: leftovers swept, the store read, the loops running.
        self.service.ready(f"node {self.node.name}: started (pid {os.getpid()})")
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
                event = getter.result()
                # The lease first: a lost lease (or a deadline that passed while this agent
                # was frozen) is handled before any event queued earlier, such as the exit
                # of an app a fence command killed, which would otherwise be "restarted".
                self.lease.check_deadline()
                # Woken past the lease deadline: nothing is decided before the store
                # has said whether the lease is still ours (events wait in the queue).
                await self.lease.answered()
                while (lost := self.lease.next_urgent()) is not None:
                    await self.actions.handle(lost)
                if isinstance(event, Wake):
                    continue
                if isinstance(event, LeaseGained) and event.epoch != self.lease.epoch:
                    log.info("lease of epoch %d lost before its promotion", event.epoch)
                    continue
                # Replicated storage: a promotion's data-loss window, a switchover's target.
                self.replication.heard(event)
                await self.actions.handle(event)
        finally:
            self.service.stopping(
                f"node {self.node.name}: stopping the app, handing the lease over"
            )
            stop_waiter.cancel()
            for task in tasks:
                task.cancel()
            self.lease.cancel()
            await self.operator.close_admin_api()
            await self.failsafe.close()
            try:
                await self._shutdown()
            finally:
                self.lease.stop()
                self.store.close()
                self.service.close()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def _execute(self, action: Action) -> None:
        """The alerts of the parts made before the dispatch (the lease keeper, failsafe
        mode, the schedules, the sweep), carried out as the policy's actions are."""
        await self.actions.execute(action)

    async def _shutdown(self) -> None:
        """Planned stop: stop the app, then hand the lease over."""
        if self.app.running:
            self._record(
                EventKind.STOP,
                f"agent for {self.node.name} is shutting down; stopping the app",
                data={CAUSE: EventCause.SHUTDOWN},
            )
            with contextlib.suppress(SupervisorError):
                await self.app.stop("agent shutdown")
        epoch = self.lease.release_on_shutdown()
        if epoch:
            self._record(
                EventKind.LEASE,
                f"{self.node.name} released the lease on shutdown",
                epoch=epoch,
                data={CAUSE: EventCause.SHUTDOWN},
            )
        self.app_state = AppState.STOPPED
        self._publish(role="stopped")
        await self.prober.aclose()
        # What is still queued (the records above, any the store was slow to take) goes out
        # before the process ends, unless the store keeps it waiting too long.
        if not await self.store.flush(SHUTDOWN_FLUSH):
            log.warning(
                "the coordination store did not take %d queued writes within %.0f s of the "
                "shutdown; they are lost",
                self.store.queued(),
                SHUTDOWN_FLUSH,
            )

    # --- the operator loop (hakit.agent.operator_side) and cold starts (hakit.agent.startup)

    async def _operator_loop(self) -> None:
        """Read the operator's intents every renewal; publish a heartbeat record too."""
        renew = self.cfg.coordination.renew_interval
        while True:
            await asyncio.sleep(renew)
            read = await self.operator.read_intents()
            await self.operator.feed_intents(read, time.time())
            if read is not None:
                await self.operator.watch_path(read[0])
                self.operator.forget_silent_routers(read[0])
            if self.monotonic() - self.reporter.published_at >= renew:
                self._publish()  # so operators can tell a live agent (hakit.operator.intents)

    def _served(self, epoch: int) -> int:
        self.served_epoch = max(self.served_epoch, epoch)
        return self.served_epoch

    async def _boot_event(self) -> Boot:
        """What the store remembers of who served last, for a cold start (hakit.agent.startup)."""
        boot, self.served_epoch = await boot_event(
            self.cfg, self.node.name, self.coordinator, self.store, self.served_epoch
        )
        return boot

    # --- reporting ----------------------------------------------------------

    def _publish(self, role: str | None = None) -> None:
        """Queue this node's record for the store (hakit.agent.storeio: not awaited; a newer
        record replaces one still waiting)."""
        self.lease.check_deadline()  # never claim a lease whose deadline has passed
        if self.lease.asking:
            return  # asking the store whether the lease is still ours: claim nothing yet
        self.lease.arm_watchdog()
        view = self.policy.view()
        record = NodeRecord(
            node=self.node.name,
            role=role or (view.role if self.lease.epoch else "standby"),
            app_state=str(self.app_state),
            epoch=self.lease.epoch,
            updated_at=time.time(),
            detail={
                "pid": self.app.pid,
                "agent_pid": os.getpid(),
                "policy": str(view.state),
                "message": self.app_detail,
                "draining": self.operator.draining,
                "served_epoch": self._served(view.epoch),
            },
        )
        record.detail[AGENT_ID_KEY] = self.agent_id
        record.detail.update(self.replication.detail(time.time()))
        if self.fencer.pending:
            record.detail[PENDING_KEY] = self.fencer.published(time.time())
        self.reporter.publish(record)

    def _record(
        self,
        kind: EventKind,
        reason: str,
        *,
        epoch: int | None = None,
        data: Mapping[str, Any] | None = None,
        actor: str = "",  # who caused it, when not this agent (an operator's command)
    ) -> None:
        self.reporter.record(
            kind,
            reason,
            epoch=self.lease.epoch if epoch is None else epoch,
            data=data,
            actor=actor,
        )


def _admin_token(cfg: Config, wanted: bool, who: str) -> str | None:
    """The admin token this agent asks the other agents with, when ``wanted`` (failsafe
    mode; a standby reading the active's repository); an unreadable one is logged."""
    if not wanted:
        return None
    from hakit.operator.admin_api import load_token

    try:
        return load_token(cfg)
    except HakitError as error:
        log.error("%s: cannot read the admin token: %s", who, error)
        return None
