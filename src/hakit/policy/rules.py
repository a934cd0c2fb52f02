"""Pure decisions the policy is made of: what an observation means, when a
streak of bad observations becomes a failure, which failures are remembered.

Functions of their arguments only (no clock, no state), so each rule can be
read and tested on its own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from hakit.contract import MEANING, AppState


class Verdict(enum.Enum):
    """What one /status observation means to the manager."""

    HEALTHY = "healthy"  # RUNNING, FIRST_RUN
    WAITING = "waiting"  # STARTING, STOPPING, MAINTENANCE: never a failure by itself
    DATABASE_DOWN = "database-down"  # ERROR because the database is unreachable: alert only
    FAILING = "failing"  # ERROR (database fine or unknown), DOWN, NOT_DEPLOYED, TIMEOUT
    NO_PROCESS = "no-process"  # STOPPED: the supervisor reports the exit itself


def classify(state: AppState, database_reachable: bool | None) -> Verdict:
    """Read the contract's table (contract.MEANING), never a second copy of it."""
    meaning = MEANING[state]
    if meaning.healthy:
        return Verdict.HEALTHY
    if state is AppState.ERROR and database_reachable is False:
        # A standby would fail the same way: restarting or failing over cannot help.
        return Verdict.DATABASE_DOWN
    if state is AppState.STOPPED:
        return Verdict.NO_PROCESS
    # TIMEOUT's patience is bounded (``fall`` in a row spanning ``health_timeout``):
    # it is a failure candidate, judged by ``streak_is_failure``.
    if meaning.patience and state is not AppState.TIMEOUT:
        return Verdict.WAITING
    return Verdict.FAILING


def failures_in_window(times: tuple[float, ...], now: float, window: float) -> tuple[float, ...]:
    """The failure times still remembered at ``now``."""
    return tuple(t for t in times if now - t < window)


@dataclass(frozen=True, slots=True)
class Streak:
    """Consecutive identical failing observations (ERROR, DOWN, TIMEOUT, NOT_DEPLOYED)."""

    state: AppState
    count: int
    first_at: float


def extend_streak(streak: Streak | None, state: AppState, now: float) -> Streak:
    if streak is not None and streak.state is state:
        return Streak(state, streak.count + 1, streak.first_at)
    return Streak(state, 1, now)


def streak_is_failure(streak: Streak, fall: int, health_timeout: float, now: float) -> bool:
    """Certain failures need ``fall`` in a row; timeouts must also span ``health_timeout``
    (a stop-the-world GC pause looks like a hang for a while)."""
    if streak.count < fall:
        return False
    if streak.state is AppState.TIMEOUT:
        return now - streak.first_at >= health_timeout
    return True


def last_active(served: Mapping[str, int]) -> tuple[str, int]:
    """(node, epoch) of the node that served under the highest epoch; ("", 0) if none.

    ``served`` maps each node that may lead to the highest epoch it was active
    under (its record in the store): on a cold start of the whole cluster, that
    node has the newest data.
    """
    best = ("", 0)
    for node, epoch in sorted(served.items()):
        if epoch > best[1]:
            best = (node, epoch)
    return best
