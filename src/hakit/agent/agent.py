"""The per-node agent: supervisor + probes + lease + policy -> actions.

One agent process runs on every node. It reads the world (process exits,
``/status`` answers, the leader lease) into policy events, lets the pure policy
decide, and carries out the actions it returns. All decisions live in the
policy (hakit.policy); this module only does I/O and bookkeeping.

Tasks feed one queue so the policy sees events one at a time:

- the supervisor's exit callback (a process exit is seen at once, no polling);
- the probe loop (``/status`` every ``health.interval``, faster while starting);
- the lease loop (take/renew the leader lease every ``renew_interval``; a lease
  that could not be renewed in time is reported lost *before* its TTL ends, so
  the app is stopped before another node may start it: self-fencing; a lease taken
  over from a node whose lease expired is acted on only once that node is fenced,
  hakit.fencing.fence);
- the heartbeat (every 50 ms: the lease deadline, checked first on waking from a
  freeze, and this agent's own stalls, hakit.agent.stall); beside it, in a thread of its
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
  their host), so the cluster state lists the routers that exist.

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
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, assert_never

from hakit.agent.stall import HEARTBEAT, STALL_THRESHOLD, StallDetector
from hakit.agent.storeio import StoreIO
from hakit.config import Config, Mode
from hakit.contract import AppState
from hakit.coord.base import Coordinator, Event, Lease, NodeRecord
from hakit.errors import (
    CoordinationError,
    InvalidTransition,
    StoreReplacedError,
    SupervisorError,
)
from hakit.fencing.fence import (
    AGENT_ID_KEY,
    PENDING_KEY,
    FenceNeed,
    Fencer,
    Predecessor,
    read_predecessor,
    retry_delay,
    takeover_words,
)
from hakit.fencing.fence import Verdict as FenceVerdict
from hakit.fencing.watchdog import LeaseWatchdog
from hakit.health.datapath import (
    PathReport,
    forgotten_reports,
    handover_candidates,
    in_flight,
    judge_holder,
    path_lost,
    reports_in,
)
from hakit.health.probe import Observation, StatusProber, check_database
from hakit.notify import Notifier
from hakit.operator.commands import perform
from hakit.operator.intents import HANDOVER, IntentWatcher, expired_words, request_path_loss
from hakit.policy import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    Drain,
    EndHandover,
    LeaseGained,
    LeaseLost,
    PathLost,
    Paused,
    Policy,
    PolicyEvent,
    PolicySettings,
    PolicyState,
    Record,
    RequestHandover,
    Role,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    TakeLease,
    Tick,
)
from hakit.policy.rules import last_active
from hakit.supervisor import leftovers, proctable
from hakit.supervisor.launch import app_process_for, log_dir
from hakit.supervisor.leftovers import UNCLEAN_END
from hakit.supervisor.process import ExitInfo

log = logging.getLogger("hakit.agent")

# While the app is starting, probe this often so RUNNING is noticed quickly.
STARTING_PROBE_INTERVAL = 0.1
# The app answers locally: the routers' failures since then are a lost path (hakit.health.datapath).
ANSWERING = frozenset({AppState.RUNNING, AppState.FIRST_RUN})
# On shutdown, wait at most this long for the store to take the queued writes.
SHUTDOWN_FLUSH = 5.0
# While draining, how often the routers' reports are read (they publish at once when a
# draining node's last request ends).
DRAIN_POLL = 0.05


class _Wake:
    """Queued to wake the main loop when a self-fence waits (see ``Agent._self_fence``)."""


_WAKE = _Wake()


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
        self.events: asyncio.Queue[PolicyEvent | _Wake] = asyncio.Queue()
        self.epoch = 0  # the epoch of the lease this agent holds (0: none)
        self.lease_deadline = 0.0  # monotonic time by which the lease must be renewed
        self.app_state = AppState.STOPPED
        self.app_detail = ""
        # Wall time since which the app has answered /status here without a break (valid
        # while app_state is in ANSWERING): routers' failures from before do not count.
        self._answering_since = 0.0
        self._stop_requested = asyncio.Event()
        # Fencing (hakit.fencing.fence): lease losses the policy must hear before any other event;
        # the highest epoch this agent fenced itself from or gave back (never revived);
        # the promotion waiting for the old holder to be fenced.
        self._urgent: deque[LeaseLost] = deque()
        self._given_up_epoch = 0
        self._promotion: asyncio.Task[None] | None = None
        self._fence_retry_at = 0.0  # monotonic: no takeover before this after a failed fence
        self._deferred: tuple[str, int] | None = None  # (holder, epoch) a takeover was deferred for
        self._refused_store: str | None = None  # what was found at the store's path, refused
        self.agent_id = uuid.uuid4().hex  # this process, in its records: see fence.stood_down
        # Every store call of this agent, in one thread, in issue order (hakit.agent.storeio): a
        # slow or locked store never holds back this loop (probes, exits, the heartbeat).
        self.store = StoreIO(name=f"store-io-{self.node.name}")
        # Asking the store, after a stall across the lease deadline, whether the lease is
        # still ours (``_check_deadline``): no event is handled until it has answered.
        self._waking: asyncio.Task[None] | None = None
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
        # Self-fencing that a blocked main loop cannot hold back (hakit.fencing.watchdog).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watchdog = LeaseWatchdog(
            lambda: self.app.pid,
            monotonic=monotonic,
            period=min(HEARTBEAT, cfg.coordination.renew_interval / 4),
            threshold=STALL_THRESHOLD,
            grace=cfg.coordination.lease_ttl,
            on_fire=self._watchdog_fired,
        )
        # Operator commands (hakit.operator.intents) and cold starts.
        self.intents = IntentWatcher()
        self.draining = False  # switching over: the router holds new requests meanwhile
        self.served_epoch = 0  # the highest epoch this node was active under (kept in the store)
        self._published_at = float("-inf")  # monotonic: the operator loop publishes a heartbeat
        self._admin_api: Any = None  # hakit.operator.admin_api.AdminApi while serving

    # --- event sources ------------------------------------------------------

    def _on_exit(self, info: ExitInfo) -> None:
        fenced = self.app.take_fenced()
        if fenced is not None and self.epoch:
            # The shim killed the app at the lease deadline (this agent was frozen or
            # stuck): the lease is lost before the exit is heard, as for the watchdog.
            self._self_fence(fenced)
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
                        self.cfg.app.database_url, self.cfg.health.probe_timeout
                    )
                # A probe that raced with the process exit says nothing about the app,
                # nor does a timeout while this agent itself was stalled (hakit.agent.stall).
                if self.app.running and not self._stalled_timeout(observation, probe_started):
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
            if self.epoch or self.policy.may_lead(now):
                await self._try_lease(now, ttl)
            elif self.epoch == 0:
                self._publish()
            await asyncio.sleep(renew)

    async def _try_lease(self, started: float, ttl: float) -> None:
        self._check_deadline()
        if self._waking is not None:
            return  # the store is being asked on waking: that is this turn's renewal
        taking_over = not self.epoch
        if taking_over and started < self._fence_retry_at:
            return  # a fence failed lately: wait before trying (and alerting) again
        before = Predecessor(None, 0)
        try:
            if taking_over:
                # What we take over from decides whether its holder must be fenced first,
                # and whether it is dead at all (the routers' data path, hakit.health.datapath).
                before, reports = await self.store.call(self._read_before_takeover)
                if not self._holder_is_dead(before, reports):
                    return
                lease = await self.store.call(
                    self.coordinator.acquire_or_renew, self.node.name, ttl
                )
            else:
                # Under our epoch only, even if it expired meanwhile (frozen during the call):
                # atomic in the store, so it fails once another node has taken over.
                lease = await self.store.call(
                    self.coordinator.renew_epoch, self.node.name, self.epoch, ttl
                )
            unreachable = False
        except StoreReplacedError as error:
            # Not an outage: the store answers, but it is not the one whose epochs this
            # agent acted under. Renewing there could hand an epoch out twice: fence now,
            # not at the deadline, and say so once (hakit.coord.identity).
            await self._store_refused(error)
            return
        except CoordinationError as error:
            log.warning("could not renew the lease: %s", error)
            lease, unreachable = None, True
            if self.epoch and self.monotonic() < self.lease_deadline:
                return  # still inside our TTL: try again at the next renewal
            self._check_deadline()  # past it (e.g. frozen while asking): say so
        if self._refused_store is not None:
            self._refused_store = None
            self._record(
                "lease",
                f"{self.node.name} reconnected to the coordination store (a store it trusts is "
                "back at its path)",
                epoch=0,
            )
        if lease is not None and lease.holder == self.node.name:
            if lease.epoch <= self._given_up_epoch:
                # A renewal that raced with our self-fence (or a lease we gave back): never
                # act under it again; free it so the next taker gets a new epoch.
                await self._give_back(lease.epoch, "it had already fenced itself from it")
                return
            # Renewed: the lease is valid for ttl from when we asked, minus one
            # renewal interval of margin so we stop before anyone else may start.
            self.lease_deadline = started + ttl - self.cfg.coordination.renew_interval / 2
            if lease.epoch != self.epoch:
                if self.epoch:
                    self._self_fence(f"lease epoch moved from {self.epoch} to {lease.epoch}")
                    before = Predecessor(None, self._given_up_epoch, None, time.time())
                self.epoch = lease.epoch
                self._promotion = asyncio.create_task(self._promote(lease, before), name="promote")
            self._publish()
            return
        if self.epoch:
            if lease is not None:
                holder = f"{lease.holder} holds it"
            elif unreachable:
                holder = "the store is unreachable"
            else:
                holder = f"epoch {self.epoch} is no longer stored for {self.node.name}"
            self._self_fence(f"could not renew the lease: {holder}")

    async def _store_refused(self, error: StoreReplacedError) -> None:
        """The store was replaced or went back in time: fence at once, alert once."""
        log.error("%s", error)
        if self.epoch:
            self._self_fence("the coordination store was replaced or went back in time")
        if self._refused_store != error.found:
            self._refused_store = error.found
            await self._execute(Alert("fence", str(error), manual_intervention=True))

    def _read_before_takeover(self) -> tuple[Predecessor, list[PathReport]]:
        """The predecessor, and the routers' reports when its lease has expired (blocking:
        run on the store thread)."""
        before = read_predecessor(self.coordinator, self.node.name)
        lease = before.lease
        if lease is None or lease.holder == self.node.name or lease.valid_at(before.read_at):
            return before, []
        return before, reports_in(self.coordinator.cluster_state())

    def _holder_is_dead(self, before: Predecessor, reports: list[PathReport]) -> bool:
        """May this standby take the lease over (hakit.health.datapath.judge_holder)? A deferral
        is recorded once per lease it concerns, not at every turn."""
        lease = before.lease
        if lease is None or lease.holder == self.node.name or lease.valid_at(before.read_at):
            self._deferred = None  # a live lease (its holder renewed): forget the last stall
            return True
        verdict = judge_holder(
            lease,
            reports,
            before.read_at,
            ttl=self.cfg.coordination.lease_ttl,
            renew=self.cfg.coordination.renew_interval,
            patience=self.cfg.health.timeout,
        )
        key = (lease.holder, lease.epoch)
        if not verdict.take_over:
            if verdict.reason and self._deferred != key:
                self._deferred = key
                self._record(
                    "data-path",
                    verdict.reason,
                    epoch=0,
                    data={"holder": lease.holder, "witness": verdict.witness, "deferred": True},
                )
            return False
        if self._deferred == key:  # it was deferred: say why it no longer is
            self._deferred = None
            self._record(
                "data-path",
                verdict.reason,
                epoch=0,
                data={"holder": lease.holder, "witness": verdict.witness, "deferred": False},
            )
        return True

    async def _promote(self, lease: Lease, before: Predecessor) -> None:
        """Tell the policy it leads, once the old holder is fenced (hakit.fencing.fence).

        Runs beside the lease loop, which keeps renewing the lease meanwhile; the
        node record says standby until the policy has heard LeaseGained.
        """
        try:
            verdict = await self.fencer.clear_to_promote(lease, before)
        except Exception as error:  # a bug: never hold the lease without acting under it
            log.exception("fencing before the promotion under epoch %d failed", lease.epoch)
            verdict = FenceVerdict(False, f"fencing failed unexpectedly: {error!r}")
        if self.epoch != lease.epoch:
            return  # lost meanwhile: the self-fence path has told the policy
        for words in verdict.alerts:
            await self._execute(Alert("fence", words))
        if verdict.ok:
            self._fence_retry_at = 0.0
            # Over an expired lease this is a failover: the policy alerts it.
            takeover = takeover_words(before, self.node.name)
            self.events.put_nowait(LeaseGained(lease.epoch, takeover))
            return
        delay = retry_delay(self.fencer.failures, self.cfg.coordination.renew_interval)
        self._fence_retry_at = self.monotonic() + delay
        self.epoch = 0
        await self._give_back(lease.epoch, "fencing failed")
        self._publish()  # with the nodes still to fence, for any other node about to promote
        await self._execute(Alert("fence", verdict.reason))

    async def _give_back(self, epoch: int, why: str) -> None:
        """Release a lease of ``epoch`` this agent will not act under (never while its app
        may still run as active: then the lease is left to expire)."""
        self._given_up_epoch = max(self._given_up_epoch, epoch)
        if self.app.running and self.policy.view().role is Role.ACTIVE:
            return
        try:
            released = await self.store.call(self.coordinator.release, self.node.name, epoch)
        except CoordinationError as error:
            log.warning("could not give the lease of epoch %d back: %s", epoch, error)
            return
        if released:
            self._record("lease", f"{self.node.name} gave the lease of epoch {epoch} back: {why}")

    def _arm_watchdog(self) -> None:
        """The watchdog thread and the app's shim guard the lease while this node acts as
        active under it (the shim also when this whole agent is frozen, hakit.supervisor.shim)."""
        if self.epoch and self.policy.view().role is Role.ACTIVE:
            self.watchdog.arm(self.lease_deadline)
            self.app.arm(self.lease_deadline)
        else:
            self.watchdog.disarm()
            self.app.disarm()

    def _watchdog_fired(self, reason: str) -> None:
        """From the watchdog's thread: the app is killed; wake the main loop to say so."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to tell
                loop.call_soon_threadsafe(self.events.put_nowait, _WAKE)

    def _check_deadline(self) -> None:
        """Self-fence at once if the lease deadline has passed (checked on every wake-up).

        An agent that was awake at its deadline (its renewals failed: the store is
        unreachable or too slow) kills its app at once, before the TTL ends. One that
        did not run at its deadline (a stall of this agent, hakit.agent.stall, spans it:
        frozen, or a renewal frozen in flight) first asks the store (``_ask_on_waking``;
        the main loop handles no event before the answer): if the lease is still stored
        under its epoch (nobody took over: the standby saw its app answer the routers,
        hakit.health.datapath), it renews it there, atomically on the epoch, and keeps its
        app; if another node took over, or the store cannot be read in time, it kills
        its app as before.
        """
        if not self.epoch:
            return
        fired = self.watchdog.take_fired() or self.app.take_fenced()
        if fired is not None:
            # The watchdog killed the app while this loop was held up: it ran at the
            # deadline, so no stall of the agent explains it; nothing to renew on waking.
            self._self_fence(fired)
            return
        if self._waking is not None:
            return  # the store is being asked; its answer decides
        late = self.monotonic() - self.lease_deadline
        if late < 0:
            return
        why = (
            f"lease not renewed before its deadline ({late:.1f} s late: the store "
            "was too slow or this agent was stalled)"
        )
        self._tick()  # a stall that just ended is known before deciding
        stall = self.stalls.during(self.lease_deadline, self.lease_deadline)
        if stall is not None:
            self._waking = asyncio.create_task(
                self._ask_on_waking(self.epoch, late, stall.duration, why), name="waking"
            )
            return
        self._self_fence(why)

    async def _ask_on_waking(self, epoch: int, late: float, slept: float, why: str) -> None:
        """Renew the lease under ``epoch`` after a stall across its deadline, or self-fence
        when it is gone or the store does not answer within half a TTL (the watchdog's
        grace after a stall is one TTL: this answer comes first)."""
        ttl = self.cfg.coordination.lease_ttl
        patience = ttl / 2
        asked = self.monotonic()
        refusal: str | None = None
        try:
            lease = await asyncio.wait_for(
                self.store.call(self.coordinator.renew_epoch, self.node.name, epoch, ttl),
                patience,
            )
        except CoordinationError as error:
            refusal = f"the store could not be read ({error})"
        except TimeoutError:
            refusal = f"the store did not answer within {patience:.1f} s"
        else:
            if lease is None:
                refusal = (
                    f"epoch {epoch} is no longer stored for {self.node.name}: "
                    "another node took over"
                )
        finally:
            self._waking = None
        if self.epoch != epoch:
            # Fenced meanwhile (the watchdog's grace ran out): never act under it again.
            if refusal is None:
                await self._give_back(epoch, "it had already fenced itself from it")
            return
        if refusal is not None:
            self._self_fence(f"{why}; on waking, {refusal}")
            return
        self.lease_deadline = asked + ttl - self.cfg.coordination.renew_interval / 2
        self._arm_watchdog()
        self._record(
            "lease",
            f"{self.node.name} woke {late:.1f} s after its lease deadline (stalled "
            f"{slept:.1f} s); nobody took over: renewed its lease of epoch {epoch} and "
            "kept its app running",
            data={"late": round(late, 3), "stalled": round(slept, 3)},
        )
        self.events.put_nowait(_WAKE)  # the main loop handles what waited for this answer

    def _self_fence(self, reason: str) -> None:
        """The lease is gone: SIGKILL the app's group now, synchronously, before any
        other code of this agent runs; the policy hears LeaseLost before any other event
        (``run``), and its StopApp(kill=True) confirms the group is gone."""
        lost, self.epoch = self.epoch, 0
        self._given_up_epoch = max(self._given_up_epoch, lost)
        self.watchdog.disarm()
        if self.policy.view().role is Role.ACTIVE and self.app.kill_now():
            log.warning("self-fencing: killed the app (pid %s): %s", self.app.pid, reason)
        self._urgent.append(LeaseLost(lost, reason))
        self.events.put_nowait(_WAKE)

    async def _deadline_watch(self) -> None:
        """The heartbeat: self-fence the moment the lease deadline passes even if the lease
        loop is stuck, and notice this agent's own stalls.

        It ticks every 50 ms, so after the process was frozen (SIGSTOP, a VM snapshot)
        it is among the first code to run on waking; the main loop and the probe and
        lease loops also check the deadline before they act.
        """
        period = min(HEARTBEAT, self.cfg.coordination.renew_interval / 4)
        while True:
            await asyncio.sleep(period)
            self._check_deadline()
            self._tick()

    def _tick(self) -> None:
        stall = self.stalls.tick(self.monotonic())
        if stall is not None:
            self._record(
                "stall",
                f"agent on {self.node.name} was stalled for {stall.duration:.1f} s (frozen, "
                "swapping or blocked); check failures overlapping the stall are not counted",
                data={"seconds": round(stall.duration, 3)},
            )

    def _stalled_timeout(self, observation: Observation, started: float) -> bool:
        """True (and recorded) for a TIMEOUT whose probe overlapped a stall of this agent."""
        self._check_deadline()
        self._tick()
        stall = self.stalls.during(started, self.monotonic())
        if observation.state is not AppState.TIMEOUT or stall is None:
            return False
        self._record(
            "status",
            f"ignored: /status of {self.node.name} timed out, but the agent was stalled for "
            f"{stall.duration:.1f} s during the probe (the timer fired late, not the app)",
        )
        return True

    # --- the loop -----------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.watchdog.start()
        self._record("agent", f"agent for {self.node.name} started (pid {os.getpid()})")
        await self._sweep_leftovers()
        # A cluster paused before this agent started: the policy hears it before Boot.
        await self._feed_intents(
            await self._read_intents(), time.time(), boot=await self._boot_event()
        )
        if self.cfg.cluster.mode is Mode.RESTART_ONLY:
            pass  # the single node takes the lease at its first lease-loop turn
        await self._start_admin_api()
        tasks = [
            asyncio.create_task(self._probe_loop(), name="probe"),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._deadline_watch(), name="deadline"),
            asyncio.create_task(self._operator_loop(), name="operator"),
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
                event = getter.result()
                # The lease first: a lost lease (or a deadline that passed while this agent
                # was frozen) is handled before any event queued earlier, such as the exit
                # of an app a fence command killed, which would otherwise be "restarted".
                self._check_deadline()
                if self._waking is not None:
                    # Woken past the lease deadline: nothing is decided before the store
                    # has said whether the lease is still ours (events wait in the queue).
                    await asyncio.wait({self._waking})
                while self._urgent:
                    await self._handle(self._urgent.popleft())
                if isinstance(event, _Wake):
                    continue
                if isinstance(event, LeaseGained) and event.epoch != self.epoch:
                    log.info("lease of epoch %d lost before its promotion", event.epoch)
                    continue
                await self._handle(event)
        finally:
            stop_waiter.cancel()
            for task in tasks:
                task.cancel()
            if self._promotion is not None:
                self._promotion.cancel()
            if self._waking is not None:
                self._waking.cancel()
                self._waking = None
            if self._admin_api is not None:
                await self._admin_api.close()
            try:
                await self._shutdown()
            finally:
                self.watchdog.stop()
                self.store.close()

    async def _check_port_free(self) -> None:
        """Refuse to start beside another listener on the app's port: the app would fail
        ("Address already in use") while the probes reached that process instead."""
        port = self.node.port
        taken = await asyncio.to_thread(leftovers.listeners, port)
        if taken:
            pid = taken[0]
            command = proctable.command_line(pid)[:200] or "command unknown"
            raise SupervisorError(
                f"cannot start the app: port {port} is taken by pid {pid} ({command}); "
                "stop that process first (the probes would reach it instead of the app)"
            )

    async def _sweep_leftovers(self) -> None:
        """Before anything else: stop what an earlier agent of this node left running
        (hakit.supervisor.leftovers), and say so."""
        found = await asyncio.to_thread(
            leftovers.sweep,
            node=self.node.name,
            cluster=self.cfg.cluster.name,
            port=self.node.port,
            pid_file=leftovers.pid_file_path(self.cfg.cluster.state_dir, self.node.name),
            group_dir=self.app.cgroup_path,
        )
        data: dict[str, Any] = {
            "leftovers": found.stopped,
            UNCLEAN_END: found.unclean_end,
            "rebooted": found.rebooted,
        }
        if found.previous_agent is not None:
            data["previous_agent_pid"] = found.previous_agent
        previous = (
            f"its previous agent (pid {found.previous_agent})"
            if found.previous_agent is not None
            else "its previous agent"
        )
        if found.stopped:
            self._record(
                "agent",
                f"agent for {self.node.name} found what an earlier agent left running and "
                f"stopped it before doing anything else: {'; '.join(found.stopped)}",
                epoch=0,
                data=data,
            )
        elif found.rebooted:
            self._record(
                "agent",
                f"{self.node.name} came back after its host restarted: {previous} went down "
                "with it",
                epoch=0,
                data=data,
            )
        elif found.unclean_end:
            self._record(
                "agent",
                f"{previous} on {self.node.name} ended without stopping its app (killed or "
                "crashed) while the host stayed up; its shim had stopped the app already",
                epoch=0,
                data=data,
            )
        if found.blocked is not None:
            await self._execute(Alert("failed-start", found.blocked, manual_intervention=True))

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

    async def _execute(self, action: Action) -> None:
        match action:
            case StartApp():
                self._record("start", action.reason, actor=action.actor)
                self.draining = False
                self.app_state = AppState.STARTING
                self._publish()
                # The policy must hear how the start went before any other event.
                try:
                    await self._check_port_free()
                    pid = await self.app.start()
                except SupervisorError as error:
                    self.app_state = AppState.STOPPED
                    await self._handle(AppStartFailed(str(error)))
                else:
                    await self._handle(AppStarted(pid))
            case StopApp():
                self._record("stop", action.reason, actor=action.actor)
                self.app_state = AppState.STOPPING
                self._publish()
                if action.kill:
                    await self.app.kill()
                else:
                    await self.app.stop(action.reason)
            case StepDown():
                self.draining = False
                epoch, self.epoch = self.epoch, 0
                self._given_up_epoch = max(self._given_up_epoch, epoch)
                released = False
                if epoch:
                    try:
                        released = await self.store.call(
                            self.coordinator.release, self.node.name, epoch
                        )
                    except CoordinationError as error:
                        log.warning("could not release the lease: %s", error)
                self._record(
                    action.kind,
                    action.reason
                    + ("" if released else " (lease was not held; it will expire on its own)"),
                    epoch=epoch,
                    actor=action.actor,
                )
            case Alert():
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
            case Record():
                self._record(action.kind, action.reason, actor=action.actor)
            case Drain():
                self._record("drain", action.reason, actor=action.actor)
                self.draining = True
                self._publish()
                # The store takes the record first; then every live router must see it (no
                # new request reaches the app) and finish what it sent here.
                await self.store.flush(self.cfg.coordination.lease_ttl)
                await self._wait_drained(action.actor)
            case TakeLease():
                await self._take_lease_by_force(action)
            case EndHandover():
                await self._end_handover(action)
            case RequestHandover():
                await self._request_handover(action)
            case _:
                assert_never(action)

    async def _shutdown(self) -> None:
        """Planned stop: stop the app, then hand the lease over."""
        if self.app.running:
            self._record("stop", f"agent for {self.node.name} is shutting down; stopping the app")
            with contextlib.suppress(SupervisorError):
                await self.app.stop("agent shutdown")
        if self.epoch:
            epoch, self.epoch = self.epoch, 0
            self.store.submit(
                f"release the lease of epoch {epoch}",
                self.coordinator.release,
                self.node.name,
                epoch,
            )
            self._record("lease", f"{self.node.name} released the lease on shutdown", epoch=epoch)
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

    # --- operator commands (hakit.operator: intents, admin_api) and cold starts ----

    async def _read_intents(self) -> tuple[Mapping[str, dict[str, Any]], Lease | None] | None:
        """The cluster state and the lease; None when the store cannot be read (nothing
        changed as far as this agent can tell: it keeps what it knew)."""

        def read() -> tuple[Mapping[str, dict[str, Any]], Lease | None]:
            return self.coordinator.cluster_state(), self.coordinator.current_lease()

        try:
            return await self.store.call(read, what="read the operator's intents")
        except CoordinationError as error:
            log.warning("could not read the operator's intents: %s", error)
            return None

    async def _feed_intents(
        self,
        read: tuple[Mapping[str, dict[str, Any]], Lease | None] | None,
        now: float,
        boot: Boot | None = None,
    ) -> None:
        """Queue the policy events for what the operator changed (``boot``: after a pause,
        before the rest, which only a booted policy can take)."""
        events, expired = self.intents.observe(*read, now) if read is not None else ([], None)
        if boot is not None:
            first = [event for event in events if isinstance(event, Paused)]
            events = [*first, boot, *(event for event in events if event not in first)]
        for event in events:
            self.events.put_nowait(event)
        if expired is not None:
            try:
                cleared = await self.store.call(self.coordinator.clear_state, HANDOVER, expired)
            except CoordinationError as error:
                log.warning("could not clear an expired handover: %s", error)
                return
            if cleared:  # one agent wins the compare-and-delete and says so
                self._record(
                    str(expired.get("kind", "switchover")), expired_words(expired, self.cfg)
                )

    async def _operator_loop(self) -> None:
        """Read the operator's intents every renewal; publish a heartbeat record too."""
        renew = self.cfg.coordination.renew_interval
        while True:
            await asyncio.sleep(renew)
            read = await self._read_intents()
            await self._feed_intents(read, time.time())
            if read is not None:
                await self._watch_path(read[0])
                self._forget_silent_routers(read[0])
            if self.monotonic() - self._published_at >= renew:
                self._publish()  # so operators can tell a live agent (hakit.operator.intents)

    def _served(self, epoch: int) -> int:
        self.served_epoch = max(self.served_epoch, epoch)
        return self.served_epoch

    async def _boot_event(self) -> Boot:
        """What the store remembers of who served last, for a cold start (item 9)."""

        def read() -> tuple[Sequence[NodeRecord], Lease | None]:
            return self.coordinator.nodes(), self.coordinator.current_lease()

        try:
            records, lease = await self.store.call(read, what="read the node records at boot")
        except CoordinationError as error:
            log.warning("could not read the node records at boot: %s", error)
            return Boot()
        eligible = {node.name for node in self.cfg.nodes if not node.no_failover}
        served: dict[str, int] = {}
        for record in records:
            value = record.detail.get("served_epoch")
            epoch = value if isinstance(value, int) else 0
            if record.role == "active":
                epoch = max(epoch, record.epoch)
            if record.node == self.node.name:
                self.served_epoch = epoch
            if record.node in eligible:
                served[record.node] = epoch
        if lease is not None and lease.valid_at(time.time()):
            # Not a cold start: an active runs; if it dies, the usual failover applies.
            return Boot(self.served_epoch)
        newest_node, newest_epoch = last_active(served)
        return Boot(self.served_epoch, newest_epoch, newest_node)

    async def _start_admin_api(self) -> None:
        if self.node.admin_port is None:
            return
        from hakit.errors import HakitError
        from hakit.operator.admin_api import AdminApi, load_token

        try:
            token = load_token(self.cfg)
            if token is None:
                raise HakitError("[admin] has no token or token_file")
            api = AdminApi(token, self._admin_perform)
            await api.start(self.node.host, self.node.admin_port)
        except HakitError as error:
            self._record("internal", f"admin API of {self.node.name} not served: {error}")
            return
        self._admin_api = api

    async def _admin_perform(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.store.call(
            perform, self.coordinator, self.cfg, operation, params, time.time()
        )

    async def _take_lease_by_force(self, action: TakeLease) -> None:
        """Forced failover: the lease moves here under a new epoch; the lease loop then
        renews it and promotes (after fencing the old holder, hakit.fencing.fence)."""
        ttl, reason, actor = self.cfg.coordination.lease_ttl, action.reason, action.actor
        try:
            before = await self.store.call(self.coordinator.current_lease)
            lease = await self.store.call(self.coordinator.take_over, self.node.name, ttl)
        except CoordinationError as error:
            self._record(
                "failover", f"{reason}: could not take the lease: {error}", epoch=0, actor=actor
            )
            return
        intent = self.intents.handover or {}
        if before is not None and before.holder != self.node.name:
            if intent.get("force"):
                self.fencer.skip_next = True
            why = f"the operator forced a failover away from its lease of epoch {before.epoch}"
            self.fencer.pending[before.holder] = FenceNeed(
                before.holder, before.epoch, time.time(), why
            )
        self._record(
            "failover", f"{reason}: took epoch {lease.epoch}", epoch=lease.epoch, actor=actor
        )

    # --- the routers' path to this node (hakit.health.datapath) -----------------------------------

    async def _watch_path(self, state: Mapping[str, dict[str, Any]]) -> None:
        """Active with its app RUNNING here: have the routers lost their path to it? Then
        the policy hears PathLost (it asks for the handover once)."""
        view = self.policy.view()
        if not self.epoch or view.role is not Role.ACTIVE or view.state is not PolicyState.RUNNING:
            return
        if self.app_state not in ANSWERING:
            return  # only an app that answers here tells a lost path from a dead app
        reports = reports_in(state)
        if not reports:
            return
        try:
            records = await self.store.call(self.coordinator.nodes)
        except CoordinationError as error:
            log.warning("could not read the node records: %s", error)
            return
        now = time.time()
        candidates = handover_candidates(
            self.node.name,
            [(node.name, node.no_failover) for node in self.cfg.nodes],
            {record.node: record for record in records},
            now,
            alive_within=self.cfg.coordination.lease_ttl,
        )
        loss = path_lost(
            self.node.name,
            reports,
            candidates,
            now,
            fall=self.cfg.health.fall,
            patience=self.cfg.health.timeout,
            answering_since=self._answering_since,
        )
        if loss is not None:
            self.events.put_nowait(PathLost(loss.target, loss.reason))

    async def _wait_drained(self, actor: str) -> None:
        """Until every live router reports this node draining with no request in flight to
        it (hakit.health.datapath.in_flight), bounded by router.drain_timeout; said either way."""
        started = self.monotonic()
        limit = self.cfg.router.drain_timeout
        total, busy = 0, ["?"]
        while True:
            try:
                state = await self.store.call(self.coordinator.cluster_state, what="drain")
            except CoordinationError as error:
                log.warning("could not read the routers' reports while draining: %s", error)
            else:
                now = time.time()
                fresh = [report for report in reports_in(state) if report.fresh(now)]
                total, busy = in_flight(self.node.name, fresh, now, math.inf)
                if not busy:
                    break
            waited = self.monotonic() - started
            if waited >= limit:
                self._record(
                    "drain",
                    f"drain_timeout ({limit:g} s) passed with {total} request"
                    f"{'s' if total != 1 else ''} in flight to {self.node.name} at router"
                    f"{'s' if len(busy) != 1 else ''} {', '.join(busy)}: stopping the app anyway",
                    data={"in_flight": total, "routers": busy, "seconds": round(waited, 3)},
                    actor=actor,
                )
                return
            await asyncio.sleep(DRAIN_POLL)
        self._record(
            "drain",
            f"drained: no router sends new requests to {self.node.name} and none is in "
            f"flight to it ({self.monotonic() - started:.2f} s)",
            data={"in_flight": 0, "seconds": round(self.monotonic() - started, 3)},
            actor=actor,
        )

    def _forget_silent_routers(self, state: Mapping[str, dict[str, Any]]) -> None:
        """Active: remove the reports of routers silent for an hour (hakit.health.datapath).

        One agent is enough (the active one); the removal is a compare-and-delete, so
        a router that published again meanwhile keeps its report."""
        if not self.epoch or self.policy.view().role is not Role.ACTIVE:
            return
        now = time.time()
        for key, value, report in forgotten_reports(state, now):
            self.store.submit(
                f"remove the report of router {report.router}",
                self._forget_router,
                key,
                dict(value),
                f"router {report.router}: report removed, silent for "
                f"{(now - report.at) / 3600:.1f} h",
                key=f"forget {key}",  # asked again each renewal until done: once is enough
            )

    def _forget_router(self, key: str, value: dict[str, Any], words: str) -> None:
        """On the store's thread: compare-and-delete one report, and say so when done."""
        if self.coordinator.clear_state(key, value):
            log.info("%s", words)

    async def _request_handover(self, action: RequestHandover) -> None:
        """Write the path-loss handover intent; the policy then hears it like a switchover."""
        try:
            intent = await self.store.call(
                request_path_loss,
                self.coordinator,
                self.cfg,
                self.node.name,
                action.target,
                self.epoch,
                action.reason,
                time.time(),
            )
        except CoordinationError as error:
            log.warning("could not ask for the handover to %s: %s", action.target, error)
            return
        if intent is None:
            self._record(action.kind, f"{action.reason}; not asked: another handover is under way")
            return
        self._record(action.kind, action.reason, data={"target": action.target})
        await self._feed_intents(await self._read_intents(), time.time())

    async def _end_handover(self, action: EndHandover) -> None:
        intent = self.intents.handover
        if intent is None:
            return
        # Not awaited: the store runs it before the record below and before any later read.
        self.store.submit(
            "clear the handover intent", self.coordinator.clear_state, HANDOVER, intent
        )
        self._record(str(intent.get("kind", "switchover")), action.reason, actor=action.actor)

    # --- reporting ----------------------------------------------------------

    def _publish(self, role: str | None = None) -> None:
        """Queue this node's record for the store (hakit.agent.storeio: not awaited; a newer
        record replaces one still waiting)."""
        self._check_deadline()  # never claim a lease whose deadline has passed
        if self._waking is not None:
            return  # asking the store whether the lease is still ours: claim nothing yet
        self._arm_watchdog()
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
                "draining": self.draining,
                "served_epoch": self._served(view.epoch),
            },
        )
        self._published_at = self.monotonic()
        record.detail[AGENT_ID_KEY] = self.agent_id
        if self.fencer.pending:
            record.detail[PENDING_KEY] = self.fencer.published()
        self.store.submit(
            f"publish the record of {self.node.name}",
            self.coordinator.publish_node,
            record,
            key="node-record",
        )

    def _record(
        self,
        kind: str,
        reason: str,
        *,
        epoch: int | None = None,
        data=None,
        actor: str = "",  # who caused it, when not this agent (an operator's command)
    ) -> None:
        log.info("%s: %s", kind, reason)
        event = Event(
            id=0,
            time=time.time(),
            node=self.node.name,
            kind=kind,
            reason=reason,
            epoch=self.epoch if epoch is None else epoch,
            actor=actor or self.actor,
            data=data or {},
        )
        self.store.submit(
            f"record the {kind} event {reason!r}", self.coordinator.append_event, event
        )
