"""Failures of the app and the restart budget (part of hakit.policy's ``Policy``).

A failure counts in a window (``failure_window``): up to ``restart_attempts`` of
them restart the app on this node; the next one fails over (steps down so a
standby takes over) or, where a failover cannot help (out of memory, restart-only
mode, a failed start another node would repeat), stops and asks for a human.
"""

from __future__ import annotations

from typing import Any

from hakit.config import Mode
from hakit.history.facts import (
    FAILED_STARTS,
    FAILURE,
    FAILURE_WINDOW,
    NO_FAILOVER,
    RESTART,
    RESTART_ATTEMPTS,
    RETRY,
    WHAT,
    human_duration,
    ordinal,
)
from hakit.history.kinds import AlertKind, EventCause
from hakit.policy.base import PolicyBase, Proc, S
from hakit.policy.rules import failures_in_window
from hakit.policy.vocabulary import Action, Alert, Role

# Why an out-of-memory exit does not fail over once the restarts are used up.
_SAME_HEAP = "another node with the same heap would run out of memory the same way"
_SAME_START = "another node would fail to start too"


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

    def _failure_facts(self, what: str, n: int) -> dict[str, Any]:
        """What ``hakit why`` reads of the ``n``th failure within the window (hakit.history.facts)."""
        s = self._settings
        return {
            WHAT: what,
            FAILURE: n,
            RESTART_ATTEMPTS: s.restart_attempts,
            FAILURE_WINDOW: s.failure_window,
        }

    def _start_facts(self, what: str) -> dict[str, Any]:
        """What ``hakit why`` reads of a failed start (hakit.history.facts)."""
        return {WHAT: what, RESTART_ATTEMPTS: self._settings.restart_attempts}

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
            facts = {**self._failure_facts(what, n), RESTART: n}
            return [self._start(reason, now), Alert(kind, reason, data=facts)]
        if oom:
            self._state = S.MANUAL
            reason = (
                f"{what}; {self._exhausted_words(n)}; not failing over: {_SAME_HEAP}; "
                "manual intervention needed"
            )
            facts = {**self._failure_facts(what, n), NO_FAILOVER: _SAME_HEAP}
            return [Alert(kind, reason, manual_intervention=True, data=facts)]
        why_not = self._no_failover_words()
        if why_not is not None:
            self._state = S.MANUAL
            reason = f"{what}; {self._exhausted_words(n)} and {why_not}; manual intervention needed"
            facts = {**self._failure_facts(what, n), NO_FAILOVER: why_not}
            return [Alert(kind, reason, manual_intervention=True, data=facts)]
        reason = f"{what}; {self._exhausted_words(n)}: stepping down so a standby takes over"
        return self._step_down(reason, now, self._failure_facts(what, n))

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
            facts = {**self._failure_facts(what, n), RESTART: n}
            return [self._stop(reason), Alert(kind, reason, data=facts)]
        why_not = self._no_failover_words()
        if why_not is not None:
            self._state = S.MANUAL
            reason = (
                f"{what}; {self._exhausted_words(n)} and {why_not}: stopping it; "
                "manual intervention needed"
            )
            facts = {**self._failure_facts(what, n), NO_FAILOVER: why_not}
            return [self._stop(reason), Alert(kind, reason, manual_intervention=True, data=facts)]
        self._state = S.STEPPING_DOWN
        reason = (
            f"{what}; {self._exhausted_words(n)}: stopping it, then stepping down "
            "so a standby takes over"
        )
        facts = self._failure_facts(what, n)
        return [self._stop(reason), Alert(kind, reason, cause=EventCause.STEP_DOWN, data=facts)]

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
            retry = Alert(
                AlertKind.FAILED_START, reason, data={**self._start_facts(what), RETRY: k}
            )
            if not alive:
                return [self._start(reason, now), retry]
            self._state = S.RESTARTING
            self._after_stop = (
                f"app on {self._node} stopped; starting it again (retry {k} of {budget} "
                "after a failed start)"
            )
            return [
                self._stop(f"{what}; stopping it to retry ({k} of {budget})"),
                retry,
            ]
        if self._settings.failover_on_failed_start:
            failover = self._failed_start_failover(what, now)
            if failover is not None:
                return failover
        self._state = S.MANUAL
        reason = f"{what}; {k} failed starts in a row (restart_attempts = {budget}); "
        if not self._settings.failover_on_failed_start:
            why_not = _SAME_START
            reason += f"not failing over: {why_not}"
        elif self._failed_start_handover:
            why_not = (
                "this node already handed over after failed starts and the other node "
                "could not start the app either"
            )
            reason += f"not failing over again: {why_not}"
        else:
            why_not = str(self._no_failover_words())
            reason += f"not failing over: {why_not}"
        reason += "; manual intervention needed"
        facts = {**self._start_facts(what), FAILED_STARTS: k, NO_FAILOVER: why_not}
        actions: list[Action] = [self._stop(reason)] if alive else []
        alert = Alert(AlertKind.FAILED_START, reason, manual_intervention=True, data=facts)
        return [*actions, alert]

    def _failed_start_failover(self, what: str, now: float) -> list[Action] | None:
        """on_failed_start = "failover": step down so a standby tries; None when this node
        cannot (no standby, not active) or already did once (then a human decides)."""
        if self._failed_start_handover or self._no_failover_words() is not None:
            return None
        self._failed_start_handover = True
        k, budget = self._failed_starts, self._settings.restart_attempts
        words = f"{what}; {k} failed starts in a row (restart_attempts = {budget})"
        setting = '(failover.on_failed_start = "failover")'
        facts = {**self._start_facts(what), FAILED_STARTS: k}
        if self._proc is Proc.NONE:
            reason = f"{words}: stepping down so a standby takes over {setting}"
            return self._step_down(reason, now, facts)
        self._state = S.STEPPING_DOWN
        reason = f"{words}: stopping it, then stepping down so a standby takes over {setting}"
        return [
            self._stop(reason),
            Alert(AlertKind.FAILED_START, reason, cause=EventCause.STEP_DOWN, data=facts),
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
