"""Replicated storage's promotion rule, row by row (hakit.policy.replication)."""

from __future__ import annotations

import pytest

from hakit.policy.replication import (
    FINAL_DECISIONS,
    VERDICTS,
    CopyState,
    FinalOutcome,
    copy_state,
    final_decision,
    promotion_verdict,
)

MAX_LAG = 300.0

# own data current, copy age, forced -> allowed, state, loss window, words in the reason
CASES = [
    (True, None, False, True, CopyState.CURRENT, 0.0, "served the last epoch"),
    (True, 9999.0, False, True, CopyState.CURRENT, 0.0, "its own data is the newest"),
    (False, 12.0, False, True, CopyState.FRESH, 12.0, "within max_lag 5m"),
    (False, 300.0, False, True, CopyState.FRESH, 300.0, "writes of the last 5m may be lost"),
    (False, 301.0, False, False, CopyState.STALE, 301.0, "not promoted"),
    (False, 3600.0, True, True, CopyState.STALE, 3600.0, "forced: writes of the last 1h"),
    (False, None, False, False, CopyState.NONE, None, "holds no replicated copy"),
    (False, None, True, True, CopyState.NONE, None, "everything the active wrote may be lost"),
]


@pytest.mark.parametrize(("current", "age", "forced", "allowed", "state", "window", "words"), CASES)
def test_promotion_verdict(
    current: bool,
    age: float | None,
    forced: bool,
    allowed: bool,
    state: CopyState,
    window: float | None,
    words: str,
) -> None:
    verdict = promotion_verdict(current, age, "G1", MAX_LAG, forced)
    assert (verdict.allowed, verdict.state, verdict.loss_window) == (allowed, state, window)
    assert words in verdict.reason
    if not allowed:
        assert "--force" in verdict.reason  # the way out is named


def test_every_state_and_force_has_a_row_and_force_always_promotes() -> None:
    assert set(VERDICTS) == {(state, forced) for state in CopyState for forced in (False, True)}
    assert all(VERDICTS[(state, True)] for state in CopyState)
    assert {state for state in CopyState if not VERDICTS[(state, False)]} == {
        CopyState.STALE,
        CopyState.NONE,
    }


def test_copy_state_boundaries() -> None:
    assert copy_state(False, 0.0, MAX_LAG) is CopyState.FRESH
    assert copy_state(False, MAX_LAG, MAX_LAG) is CopyState.FRESH
    assert copy_state(False, MAX_LAG + 0.001, MAX_LAG) is CopyState.STALE


def test_a_copy_of_the_final_generation_loses_nothing_whatever_its_age() -> None:
    verdict = promotion_verdict(False, 9999.0, "G1", MAX_LAG, False, final=True)
    assert (verdict.allowed, verdict.state, verdict.loss_window) == (True, CopyState.FINAL, 0.0)
    assert "final generation G1" in verdict.reason and "nothing is lost" in verdict.reason
    # The node's own data, when it served the last epoch, still comes first.
    assert promotion_verdict(True, None, "G1", MAX_LAG, False, final=True).state is (
        CopyState.CURRENT
    )


# applied, target's age -> proceeds, outcome, loss window, words
FINAL_CASES = [
    (True, 9999.0, True, FinalOutcome.APPLIED, 0.0, "loses nothing"),
    (False, 20.0, True, FinalOutcome.WITHIN_LAG, 20.0, "may lose the writes of the last 20s"),
    (False, 300.0, True, FinalOutcome.WITHIN_LAG, 300.0, "within max_lag 5m"),
    (False, 301.0, False, FinalOutcome.BEYOND_LAG, 301.0, "switchover is abandoned"),
    (False, None, False, FinalOutcome.BEYOND_LAG, None, "holds no copy"),
]


@pytest.mark.parametrize(("applied", "age", "proceeds", "outcome", "window", "words"), FINAL_CASES)
def test_final_decision(
    applied: bool,
    age: float | None,
    proceeds: bool,
    outcome: FinalOutcome,
    window: float | None,
    words: str,
) -> None:
    decision = final_decision("node2", "G9", applied, age, MAX_LAG, 60.0)
    assert (decision.proceed, decision.outcome, decision.loss_window) == (proceeds, outcome, window)
    assert words in decision.reason
    if not applied:
        assert "did not apply the final generation G9 within final_timeout 1m" in decision.reason


def test_final_decision_without_a_final_generation_and_every_outcome_has_a_row() -> None:
    decision = final_decision("node2", None, False, 5.0, MAX_LAG, 60.0)
    assert decision.proceed and "could not be captured" in decision.reason
    assert set(FINAL_DECISIONS) == set(FinalOutcome)
    assert [o for o in FinalOutcome if not FINAL_DECISIONS[o]] == [FinalOutcome.BEYOND_LAG]
