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
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hakit.history.facts import human_duration


class CopyState(enum.StrEnum):
    CURRENT = "current"  # this node served the last epoch: its own data is the newest
    FRESH = "fresh"  # a copy no older than max_lag
    STALE = "stale"  # a copy older than max_lag
    NONE = "none"  # no copy at all (never applied one)


# (copy state, forced) -> may promote
VERDICTS: dict[tuple[CopyState, bool], bool] = {
    (CopyState.CURRENT, False): True,
    (CopyState.CURRENT, True): True,
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


def copy_state(own_data_current: bool, age: float | None, max_lag: float) -> CopyState:
    if own_data_current:
        return CopyState.CURRENT
    if age is None:
        return CopyState.NONE
    return CopyState.FRESH if age <= max_lag else CopyState.STALE


def promotion_verdict(
    own_data_current: bool,
    age: float | None,
    generation: str,
    max_lag: float,
    forced: bool,
) -> Verdict:
    """May a node holding a copy of ``age`` seconds (None: none) of ``generation`` lead?"""
    state = copy_state(own_data_current, age, max_lag)
    allowed = VERDICTS[(state, forced)]
    limit = human_duration(max_lag)
    if state is CopyState.CURRENT:
        return Verdict(allowed, state, "it served the last epoch: its own data is the newest", 0.0)
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
