"""The operator's pause (part of hakit.policy's ``Policy``).

While the cluster is paused, an event is first handled as usual; if that would
start or stop the app or release the lease, the policy is put back as it was,
only what certainly changed in the world is taken in (the process is gone, the
lease was gained: ``PAUSED_REALITY``), and a ``paused`` record says what it WOULD
have done. Self-fencing (the kill after a lost lease) is never held back, nor is
a handover the node takes part in (an operator's action).
"""

from __future__ import annotations

from hakit.history.kinds import EventKind
from hakit.policy.base import STANDBY_APP_MODES, Handler, PolicyBase, Proc, S
from hakit.policy.vocabulary import (
    Action,
    AppExited,
    AppStartFailed,
    Boot,
    HandoverEnded,
    HandoverRequested,
    LeaseGained,
    LeaseVacant,
    Paused,
    PolicyEvent,
    Record,
    RequestHandover,
    Resumed,
    Role,
    StartApp,
    StepDown,
    StopApp,
)

# Events that are the operator's own: never held back by a pause.
OPERATOR_EVENTS = frozenset({Paused, Resumed, HandoverRequested, HandoverEnded, LeaseVacant})


class PauseHandling(PolicyBase):
    # --- holding actions back, saying what would have been done ---------------

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
        held = [action for action in actions if acts(action)]
        if not held:
            if actions:
                self._would = None
            return actions
        self.__dict__.update(saved)
        PAUSED_REALITY.get(type(event), PolicyBase._ignore)(self, event, now)
        key = f"{type(event).__name__}:{type(held[0]).__name__}"
        if self._would == key and self._state is saved["_state"]:
            return []  # said already (a failing app is observed again and again)
        self._would = key
        return [
            Record(
                EventKind.PAUSED,
                f"would {VERBS[type(held[0])]} ({held[0].reason}), but {self._paused_by} "
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
        if self._proc is Proc.NONE:
            self._state = S.PAUSED
        return []

    # --- handlers: pause and resume (every state but INIT) --------------------

    def _pause(self, event: Paused, now: float) -> list[Action]:
        if self._paused:
            return []
        self._paused = True
        self._would = None
        self._paused_by = f"{event.actor} ({event.reason})" if event.reason else event.actor
        return [
            Record(
                EventKind.PAUSE,
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
            if self._settings.mode in STANDBY_APP_MODES:
                reason = f"{who} resumed the cluster: starting the app on {self._node} as a standby"
                return [self._start(reason, now, event.actor)]
            self._state = S.STANDBY
        words = f"{who} resumed the cluster: {self._node} acts on failures again"
        return [Record(EventKind.RESUME, words, event.actor)]

    def _lease_vacant(self, event: LeaseVacant, now: float) -> list[Action]:
        """Paused: nobody holds the lease; say that this node would have taken over."""
        if not self._paused or self._role is Role.ACTIVE or self._settings.no_failover:
            return []
        if self._state in (S.MANUAL, S.FENCED, S.STEPPING_DOWN):
            return []
        return [
            Record(
                EventKind.PAUSED,
                f"no node holds the leader lease: {self._node} would take it and start the app, "
                f"but {self._paused_by} paused the cluster: no failover",
            )
        ]


# Actions a pause holds back (the kill of self-fencing is never held back).
VERBS: dict[type, str] = {
    StartApp: "start the app",
    StopApp: "stop the app",
    StepDown: "release the lease",
    RequestHandover: "hand over to another node",
}


def acts(action: Action) -> bool:
    if isinstance(action, StopApp):
        return not action.kill
    return type(action) in VERBS


# While paused, a held-back event still changes what is certain: the process is
# gone, the lease was gained, the agent booted. Other events change nothing.
PAUSED_REALITY: dict[type, Handler] = {
    Boot: PauseHandling._paused_boot,
    AppExited: PauseHandling._paused_process_gone,
    AppStartFailed: PauseHandling._paused_process_gone,
    LeaseGained: PauseHandling._paused_lease_gained,
}
