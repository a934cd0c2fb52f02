"""The leader lease's life on one node: take, renew, promote, give back, self-fence.

``LeaseKeeper`` owns what this agent knows of its lease: the epoch it holds (0: none),
the deadline by which it must be renewed, the epochs it fenced itself from or gave
back (never acted under again), the promotion waiting for the old holder to be fenced
(hakit.fencing.fence), the wait after a failed fence, the takeover deferred while the
routers still reach the holder (hakit.health.datapath), the question asked of the store
on waking after a stall across the deadline, the store refused as replaced
(hakit.coord.identity), and the lease losses the policy must hear before any other
event. It also arms the lease watchdog (hakit.fencing.watchdog) and the app's shim.

The agent (hakit.agent.agent) drives it: its lease loop calls ``try_lease`` every
renewal, its heartbeat and main loop ``check_deadline``; what the keeper decides goes
back to the agent's event queue (``LeaseGained``, and ``WAKE`` to have the main loop
take the urgent ``LeaseLost`` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from hakit.agent.stall import STALL_THRESHOLD, StallDetector
from hakit.agent.storeio import StoreIO
from hakit.config import Config, derived_timings
from hakit.coord.base import Coordinator, Lease
from hakit.errors import CoordinationError, StoreReplacedError
from hakit.fencing.fence import (
    Fencer,
    Predecessor,
    read_predecessor,
    retry_delay,
    takeover_words,
)
from hakit.fencing.fence import Verdict as FenceVerdict
from hakit.fencing.watchdog import LeaseWatchdog
from hakit.health.datapath import PathReport, judge_holder, reports_in
from hakit.history.facts import FAILSAFE, MISSING
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert, LeaseGained, LeaseLost, Policy, PolicyEvent, Role
from hakit.policy.failsafe import FENCED
from hakit.supervisor.process import AppProcess

log = logging.getLogger("hakit.agent")


class Wake:
    """Queued to wake the agent's main loop when a self-fence waits (``LeaseKeeper.self_fence``)."""


WAKE = Wake()


@dataclass(frozen=True, slots=True)
class SeenLease:
    """The lease as the store last answered this agent's lease loop (None: no lease stored),
    and the monotonic time the question was asked (before the answer: counted from there,
    the lease looks shorter than it is, never longer)."""

    lease: Lease | None
    asked: float

    def at(self, now: float) -> Lease | None:
        """The lease counted down to ``now`` (monotonic), as hakit.coord.view.ClusterView.at:
        what the store judged, less the time elapsed since on this agent's clock."""
        lease = self.lease
        if lease is None:
            return None
        return replace(lease, remaining=lease.remaining - max(0.0, now - self.asked))

    def recent(self, now: float, within: float) -> bool:
        """Asked less than ``within`` seconds before ``now`` (monotonic)."""
        return 0 <= now - self.asked < within


class LeaseKeeper:
    """This node's hold on the leader lease (see the module's docstring).

    ``record(kind, reason, *, epoch=None, data=None)`` writes the history (the agent's),
    ``publish()`` this node's record, ``alert(Alert)`` carries out an alert, ``tick()``
    notices a stall of the agent that just ended (hakit.agent.stall).
    """

    def __init__(
        self,
        cfg: Config,
        node: str,
        coordinator: Coordinator,
        store: StoreIO,
        policy: Policy,
        app: AppProcess,
        fencer: Fencer,
        stalls: StallDetector,
        events: asyncio.Queue[PolicyEvent | Wake],
        *,
        monotonic: Callable[[], float],
        record: Callable[..., None],
        publish: Callable[[], None],
        alert: Callable[[Alert], Awaitable[None]],
        tick: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.timings = derived_timings(cfg)
        self.node = node
        self.coordinator = coordinator
        self.store = store
        self.policy = policy
        self.app = app
        self.fencer = fencer
        self.stalls = stalls
        self.events = events
        self.monotonic = monotonic
        self._record = record
        self._publish = publish
        self._alert = alert
        self._tick = tick
        self.epoch = 0  # the epoch of the lease this agent holds (0: none)
        self.lease_deadline = 0.0  # monotonic time by which the lease must be renewed
        # Fencing (hakit.fencing.fence): lease losses the policy must hear before any other event;
        # the highest epoch this agent fenced itself from or gave back (never revived);
        # the promotion waiting for the old holder to be fenced.
        self._urgent: deque[LeaseLost] = deque()
        self._given_up_epoch = 0
        self._promotion: asyncio.Task[None] | None = None
        self._fence_retry_at = 0.0  # monotonic: no takeover before this after a failed fence
        self._deferred: tuple[str, int] | None = None  # (holder, epoch) a takeover was deferred for
        self._refused_store: str | None = None  # what was found at the store's path, refused
        # Failsafe mode (hakit.policy.failsafe, hakit.agent.failsafe): when the lease was last
        # renewed (monotonic, when asked), the serving deadline the last complete round of confirmations bought, and who did
        # not confirm in the last round (None: it was complete, or none was asked).
        self.renewed_at = float("-inf")
        # The lease as the lease loop's last read or renewal found it: the operator loop
        # reads the same lease every renewal and takes this one instead while it is recent
        # (hakit.agent.operator_side.read_intents): one store read less per renewal.
        self.seen: SeenLease | None = None
        self.failsafe_deadline = 0.0
        self.failsafe_missing: dict[str, str] | None = None
        # Asking the store, after a stall across the lease deadline, whether the lease is
        # still ours (``check_deadline``): no event is handled until it has answered.
        self._waking: asyncio.Task[None] | None = None
        # Self-fencing that a blocked main loop cannot hold back (hakit.fencing.watchdog).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.watchdog = LeaseWatchdog(
            lambda: self.app.pid,
            monotonic=monotonic,
            period=self.timings.heartbeat,
            threshold=STALL_THRESHOLD,
            grace=self.timings.watchdog_grace,
            on_fire=self._watchdog_fired,
        )
        # Asked before taking over a dead holder's lease (hakit.agent.replication): False
        # keeps this node a standby for this turn.
        self.takeover_gate: Callable[[], bool] | None = None

    # --- the agent's side ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The watchdog thread starts; it wakes ``loop`` when it kills the app."""
        self._loop = loop
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()

    def cancel(self) -> None:
        """The agent is ending: no promotion, no question on waking goes on."""
        if self._promotion is not None:
            self._promotion.cancel()
        if self._waking is not None:
            self._waking.cancel()
            self._waking = None

    @property
    def asking(self) -> bool:
        """The store is being asked, on waking, whether the lease is still ours."""
        return self._waking is not None

    async def answered(self) -> None:
        """Until the store has answered the question asked on waking (if one is asked)."""
        if self._waking is not None:
            await asyncio.wait({self._waking})

    def next_urgent(self) -> LeaseLost | None:
        """The next lease loss the policy must hear before any other event (None: none)."""
        return self._urgent.popleft() if self._urgent else None

    async def step_down(self) -> tuple[int, bool]:
        """Release the lease held (StepDown): the epoch it was, and whether it was released."""
        epoch, self.epoch = self.epoch, 0
        self._given_up_epoch = max(self._given_up_epoch, epoch)
        released = False
        if epoch:
            try:
                released = await self.store.call(self.coordinator.release, self.node, epoch)
            except CoordinationError as error:
                log.warning("could not release the lease: %s", error)
        return epoch, released

    def release_on_shutdown(self) -> int:
        """Queue the release of the lease held (the epoch it was; 0: none was held)."""
        if not self.epoch:
            return 0
        epoch, self.epoch = self.epoch, 0
        self.store.submit(
            f"release the lease of epoch {epoch}",
            self.coordinator.release,
            self.node,
            epoch,
        )
        return epoch

    # --- take and renew ------------------------------------------------------------------

    def _gate_open(self, before: Predecessor) -> bool:
        """Replicated storage: whether this node's copy may lead, asked only when a takeover
        is possible at all (no lease, or an expired one); hakit.agent.replication records
        why not."""
        lease = before.lease
        if self.takeover_gate is None or (lease is not None and lease.valid):
            return True  # a live lease: the store refuses anyway
        return self.takeover_gate()

    async def try_lease(self, started: float, ttl: float) -> None:
        self.check_deadline()
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
                asked = self.monotonic()
                before, reports = await self.store.call(self._read_before_takeover)
                self.seen = SeenLease(before.lease, asked)
                if not self._holder_is_dead(before, reports) or not self._gate_open(before):
                    return
                lease = await self._acquire(ttl)  # None too while a failsafe promise holds
            else:
                # Under our epoch only, even if it expired meanwhile (frozen during the call):
                # atomic in the store, so it fails once another node has taken over.
                lease = await self.store.call(
                    self.coordinator.renew_epoch, self.node, self.epoch, ttl
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
            self.check_deadline()  # past it (e.g. frozen while asking): say so
        self._note_reconnected()
        self._note_seen(lease, started, taking_over)
        if lease is not None and lease.holder == self.node:
            unwanted = self._not_to_act_under(lease, started + ttl - self.timings.self_fence_margin)
            if unwanted is not None:
                await self._give_back(lease.epoch, unwanted)
                return
            # Renewed: the lease is valid for ttl from when we asked, minus one
            # renewal interval of margin so we stop before anyone else may start. A
            # deadline failsafe confirmations bought for this epoch still stands: the
            # promises behind it outlast it (hakit.policy.failsafe).
            stands = self.failsafe_deadline if lease.epoch == self.epoch else 0.0
            self.lease_deadline = max(started + ttl - self.timings.self_fence_margin, stands)
            self.renewed_at = max(self.renewed_at, started)
            self.failsafe_missing = None
            if lease.epoch != self.epoch:
                if self.epoch:
                    self.self_fence(f"lease epoch moved from {self.epoch} to {lease.epoch}")
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
                holder = f"epoch {self.epoch} is no longer stored for {self.node}"
            self.self_fence(f"could not renew the lease: {holder}")

    def _note_seen(self, lease: Lease | None, asked: float, taking_over: bool) -> None:
        """Renewed or taken: the store's answer. A renewal refused or failed says little of
        who holds it now: forget it (a refused takeover keeps the read just before it)."""
        if lease is not None:
            self.seen = SeenLease(lease, asked)
        elif not taking_over:
            self.seen = None

    def seen_within(self, now: float, within: float) -> SeenLease | None:
        """The lease the lease loop saw less than ``within`` seconds before ``now``
        (monotonic), if it saw one that recently."""
        seen = self.seen
        return seen if seen is not None and seen.recent(now, within) else None

    async def _acquire(self, ttl: float) -> Lease | None:
        """Take the lease (``acquire_or_renew``) unless this node promised an active serving
        on failsafe confirmations not to (hakit.policy.failsafe): then None, nothing asked.
        A promise made while the call was in flight is checked again on its answer
        (``_promised``)."""
        if self.policy.failsafe_hold(self.monotonic()) is not None:
            return None
        return await self.store.call(self.coordinator.acquire_or_renew, self.node, ttl)

    def _not_to_act_under(self, lease: Lease, deadline: float) -> str | None:
        """Why a lease of this node's that the store just returned must never be acted
        under (None: it may): a renewal that raced with our self-fence (or a lease we gave
        back); taking over, a grant whose answer came after its own ``deadline`` (the
        store slow or cut off while the call waited: an app started now would run under a
        lease that may have expired, and be killed at once); or a promise to an active
        serving on failsafe confirmations (hakit.policy.failsafe) made while the call was
        in flight. Checked in the same step of the event loop as ``self.epoch`` is set, so
        a failsafe answer sees either the epoch held (and refuses) or this give-back."""
        if lease.epoch <= self._given_up_epoch:
            return "it had already fenced itself from it"
        late = self.monotonic() - deadline
        if lease.epoch != self.epoch and late >= 0:
            return f"its grant came {late:.1f} s after the lease's deadline (a slow store)"
        promise = None if self.epoch else self.policy.failsafe_hold(self.monotonic())
        return None if promise is None else f"failsafe mode: {promise}"

    def _note_reconnected(self) -> None:
        """The store answered: if it had been refused, say once that it is trusted again."""
        if self._refused_store is not None:
            self._refused_store = None
            self._record(
                EventKind.LEASE,
                f"{self.node} reconnected to the coordination store (a store it trusts is "
                "back at its path)",
                epoch=0,
            )

    async def _store_refused(self, error: StoreReplacedError) -> None:
        """The store was replaced or went back in time: fence at once, alert once."""
        log.error("%s", error)
        if self.epoch:
            self.self_fence("the coordination store was replaced or went back in time")
        if self._refused_store != error.found:
            self._refused_store = error.found
            await self._alert(Alert(AlertKind.FENCE, str(error), manual_intervention=True))

    def _read_before_takeover(self) -> tuple[Predecessor, list[PathReport]]:
        """The predecessor, and the routers' reports when its lease has expired (blocking:
        run on the store thread)."""
        before = read_predecessor(self.coordinator, self.node)
        lease = before.lease
        if lease is None or lease.holder == self.node or lease.valid:
            return before, []
        return before, reports_in(self.coordinator.cluster_state())

    def _holder_is_dead(self, before: Predecessor, reports: list[PathReport]) -> bool:
        """May this standby take the lease over (hakit.health.datapath.judge_holder)? A deferral
        is recorded once per lease it concerns, not at every turn."""
        lease = before.lease
        if lease is None or lease.holder == self.node:
            self._deferred = None
            return True
        if lease.valid:
            # Another node holds a valid lease: acquire_or_renew would refuse it (atomically).
            # Once it has expired, a later turn reads that first and asks the data path below
            # before taking it over. Not asking saves a store call per renewal on a standby.
            self._deferred = None  # a live lease (its holder renewed): forget the last stall
            return False
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
                    EventKind.DATA_PATH,
                    verdict.reason,
                    epoch=0,
                    data={"holder": lease.holder, "witness": verdict.witness, "deferred": True},
                )
            return False
        if self._deferred == key:  # it was deferred: say why it no longer is
            self._deferred = None
            self._record(
                EventKind.DATA_PATH,
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
            await self._alert(Alert(AlertKind.FENCE, words))
        if verdict.ok:
            self._fence_retry_at = 0.0
            # Over an expired lease this is a failover: the policy alerts it.
            takeover = takeover_words(before, self.node)
            self.events.put_nowait(LeaseGained(lease.epoch, takeover))
            return
        delay = retry_delay(self.fencer.failures, self.cfg.coordination.renew_interval)
        self._fence_retry_at = self.monotonic() + delay
        self.epoch = 0
        await self._give_back(lease.epoch, "fencing failed")
        self._publish()  # with the nodes still to fence, for any other node about to promote
        await self._alert(Alert(AlertKind.FENCE, verdict.reason))

    async def _give_back(self, epoch: int, why: str) -> None:
        """Release a lease of ``epoch`` this agent will not act under (never while its app
        may still run as active: then the lease is left to expire)."""
        self._given_up_epoch = max(self._given_up_epoch, epoch)
        if self.app.running and self.policy.view().role is Role.ACTIVE:
            return
        try:
            released = await self.store.call(self.coordinator.release, self.node, epoch)
        except CoordinationError as error:
            log.warning("could not give the lease of epoch %d back: %s", epoch, error)
            return
        if released:
            self._record(
                EventKind.LEASE, f"{self.node} gave the lease of epoch {epoch} back: {why}"
            )

    # --- the deadline ---------------------------------------------------------------------

    def extend_failsafe(self, epoch: int, until: float) -> bool:
        """Failsafe mode: every other node confirmed (hakit.policy.failsafe.judge_round) that
        it is not promoting, for this active under ``epoch``: serve until ``until`` and
        re-arm the watchdog and the shim with it. False when the epoch is no longer held."""
        if self.epoch != epoch or self._waking is not None:
            return False
        if self.monotonic() >= self.lease_deadline:
            return False  # too late: the deadline passed (the watchdog may have fired)
        self.failsafe_deadline = max(self.failsafe_deadline, until)
        self.lease_deadline = max(self.lease_deadline, until)
        self.failsafe_missing = None
        self.arm_watchdog()
        return True

    def arm_watchdog(self) -> None:
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
                loop.call_soon_threadsafe(self.events.put_nowait, WAKE)

    def check_deadline(self) -> None:
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
            self.self_fence(fired)
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
        busy = self.store.in_flight()
        if busy is not None:  # why the renewal is late: what it waits behind, or itself
            log.warning("at the lease deadline the store I/O was running %s for %.1f s", *busy)
        self._tick()  # a stall that just ended is known before deciding
        stall = self.stalls.during(self.lease_deadline, self.lease_deadline)
        if stall is not None:
            self._waking = asyncio.create_task(
                self._ask_on_waking(self.epoch, late, stall.duration, why), name="waking"
            )
            return
        self.self_fence(why)

    async def _ask_on_waking(self, epoch: int, late: float, slept: float, why: str) -> None:
        """Renew the lease under ``epoch`` after a stall across its deadline, or self-fence
        when it is gone or the store does not answer within half a TTL (the watchdog's
        grace after a stall is one TTL: this answer comes first)."""
        ttl = self.cfg.coordination.lease_ttl
        patience = self.timings.waking_patience
        asked = self.monotonic()
        refusal: str | None = None
        try:
            lease = await asyncio.wait_for(
                self.store.call(self.coordinator.renew_epoch, self.node, epoch, ttl),
                patience,
            )
        except CoordinationError as error:
            refusal = f"the store could not be read ({error})"
        except TimeoutError:
            refusal = f"the store did not answer within {patience:.1f} s"
        else:
            if lease is None:
                refusal = (
                    f"epoch {epoch} is no longer stored for {self.node}: another node took over"
                )
        finally:
            self._waking = None
        if self.epoch != epoch:
            # Fenced meanwhile (the watchdog's grace ran out): never act under it again.
            if refusal is None:
                await self._give_back(epoch, "it had already fenced itself from it")
            return
        if refusal is not None:
            self.self_fence(f"{why}; on waking, {refusal}")
            return
        self.lease_deadline = asked + ttl - self.timings.self_fence_margin
        self.renewed_at = max(self.renewed_at, asked)
        self.arm_watchdog()
        self._record(
            EventKind.LEASE,
            f"{self.node} woke {late:.1f} s after its lease deadline (stalled "
            f"{slept:.1f} s); nobody took over: renewed its lease of epoch {epoch} and "
            "kept its app running",
            data={"late": round(late, 3), "stalled": round(slept, 3)},
        )
        self.events.put_nowait(WAKE)  # the main loop handles what waited for this answer

    def self_fence(self, reason: str) -> None:
        """The lease is gone: SIGKILL the app's group now, synchronously, before any
        other code of this agent runs; the policy hears LeaseLost before any other event
        (the agent's ``run``), and its StopApp(kill=True) confirms the group is gone."""
        missing, self.failsafe_missing = self.failsafe_missing, None
        if missing is not None and self.epoch:
            # Failsafe mode: the store is unreachable and a node did not confirm.
            nodes = ", ".join(missing)
            words = "; ".join(f"{node}: {why}" for node, why in missing.items())
            reason = (
                f"failsafe: fenced, {nodes} did not confirm it is not promoting while the "
                f"coordination store is unreachable ({words}); {reason}"
            )
            self._record(
                EventKind.FAILSAFE,
                f"{self.node} {reason}",
                data={FAILSAFE: FENCED, MISSING: dict(missing)},
            )
        lost, self.epoch = self.epoch, 0
        self._given_up_epoch = max(self._given_up_epoch, lost)
        self.failsafe_deadline = 0.0
        self.watchdog.disarm()
        if self.policy.view().role is Role.ACTIVE and self.app.kill_now():
            log.warning("self-fencing: killed the app (pid %s): %s", self.app.pid, reason)
        self._urgent.append(LeaseLost(lost, reason))
        self.events.put_nowait(WAKE)
