"""The policy: what ONE node's agent does, as a pure state machine.

``Policy.handle(event, now)`` takes an event (policy_events.py) and the
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
hakit.datapath): an active node RUNNING hands over to the standby the routers
reach, by asking for a handover like an operator's switchover (RequestHandover),
once; the history calls the move a failover. While the cluster is paused, an event is first handled as
usual; if that would start or stop the app or release the lease, the policy is
put back as it was, only what certainly changed in the world is taken in (the
process is gone, the lease was gained: ``_PAUSED_REALITY``), and a ``paused``
record says what it WOULD have done. Self-fencing (the kill after a lost lease)
is never held back. A handover the node takes part in is an operator's action,
so it is not held back either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from hakit.config import Mode
from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.policy_events import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    Drain,
    EndHandover,
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
    RequestHandover,
    Resumed,
    Role,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    TakeLease,
    Tick,
    describe_exit,
    human_duration,
    ordinal,
)
from hakit.policy_rules import (
    Streak,
    Verdict,
    classify,
    extend_streak,
    failures_in_window,
    streak_is_failure,
)

__all__ = [
    "Action",
    "Alert",
    "AppExited",
    "AppStartFailed",
    "AppStarted",
    "Boot",
    "Drain",
    "EndHandover",
    "HandoverEnded",
    "HandoverRequested",
    "LeaseGained",
    "LeaseLost",
    "LeaseVacant",
    "PathLost",
    "Paused",
    "Policy",
    "PolicyEvent",
    "PolicySettings",
    "PolicyState",
    "PolicyView",
    "Record",
    "RequestHandover",
    "Resumed",
    "Role",
    "StartApp",
    "StatusObserved",
    "StepDown",
    "StopApp",
    "TakeLease",
    "Tick",
]

S = PolicyState
_STANDBY_APP_MODES = frozenset({Mode.WARM_STANDBY, Mode.ACTIVE_ACTIVE})


class _Proc(enum.Enum):
    """What the policy believes about the app's process on this node."""

    NONE = "none"
    REQUESTED = "requested"  # StartApp returned, AppStarted not yet fed
    ALIVE = "alive"
    STOPPING = "stopping"  # StopApp returned, AppExited not yet fed


# --- the machine ------------------------------------------------------------------


class Policy:
    def __init__(self, settings: PolicySettings, node: str) -> None:
        self._settings = settings
        self._node = node
        self._state = S.INIT
        self._role = Role.STANDBY
        self._epoch = 0  # epoch acted under while active
        self._highest_epoch = 0  # epochs only grow: a smaller LeaseGained is impossible
        self._proc = _Proc.NONE
        self._pid: int | None = None
        self._failures: tuple[float, ...] = ()
        self._restarts = 0
        self._failed_starts = 0
        # on_failed_start = "failover": this node stepped down once after failed starts;
        # failing to start again here means both nodes fail: no back and forth, a human.
        self._failed_start_handover = False
        self._start_requested_at = 0.0
        self._streak: Streak | None = None
        self._note: str | None = None  # last status noted, so each change is recorded once
        self._after_stop = ""  # in RESTARTING: the reason of the StartApp that follows the exit
        self._cooldown_until: float | None = None
        self._last_reason = ""
        # --- operator commands and startup ---
        self._paused = False
        self._paused_by = ""  # "operator:alice (maintenance)", for reasons
        self._would: str | None = None  # last held-back action while paused (said once)
        self._handover: HandoverRequested | None = None  # the operator's intent in progress
        self._handing_over: HandoverRequested | None = None  # switchover out, under way
        self._lead_after: float | None = None  # cold start: not the last active, wait
        self._handover_asked = False  # a path-loss handover was asked for (not again)

    # --- public API -----------------------------------------------------------------

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
            app_running=self._proc is not _Proc.NONE,
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
        if self._holding_back() and type(event) not in _OPERATOR_EVENTS:
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

    def reset(self, now: float) -> list[Action]:
        """Operator: leave MANUAL once the cause is fixed (forgets failures)."""
        if self._state is not S.MANUAL:
            raise InvalidTransition(self._state.value, "reset() (only MANUAL can be reset)")
        if self._proc is not _Proc.NONE:
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
            actions.append(Record("reset", f"operator reset {self._node}; back to standby"))
        if self._settings.mode in _STANDBY_APP_MODES:
            actions.append(
                self._start(
                    f"{self._mode_name()}: starting the app on {self._node} as a standby", now
                )
            )
        self._last_reason = actions[0].reason
        return actions

    # --- small helpers (mutate only after every guard has passed) ---------------------

    def _mode_name(self) -> str:
        return self._settings.mode.value

    def _invalid(self, event: object, why: str) -> InvalidTransition:
        return InvalidTransition(self._state.value, f"{event!r} ({why})")

    def _start(self, reason: str, now: float, actor: str = "") -> StartApp:
        assert self._proc is _Proc.NONE, "policy bug: StartApp while a process is believed alive"
        self._proc = _Proc.REQUESTED
        self._pid = None
        self._start_requested_at = now
        self._streak = None
        self._note = None
        self._state = S.STARTING
        return StartApp(reason, actor)

    def _stop(self, reason: str, kill: bool = False, actor: str = "") -> StopApp:
        assert self._proc is not _Proc.NONE, "policy bug: StopApp without a process"
        self._proc = _Proc.STOPPING
        return StopApp(reason, kill=kill, actor=actor)

    def _leave_active(self) -> None:
        self._role = Role.STANDBY
        self._epoch = 0
        self._handover_asked = False

    def _step_down(self, reason: str, now: float) -> list[Action]:
        # Shared storage: the lease goes only once the app is gone.
        assert self._proc is _Proc.NONE, "policy bug: StepDown while the app is believed alive"
        self._leave_active()
        self._cooldown_until = now + self._settings.step_down_cooldown
        self._state = S.STANDBY
        return [StepDown(reason), Alert("failover", reason)]

    def _record_failure(self, now: float) -> int:
        window = self._settings.failure_window
        self._failures = failures_in_window(self._failures, now, window) + (now,)
        return len(self._failures)

    def _budget_words(self, n: int) -> str:
        return f"restart {n} of {self._settings.restart_attempts} within {human_duration(self._settings.failure_window)}"

    def _exhausted_words(self, n: int) -> str:
        return (
            f"{ordinal(n)} failure within {human_duration(self._settings.failure_window)} "
            f"(restart_attempts = {self._settings.restart_attempts})"
        )

    def _no_failover_words(self) -> str | None:
        """Why this node cannot fail over, or None when it can."""
        if self._settings.mode is Mode.RESTART_ONLY:
            return "restart-only mode has no standby to fail over to"
        if self._role is not Role.ACTIVE:
            return "this node is a standby: there is nothing to fail over"
        return None

    def _check_lease_gain(self, event: LeaseGained) -> None:
        if self._role is Role.ACTIVE:
            raise self._invalid(event, f"already active under epoch {self._epoch}")
        if event.epoch <= self._highest_epoch:
            raise self._invalid(event, f"epochs only grow; already saw epoch {self._highest_epoch}")

    def _take_lease(self, event: LeaseGained) -> str:
        self._check_lease_gain(event)
        self._role = Role.ACTIVE
        self._epoch = self._highest_epoch = event.epoch
        self._cooldown_until = None
        return f"{self._node} promoted to active under epoch {event.epoch}"

    def _failover_alert(
        self, event: LeaseGained, promoted: str, then: str, manual: bool = False
    ) -> list[Action]:
        """A promotion over an expired lease is a failover nobody asked for: alert it
        (the old active could not say so itself: it is lost, frozen or cut off)."""
        if not event.takeover:
            return []
        reason = f"{promoted} after {event.takeover}; {then}"
        return [Alert("failover", reason, manual_intervention=manual)]

    def _check_exit(self, event: AppExited, *, allow_expected: bool = True) -> None:
        if self._proc is _Proc.NONE:
            raise self._invalid(event, "no app process is believed to run")
        if self._pid is not None and event.pid != self._pid:
            raise self._invalid(event, f"the app process is pid {self._pid}")
        if event.expected and not allow_expected:
            raise self._invalid(event, "the policy asked for no stop")

    def _forget_process(self) -> None:
        self._proc = _Proc.NONE
        self._pid = None
        self._streak = None
        self._note = None

    def _exit_words(self, event: AppExited) -> str:
        words = f"app on {self._node} exited ({describe_exit(event)})"
        return words + ", out of memory" if event.oom else words

    # --- operator pause: hold actions back, say what would have been done ----------

    def _holding_back(self) -> bool:
        if not self._paused:
            return False
        handover = self._handover
        if self._handing_over is not None:
            return False
        return handover is None or self._node not in (handover.target, handover.source)

    def _handle_paused(self, handler: Handler, event: PolicyEvent, now: float) -> list[Action]:
        saved = dict(self.__dict__)
        try:
            actions = handler(self, event, now)
        except BaseException:
            self.__dict__.update(saved)
            raise
        held = [action for action in actions if _acts(action)]
        if not held:
            if actions:
                self._would = None
            return actions
        self.__dict__.update(saved)
        _PAUSED_REALITY.get(type(event), Policy._ignore)(self, event, now)
        key = f"{type(event).__name__}:{type(held[0]).__name__}"
        if self._would == key and self._state is saved["_state"]:
            return []  # said already (a failing app is observed again and again)
        self._would = key
        return [
            Record(
                "paused",
                f"would {_VERBS[type(held[0])]} ({held[0].reason}), but {self._paused_by} "
                "paused the cluster: no action",
            )
        ]

    def _paused_boot(self, event: Boot, now: float) -> list[Action]:
        self._boot_grace(event, now)
        self._state = S.PAUSED  # the app would have started here: on resume it does
        return []

    def _paused_process_gone(self, event: AppExited | AppStartFailed, now: float) -> list[Action]:
        self._forget_process()
        self._state = S.PAUSED
        return []

    def _paused_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        self._take_lease(event)
        if self._proc is _Proc.NONE:
            self._state = S.PAUSED
        return []

    # --- startup ----------------------------------------------------------------------

    def _boot_grace(self, event: Boot, now: float) -> str:
        """Cold start: let the last active (newest data) take the lease first."""
        node, grace = self._node, self._settings.boot_grace
        if self._settings.no_failover:
            return f"; {node} has the nofailover tag: it never becomes active"
        if (
            event.newest_node
            and event.newest_node != node
            and event.newest_epoch > event.served_epoch
        ):
            mine = f"epoch {event.served_epoch}" if event.served_epoch else "never active"
            if grace > 0:
                self._lead_after = now + grace
            return (
                f"; {event.newest_node} was the last active (epoch {event.newest_epoch}; {node}: "
                f"{mine}): giving it {human_duration(grace)} to take the lease first"
            )
        if event.served_epoch and event.served_epoch >= event.newest_epoch:
            return f"; {node} was the last active (epoch {event.served_epoch}): competing for the lease at once"
        return ""

    # --- operator handover (switchover, forced failover) --------------------------------

    def _refuse_handover_words(self) -> str | None:
        """Why this node cannot become the handover's target now, or None."""
        node = self._node
        if self._settings.no_failover:
            return f"{node} has the nofailover tag: it never becomes active"
        if self._role is Role.ACTIVE:
            return f"{node} is already active under epoch {self._epoch}"
        if self._state is S.MANUAL:
            return f"{node} needs manual intervention (hakit reset) first"
        if self._state is S.FENCED:
            return f"{node} is still stopping its fenced app; try again in a moment"
        return None

    def _release_for_handover(self, reason: str, now: float) -> list[Action]:
        """Switchover out: the app is stopped (or may run on a standby): give the lease up."""
        handover = self._handing_over
        assert handover is not None, "policy bug: no switchover under way"
        self._handing_over = None
        epoch = self._epoch
        self._leave_active()
        self._cooldown_until = now + self._settings.step_down_cooldown
        if self._state is S.STEPPING_DOWN:
            self._state = S.STANDBY
        if handover.automatic:  # the path loss is the cause: `hakit why` reads it here
            reason = f"{handover.reason}; {reason}"
        return [
            StepDown(
                f"{reason}; releasing the lease of epoch {epoch}: only {handover.target} may take it",
                kind="failover" if handover.automatic else "switchover",
                actor=handover.actor,
            )
        ]

    def _hand_over(self, event: HandoverRequested, now: float) -> list[Action]:
        """This node is the active the operator moves away from."""
        node, target, actor = self._node, event.target, event.actor
        words = f"{actor} asked for a switchover to {target} ({event.reason})"
        if event.automatic:
            words = f"{node} hands over to {target} (path loss)"
        if event.forced:
            return [
                Record(
                    "failover",
                    f"{actor} forced a failover to {target} ({event.reason}): {node} "
                    "kills its app as soon as its lease renewal fails",
                    actor,
                )
            ]
        self._handing_over = event
        stopping = Record(
            event.kind,
            f"{words}: the app on {node} is stopping; the lease goes once it is gone",
            actor,
        )
        if self._state is S.STEPPING_DOWN or (
            self._state is S.MANUAL and self._proc is not _Proc.NONE
        ):
            return [stopping]
        if self._proc is _Proc.NONE:
            return self._release_for_handover(f"{words}: the app on {node} is not running", now)
        drain = Drain(f"{words}: draining {node} (the router holds new requests)", actor)
        if self._settings.mode in _STANDBY_APP_MODES:
            # The app may run on a standby: it keeps running, only the lease moves.
            return [drain, *self._release_for_handover(f"{words}: {node} drained", now)]
        if self._state is S.RESTARTING:
            self._state = S.STEPPING_DOWN
            return [stopping]
        self._state = S.STEPPING_DOWN
        return [drain, self._stop(f"{words}: stopping the app on {node} gracefully", actor=actor)]

    def _handover_done(self) -> list[Action]:
        """The target serves under a new epoch: the operator's intent is fulfilled."""
        handover = self._handover
        if handover is None or handover.target != self._node:
            return []
        if self._role is not Role.ACTIVE or self._state is not S.RUNNING:
            return []
        if self._epoch <= handover.epoch:
            return []
        self._handover = None
        return [
            EndHandover(
                f"{handover.kind} to {self._node} complete: serving under epoch {self._epoch} "
                f"(asked by {handover.actor}: {handover.reason})",
                handover.actor,
            )
        ]

    # --- failure paths -------------------------------------------------------------

    def _failure_with_process_gone(
        self, kind: str, what: str, oom: bool, now: float
    ) -> list[Action]:
        """A crash or OOM exit: the process is already gone."""
        n = self._record_failure(now)
        if n <= self._settings.restart_attempts:
            self._restarts += 1
            reason = f"{what}; {self._budget_words(n)}"
            return [self._start(reason, now), Alert(kind, reason)]
        if oom:
            self._state = S.MANUAL
            reason = (
                f"{what}; {self._exhausted_words(n)}; not failing over: another node with "
                "the same heap would run out of memory the same way; manual intervention needed"
            )
            return [Alert(kind, reason, manual_intervention=True)]
        why_not = self._no_failover_words()
        if why_not is not None:
            self._state = S.MANUAL
            reason = f"{what}; {self._exhausted_words(n)} and {why_not}; manual intervention needed"
            return [Alert(kind, reason, manual_intervention=True)]
        reason = f"{what}; {self._exhausted_words(n)}: stepping down so a standby takes over"
        return self._step_down(reason, now)

    def _failure_with_process_alive(self, kind: str, what: str, now: float) -> list[Action]:
        """A hang, refused connections or ERROR: the process must be stopped first."""
        n = self._record_failure(now)
        if n <= self._settings.restart_attempts:
            self._restarts += 1
            self._state = S.RESTARTING
            self._after_stop = (
                f"app on {self._node} stopped; starting it again ({self._budget_words(n)})"
            )
            reason = f"{what}; stopping it to restart it ({self._budget_words(n)})"
            return [self._stop(reason), Alert(kind, reason)]
        why_not = self._no_failover_words()
        if why_not is not None:
            self._state = S.MANUAL
            reason = (
                f"{what}; {self._exhausted_words(n)} and {why_not}: stopping it; "
                "manual intervention needed"
            )
            return [self._stop(reason), Alert(kind, reason, manual_intervention=True)]
        self._state = S.STEPPING_DOWN
        reason = (
            f"{what}; {self._exhausted_words(n)}: stopping it, then stepping down "
            "so a standby takes over"
        )
        return [self._stop(reason), Alert(kind, reason)]

    def _failed_start(self, what: str, now: float) -> list[Action]:
        """By default never a failover: another node would fail to start the same way
        (a bad shared config). ``failover.on_failed_start = "failover"`` (node-local
        causes) steps down once the retries are used up: see ``_failed_start_failover``."""
        self._failed_starts += 1
        k, budget = self._failed_starts, self._settings.restart_attempts
        alive = self._proc is not _Proc.NONE
        if k <= budget:
            self._restarts += 1
            reason = f"{what}; failed start {k}: retry {k} of {budget}"
            if not alive:
                return [self._start(reason, now), Alert("failed-start", reason)]
            self._state = S.RESTARTING
            self._after_stop = (
                f"app on {self._node} stopped; starting it again (retry {k} of {budget} "
                "after a failed start)"
            )
            return [
                self._stop(f"{what}; stopping it to retry ({k} of {budget})"),
                Alert("failed-start", reason),
            ]
        if self._settings.failover_on_failed_start:
            failover = self._failed_start_failover(what, now)
            if failover is not None:
                return failover
        self._state = S.MANUAL
        reason = f"{what}; {k} failed starts in a row (restart_attempts = {budget}); "
        if not self._settings.failover_on_failed_start:
            reason += "not failing over: another node would fail to start too"
        elif self._failed_start_handover:
            reason += (
                "not failing over again: this node already handed over after failed starts "
                "and the other node could not start the app either"
            )
        else:
            reason += f"not failing over: {self._no_failover_words()}"
        reason += "; manual intervention needed"
        actions: list[Action] = [self._stop(reason)] if alive else []
        return [*actions, Alert("failed-start", reason, manual_intervention=True)]

    def _failed_start_failover(self, what: str, now: float) -> list[Action] | None:
        """on_failed_start = "failover": step down so a standby tries; None when this node
        cannot (no standby, not active) or already did once (then a human decides)."""
        if self._failed_start_handover or self._no_failover_words() is not None:
            return None
        self._failed_start_handover = True
        k, budget = self._failed_starts, self._settings.restart_attempts
        words = f"{what}; {k} failed starts in a row (restart_attempts = {budget})"
        setting = '(failover.on_failed_start = "failover")'
        if self._proc is _Proc.NONE:
            return self._step_down(f"{words}: stepping down so a standby takes over {setting}", now)
        self._state = S.STEPPING_DOWN
        reason = f"{words}: stopping it, then stepping down so a standby takes over {setting}"
        return [self._stop(reason), Alert("failed-start", reason)]

    def _startup_deadline(self, now: float) -> list[Action]:
        waited = now - self._start_requested_at
        if waited < self._settings.startup_timeout:
            return []
        what = (
            f"app on {self._node} did not reach RUNNING within "
            f"{human_duration(self._settings.startup_timeout)} of being started"
        )
        return self._failed_start(what, now)

    def _note_once(self, key: str, action: Action) -> list[Action]:
        if self._note == key:
            return []
        self._note = key
        return [action]

    # --- handlers: INIT / STANDBY ---------------------------------------------------

    def _boot(self, event: Boot, now: float) -> list[Action]:
        mode = self._settings.mode
        grace = self._boot_grace(event, now)
        if mode in _STANDBY_APP_MODES:
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
        return [Record("boot", reason)]

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
        if self._proc is _Proc.NONE:
            return [Record("lease", f"{lost}; its app is not running")]
        # Self-fencing: a new active may already be writing the shared storage.
        reason = f"{lost}; killing its app at once so it cannot write beside a new active"
        if self._state is S.STEPPING_DOWN:
            # It was giving the lease up anyway: keep it from winning the lease straight back.
            self._cooldown_until = now + self._settings.step_down_cooldown
        if self._state is not S.MANUAL:
            self._state = S.FENCED
        return [self._stop(reason, kill=True), Alert("fence", reason)]

    def _ignore(self, event: PolicyEvent, now: float) -> list[Action]:
        return []

    # --- handlers: STARTING ----------------------------------------------------------

    def _app_started(self, event: AppStarted, now: float) -> list[Action]:
        if self._proc is not _Proc.REQUESTED:
            raise self._invalid(event, "no StartApp is waiting for its process")
        self._proc = _Proc.ALIVE
        self._pid = event.pid
        return [Record("started", f"app on {self._node} started as pid {event.pid}")]

    def _app_start_failed(self, event: AppStartFailed, now: float) -> list[Action]:
        if self._proc is not _Proc.REQUESTED:
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
                    "running",
                    f"app on {self._node}{role} {state.value} after {waited}{unconfigured}",
                )
            ]
        if state is AppState.MAINTENANCE:
            # The app is up and busy (an upgrade task, a backup): the startup deadline is over.
            self._state = S.RUNNING
            self._streak = None
            self._note = state.value
            reason = f"app on {self._node} answers MAINTENANCE after {waited}: up, in maintenance; not a failure"
            return [Record("status", reason)]
        if verdict is Verdict.DATABASE_DOWN:
            # Up, but its database is down: waiting for the database, not a failed start.
            self._state = S.RUNNING
            self._streak = None
            self._note = "database"
            return [Alert("database", self._database_words(event))]
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
        return [
            Record("promoted", f"{promoted}; {where}"),
            *self._failover_alert(event, promoted, where),
        ]

    # --- handlers: RUNNING -------------------------------------------------------------

    def _running_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event, allow_expected=False)
        self._forget_process()
        if event.oom:
            return self._failure_with_process_gone("oom", self._exit_words(event), True, now)
        return self._failure_with_process_gone("crash", self._exit_words(event), False, now)

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
            return self._note_once("database", Alert("database", self._database_words(event)))
        if verdict is Verdict.WAITING:
            words = f"app on {node} reports {state.value}: not a failure, waiting"
            return self._note_once(state.value, Record("status", words))
        if state is AppState.FIRST_RUN:
            words = f"app on {node} reports FIRST_RUN: running, not yet configured"
            return self._note_once(state.value, Record("status", words))
        if self._note in (None, AppState.RUNNING.value):
            self._note = state.value  # steady state: nothing worth a history entry
            return []
        words = f"app on {node} reports RUNNING again (was {self._note})"
        return self._note_once(state.value, Record("status", words))

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
                return self._failure_with_process_alive("hang", what, now)
            if state is AppState.DOWN:
                what = f"app on {node} refused connections {streak.count} times in a row while its process lives ({event.detail})"
                return self._failure_with_process_alive("crash", what, now)
            if state is AppState.NOT_DEPLOYED:
                what = f"app on {node} answers /status without its webapp {streak.count} times in a row ({event.detail})"
                return self._failed_start(what, now)
            database = "reachable" if event.database_reachable else "reachability unknown"
            what = f"app on {node} reported ERROR {streak.count} times in a row, database {database} ({event.detail})"
            return self._failure_with_process_alive("error", what, now)
        if streak.count > 1:
            return []
        patience = (
            f"a hang counts after {s.fall} in a row over {human_duration(s.health_timeout)}"
            if state is AppState.TIMEOUT
            else f"acting after {s.fall} in a row"
        )
        self._note = state.value  # so a recovery afterwards is recorded
        return [
            Record("detected", f"app on {node} /status: {state.value} ({event.detail}); {patience}")
        ]

    # --- handlers: stopping states -----------------------------------------------------

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
        if self._settings.mode in _STANDBY_APP_MODES:
            return [
                self._start(
                    f"app on {self._node} is gone after fencing; starting it again as a standby",
                    now,
                )
            ]
        self._state = S.STANDBY
        return [Record("fenced", f"app on {self._node} is gone after fencing; staying standby")]

    def _fenced_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        promoted = self._take_lease(event)
        self._state = S.RESTARTING
        self._after_stop = f"{promoted}; the fenced process has exited: starting the app"
        then = "starting the app once the fenced process has exited"
        return [
            Record("promoted", f"{promoted}; {then}"),
            *self._failover_alert(event, promoted, then),
        ]

    # --- handlers: MANUAL ----------------------------------------------------------------

    def _manual_exited(self, event: AppExited, now: float) -> list[Action]:
        self._check_exit(event)
        self._forget_process()
        actions: list[Action] = [
            Record(
                "stopped",
                f"app on {self._node} stopped ({describe_exit(event)}); manual intervention needed",
            )
        ]
        if self._handing_over is not None and self._role is Role.ACTIVE:
            actions += self._release_for_handover(f"app on {self._node} stopped", now)
        return actions

    # --- handlers: operator commands (every state but INIT) ------------------------------

    def _pause(self, event: Paused, now: float) -> list[Action]:
        if self._paused:
            return []
        self._paused = True
        self._would = None
        self._paused_by = f"{event.actor} ({event.reason})" if event.reason else event.actor
        return [
            Record(
                "pause",
                f"{self._paused_by} paused the cluster: {self._node} keeps monitoring and "
                "reporting, and takes no action until resumed",
                event.actor,
            )
        ]

    def _init_pause(self, event: Paused, now: float) -> list[Action]:
        """Paused before Boot: the agent started while the cluster was paused."""
        return self._pause(event, now)

    def _resume(self, event: Resumed, now: float) -> list[Action]:
        if not self._paused:
            return []
        self._paused = False
        self._would = None
        who = f"{event.actor} ({event.reason})" if event.reason else event.actor
        if self._state is S.PAUSED:
            if self._role is Role.ACTIVE:
                reason = f"{who} resumed the cluster: the app on {self._node} is not running; starting it"
                return [self._start(reason, now, event.actor)]
            if self._settings.mode in _STANDBY_APP_MODES:
                reason = f"{who} resumed the cluster: starting the app on {self._node} as a standby"
                return [self._start(reason, now, event.actor)]
            self._state = S.STANDBY
        words = f"{who} resumed the cluster: {self._node} acts on failures again"
        return [Record("resume", words, event.actor)]

    def _handover_requested(self, event: HandoverRequested, now: float) -> list[Action]:
        self._handover = event
        node = self._node
        if event.target == node:
            refusal = self._refuse_handover_words()
            if refusal is not None:
                self._handover = None
                return [EndHandover(f"{event.kind} to {node} refused: {refusal}", event.actor)]
            if event.forced:
                holder = event.source or "nobody"
                return [
                    TakeLease(
                        f"{event.actor} forced a failover to {node} ({event.reason}): taking the "
                        f"lease from {holder} under a new epoch",
                        event.actor,
                    )
                ]
            asked = (
                f"{event.source} hands over to {node} (path loss)"
                if event.automatic
                else f"{event.actor} asked for a switchover to {node} ({event.reason})"
            )
            return [
                Record(
                    event.kind,
                    f"{asked}: taking the lease once {event.source} releases it",
                    event.actor,
                )
            ]
        if event.source == node and self._role is Role.ACTIVE and event.epoch == self._epoch:
            return self._hand_over(event, now)
        return []  # a bystander: only may_lead changes (only the target may lead)

    def _handover_ended(self, event: HandoverEnded, now: float) -> list[Action]:
        self._handover = None
        self._handover_asked = False  # a path-loss handover that did not happen may be retried
        return []

    def _path_lost(self, event: PathLost, now: float) -> list[Action]:
        """The routers lost their path to this node: hand over to ``event.target`` (once)."""
        if self._role is not Role.ACTIVE or self._settings.mode in (
            Mode.ACTIVE_ACTIVE,
            Mode.RESTART_ONLY,
        ):
            return []  # nothing to move: the routers simply skip an unreachable node
        if self._handover_asked or self._handover is not None or self._handing_over is not None:
            return []  # a handover is already asked for or under way
        self._handover_asked = True
        return [RequestHandover(event.target, event.reason), Alert("failover", event.reason)]

    def _lease_vacant(self, event: LeaseVacant, now: float) -> list[Action]:
        """Paused: nobody holds the lease; say that this node would have taken over."""
        if not self._paused or self._role is Role.ACTIVE or self._settings.no_failover:
            return []
        if self._state in (S.MANUAL, S.FENCED, S.STEPPING_DOWN):
            return []
        return [
            Record(
                "paused",
                f"no node holds the leader lease: {self._node} would take it and start the app, "
                f"but {self._paused_by} paused the cluster: no failover",
            )
        ]

    def _manual_lease_gained(self, event: LeaseGained, now: float) -> list[Action]:
        promoted = self._take_lease(event)
        then = "not starting the app: it waits for manual intervention"
        return [
            Record(
                "lease", f"{promoted} while waiting for manual intervention; not starting the app"
            ),
            *self._failover_alert(event, promoted, then, manual=True),
        ]


Handler = Callable[[Policy, Any, float], list[Action]]

_OPERATOR_EVENTS = frozenset({Paused, Resumed, HandoverRequested, HandoverEnded, LeaseVacant})

# Actions a pause holds back (the kill of self-fencing is never held back).
_VERBS: dict[type, str] = {
    StartApp: "start the app",
    StopApp: "stop the app",
    StepDown: "release the lease",
    RequestHandover: "hand over to another node",
}


def _acts(action: Action) -> bool:
    if isinstance(action, StopApp):
        return not action.kill
    return type(action) in _VERBS


# While paused, a held-back event still changes what is certain: the process is
# gone, the lease was gained, the agent booted. Other events change nothing.
_PAUSED_REALITY: dict[type, Handler] = {
    Boot: Policy._paused_boot,
    AppExited: Policy._paused_process_gone,
    AppStartFailed: Policy._paused_process_gone,
    LeaseGained: Policy._paused_lease_gained,
}

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
