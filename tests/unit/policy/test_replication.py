"""Replicated storage's promotion rule, row by row (hakit.policy.replication)."""

from __future__ import annotations

import pytest

from hakit.policy.replication import VERDICTS, CopyState, copy_state, promotion_verdict

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
