"""The policy's state and the small steps every part of it shares (hakit.policy).

``PolicyBase`` holds everything one node's policy knows (its fields are the whole
state of the machine: ``_handle_paused`` saves and restores them as one dict) and
the steps the handlers are built from: start or stop the app, take or leave the
lease, check an exit. The handlers live in hakit.policy.machine (the app's life),
hakit.policy.failures (restart budget: restart, fail over or give up),
hakit.policy.pause (the operator's pause) and hakit.policy.handover (switchover,
forced failover, path loss); ``Policy`` combines them. No I/O, no clock reads.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from hakit.config import Mode
from hakit.errors import InvalidTransition
from hakit.history.facts import human_duration
from hakit.history.kinds import AlertKind
from hakit.policy.rules import Streak
from hakit.policy.vocabulary import (
    Action,
    Alert,
    AppExited,
    Boot,
    HandoverRequested,
    LeaseGained,
    PolicyEvent,
    PolicySettings,
    PolicyState,
    Role,
    StartApp,
    StepDown,
    StopApp,
    describe_exit,
)

S = PolicyState
STANDBY_APP_MODES = frozenset({Mode.WARM_STANDBY, Mode.ACTIVE_ACTIVE})

# A transition's handler: (policy, event, now) -> actions.
Handler = Callable[[Any, Any, float], list[Action]]


class Proc(enum.Enum):
    """What the policy believes about the app's process on this node."""

    NONE = "none"
    REQUESTED = "requested"  # StartApp returned, AppStarted not yet fed
    ALIVE = "alive"
    STOPPING = "stopping"  # StopApp returned, AppExited not yet fed


class PolicyBase:
    """The state of one node's policy and the steps its handlers share."""

    def __init__(self, settings: PolicySettings, node: str) -> None:
        self._settings = settings
        self._node = node
        self._state = S.INIT
        self._role = Role.STANDBY
        self._epoch = 0  # epoch acted under while active
        self._highest_epoch = 0  # epochs only grow: a smaller LeaseGained is impossible
        self._proc = Proc.NONE
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
        # --- operator commands and startup ----------------------------------------
        self._paused = False
        self._paused_by = ""  # "operator:alice (maintenance)", for reasons
        self._would: str | None = None  # last held-back action while paused (said once)
        self._handover: HandoverRequested | None = None  # the operator's intent in progress
        self._handing_over: HandoverRequested | None = None  # switchover out, under way
        self._lead_after: float | None = None  # cold start: not the last active, wait
        self._handover_asked = False  # a path-loss handover was asked for (not again)
        # --- failsafe mode (hakit.policy.failsafe) ------------------------------------
        self._failsafe_until: float | None = None  # promised: no lease before this
        self._failsafe_why = ""  # to whom, in words

    # --- small helpers (mutate only after every guard has passed) -------------

    def _mode_name(self) -> str:
        return self._settings.mode.value

    def _invalid(self, event: object, why: str) -> InvalidTransition:
        return InvalidTransition(self._state.value, f"{event!r} ({why})")

    def _start(self, reason: str, now: float, actor: str = "") -> StartApp:
        assert self._proc is Proc.NONE, "policy bug: StartApp while a process is believed alive"
        self._proc = Proc.REQUESTED
        self._pid = None
        self._start_requested_at = now
        self._streak = None
        self._note = None
        self._state = S.STARTING
        return StartApp(reason, actor)

    def _stop(
        self,
        reason: str,
        kill: bool = False,
        actor: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> StopApp:
        assert self._proc is not Proc.NONE, "policy bug: StopApp without a process"
        self._proc = Proc.STOPPING
        return StopApp(reason, kill=kill, actor=actor, data=dict(data or {}))

    def _leave_active(self) -> None:
        self._role = Role.STANDBY
        self._epoch = 0
        self._handover_asked = False

    def _step_down(
        self, reason: str, now: float, facts: Mapping[str, Any] | None = None
    ) -> list[Action]:
        """``facts``: of the failure it follows (hakit.history.facts), for ``hakit why``."""
        # Shared storage: the lease goes only once the app is gone.
        assert self._proc is Proc.NONE, "policy bug: StepDown while the app is believed alive"
        self._leave_active()
        self._cooldown_until = now + self._settings.step_down_cooldown
        self._state = S.STANDBY
        data = dict(facts or {})
        return [StepDown(reason, data=data), Alert(AlertKind.FAILOVER, reason, data=data)]

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
        return [Alert(AlertKind.FAILOVER, reason, manual_intervention=manual)]

    def _check_exit(self, event: AppExited, *, allow_expected: bool = True) -> None:
        if self._proc is Proc.NONE:
            raise self._invalid(event, "no app process is believed to run")
        if self._pid is not None and event.pid != self._pid:
            raise self._invalid(event, f"the app process is pid {self._pid}")
        if event.expected and not allow_expected:
            raise self._invalid(event, "the policy asked for no stop")

    def _forget_process(self) -> None:
        self._proc = Proc.NONE
        self._pid = None
        self._streak = None
        self._note = None

    def _exit_words(self, event: AppExited) -> str:
        words = f"app on {self._node} exited ({describe_exit(event)})"
        return words + ", out of memory" if event.oom else words

    def _note_once(self, key: str, action: Action) -> list[Action]:
        if self._note == key:
            return []
        self._note = key
        return [action]

    def _ignore(self, event: PolicyEvent, now: float) -> list[Action]:
        return []

    # --- startup --------------------------------------------------------------

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
