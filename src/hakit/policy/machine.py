"""The policy: what ONE node's agent does, as a pure state machine.

``Policy.handle(event, now)`` takes an event (vocabulary.py) and the
caller's monotonic time and returns actions, each with a one-sentence reason.
No I/O, no clock reads, no randomness: the agent reads the world, feeds events,
then carries out the actions in order.

Every transition lives in ``_TRANSITIONS`` at the bottom, a dict
``(PolicyState, event type) -> handler`` (like h11's ``_state.py``). A pair
missing from the table, or a handler's guard failing (an exit of a process the
policy never started, a second LeaseGained...), raises ``InvalidTransition``
naming state and event, and leaves the policy unchanged.

The app's process and the node's role are tracked apart from the state: in
warm-standby and active-active modes the app runs on standbys too, so a standby
is STARTING or RUNNING with role ``standby``. STANDBY means "not active and no
app process on this node".

Contract with the agent: after a StartApp, feed AppStarted or AppStartFailed
before anything else (the supervisor's start is synchronous); after a StopApp,
feed AppExited(expected=True) once the process is gone.

Operator commands arrive as events too (Paused, Resumed, HandoverRequested,
HandoverEnded). So does the routers' lost path to this node (PathLost,
hakit.health.datapath): an active node RUNNING hands over to the standby the routers
reach, by asking for a handover like an operator's switchover (RequestHandover),
once; the history calls the move a failover. While the cluster is paused, an event is first handled as
usual; if that would start or stop the app or release the lease, the policy is
put back as it was, only what certainly changed in the world is taken in (the
process is gone, the lease was gained: ``PAUSED_REALITY``), and a ``paused``
record says what it WOULD have done. Self-fencing (the kill after a lost lease)
is never held back. A handover the node takes part in is an operator's action,
so it is not held back either.

The machine is one class, ``Policy``, written in parts with one job each: the
state and shared steps (base.py), the restart budget and failure paths
(failures.py), the pause (pause.py), handovers (handover.py); this module has
the public API, the app's life cycle handlers and the table. The package
(``hakit.policy``) exports ``Policy`` and the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hakit.config import Mode
from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.history.facts import SERVING, WHAT, human_duration
from hakit.history.kinds import CAUSE, LOST_EPOCH, AlertKind, EventCause, EventKind
from hakit.policy.base import STANDBY_APP_MODES, Proc, S
from hakit.policy.failures import FailureHandling
from hakit.policy.handover import HandoverHandling
from hakit.policy.pause import OPERATOR_EVENTS, PauseHandling
from hakit.policy.rules import (
    Verdict,
    classify,
    extend_streak,
    failures_in_window,
    streak_is_failure,
)
from hakit.policy.vocabulary import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    HandoverEnded,
    HandoverRequested,
    LeaseGained,
    LeaseLost,
    LeaseVacant,
    PathLost,
    Paused,
    PolicyEvent,
    PolicySettings,
    PolicyState,
    PolicyView,
    Record,
    Resumed,
    Role,
    StatusObserved,
    StepDown,
    Tick,
    describe_exit,
)


class Policy(PauseHandling, HandoverHandling, FailureHandling):
    """One node's policy: ``handle(event, now) -> actions`` (see the module)."""

    # --- public API -----------------------------------------------------------

    @property
    def state(self) -> PolicyState:
        return self._state

    @property
    def settings(self) -> PolicySettings:
        return self._settings

    def view(self) -> PolicyView:
        return PolicyView(
            node=self._node,
            mode=self._settings.mode,
            state=self._state,
            role=self._role,
            epoch=self._epoch,
            pid=self._pid,
            app_running=self._proc is not Proc.NONE,
            failure_times=self._failures,
            restarts=self._restarts,
            failed_starts=self._failed_starts,
            cooldown_until=self._cooldown_until,
            last_reason=self._last_reason,
            paused=self._paused,
            handover_target=self._handover.target if self._handover is not None else None,
        )

    def handle(self, event: PolicyEvent, now: float) -> list[Action]:
        handler = _TRANSITIONS.get((self._state, type(event)))
        if handler is None:
            raise InvalidTransition(self._state.value, repr(event))
        if self._holding_back() and type(event) not in OPERATOR_EVENTS:
            actions = self._handle_paused(handler, event, now)
        else:
            actions = handler(self, event, now)
        actions += self._handover_done()
        self._failures = failures_in_window(self._failures, now, self._settings.failure_window)
        if actions:
            self._last_reason = actions[0].reason
        return actions

    def may_lead(self, now: float) -> bool:
        """Should the agent try to take the leader lease now?"""
        if self._settings.no_failover:
            return False  # the nofailover tag: never active
        if self._state in (S.INIT, S.FENCED, S.MANUAL, S.STEPPING_DOWN):
            return False
        if self.failsafe_hold(now) is not None:
            return False  # promised an active serving on failsafe confirmations
        if self._role is Role.ACTIVE:
            return False
        if self._handover is not None:
            # An operator's switchover or forced failover: only its target may lead.
            return self._handover.target == self._node
        if self._paused:
            return False  # maintenance: no failover, no self-start
        if self._lead_after is not None and now < self._lead_after:
            return False  # cold start: the last active goes first
        # No failback: after giving the lease up, let the new active settle first.
        return self._cooldown_until is None or now >= self._cooldown_until

    def hold_failsafe(self, until: float, why: str) -> None:
        """Failsafe mode: this node promised (to an active serving while the store is
        unreachable, or by starting: hakit.policy.failsafe) to take no lease before
        ``until``. A later promise extends it; an earlier one never shortens it."""
        if self._failsafe_until is None or until > self._failsafe_until:
            self._failsafe_until = until
            self._failsafe_why = why

    def failsafe_hold(self, now: float) -> str | None:
        """Why this node may take no lease now (a live failsafe promise), None if it may."""
        if self._failsafe_until is not None and now < self._failsafe_until:
            return self._failsafe_why
        return None

    def reset(self, now: float) -> list[Action]:
        """Operator: leave MANUAL once the cause is fixed (forgets failures)."""
        if self._state is not S.MANUAL:
            raise InvalidTransition(self._state.value, "reset() (only MANUAL can be reset)")
        if self._proc is not Proc.NONE:
            raise InvalidTransition(self._state.value, "reset() while the app is still stopping")
        self._failures = ()
        self._failed_starts = 0
        self._failed_start_handover = False
        self._streak = None
        self._note = None
        self._cooldown_until = None
        self._state = S.STANDBY
        actions: list[Action] = []
        if self._role is Role.ACTIVE and self._settings.mode is Mode.RESTART_ONLY:
            # The only node: keep the lease and try again under it.
            reason = f"operator reset {self._node} after manual intervention; starting the app"
            actions.append(self._start(reason, now))
        elif self._role is Role.ACTIVE:
            actions.append(
                StepDown(
                    f"operator reset {self._node} after manual intervention; releasing the "
                    f"lease of epoch {self._epoch} so the cluster elects the active again"
                )
            )
            self._leave_active()
        else:
            actions.append(Record(EventKind.RESET, f"operator reset {self._node}; back to standby"))
        if self._settings.mode in STANDBY_APP_MODES:
            actions.append(
                self._start(
                    f"{self._mode_name()}: starting the app on {self._node} as a standby", now
                )
            )
        self._last_reason = actions[0].reason
        return actions

    # --- handlers: INIT / STANDBY ---------------------------------------------

    def _boot(self, event: Boot, now: float) -> list[Action]:
        mode = self._settings.mode
        grace = self._boot_grace(event, now)
        if mode in STANDBY_APP_MODES:
            reason = f"agent on {self._node} started ({mode.value}): starting the app as a standby{grace}"
            return [self._start(reason, now)]
        self._state = S.STANDBY
        if mode is Mode.RESTART_ONLY:
            reason = f"agent on {self._node} started (restart-only): taking the lease, then starting the app"
        else:
            reason = (
                f"agent on {self._node} started ({mode.value}): the app runs here only while "
                f"this node holds the leader lease{grace}"
            )
        return [Record(EventKind.BOOT, reason)]

    def _standby_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        promoted = self._take_lease(event)
        start = self._start(f"{promoted}; starting the app", now)
        return [start, *self._failover_alert(event, promoted, "starting the app")]

    def _lease_lost(self, event: LeaseLost, now: float) -> list[Action]:
        if self._role is not Role.ACTIVE:
            return []  # a standby has nothing to fence
        self._handing_over = None  # the lease is gone already: nothing to hand over
        self._leave_active()
        lost = f"{self._node} lost the leader lease (epoch {event.epoch}: {event.reason})"
        # hakit why reads the loss from the data, never from the sentence.
        facts = {CAUSE: EventCause.LEASE_LOST, LOST_EPOCH: event.epoch, WHAT: lost}
        if self._proc is Proc.NONE:
            return [Record(EventKind.LEASE, f"{lost}; its app is not running", data=facts)]
        # Self-fencing: a new active may already be writing the shared storage.
        reason = f"{lost}; killing its app at once so it cannot write beside a new active"
        if self._state is S.STEPPING_DOWN:
            # It was giving the lease up anyway: keep it from winning the lease straight back.
            self._cooldown_until = now + self._settings.step_down_cooldown
        if self._state is not S.MANUAL:
            self._state = S.FENCED
        return [self._stop(reason, kill=True, data=facts), Alert(AlertKind.FENCE, reason)]

    # --- handlers: STARTING ---------------------------------------------------

    def _app_started(self, event: AppStarted, now: float) -> list[Action]:
        if self._proc is not Proc.REQUESTED:
            raise self._invalid(event, "no StartApp is waiting for its process")
        self._proc = Proc.ALIVE
        self._pid = event.pid
        return [Record(EventKind.STARTED, f"app on {self._node} started as pid {event.pid}")]

    def _app_start_failed(self, event: AppStartFailed, now: float) -> list[Action]:
        if self._proc is not Proc.REQUESTED:
            raise self._invalid(event, "no StartApp is waiting for its process")
        self._forget_process()
        return self._failed_start(
            f"the supervisor could not start the app on {self._node}: {event.error}", now
        )

    def _starting_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event, allow_expected=False)
        self._forget_process()
        return self._failed_start(f"{self._exit_words(event)} while starting", now)

    def _starting_status(self, event: StatusObserved, now: float) -> list[Action]:
        state = event.state
        waited = human_duration(now - self._start_requested_at)
        verdict = classify(state, event.database_reachable)
        if verdict is Verdict.HEALTHY:
            self._state = S.RUNNING
            self._failed_starts = 0
            self._failed_start_handover = False  # it starts here: it may hand over again
            self._streak = None
            self._note = state.value
            unconfigured = ": running, not yet configured" if state is AppState.FIRST_RUN else ""
            role = " (standby)" if self._role is Role.STANDBY else ""
            return [
                Record(
                    EventKind.RUNNING,
                    f"app on {self._node}{role} {state.value} after {waited}{unconfigured}",
                    data={SERVING: True},
                )
            ]
        if state is AppState.MAINTENANCE:
            # The app is up and busy (an upgrade task, a backup): the startup deadline is over.
            self._state = S.RUNNING
            self._streak = None
            self._note = state.value
            reason = f"app on {self._node} answers MAINTENANCE after {waited}: up, in maintenance; not a failure"
            return [Record(EventKind.STATUS, reason, data={SERVING: False})]
        if verdict is Verdict.DATABASE_DOWN:
            # Up, but its database is down: waiting for the database, not a failed start.
            self._state = S.RUNNING
            self._streak = None
            self._note = "database"
            return [Alert(AlertKind.DATABASE, self._database_words(event))]
        if state in (AppState.ERROR, AppState.NOT_DEPLOYED):
            self._streak = extend_streak(self._streak, state, now)
            if self._streak.count >= self._settings.fall:
                what = f"app on {self._node} reports {state.value} {self._streak.count} times in a row while starting ({event.detail})"
                return self._failed_start(what, now)
        else:
            self._streak = None
        return self._startup_deadline(now)

    def _starting_tick(self, event: Tick, now: float) -> list[Action]:
        return self._startup_deadline(now)

    def _standby_app_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        """Warm-standby / active-active: the app already runs (or starts) here."""
        promoted = self._take_lease(event)
        where = {
            S.STARTING: "the app is still starting",
            S.RUNNING: "the app is already running",
            S.RESTARTING: "the app starts again once its restart's stop completes",
        }[self._state]
        serving = self._state is S.RUNNING  # hakit why: the new active served at once
        return [
            Record(EventKind.PROMOTED, f"{promoted}; {where}", data={SERVING: serving}),
            *self._failover_alert(event, promoted, where),
        ]

    # --- handlers: RUNNING ----------------------------------------------------

    def _running_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event, allow_expected=False)
        self._forget_process()
        if event.oom:
            return self._failure_with_process_gone(
                AlertKind.OOM, self._exit_words(event), True, now
            )
        return self._failure_with_process_gone(AlertKind.CRASH, self._exit_words(event), False, now)

    def _database_words(self, event: StatusObserved) -> str:
        return (
            f"app on {self._node} reports ERROR and its database is unreachable ({event.detail}): "
            "no restart, no failover (a standby would fail the same way); it recovers when the database does"
        )

    def _running_status(self, event: StatusObserved, now: float) -> list[Action]:
        state, node = event.state, self._node
        verdict = classify(state, event.database_reachable)
        if verdict is Verdict.NO_PROCESS:
            return []  # the supervisor reports the exit itself, with its cause
        if verdict is Verdict.FAILING:
            return self._running_failure_observed(event, now)
        self._streak = None  # an answer that is not a failure breaks any streak
        if verdict is Verdict.DATABASE_DOWN:
            return self._note_once(
                "database", Alert(AlertKind.DATABASE, self._database_words(event))
            )
        if verdict is Verdict.WAITING:
            words = f"app on {node} reports {state.value}: not a failure, waiting"
            return self._note_once(state.value, self._status(words, serving=False))
        if state is AppState.FIRST_RUN:
            words = f"app on {node} reports FIRST_RUN: running, not yet configured"
            return self._note_once(state.value, self._status(words, serving=True))
        if self._note in (None, AppState.RUNNING.value):
            self._note = state.value  # steady state: nothing worth a history entry
            return []
        words = f"app on {node} reports RUNNING again (was {self._note})"
        return self._note_once(state.value, self._status(words, serving=True))

    @staticmethod
    def _status(words: str, serving: bool) -> Record:
        """A status change; ``serving``: it answers RUNNING or FIRST_RUN (``hakit why``
        reads a recovery from it)."""
        return Record(EventKind.STATUS, words, data={SERVING: serving})

    def _running_failure_observed(self, event: StatusObserved, now: float) -> list[Action]:
        """ERROR (database fine or unknown), DOWN, NOT_DEPLOYED or TIMEOUT while RUNNING."""
        state, node, s = event.state, self._node, self._settings
        streak = self._streak = extend_streak(self._streak, state, now)
        if streak_is_failure(streak, s.fall, s.health_timeout, now):
            span = human_duration(now - streak.first_at)
            if state is AppState.TIMEOUT:
                what = (
                    f"app on {node} did not answer /status {streak.count} times in a row over "
                    f"{span} (patience: {s.fall} over {human_duration(s.health_timeout)})"
                )
                return self._failure_with_process_alive(AlertKind.HANG, what, now)
            if state is AppState.DOWN:
                what = f"app on {node} refused connections {streak.count} times in a row while its process lives ({event.detail})"
                return self._failure_with_process_alive(AlertKind.CRASH, what, now)
            if state is AppState.NOT_DEPLOYED:
                what = f"app on {node} answers /status without its webapp {streak.count} times in a row ({event.detail})"
                return self._failed_start(what, now)
            database = "reachable" if event.database_reachable else "reachability unknown"
            what = f"app on {node} reported ERROR {streak.count} times in a row, database {database} ({event.detail})"
            return self._failure_with_process_alive(AlertKind.ERROR, what, now)
        if streak.count > 1:
            return []
        patience = (
            f"a hang counts after {s.fall} in a row over {human_duration(s.health_timeout)}"
            if state is AppState.TIMEOUT
            else f"acting after {s.fall} in a row"
        )
        self._note = state.value  # so a recovery afterwards is recorded
        return [
            Record(
                EventKind.DETECTED,
                f"app on {node} /status: {state.value} ({event.detail}); {patience}",
            )
        ]

    # --- handlers: stopping states --------------------------------------------

    def _restarting_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event)
        self._forget_process()
        return [self._start(self._after_stop, now)]

    def _stepping_down_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event)
        self._forget_process()
        if self._handing_over is not None:
            what = "handover" if self._handing_over.automatic else "switchover"
            return self._release_for_handover(f"app on {self._node} stopped for the {what}", now)
        reason = f"app on {self._node} stopped; releasing the lease of epoch {self._epoch} so a standby takes over"
        return self._step_down(reason, now)

    def _fenced_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event)
        self._forget_process()
        if self._settings.mode in STANDBY_APP_MODES:
            return [
                self._start(
                    f"app on {self._node} is gone after fencing; starting it again as a standby",
                    now,
                )
            ]
        self._state = S.STANDBY
        return [
            Record(EventKind.FENCED, f"app on {self._node} is gone after fencing; staying standby")
        ]

    def _fenced_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        promoted = self._take_lease(event)
        self._state = S.RESTARTING
        self._after_stop = f"{promoted}; the fenced process has exited: starting the app"
        then = "starting the app once the fenced process has exited"
        return [
            Record(EventKind.PROMOTED, f"{promoted}; {then}", data={SERVING: False}),
            *self._failover_alert(event, promoted, then),
        ]

    # --- handlers: MANUAL -----------------------------------------------------

    def _manual_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event)
        self._forget_process()
        actions: list[Action] = [
            Record(
                EventKind.STOPPED,
                f"app on {self._node} stopped ({describe_exit(event)}); manual intervention needed",
            )
        ]
        if self._handing_over is not None and self._role is Role.ACTIVE:
            actions += self._release_for_handover(f"app on {self._node} stopped", now)
        return actions

    def _manual_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        promoted = self._take_lease(event)
        then = "not starting the app: it waits for manual intervention"
        return [
            Record(
                EventKind.LEASE,
                f"{promoted} while waiting for manual intervention; not starting the app",
            ),
            *self._failover_alert(event, promoted, then, manual=True),
        ]


Handler = Callable[[Policy, Any, float], list[Action]]

# Every possible (state, event) pair. Absent pairs are impossible: InvalidTransition.
_TRANSITIONS: dict[tuple[PolicyState, type], Handler] = {
    (S.INIT, Boot): Policy._boot,
    # STANDBY: not active, no process.
    (S.STANDBY, LeaseGained): Policy._standby_lease_gained,
    (S.STANDBY, LeaseLost): Policy._lease_lost,
    (S.STANDBY, StatusObserved): Policy._ignore,
    (S.STANDBY, Tick): Policy._ignore,
    # STARTING: StartApp sent; active, or a standby in warm-standby / active-active.
    (S.STARTING, AppStarted): Policy._app_started,
    (S.STARTING, AppStartFailed): Policy._app_start_failed,
    (S.STARTING, AppExited): Policy._starting_exited,
    (S.STARTING, StatusObserved): Policy._starting_status,
    (S.STARTING, Tick): Policy._starting_tick,
    (S.STARTING, LeaseGained): Policy._standby_app_lease_gained,
    (S.STARTING, LeaseLost): Policy._lease_lost,
    # RUNNING: the app answered; health is watched.
    (S.RUNNING, AppExited): Policy._running_exited,
    (S.RUNNING, StatusObserved): Policy._running_status,
    (S.RUNNING, Tick): Policy._ignore,
    (S.RUNNING, LeaseGained): Policy._standby_app_lease_gained,
    (S.RUNNING, LeaseLost): Policy._lease_lost,
    (S.RUNNING, PathLost): Policy._path_lost,
    # RESTARTING: StopApp sent, StartApp follows the exit.
    (S.RESTARTING, AppExited): Policy._restarting_exited,
    (S.RESTARTING, StatusObserved): Policy._ignore,
    (S.RESTARTING, Tick): Policy._ignore,
    (S.RESTARTING, LeaseGained): Policy._standby_app_lease_gained,
    (S.RESTARTING, LeaseLost): Policy._lease_lost,
    # STEPPING_DOWN: StopApp sent, StepDown follows the exit.
    (S.STEPPING_DOWN, AppExited): Policy._stepping_down_exited,
    (S.STEPPING_DOWN, StatusObserved): Policy._ignore,
    (S.STEPPING_DOWN, Tick): Policy._ignore,
    (S.STEPPING_DOWN, LeaseLost): Policy._lease_lost,
    # FENCED: killed after losing the lease, waiting for the exit.
    (S.FENCED, AppExited): Policy._fenced_exited,
    (S.FENCED, StatusObserved): Policy._ignore,
    (S.FENCED, Tick): Policy._ignore,
    (S.FENCED, LeaseGained): Policy._fenced_lease_gained,
    (S.FENCED, LeaseLost): Policy._lease_lost,
    # MANUAL: gave up; only records until an operator resets it.
    (S.MANUAL, AppExited): Policy._manual_exited,
    (S.MANUAL, StatusObserved): Policy._ignore,
    (S.MANUAL, Tick): Policy._ignore,
    (S.MANUAL, LeaseGained): Policy._manual_lease_gained,
    (S.MANUAL, LeaseLost): Policy._lease_lost,
    # PAUSED: the app is not running and the cluster is paused; acting again on resume.
    (S.PAUSED, StatusObserved): Policy._ignore,
    (S.PAUSED, Tick): Policy._ignore,
    (S.PAUSED, LeaseGained): Policy._standby_lease_gained,
    (S.PAUSED, LeaseLost): Policy._lease_lost,
    # Operator commands: the cluster may be paused before the agent boots.
    (S.INIT, Paused): Policy._init_pause,
}
# Operator commands reach every state after INIT.
for _state in PolicyState:
    if _state is not S.INIT:
        _TRANSITIONS[(_state, Paused)] = Policy._pause
        _TRANSITIONS[(_state, Resumed)] = Policy._resume
        _TRANSITIONS[(_state, HandoverRequested)] = Policy._handover_requested
        _TRANSITIONS[(_state, HandoverEnded)] = Policy._handover_ended
        _TRANSITIONS[(_state, LeaseVacant)] = Policy._lease_vacant
        # Only a RUNNING active acts on a lost path; elsewhere it changes nothing.
        _TRANSITIONS.setdefault((_state, PathLost), Policy._ignore)
