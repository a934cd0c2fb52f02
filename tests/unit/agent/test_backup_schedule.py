"""Scheduled backups and health checks (hakit.agent.backups), and prune's protected
generations (hakit.backup.prune): the pure decisions."""

from __future__ import annotations

import pytest

from hakit.agent.backup_job import BackupJob
from hakit.agent.backups import Verdict, check_due, health_verdict, stale_age
from hakit.backup.healthcheck import Status
from hakit.backup.prune import newest_per_node
from hakit.snapshot.format import Manifest

HOUR = 3600.0
NOW = 1_800_000_000.0

STALE = [
    # (threshold, last_success, active_since, age or None)
    (None, None, NOW - 10 * HOUR, None),  # no schedule: not watched
    (2 * HOUR, NOW - 10 * HOUR, None, None),  # a standby: not watched
    (2 * HOUR, NOW - HOUR, NOW - 10 * HOUR, None),  # fresh
    (2 * HOUR, NOW - 3 * HOUR, NOW - 10 * HOUR, 3 * HOUR),  # stale
    (2 * HOUR, None, NOW - HOUR, None),  # no backup seen, active for an hour: not yet
    (2 * HOUR, None, NOW - 3 * HOUR, 3 * HOUR),  # no backup seen in 3 h as the active
]


@pytest.mark.parametrize(("threshold", "last", "since", "age"), STALE)
def test_stale_age(
    threshold: float | None, last: float | None, since: float | None, age: float | None
) -> None:
    assert stale_age(NOW, threshold, last, since) == age


def test_check_due() -> None:
    assert not check_due(NOW, None, None)
    assert check_due(NOW, HOUR, None)
    assert not check_due(NOW, HOUR, NOW - HOUR + 1)
    assert check_due(NOW, HOUR, NOW - HOUR)
    assert check_due(NOW, HOUR, NOW + 2 * HOUR)  # the clock was set back


WARN = ("the backup credential can read backups: to increase security, use write-only mode",)
ERROR = ("cannot write backups (access denied)",)
OK = ("backups can be written",)


def test_health_verdicts() -> None:
    never: frozenset[tuple[str, ...]] = frozenset()
    # Errors: recorded and alerted every time.
    assert health_verdict(Status.ERROR, ERROR, (Status.ERROR, ERROR), never) == Verdict(True, True)
    # A warning: recorded when it changes, alerted once.
    first = health_verdict(Status.WARNING, WARN, None, never)
    assert first == Verdict(True, True)
    again = health_verdict(Status.WARNING, WARN, (Status.WARNING, WARN), frozenset({WARN}))
    assert again == Verdict(False, False)
    back = health_verdict(Status.WARNING, WARN, (Status.ERROR, ERROR), frozenset({WARN}))
    assert back == Verdict(True, False)
    # Ok: recorded only when it follows something else, never alerted.
    assert health_verdict(Status.OK, OK, None, never) == Verdict(False, False)
    assert health_verdict(Status.OK, OK, (Status.OK, OK), never) == Verdict(False, False)
    assert health_verdict(Status.OK, OK, (Status.ERROR, ERROR), never) == Verdict(True, False)


def test_a_job_round_trips() -> None:
    job = BackupJob("backup", "/etc/hakit.toml", "node1", 4, "/srv/home", "sqlite:///x.db")
    assert BackupJob.decode(job.encode()) == job


def _manifest(node: str) -> Manifest:
    return Manifest(
        generation="g",
        started_ns=0,
        finished_ns=0,
        node=node,
        epoch=None,
        home="/h",
        database=None,
        entries=(),
    )


def test_newest_per_node() -> None:
    manifests = {
        "20260101T000000Z-a": _manifest("node1"),
        "20260102T000000Z-b": _manifest("node2"),
        "20260103T000000Z-c": _manifest("node1"),
    }
    assert newest_per_node(manifests) == {"20260102T000000Z-b", "20260103T000000Z-c"}
    assert newest_per_node({}) == set()
