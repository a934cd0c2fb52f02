"""Failures of the app and the restart budget (part of hakit.policy's ``Policy``).

A failure counts in a window (``failure_window``): up to ``restart_attempts`` of
them restart the app on this node; the next one fails over (steps down so a
standby takes over) or, where a failover cannot help (out of memory, restart-only
mode, a failed start another node would repeat), stops and asks for a human.
"""

from __future__ import annotations

from hakit.config import Mode
from hakit.history.kinds import AlertKind, EventCause
from hakit.policy.base import PolicyBase, Proc, S
from hakit.policy.rules import failures_in_window
from hakit.policy.vocabulary import (
    Action,
    Alert,
    Role,
    human_duration,
    ordinal,
)


class FailureHandling(PolicyBase):
    # --- the restart budget ---------------------------------------------------

    def _record_failure(self, now: float) -> int:
        window = self._settings.failure_window
        self._failures = (*failures_in_window(self._failures, now, window), now)
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

    # --- failure paths --------------------------------------------------------

    def _failure_with_process_gone(
        self, kind: AlertKind, what: str, oom: bool, now: float
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

    def _failure_with_process_alive(self, kind: AlertKind, what: str, now: float) -> list[Action]:
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
        return [self._stop(reason), Alert(kind, reason, cause=EventCause.STEP_DOWN)]

    def _failed_start(self, what: str, now: float) -> list[Action]:
        """By default never a failover: another node would fail to start the same way
        (a bad shared config). ``failover.on_failed_start = "failover"`` (node-local
        causes) steps down once the retries are used up: see ``_failed_start_failover``."""
        self._failed_starts += 1
        k, budget = self._failed_starts, self._settings.restart_attempts
        alive = self._proc is not Proc.NONE
        if k <= budget:
            self._restarts += 1
            reason = f"{what}; failed start {k}: retry {k} of {budget}"
            if not alive:
                return [self._start(reason, now), Alert(AlertKind.FAILED_START, reason)]
            self._state = S.RESTARTING
            self._after_stop = (
                f"app on {self._node} stopped; starting it again (retry {k} of {budget} "
                "after a failed start)"
            )
            return [
                self._stop(f"{what}; stopping it to retry ({k} of {budget})"),
                Alert(AlertKind.FAILED_START, reason),
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
        return [*actions, Alert(AlertKind.FAILED_START, reason, manual_intervention=True)]

    def _failed_start_failover(self, what: str, now: float) -> list[Action] | None:
        """on_failed_start = "failover": step down so a standby tries; None when this node
        cannot (no standby, not active) or already did once (then a human decides)."""
        if self._failed_start_handover or self._no_failover_words() is not None:
            return None
        self._failed_start_handover = True
        k, budget = self._failed_starts, self._settings.restart_attempts
        words = f"{what}; {k} failed starts in a row (restart_attempts = {budget})"
        setting = '(failover.on_failed_start = "failover")'
        if self._proc is Proc.NONE:
            return self._step_down(f"{words}: stepping down so a standby takes over {setting}", now)
        self._state = S.STEPPING_DOWN
        reason = f"{words}: stopping it, then stepping down so a standby takes over {setting}"
        return [
            self._stop(reason),
            Alert(AlertKind.FAILED_START, reason, cause=EventCause.STEP_DOWN),
        ]

    def _startup_deadline(self, now: float) -> list[Action]:
        waited = now - self._start_requested_at
        if waited < self._settings.startup_timeout:
            return []
        what = (
            f"app on {self._node} did not reach RUNNING within "
            f"{human_duration(self._settings.startup_timeout)} of being started"
        )
        return self._failed_start(what, now)
