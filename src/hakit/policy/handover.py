"""Handing the lease over (part of hakit.policy's ``Policy``): an operator's
switchover (drain, stop, release; only the target may take the lease), a forced
failover (the target takes the lease under a new epoch), and the routers' lost
path to this node (PathLost, hakit.health.datapath), which asks for a handover once.
"""

from __future__ import annotations

from hakit.config import Mode
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy.base import STANDBY_APP_MODES, PolicyBase, Proc, S
from hakit.policy.vocabulary import (
    Action,
    Alert,
    Drain,
    EndHandover,
    HandoverEnded,
    HandoverRequested,
    PathLost,
    Record,
    RequestHandover,
    Role,
    StepDown,
    TakeLease,
)


class HandoverHandling(PolicyBase):
    # --- this node as the source or the target of a handover ------------------

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
                kind=EventKind.FAILOVER if handover.automatic else EventKind.SWITCHOVER,
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
                    EventKind.FAILOVER,
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
            self._state is S.MANUAL and self._proc is not Proc.NONE
        ):
            return [stopping]
        if self._proc is Proc.NONE:
            return self._release_for_handover(f"{words}: the app on {node} is not running", now)
        drain = Drain(f"{words}: draining {node} (the router holds new requests)", actor)
        if self._settings.mode in STANDBY_APP_MODES:
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

    # --- handlers: handover events (every state but INIT) ---------------------

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
        return [
            RequestHandover(event.target, event.reason),
            Alert(AlertKind.FAILOVER, event.reason),
        ]
