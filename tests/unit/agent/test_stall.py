"""The agent's own stall detector (hakit.agent.stall): pure, fed with monotonic times."""

from __future__ import annotations

import pytest

from hakit.agent.stall import Stall, StallDetector


def ticks(detector: StallDetector, *times: float) -> list[Stall]:
    return [stall for t in times if (stall := detector.tick(t)) is not None]


def test_regular_ticks_are_no_stall() -> None:
    detector = StallDetector(threshold=1.0)
    assert ticks(detector, *(i * 0.05 for i in range(200))) == []
    assert detector.stalls == ()


def test_a_gap_longer_than_the_threshold_is_a_stall() -> None:
    detector = StallDetector(threshold=1.0)
    assert ticks(detector, 10.0, 10.05, 10.1) == []
    stall = detector.tick(13.6)
    assert stall == Stall(10.1, 13.6)
    assert stall.duration == pytest.approx(3.5)
    assert detector.stalls == (stall,)
    # Ticking on normally afterwards adds nothing.
    assert ticks(detector, 13.65, 13.7) == []


def test_a_gap_of_exactly_the_threshold_is_not_a_stall() -> None:
    detector = StallDetector(threshold=1.0)
    assert ticks(detector, 5.0, 6.0) == []


def test_the_first_tick_is_never_a_stall() -> None:
    assert StallDetector().tick(1000.0) is None


def test_times_going_backwards_are_ignored() -> None:
    # Two tasks tick: one read the clock before the other ticked.
    detector = StallDetector(threshold=1.0)
    assert ticks(detector, 10.0, 10.05, 10.04, 10.1) == []
    assert detector.tick(9.0) is None
    assert detector.tick(12.0) == Stall(10.1, 12.0)


def test_probe_overlapping_a_stall() -> None:
    detector = StallDetector(threshold=1.0)
    ticks(detector, 10.0, 14.0)  # stalled from 10 to 14
    # A probe sent just before the freeze, ended by its timer on waking.
    assert detector.during(9.8, 14.0) == Stall(10.0, 14.0)
    # Sent during the stall (the timer read the clock first), ended later.
    assert detector.during(12.0, 15.0) == Stall(10.0, 14.0)
    # Entirely before or after: it saw the app, not the stall.
    assert detector.during(8.0, 9.9) is None
    assert detector.during(14.0, 15.0) is None
    assert detector.during(14.1, 16.0) is None


def test_the_longest_overlapping_stall_is_reported() -> None:
    detector = StallDetector(threshold=1.0)
    ticks(detector, 0.0, 2.0, 2.05, 7.0, 7.05, 9.0)
    assert [s.duration for s in detector.stalls] == pytest.approx([2.0, 4.95, 1.95])
    assert detector.during(1.0, 8.0) == Stall(2.05, 7.0)


def test_old_stalls_are_forgotten() -> None:
    detector = StallDetector(threshold=1.0, keep=60.0)
    ticks(detector, 0.0, 5.0)
    assert len(detector.stalls) == 1
    ticks(detector, *(5.0 + i * 0.5 for i in range(1, 200)))
    assert detector.stalls == ()
    assert detector.during(0.0, 5.0) is None


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StallDetector(threshold=0)
