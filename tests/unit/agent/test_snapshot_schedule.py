"""When the active's agent captures (hakit.agent.snapshots): the pure decisions."""

from __future__ import annotations

import pytest

from hakit.agent.jobs import Outcome, outcome_of
from hakit.agent.snapshot_job import Job
from hakit.agent.snapshots import active_epoch, capture_due
from hakit.config import Mode
from hakit.policy import PolicyState, PolicyView, Role

HOUR = 3600.0
NOW = 1_800_000_000.0

DUE = [
    # (interval, last, active, due)
    (None, None, True, False),  # no schedule
    (HOUR, None, False, False),  # a standby never captures
    (HOUR, NOW - 2 * HOUR, False, False),
    (HOUR, None, True, True),  # never captured: now
    (HOUR, NOW - HOUR, True, True),  # one interval since the last one
    (HOUR, NOW - HOUR + 1, True, False),  # a second early
    (HOUR, NOW - 10 * HOUR, True, True),  # long overdue: once, now
    (HOUR, NOW + 60, True, False),  # a little ahead (clocks of two nodes): wait
    (HOUR, NOW + 2 * HOUR, True, True),  # far ahead: the clock was set back; do not stall
]


@pytest.mark.parametrize(("interval", "last", "active", "due"), DUE)
def test_capture_due(interval: float | None, last: float | None, active: bool, due: bool) -> None:
    assert capture_due(NOW, interval, last, active=active) is due


def _view(role: Role, state: PolicyState, epoch: int = 3) -> PolicyView:
    return PolicyView(
        node="node1",
        mode=Mode.COLD_STANDBY,
        state=state,
        role=role,
        epoch=epoch,
        pid=None,
        app_running=state is PolicyState.RUNNING,
        failure_times=(),
        restarts=0,
        failed_starts=0,
        cooldown_until=None,
        last_reason="",
    )


@pytest.mark.parametrize(
    ("role", "state", "lease", "expected"),
    [
        (Role.ACTIVE, PolicyState.RUNNING, 3, 3),
        (Role.ACTIVE, PolicyState.STARTING, 3, 0),  # not serving yet
        (Role.ACTIVE, PolicyState.FENCED, 3, 0),
        (Role.ACTIVE, PolicyState.STEPPING_DOWN, 3, 0),
        (Role.ACTIVE, PolicyState.RUNNING, 0, 0),  # the lease is gone
        (Role.STANDBY, PolicyState.RUNNING, 0, 0),  # a warm standby's app
        (Role.STANDBY, PolicyState.STANDBY, 0, 0),
    ],
)
def test_only_the_running_active_captures(
    role: Role, state: PolicyState, lease: int, expected: int
) -> None:
    assert active_epoch(_view(role, state), lease) == expected


def test_job_and_outcome_round_trip() -> None:
    job = Job("/h", "sqlite:////db", "/repo", "node1", 4, keep_last=2, grace=60.0)
    assert Job.decode(job.encode()) == job
    assert job.policy.keep_last == 2 and not job.policy.empty
    outcome = Outcome(True, "g1", data={"files": 3}, prune_error="")
    assert outcome_of(b"noise\n" + outcome.encode().encode() + b"\n", b"", 0, "x") == outcome


def test_a_crashed_capture_process_is_a_failure_with_its_stderr() -> None:
    crashed = outcome_of(b"", b"Traceback ...\nMemoryError\n", 1, "capture")
    assert not crashed.ok
    assert crashed.error == "the capture process ended with code 1: Traceback ...\nMemoryError"
    assert not outcome_of(b"{not json\n", b"", -9, "capture").ok
