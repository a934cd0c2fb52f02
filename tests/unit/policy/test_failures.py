"""Failures on the active node, row by row of the failure table in docs/architecture.md
(as it applies to one node): crashes and restarts, out of memory, the database, hangs, failed starts; the
reasons the alerts give, and MANUAL (a node that gave up) until an operator's reset.

Each row is a mode, a starting point, then steps ``(seconds to advance, event, expected
actions)``; actions are compared as short signatures (``sig`` in tests/support/policy_builders.py).
"""

from __future__ import annotations

import pytest

from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.policy import (
    AppStarted,
    AppStartFailed,
    LeaseGained,
    LeaseLost,
    Role,
    Tick,
)
from tests.support.policy_builders import (
    DOWN,
    ERROR,
    RESTART_ONLY,
    RUNNING,
    TIMEOUT,
    Row,
    S,
    crash,
    hang,
    oom,
    play,
    restart_cycle,
    running_active,
    sig,
    starting_active,
    status,
    stopped,
)

ROWS: list[Row] = [
    Row(
        "crash: restart on the same node",
        running_active,
        [(5, crash(), ["start", "alert:crash"]), *restart_cycle()],
        S.RUNNING,
        never=frozenset({"step-down"}),
    ),
    Row(
        "crash: after restart_attempts restarts, fail over (process gone: step down at once)",
        running_active,
        [
            (5, crash(), ["start", "alert:crash"]),
            *restart_cycle(),
            (5, crash(), ["start", "alert:crash"]),
            *restart_cycle(),
            (5, crash(), ["step-down", "alert:failover"]),
            (1, Tick(), []),
            (60, status(AppState.STOPPED), []),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "crash: failures older than failure_window are forgotten",
        running_active,
        [
            (5, crash(), ["start", "alert:crash"]),
            *restart_cycle(),
            (5, crash(), ["start", "alert:crash"]),
            *restart_cycle(),
            (601, crash(), ["start", "alert:crash"]),  # both earlier crashes forgotten
            *restart_cycle(),
        ],
        S.RUNNING,
        never=frozenset({"step-down"}),
    ),
    Row(
        "restart-only: nowhere to fail over, exhausted budget -> manual intervention",
        lambda: running_active(RESTART_ONLY, restart_attempts=1),
        [
            (5, crash(), ["start", "alert:crash"]),
            *restart_cycle(),
            (5, crash(), ["alert:crash!"]),
            (30, Tick(), []),
        ],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        "out of memory: restart on the same node",
        running_active,
        [(5, oom(), ["start", "alert:oom"]), *restart_cycle()],
        S.RUNNING,
    ),
    Row(
        "out of memory, budget exhausted: manual intervention, not failover",
        running_active,
        [
            (5, oom(), ["start", "alert:oom"]),
            *restart_cycle(),
            (5, crash(), ["start", "alert:crash"]),  # a crash counts toward the same budget
            *restart_cycle(),
            (5, oom(), ["alert:oom!"]),
        ],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        "database lost: alert once, nothing else, for a long time; recovery is recorded",
        running_active,
        [
            (1, status(ERROR, database_reachable=False), ["alert:database"]),
            *[(60, status(ERROR, database_reachable=False), []) for _ in range(100)],
            (1, status(RUNNING), ["record:status"]),
        ],
        S.RUNNING,
        never=frozenset({"start", "stop", "kill", "step-down"}),
    ),
    Row(
        "app ERROR with its database reachable: restart after `fall` in a row",
        running_active,
        [
            (1, status(ERROR, database_reachable=True), ["record:detected"]),
            (1, status(ERROR, database_reachable=True), []),
            (1, status(ERROR, database_reachable=True), ["stop", "alert:error"]),
            (3, stopped(), ["start"]),
            *restart_cycle(),
        ],
        S.RUNNING,
    ),
    Row(
        "connection refused while the process lives: certain, restart after `fall`",
        running_active,
        [
            (1, status(DOWN), ["record:detected"]),
            (1, status(DOWN), []),
            (1, status(DOWN), ["stop", "alert:crash"]),
            (3, stopped(), ["start"]),
        ],
        S.STARTING,
    ),
    Row(
        "MAINTENANCE: never a failure, for hours",
        running_active,
        [
            (1, status(AppState.MAINTENANCE), ["record:status"]),
            *[(120, status(AppState.MAINTENANCE), []) for _ in range(100)],
            *[(1, Tick(), []) for _ in range(3)],
            (1, status(RUNNING), ["record:status"]),
        ],
        S.RUNNING,
        never=frozenset({"start", "stop", "kill", "step-down"}),
    ),
    Row(
        "STARTING: patience until startup_timeout (119 s of STARTING, DOWN and TIMEOUT)",
        starting_active,
        [
            *[(7, status(AppState.STARTING), []) for _ in range(10)],
            *[(7, status(DOWN), []) for _ in range(4)],
            *[(7, status(TIMEOUT), []) for _ in range(3)],
            (0, Tick(), []),
            (0.5, status(RUNNING), ["record:running"]),
        ],
        S.RUNNING,
        never=frozenset({"start", "stop", "kill", "step-down"}),
    ),
    Row(
        "STARTING that turns into MAINTENANCE: up, and no startup deadline any more",
        starting_active,
        [
            (30, status(AppState.MAINTENANCE), ["record:status"]),
            *[(60, status(AppState.MAINTENANCE), []) for _ in range(30)],
            *[(60, Tick(), []) for _ in range(3)],
        ],
        S.RUNNING,
        never=frozenset({"start", "stop", "kill", "step-down"}),
    ),
    Row(
        "hang shorter than health_timeout: nothing, however many timeouts",
        running_active,
        [*hang(1, span=29, count=10), (1, status(RUNNING), ["record:status"])],
        S.RUNNING,
        never=frozenset({"start", "stop", "kill", "step-down"}),
    ),
    Row(
        "timeouts spanning health_timeout but fewer than `fall`: nothing",
        lambda: running_active(fall=4),
        [*hang(1, span=90, count=3), (1, status(RUNNING), ["record:status"])],
        S.RUNNING,
        never=frozenset({"stop", "kill"}),
    ),
    Row(
        "a healthy answer resets the timeout count",
        running_active,
        [
            *hang(1, span=20, count=3),
            (1, status(RUNNING), ["record:status"]),
            *hang(1, span=20, count=3),
            (9, status(TIMEOUT), []),  # 29 s since this streak began: still patient
        ],
        S.RUNNING,
        never=frozenset({"stop", "kill"}),
    ),
    Row(
        "hang longer than health_timeout: stop, then restart",
        running_active,
        [
            *hang(1, span=29, count=3),
            (1, status(TIMEOUT), ["stop", "alert:hang"]),
            (5, stopped(), ["start"]),
            *restart_cycle(),
        ],
        S.RUNNING,
    ),
    Row(
        "hang beyond the budget: stop first, step down only once the app is gone",
        lambda: running_active(restart_attempts=0),
        [
            *hang(1, span=30, count=2),
            (1, status(TIMEOUT), ["stop", "alert:hang"]),
            (1, status(AppState.STOPPING), []),
            (1, Tick(), []),
            (5, stopped(), ["step-down", "alert:failover"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "failed start (never RUNNING): retries, then manual intervention, never failover",
        starting_active,
        [
            (121, Tick(), ["stop", "alert:failed-start"]),
            (5, stopped(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (121, status(AppState.STARTING), ["stop", "alert:failed-start"]),
            (5, stopped(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (121, Tick(), ["stop", "alert:failed-start!"]),
            (5, stopped(), ["record:stopped"]),
            *[(60, Tick(), []) for _ in range(5)],
        ],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        "failed start (exits during startup): retries, then manual intervention",
        starting_active,
        [
            (3, crash("exit code 1", 1), ["start", "alert:failed-start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (3, crash("exit code 1", 1), ["start", "alert:failed-start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (3, crash("exit code 1", 1), ["alert:failed-start!"]),
        ],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        "failed start (the supervisor cannot start it): retries, then manual intervention",
        lambda: starting_active(restart_attempts=1),
        [
            (3, crash("exit code 1", 1), ["start", "alert:failed-start"]),
            (0, AppStartFailed("no such file: /opt/app/bin/start"), ["alert:failed-start!"]),
        ],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        'failed start, on_failed_start = "failover": retries, then steps down once stopped',
        lambda: starting_active(failover_on_failed_start=True),
        [
            (121, Tick(), ["stop", "alert:failed-start"]),
            (5, stopped(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (121, Tick(), ["stop", "alert:failed-start"]),
            (5, stopped(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (121, Tick(), ["stop", "alert:failed-start"]),
            (5, stopped(), ["step-down", "alert:failover"]),
            *[(60, Tick(), []) for _ in range(3)],
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
        never=frozenset({"alert:failed-start!"}),
    ),
    Row(
        'failed start (exits), on_failed_start = "failover": steps down at once',
        lambda: starting_active(failover_on_failed_start=True, restart_attempts=1),
        [
            (3, crash("exit code 1", 1), ["start", "alert:failed-start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (3, crash("exit code 1", 1), ["step-down", "alert:failover"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        'on_failed_start = "failover" in restart-only mode: nowhere to go, manual',
        lambda: starting_active(RESTART_ONLY, failover_on_failed_start=True, restart_attempts=0),
        [(3, crash("exit code 1", 1), ["alert:failed-start!"])],
        S.MANUAL,
        never=frozenset({"step-down"}),
    ),
    Row(
        "webapp not deployed (404): a failed start",
        starting_active,
        [
            (1, status(AppState.NOT_DEPLOYED), []),
            (1, status(AppState.NOT_DEPLOYED), []),
            (1, status(AppState.NOT_DEPLOYED), ["stop", "alert:failed-start"]),
            (3, stopped(), ["start"]),
        ],
        S.STARTING,
        never=frozenset({"step-down"}),
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_failure_table(row: Row) -> None:
    play(row)


def test_crash_reason_names_node_cause_and_budget() -> None:
    node = running_active()
    node.feed(crash(), after=5)
    (reason,) = node.reasons("alert:crash")
    assert reason == "app on node1 exited (killed by SIGKILL); restart 1 of 2 within 10m"


def test_failover_reason_says_why() -> None:
    node = running_active(restart_attempts=0)
    node.feed(crash("exit code 3", 3), after=5)
    (reason,) = node.reasons("step-down")
    assert "exit code 3" in reason and "1st failure within 10m" in reason
    assert "standby takes over" in reason


def test_oom_manual_reason_explains_no_failover() -> None:
    node = running_active(restart_attempts=0)
    node.feed(oom(), after=5)
    (reason,) = node.reasons("alert:oom!")
    assert "same heap" in reason and "manual intervention" in reason


def test_failed_start_manual_reason_says_another_node_would_fail() -> None:
    node = starting_active(restart_attempts=0)
    node.feed(Tick(), after=121)
    (reason,) = node.reasons("alert:failed-start!")
    assert "did not reach RUNNING within 2m" in reason
    assert "another node would fail to start too" in reason


def test_failed_start_failover_reason_names_the_setting_and_why_reads_it() -> None:
    node = starting_active(failover_on_failed_start=True, restart_attempts=0)
    assert node.feed(crash("exit code 1", 1), after=3) == ["step-down", "alert:failover"]
    (reason,) = node.reasons("step-down")
    assert reason.startswith("app on node1 exited (exit code 1) while starting; 1 failed starts")
    assert "stepping down so a standby takes over" in reason
    assert 'failover.on_failed_start = "failover"' in reason


def test_failed_start_failover_happens_once_not_back_and_forth() -> None:
    """Both nodes fail to start: node1 hands over, node2 hands back, node1 gives up."""
    node = starting_active(failover_on_failed_start=True, restart_attempts=0)
    assert node.feed(crash("exit code 1", 1), after=3) == ["step-down", "alert:failover"]
    node.feed(Tick(), after=60)  # past the cooldown: node2 tried, failed and handed back
    assert node.policy.may_lead(node.now)
    assert node.feed(LeaseGained(3)) == ["start"]
    node.started()
    assert node.feed(crash("exit code 1", 1), after=3) == ["alert:failed-start!"]
    assert node.policy.state is S.MANUAL and node.policy.view().role is Role.ACTIVE
    (reason,) = node.reasons("alert:failed-start!")
    assert "not failing over again" in reason and "manual intervention" in reason


def test_a_start_that_succeeds_allows_another_failed_start_failover_later() -> None:
    node = starting_active(failover_on_failed_start=True, restart_attempts=1)
    assert node.feed(crash("exit code 1", 1), after=3) == ["start", "alert:failed-start"]
    node.started()
    assert node.feed(crash("exit code 1", 1), after=3) == ["step-down", "alert:failover"]
    node.feed(Tick(), after=60)
    node.feed(LeaseGained(3))
    node.started()
    assert node.feed(status(RUNNING), after=1) == ["record:running"]
    # Started fine here: a later run of failed starts may hand over again.
    assert node.feed(crash(), after=100) == ["start", "alert:crash"]
    node.started()
    assert node.feed(crash("exit code 1", 1), after=3) == ["start", "alert:failed-start"]
    node.started()
    assert node.feed(crash("exit code 1", 1), after=3) == ["step-down", "alert:failover"]


def test_last_reason_and_view_follow_the_actions() -> None:
    node = running_active()
    node.feed(crash(), after=5)
    view = node.policy.view()
    assert view.last_reason.startswith("app on node1 exited")
    assert view.failure_times == (node.now,)
    assert view.restarts == 1 and view.app_running and view.pid is None


def test_manual_never_leads_and_reset_returns_to_standby() -> None:
    node = starting_active(restart_attempts=0)
    node.feed(crash("exit code 1", 1), after=1)
    assert node.policy.state is S.MANUAL and not node.policy.may_lead(node.now + 1e6)
    assert node.feed(LeaseLost(1, "could not renew in time")) == ["record:lease"]
    actions = node.policy.reset(node.now)
    assert [sig(a) for a in actions] == ["record:reset"]
    assert node.policy.state is S.STANDBY and node.policy.view().failed_starts == 0
    assert node.policy.may_lead(node.now)


def test_reset_of_an_active_manual_node_releases_the_lease() -> None:
    node = starting_active(restart_attempts=0)
    node.feed(crash("exit code 1", 1), after=1)
    actions = node.policy.reset(node.now)
    assert [sig(a) for a in actions] == ["step-down"]
    assert node.policy.view().role is Role.STANDBY


def test_reset_outside_manual_is_invalid() -> None:
    node = running_active()
    with pytest.raises(InvalidTransition, match="RUNNING"):
        node.policy.reset(node.now)
