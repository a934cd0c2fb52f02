"""Replicated storage: may this standby be promoted with the copy it holds? (pure)

A standby's data is the newest generation it applied (hakit.snapshot.apply): every
write the active acknowledged before that generation's capture began is in it,
later ones are not. Promoting it loses those later writes: the data-loss window
is the copy's age at promotion. ``promotion_verdict`` decides, row by row of
``VERDICTS`` (a unit test walks the table):

- the node itself served the last epoch (its own home is the newest data): yes,
  nothing is lost;
- its copy is no older than ``max_lag``: yes, the window is the copy's age;
- it holds no copy, or one older than ``max_lag``: no, unless the operator forced
  it (``hakit failover --force``): then yes, and the window is said (unknown
  without a copy).

The agent (hakit.agent.replication) asks before it tries for an expired lease and
before a forced or requested takeover, and records the window when it promotes.

A planned switchover loses nothing: the active, its app stopped (no write after
it), ships a final generation and waits ``final_timeout`` for the target to
apply it (a target holding it is ``FINAL``: nothing lost). ``final_decision``
says what happens at the end of that wait, row by row of ``FINAL_DECISIONS``:

- the target applied the final generation: the lease is released, nothing lost;
- it did not, but its copy is no older than ``max_lag``: released all the same
  (the target may lead under ``max_lag``, as after a failure); the window is said;
- it did not, and its copy is older than ``max_lag`` (or it has none): the
  switchover is abandoned. The active's lease is released (its app is stopped
  already: never two writers) and the handover intent cleared, so the normal
  election resumes; the target refuses the lease (stale), and the old active,
  which holds the newest data, takes it back once its step-down cooldown ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hakit.history.facts import human_duration


class CopyState(enum.StrEnum):
    CURRENT = "current"  # this node served the last epoch: its own data is the newest
    FINAL = "final"  # it applied the last epoch's final generation (app stopped): the newest
    FRESH = "fresh"  # a copy no older than max_lag
    STALE = "stale"  # a copy older than max_lag
    NONE = "none"  # no copy at all (never applied one)


# (copy state, forced) -> may promote
VERDICTS: dict[tuple[CopyState, bool], bool] = {
    (CopyState.CURRENT, False): True,
    (CopyState.CURRENT, True): True,
    (CopyState.FINAL, False): True,
    (CopyState.FINAL, True): True,
    (CopyState.FRESH, False): True,
    (CopyState.FRESH, True): True,
    (CopyState.STALE, False): False,
    (CopyState.STALE, True): True,
    (CopyState.NONE, False): False,
    (CopyState.NONE, True): True,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    state: CopyState
    reason: str
    loss_window: float | None  # seconds; None: nothing lost (CURRENT) or unknown (NONE)


def copy_state(
    own_data_current: bool, age: float | None, max_lag: float, final: bool = False
) -> CopyState:
    if own_data_current:
        return CopyState.CURRENT
    if final:
        return CopyState.FINAL
    if age is None:
        return CopyState.NONE
    return CopyState.FRESH if age <= max_lag else CopyState.STALE


def promotion_verdict(
    own_data_current: bool,
    age: float | None,
    generation: str,
    max_lag: float,
    forced: bool,
    final: bool = False,
) -> Verdict:
    """May a node holding a copy of ``age`` seconds (None: none) of ``generation`` lead?
    ``final``: that copy is the last epoch's final generation (a switchover's)."""
    state = copy_state(own_data_current, age, max_lag, final)
    allowed = VERDICTS[(state, forced)]
    limit = human_duration(max_lag)
    if state is CopyState.CURRENT:
        return Verdict(allowed, state, "it served the last epoch: its own data is the newest", 0.0)
    if state is CopyState.FINAL:
        return Verdict(
            allowed,
            state,
            f"it applied the final generation {generation} of the last epoch, taken with the "
            "app stopped: nothing is lost",
            0.0,
        )
    if state is CopyState.NONE:
        reason = "it holds no replicated copy of the active's data"
        if allowed:
            return Verdict(
                True, state, f"{reason}; forced: everything the active wrote may be lost", None
            )
        return Verdict(
            False, state, f"{reason}; not promoted (hakit failover --force overrides)", None
        )
    assert age is not None
    copy = f"its copy ({generation}) is {human_duration(age)} old"
    if state is CopyState.FRESH:
        return Verdict(
            True,
            state,
            f"{copy}, within max_lag {limit}: writes of the last {human_duration(age)} may be lost",
            age,
        )
    if allowed:
        return Verdict(
            True,
            state,
            f"{copy}, older than max_lag {limit}; forced: writes of the last {human_duration(age)} may be lost",
            age,
        )
    return Verdict(
        False,
        state,
        f"{copy}, older than max_lag {limit}: not promoted, it would lose the writes of the last "
        f"{human_duration(age)} (hakit failover --force overrides)",
        age,
    )


# --- a planned switchover's final generation --------------------------------------------


class FinalOutcome(enum.StrEnum):
    APPLIED = "applied"  # the target holds the final generation
    WITHIN_LAG = "within-lag"  # it does not; its copy is no older than max_lag
    BEYOND_LAG = "beyond-lag"  # it does not; its copy is older than max_lag, or it has none


# outcome -> the switchover goes on (the lease is released for the target)
FINAL_DECISIONS: dict[FinalOutcome, bool] = {
    FinalOutcome.APPLIED: True,
    FinalOutcome.WITHIN_LAG: True,
    FinalOutcome.BEYOND_LAG: False,
}


@dataclass(frozen=True, slots=True)
class FinalDecision:
    proceed: bool
    outcome: FinalOutcome
    reason: str
    loss_window: float | None  # seconds the switchover may lose; None: unknown (no copy)


def final_decision(
    target: str,
    generation: str | None,
    applied: bool,
    target_age: float | None,
    max_lag: float,
    timeout: float,
) -> FinalDecision:
    """After the wait for ``target`` to apply the final generation ``generation`` (None:
    its capture failed): does the switchover go on? ``target_age``: the age of the data
    ``target`` holds (None: no copy)."""
    if applied:
        outcome = FinalOutcome.APPLIED
    elif target_age is not None and target_age <= max_lag:
        outcome = FinalOutcome.WITHIN_LAG
    else:
        outcome = FinalOutcome.BEYOND_LAG
    proceed = FINAL_DECISIONS[outcome]
    if outcome is FinalOutcome.APPLIED:
        return FinalDecision(
            proceed,
            outcome,
            f"{target} applied the final generation {generation}: the switchover loses nothing",
            0.0,
        )
    missing = (
        f"{target} did not apply the final generation {generation} within "
        f"final_timeout {human_duration(timeout)}"
        if generation is not None
        else "the final generation could not be captured"
    )
    limit = human_duration(max_lag)
    if outcome is FinalOutcome.WITHIN_LAG:
        assert target_age is not None
        return FinalDecision(
            proceed,
            outcome,
            f"{missing}; its copy is {human_duration(target_age)} old, within max_lag {limit}: "
            f"the switchover goes on and may lose the writes of the last "
            f"{human_duration(target_age)}",
            target_age,
        )
    held = (
        f"its copy is {human_duration(target_age)} old, older than max_lag {limit}"
        if target_age is not None
        else "it holds no copy"
    )
    return FinalDecision(
        proceed,
        outcome,
        f"{missing}; {held}: the switchover is abandoned (the lease is released, the "
        "intent cleared; this node, which holds the newest data, leads again after its "
        "cooldown)",
        target_age,
    )
