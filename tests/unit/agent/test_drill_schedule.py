"""Scheduled restore drills (hakit.agent.drills): the pure decisions."""

from __future__ import annotations

import pytest

from hakit.agent.drills import drill_due, drill_summary, drills_here
from hakit.agent.schedule import check_due, tick_for

HOUR = 3600.0
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("epoch", "alone", "expected"),
    [
        (0, False, True),  # a standby drills
        (7, False, False),  # the running active of a cluster never does
        (7, True, True),  # the only node is the active and the standby
        (0, True, True),
    ],
)
def test_drills_here(epoch: int, alone: bool, expected: bool) -> None:
    assert drills_here(epoch, alone) is expected


def test_a_drill_waits_for_the_cold_start_election() -> None:
    due = {"every": HOUR, "last": None, "settle": 30.0, "alone": False}
    assert not drill_due(NOW, since=NOW - 29, epoch=0, **due)  # any node may yet take it
    assert drill_due(NOW, since=NOW - 30, epoch=0, **due)
    assert not drill_due(NOW, since=NOW - 30, epoch=3, **due)  # took the lease
    assert not drill_due(NOW, since=NOW - 30, epoch=0, **{**due, "last": NOW - 60})


def test_a_drill_is_due_as_a_health_check_is() -> None:
    assert check_due(NOW, HOUR, None)
    assert not check_due(NOW, HOUR, NOW - HOUR / 2)
    assert check_due(NOW, HOUR, NOW - HOUR)
    assert check_due(NOW, HOUR, NOW + 2 * HOUR)  # the clock was set back
    assert not check_due(NOW, None, None)  # no drill_interval


def test_the_tick_follows_the_shortest_interval() -> None:
    assert tick_for(None, 2.0, 86400.0) == 0.5
    assert tick_for(None) == tick_for() == 1.0


def test_the_summary_gives_the_recovery_point() -> None:
    record = {
        "generation": "20261206T120547.155396Z-3027c17c",
        "taken_ns": int(NOW * 1e9),
        "finished_ns": int((NOW + 2 * HOUR + 5) * 1e9),
        "checks": [{"name": "restore"}, {"name": "database"}],
    }
    assert drill_summary(record) == (
        "generation 20261206T120547.155396Z-3027c17c (recovery point: taken 2.0 h before "
        "the drill), 2 checks"
    )
    assert drill_summary({"generation": None, "checks": []}) == "no generation drilled"
