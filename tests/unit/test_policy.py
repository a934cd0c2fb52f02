"""The policy engine, table-driven with a fake clock (plain floats), no patching.

Each row of ROWS is one line of the failure table (docs/architecture.md; as it applies to one
node): a mode, a starting point, then steps ``(seconds to advance, event,
expected actions)``. Actions are compared as short signatures (see ``sig``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hakit.config import AppConfig, Config, CoordinationConfig, HealthConfig, Mode, NodeConfig
from hakit.contract import AppState
from hakit.errors import HakitError, InvalidTransition
from hakit.policy import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    Drain,
    EndHandover,
    HandoverEnded,
    HandoverRequested,
    LeaseGained,
    LeaseLost,
    LeaseVacant,
    PathLost,
    Paused,
    Policy,
    PolicyEvent,
    PolicySettings,
    PolicyState,
    RequestHandover,
    Resumed,
    Role,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    TakeLease,
    Tick,
)
from hakit.policy.rules import (
    Verdict,
    classify,
    extend_streak,
    failures_in_window,
    last_active,
    streak_is_failure,
)
from hakit.policy.vocabulary import describe_exit, human_duration

COLD, WARM, RESTART_ONLY, ACTIVE_ACTIVE = (
    Mode.COLD_STANDBY,
    Mode.WARM_STANDBY,
    Mode.RESTART_ONLY,
    Mode.ACTIVE_ACTIVE,
)
S = PolicyState
CURRENT_PID = -1  # placeholder in AppExited: the harness fills in the pid the policy knows


def settings(mode: Mode = COLD, **overrides: float) -> PolicySettings:
    values: dict[str, float] = {
        "restart_attempts": 2,
        "failure_window": 600.0,
        "startup_timeout": 120.0,
        "health_timeout": 30.0,
        "fall": 3,
        "step_down_cooldown": 9.0,
        "boot_grace": 6.0,
        "no_failover": False,
        "failover_on_failed_start": False,
    }
    values.update(overrides)
    return PolicySettings(
        mode=mode,
        restart_attempts=int(values["restart_attempts"]),
        failure_window=values["failure_window"],
        startup_timeout=values["startup_timeout"],
        health_timeout=values["health_timeout"],
        fall=int(values["fall"]),
        step_down_cooldown=values["step_down_cooldown"],
        boot_grace=values["boot_grace"],
        no_failover=bool(values["no_failover"]),
        failover_on_failed_start=bool(values["failover_on_failed_start"]),
    )


def sig(action: Action) -> str:
    """A short, readable signature: 'start', 'stop', 'kill', 'step-down', 'alert:crash!'..."""
    if isinstance(action, StartApp):
        return "start"
    if isinstance(action, StopApp):
        return "kill" if action.kill else "stop"
    if isinstance(action, StepDown):
        return "step-down"
    if isinstance(action, Alert):
        return f"alert:{action.kind}" + ("!" if action.manual_intervention else "")
    if isinstance(action, Drain):
        return "drain"
    if isinstance(action, TakeLease):
        return "take-lease"
    if isinstance(action, EndHandover):
        return "end-handover"
    if isinstance(action, RequestHandover):
        return f"request-handover:{action.target}"
    return f"record:{action.kind}"


def crash(description: str = "killed by SIGKILL", returncode: int = -9) -> AppExited:
    return AppExited(CURRENT_PID, returncode, oom=False, expected=False, description=description)


def oom() -> AppExited:
    return AppExited(CURRENT_PID, 137, oom=True, expected=False, description="exit code 137")


def stopped() -> AppExited:
    return AppExited(CURRENT_PID, 0, oom=False, expected=True, description="exit code 0")


def status(state: AppState, database_reachable: bool | None = None) -> StatusObserved:
    return StatusObserved(
        state, detail=f"/status said {state.value}", database_reachable=database_reachable
    )


RUNNING, TIMEOUT, DOWN, ERROR = AppState.RUNNING, AppState.TIMEOUT, AppState.DOWN, AppState.ERROR


class Node:
    """One policy and its fake clock; checks every action's reason as it goes."""

    def __init__(self, mode: Mode = COLD, **overrides: float) -> None:
        self.policy = Policy(settings(mode, **overrides), "node1")
        self.now = 1000.0
        self.next_pid = 100
        self.actions: list[Action] = []  # everything returned, in order

    def feed(self, event: PolicyEvent, after: float = 0.0) -> list[str]:
        self.now += after
        if isinstance(event, AppExited) and event.pid == CURRENT_PID:
            event = dataclasses.replace(event, pid=self.policy.view().pid or 0)
        actions = self.policy.handle(event, self.now)
        for action in actions:
            assert action.reason.strip(), f"{action} has no reason"
            assert "\n" not in action.reason
        self.actions.extend(actions)
        return [sig(a) for a in actions]

    def started(self) -> list[str]:
        self.next_pid += 1
        return self.feed(AppStarted(self.next_pid))

    def reasons(self, kind: str) -> list[str]:
        return [a.reason for a in self.actions if sig(a).startswith(kind)]


def running_active(mode: Mode = COLD, **overrides: float) -> Node:
    """A node that holds the lease (epoch 1) with its app RUNNING."""
    node = Node(mode, **overrides)
    node.feed(Boot())
    if mode in (WARM, ACTIVE_ACTIVE):
        node.started()
        node.feed(status(RUNNING), after=2)
        node.feed(LeaseGained(1))
    else:
        assert node.feed(LeaseGained(1)) == ["start"]
        node.started()
        node.feed(status(RUNNING), after=2)
    assert node.policy.state is S.RUNNING and node.policy.view().role is Role.ACTIVE
    node.actions.clear()
    return node


def starting_active(mode: Mode = COLD, **overrides: float) -> Node:
    """A node that holds the lease and has just started its app (STARTING, pid known)."""
    node = Node(mode, **overrides)
    node.feed(Boot())
    node.feed(LeaseGained(1))
    node.started()
    node.actions.clear()
    return node


# --- the failure table, row by row -------------------------------------------------

Step = tuple[float, PolicyEvent | Callable[[Node], PolicyEvent], list[str]]


@dataclass(frozen=True)
class Row:
    name: str
    setup: Callable[[], Node]
    steps: list[Step]
    end_state: PolicyState
    end_role: Role = Role.ACTIVE
    never: frozenset[str] = field(default_factory=frozenset)  # signatures that must not appear


def restart_cycle(after: float = 1.0) -> list[Step]:
    """The app's process reappears and reports RUNNING after a StartApp."""
    return [
        (after, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
        (2.0, status(RUNNING), ["record:running"]),
    ]


def hang(start: float, span: float, count: int) -> list[Step]:
    """``count`` TIMEOUTs evenly over ``span`` seconds, each expecting nothing."""
    gap = span / (count - 1) if count > 1 else 0.0
    first: list[Step] = [(start, status(TIMEOUT), ["record:detected"])]
    return first + [(gap, status(TIMEOUT), []) for _ in range(count - 1)]


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
    Row(
        "lease lost while active: kill the app at once (self-fencing), then stay standby",
        running_active,
        [
            (1, LeaseLost(1, "could not renew in time"), ["kill", "alert:fence"]),
            (0.2, stopped(), ["record:fenced"]),
            *[(30, Tick(), []) for _ in range(3)],
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
        never=frozenset({"start", "step-down"}),
    ),
    Row(
        "lease lost while the app restarts: kill it at once",
        running_active,
        [
            (1, crash(), ["start", "alert:crash"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (1, LeaseLost(1, "another node holds it"), ["kill", "alert:fence"]),
            (1, stopped(), ["record:fenced"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "lease lost while standby: nothing",
        lambda: Node(COLD),
        [(0, Boot(), ["record:boot"]), (5, LeaseLost(3, "another node holds it"), [])],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "warm standby: the app runs on the standby; promotion keeps it running",
        lambda: Node(WARM),
        [
            (0, Boot(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (5, status(RUNNING), ["record:running"]),
            (10, LeaseGained(4), ["record:promoted"]),
            (1, status(RUNNING), []),
        ],
        S.RUNNING,
    ),
    Row(
        "warm standby fenced: the app is killed, then started again as a standby",
        lambda: running_active(WARM),
        [
            (1, LeaseLost(1, "could not renew in time"), ["kill", "alert:fence"]),
            (1, stopped(), ["start"]),
        ],
        S.STARTING,
        end_role=Role.STANDBY,
    ),
    Row(
        "restart-only: the agent takes the lease at boot, then starts the app",
        lambda: Node(RESTART_ONLY),
        [
            (0, Boot(), ["record:boot"]),
            (0, LeaseGained(1), ["start"]),
        ],
        S.STARTING,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_failure_table(row: Row) -> None:
    node = row.setup()
    for index, (after, event, expected) in enumerate(row.steps):
        real_event = event(node) if callable(event) else event
        got = node.feed(real_event, after=after)
        assert got == expected, f"step {index} ({real_event}): {got} != {expected}"
        assert not set(got) & row.never, f"step {index} ({real_event}): forbidden {got}"
    assert node.policy.state is row.end_state
    assert node.policy.view().role is row.end_role


# --- reasons say what happened -------------------------------------------------------


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


def test_settings_take_on_failed_start_from_the_config(tmp_path: Path) -> None:
    from hakit.config import FailoverConfig, OnFailedStart

    cfg = Config(
        app=AppConfig(start=("app",), home=tmp_path, database_url="sqlite:///x.db"),
        nodes=(NodeConfig(name="node1", port=8101), NodeConfig(name="node2", port=8102)),
        failover=FailoverConfig(on_failed_start=OnFailedStart.FAILOVER),
    )
    assert PolicySettings.from_config(cfg, "node1").failover_on_failed_start
    default = cfg.model_copy(update={"failover": FailoverConfig()})
    assert not PolicySettings.from_config(default, "node1").failover_on_failed_start


def test_promotion_reason_names_the_epoch() -> None:
    node = Node(COLD)
    node.feed(Boot())
    node.feed(LeaseGained(7))
    assert node.reasons("start") == ["node1 promoted to active under epoch 7; starting the app"]
    assert node.policy.view().epoch == 7


EXPIRED = "node2's lease of epoch 6 expired at 12:00:01 without being released"


def test_promotion_over_an_expired_lease_alerts_a_failover() -> None:
    node = Node(COLD)
    node.feed(Boot())
    assert node.feed(LeaseGained(7, EXPIRED)) == ["start", "alert:failover"]
    (reason,) = node.reasons("alert:failover")
    assert reason == f"node1 promoted to active under epoch 7 after {EXPIRED}; starting the app"
    assert node.policy.view().last_reason.endswith("starting the app")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda: _warm_standby_running(), ["record:promoted", "alert:failover"]),
        (lambda: _fenced(), ["record:promoted", "alert:failover"]),
        (lambda: _in_state("MANUAL", active=False), ["record:lease", "alert:failover!"]),
    ],
    ids=["warm-standby", "fenced", "manual"],
)
def test_every_promotion_over_an_expired_lease_alerts(
    setup: Callable[[], Node], expected: list[str]
) -> None:
    node = setup()
    assert node.feed(LeaseGained(9, EXPIRED), after=1) == expected
    assert EXPIRED in node.reasons("alert:failover")[0]


def test_a_clean_promotion_is_no_failover_alert() -> None:
    """A released lease (switchover, step-down: the old active alerted), a cold start."""
    node = Node(COLD)
    node.feed(Boot())
    assert node.feed(LeaseGained(3)) == ["start"]


def _warm_standby_running() -> Node:
    node = Node(WARM)
    node.feed(Boot())
    node.started()
    node.feed(status(RUNNING), after=2)
    return node


def _fenced() -> Node:
    node = running_active()
    node.feed(LeaseLost(1, "could not renew in time"), after=1)
    return node


def test_last_reason_and_view_follow_the_actions() -> None:
    node = running_active()
    node.feed(crash(), after=5)
    view = node.policy.view()
    assert view.last_reason.startswith("app on node1 exited")
    assert view.failure_times == (node.now,)
    assert view.restarts == 1 and view.app_running and view.pid is None


# --- no failback, cooldown -----------------------------------------------------------


def test_step_down_cooldown_then_may_lead_again() -> None:
    node = running_active(restart_attempts=0, step_down_cooldown=9.0)
    assert not node.policy.may_lead(node.now)  # already leading
    node.feed(crash(), after=5)
    stepped_down_at = node.now
    assert node.policy.state is S.STANDBY
    assert not node.policy.may_lead(stepped_down_at)
    assert not node.policy.may_lead(stepped_down_at + 8.9)
    assert node.policy.may_lead(stepped_down_at + 9.0)
    assert node.policy.view().cooldown_until == stepped_down_at + 9.0


def test_old_active_stays_standby_after_stepping_down() -> None:
    """No automatic failback: without a new LeaseGained, nothing starts the app."""
    node = running_active(restart_attempts=0)
    node.feed(crash(), after=5)
    for _ in range(50):
        assert node.feed(Tick(), after=60) == []
        assert node.feed(status(AppState.STOPPED)) == []
    assert node.policy.state is S.STANDBY and node.policy.view().role is Role.STANDBY
    # Once the new active is lost (a failover, not a failback) it may take over again.
    assert node.policy.may_lead(node.now)
    assert node.feed(LeaseGained(2)) == ["start"]


def test_fenced_node_may_not_lead_until_its_app_is_gone() -> None:
    node = running_active()
    node.feed(LeaseLost(1, "could not renew in time"), after=1)
    assert node.policy.state is S.FENCED and not node.policy.may_lead(node.now + 100)
    node.feed(stopped(), after=0.1)
    assert node.policy.may_lead(node.now)


def test_lease_lost_while_stepping_down_fences_and_keeps_the_cooldown() -> None:
    node = running_active(restart_attempts=0, step_down_cooldown=9.0)
    for _ in range(3):
        node.feed(status(DOWN), after=1)
    assert node.policy.state is S.STEPPING_DOWN
    assert node.feed(LeaseLost(1, "could not renew in time"), after=1) == ["kill", "alert:fence"]
    assert node.feed(stopped(), after=1) == ["record:fenced"]  # no StepDown: lease already gone
    assert not node.policy.may_lead(node.now) and node.policy.may_lead(node.now + 8)


def test_lease_gained_while_fenced_starts_only_after_the_exit() -> None:
    node = running_active()
    node.feed(LeaseLost(1, "could not renew in time"), after=1)
    assert node.feed(LeaseGained(2)) == ["record:promoted"]
    assert node.feed(stopped(), after=0.1) == ["start"]
    assert node.policy.view().epoch == 2


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


# --- impossible transitions ------------------------------------------------------------


def _in_state(name: str, active: bool = True) -> Node:
    if name == "INIT":
        return Node(COLD)
    if name == "STANDBY":
        node = Node(COLD)
        node.feed(Boot())
        return node
    if name == "STARTING":
        return starting_active()
    if name == "RUNNING":
        return running_active()
    if name == "MANUAL":
        node = starting_active(restart_attempts=0)
        node.feed(crash("exit code 1", 1))
        if not active:  # its lease ran out while it waited for a human
            node.feed(LeaseLost(1, "could not renew in time"))
        return node
    raise AssertionError(name)


IMPOSSIBLE: list[tuple[str, PolicyEvent, str]] = [
    ("INIT", Tick(), "Tick"),
    ("INIT", LeaseGained(1), "LeaseGained"),
    ("STANDBY", Boot(), "Boot"),
    ("STANDBY", AppStarted(5), "AppStarted"),
    ("STANDBY", AppExited(5, 0, False, False, ""), "AppExited"),
    ("STANDBY", AppStartFailed("x"), "AppStartFailed"),
    ("STARTING", AppStarted(5), "AppStarted"),  # no StartApp is waiting any more
    ("STARTING", AppExited(101, 0, False, True, ""), "AppExited"),  # nobody asked for a stop
    ("STARTING", LeaseGained(2), "LeaseGained"),  # already active
    ("RUNNING", AppExited(999, -9, False, False, ""), "AppExited"),  # not our pid
    ("RUNNING", AppStartFailed("x"), "AppStartFailed"),
    ("RUNNING", Boot(), "Boot"),
    ("MANUAL", AppStarted(5), "AppStarted"),
]


@pytest.mark.parametrize(("state", "event", "event_name"), IMPOSSIBLE)
def test_impossible_event_raises_naming_state_and_event(
    state: str, event: PolicyEvent, event_name: str
) -> None:
    node = _in_state(state)
    before = node.policy.view()
    with pytest.raises(InvalidTransition) as caught:
        node.policy.handle(event, node.now + 1)
    assert isinstance(caught.value, HakitError)
    assert caught.value.state == state
    assert event_name in caught.value.event and state in str(caught.value)
    assert node.policy.view() == before  # an impossible event changes nothing


def test_epochs_only_grow() -> None:
    node = Node(COLD)
    node.feed(Boot())
    node.feed(LeaseGained(5))
    node.started()
    node.feed(LeaseLost(5, "could not renew in time"))
    node.feed(stopped())
    with pytest.raises(InvalidTransition, match="epochs only grow"):
        node.policy.handle(LeaseGained(5), node.now)


# --- pure helpers -------------------------------------------------------------------------


def test_pure_helpers() -> None:
    assert failures_in_window((1.0, 50.0, 100.0), now=105.0, window=60.0) == (50.0, 100.0)
    assert failures_in_window((50.0, 100.0), now=110.0, window=60.0) == (100.0,)
    streak = extend_streak(None, TIMEOUT, 10.0)
    streak = extend_streak(extend_streak(streak, TIMEOUT, 20.0), TIMEOUT, 39.0)
    assert (streak.count, streak.first_at) == (3, 10.0)
    assert not streak_is_failure(streak, fall=3, health_timeout=30.0, now=39.0)
    assert streak_is_failure(streak, fall=3, health_timeout=30.0, now=40.0)
    assert extend_streak(streak, DOWN, 41.0).count == 1
    assert classify(RUNNING, None) is classify(AppState.FIRST_RUN, None) is Verdict.HEALTHY
    assert classify(AppState.MAINTENANCE, None) is Verdict.WAITING
    assert classify(ERROR, False) is Verdict.DATABASE_DOWN
    assert classify(ERROR, None) is classify(ERROR, True) is Verdict.FAILING
    assert classify(TIMEOUT, None) is classify(DOWN, None) is Verdict.FAILING
    assert classify(AppState.STOPPED, None) is Verdict.NO_PROCESS
    assert human_duration(600) == "10m" and human_duration(30) == "30s"
    assert human_duration(1.25) == "1.2s" and human_duration(5400) == "1.5h"
    assert describe_exit(AppExited(1, -9, False, False, "")) == "killed by SIGKILL"
    assert describe_exit(AppExited(1, 3, False, False, "")) == "exit code 3"


def test_settings_from_config() -> None:
    cfg = Config(
        app=AppConfig(start=("app",), home=Path("/srv/home"), database_url="sqlite:///x.db"),
        nodes=(NodeConfig(name="node1", port=8101),),
        coordination=CoordinationConfig(lease_ttl=2.5),
        health=HealthConfig(timeout=45.0, fall=4),
    )
    got = PolicySettings.from_config(cfg)
    assert got == PolicySettings(
        mode=COLD,
        restart_attempts=2,
        failure_window=600.0,
        startup_timeout=120.0,
        health_timeout=45.0,
        fall=4,
        step_down_cooldown=7.5,
        boot_grace=5.0,
        no_failover=False,
    )


# --- property-style: random plausible worlds ------------------------------------------------


class World:
    """What a real agent, supervisor and coordinator would feed the policy.

    Carries out the policy's actions and checks the invariants on each one.
    """

    def __init__(self, policy: Policy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        self.pid: int | None = None  # a process exists (running or stopping)
        self.stopping = False
        self.start_pending = False  # StartApp done; AppStarted/AppStartFailed due next
        self.holds_lease = False
        self.epoch = 0
        self.next_pid = 1000
        self.counts: dict[str, int] = {}
        self.now = 0.0

    def carry_out(
        self, actions: list[Action], state_before: PolicyState, operator: bool = False
    ) -> None:
        """``operator``: the actions come from ``reset()``, the one way out of MANUAL."""
        mode = self.policy.settings.mode
        for action in actions:
            name = sig(action)
            self.counts[name] = self.counts.get(name, 0) + 1
            assert action.reason.strip()
            if isinstance(action, StartApp):
                assert self.pid is None and not self.start_pending, "StartApp while a process runs"
                assert operator or state_before is not S.MANUAL
                if mode in (COLD, RESTART_ONLY):
                    assert self.holds_lease, "cold standby: the app runs only on the lease holder"
                self.start_pending = True
            elif isinstance(action, StopApp):
                assert self.pid is not None or self.start_pending, "StopApp without a process"
                self.stopping = True
            elif isinstance(action, StepDown):
                assert self.pid is None and not self.start_pending, "StepDown while the app runs"
                assert self.holds_lease and (operator or state_before is not S.MANUAL)
                assert mode is not RESTART_ONLY
                self.holds_lease = False

    def next_event(self) -> PolicyEvent:
        rng = self.rng
        if self.start_pending:  # the supervisor's start is synchronous
            self.start_pending = False
            if rng.random() < 0.1:
                return AppStartFailed("exec failed")
            self.next_pid += 1
            self.pid = self.next_pid
            return AppStarted(self.pid)
        roll = rng.random()
        if self.pid is not None and roll < 0.12:
            pid, expected = self.pid, self.stopping
            self.pid, self.stopping = None, False
            crash_oom = not expected and rng.random() < 0.3
            return AppExited(pid, 137 if crash_oom else -9, crash_oom, expected, "")
        if roll < 0.2 and not self.holds_lease and self.policy.may_lead(self.now):
            self.holds_lease = True
            self.epoch += rng.randint(1, 3)
            return LeaseGained(self.epoch)
        if roll < 0.23 and self.holds_lease:
            self.holds_lease = False
            return LeaseLost(self.epoch, "could not renew in time")
        if roll < 0.35:
            return Tick()
        # Mostly healthy, as real apps are, so runs reach the later paths too.
        state = AppState.RUNNING if rng.random() < 0.5 else rng.choice(list(AppState))
        reachable = rng.choice([True, False, None]) if state is AppState.ERROR else None
        return StatusObserved(state, "random", reachable)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("seed", range(12))
def test_random_event_sequences_keep_invariants(mode: Mode, seed: int) -> None:
    rng = random.Random(seed * 31 + len(mode.value))
    policy = Policy(
        settings(
            mode,
            restart_attempts=rng.randint(0, 3),
            fall=rng.randint(1, 3),
            failure_window=rng.choice([60.0, 600.0]),
            startup_timeout=rng.choice([10.0, 120.0]),
            health_timeout=rng.choice([5.0, 30.0]),
            failover_on_failed_start=rng.random() < 0.5,
        ),
        "node1",
    )
    world = World(policy, rng)
    world.carry_out(policy.handle(Boot(), 0.0), S.INIT)
    for _ in range(600):
        world.now += rng.choice([0.0, 0.5, 1.0, 5.0, 30.0, 200.0])
        event = world.next_event()
        before = policy.state
        world.carry_out(policy.handle(event, world.now), before)
        view = policy.view()
        process_believed = world.pid is not None or world.start_pending
        assert view.app_running == process_believed, (event, view)
        assert (view.role is Role.ACTIVE) == world.holds_lease, (event, view)
        if view.state is S.STANDBY:
            assert view.role is Role.STANDBY and not view.app_running
        if mode in (COLD, RESTART_ONLY) and world.pid is not None and not world.stopping:
            assert world.holds_lease, "cold standby: a live app without the lease"
        if policy.state is S.MANUAL and world.pid is None and rng.random() < 0.2:
            world.carry_out(policy.reset(world.now), S.MANUAL, operator=True)
    # The sequences are long enough to exercise the interesting paths.
    assert (
        world.counts.get("start", 0) > 0
        and world.counts.get("stop", 0) + world.counts.get("kill", 0) > 0
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_garbage_either_raises_cleanly_or_is_handled(seed: int) -> None:
    """Any event in any state: InvalidTransition leaves the policy unchanged."""
    rng = random.Random(seed)
    policy = Policy(settings(rng.choice(list(Mode)), fall=1, restart_attempts=1), "node1")
    now = 0.0
    raised = handled = 0
    for _ in range(500):
        now += rng.choice([0.0, 1.0, 50.0])
        event = rng.choice(
            [
                Boot(),
                Tick(),
                LeaseGained(rng.randint(1, 40)),
                LeaseLost(rng.randint(1, 40), "lost"),
                AppStarted(rng.randint(1, 3)),
                AppStartFailed("no"),
                AppExited(rng.randint(1, 3), -9, rng.random() < 0.3, rng.random() < 0.5, ""),
                StatusObserved(rng.choice(list(AppState)), "x", rng.choice([True, False, None])),
            ]
        )
        before = policy.view()
        try:
            actions = policy.handle(event, now)
        except InvalidTransition as error:
            raised += 1
            assert policy.view() == before
            assert before.state.value == error.state
            continue
        handled += 1
        assert all(a.reason for a in actions)
    assert raised > 0 and handled > 0


# --- operator commands: pause / resume ----------------------------------------------------

OPERATOR = "operator:alice"


def paused() -> Paused:
    return Paused(OPERATOR, "maintenance")


def resumed() -> Resumed:
    return Resumed(OPERATOR, "done")


def switchover(target: str = "node2", source: str = "node1", epoch: int = 1) -> HandoverRequested:
    return HandoverRequested(target, source, epoch, forced=False, actor=OPERATOR, reason="patch")


def forced(target: str = "node2", source: str = "node1", epoch: int = 1) -> HandoverRequested:
    return HandoverRequested(target, source, epoch, forced=True, actor=OPERATOR, reason="gone")


def booted(mode: Mode = COLD, **overrides: float) -> Node:
    node = Node(mode, **overrides)
    node.feed(Boot())
    node.actions.clear()
    return node


ACTING = frozenset({"start", "stop", "step-down"})  # what a pause holds back

OPERATOR_ROWS: list[Row] = [
    Row(
        "pause: a crash is not restarted, the history says what would have been; resume restarts",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            (5, crash(), ["record:paused"]),
            *[(30, Tick(), []) for _ in range(3)],
            (1, status(AppState.STOPPED), []),
            (1, LeaseVacant(), []),  # the active holds the lease: nothing to say
            (60, resumed(), ["start"]),
            *restart_cycle(),
        ],
        S.RUNNING,
        never=frozenset({"step-down", "alert:crash"}),
    ),
    Row(
        "pause: a hang past patience is not acted on, and said once",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            *hang(1, span=29, count=3),
            (1, status(TIMEOUT), ["record:paused"]),
            *[(5, status(TIMEOUT), []) for _ in range(10)],
            (1, status(RUNNING), ["record:status"]),
        ],
        S.RUNNING,
        never=ACTING | {"kill"},
    ),
    Row(
        "pause: ERROR streak is held back; after resume the next ERROR restarts at once",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            (1, status(ERROR, database_reachable=True), ["record:detected"]),
            (1, status(ERROR, database_reachable=True), []),
            (1, status(ERROR, database_reachable=True), ["record:paused"]),
            (1, status(ERROR, database_reachable=True), []),
            (1, resumed(), ["record:resume"]),
            (1, status(ERROR, database_reachable=True), ["stop", "alert:error"]),
        ],
        S.RESTARTING,
    ),
    Row(
        "pause: the startup deadline passes without a retry",
        starting_active,
        [
            (0, paused(), ["record:pause"]),
            (121, Tick(), ["record:paused"]),
            *[(30, Tick(), []) for _ in range(5)],
            (1, status(RUNNING), ["record:running"]),
        ],
        S.RUNNING,
        never=ACTING,
    ),
    Row(
        "pause: a standby does not take a free lease, and says it would",
        booted,
        [
            (0, paused(), ["record:pause"]),
            (5, LeaseVacant(), ["record:paused"]),
            (5, resumed(), ["record:resume"]),
            (1, LeaseVacant(), []),  # not paused: the lease loop takes it
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "pause: a lost lease still fences (safety is never paused)",
        running_active,
        [
            (0, paused(), ["record:pause"]),
            (1, LeaseLost(1, "could not renew in time"), ["kill", "alert:fence"]),
            (0.2, stopped(), ["record:fenced"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "pause: the exit after a restart's stop does not start the app again",
        running_active,
        [
            *[
                (1, status(DOWN), sigs)
                for sigs in (["record:detected"], [], ["stop", "alert:crash"])
            ],
            (0, paused(), ["record:pause"]),
            (2, stopped(), ["record:paused"]),
            (2, resumed(), ["start"]),
        ],
        S.STARTING,
    ),
    Row(
        "pause before boot (warm standby): no self-start; resume starts the standby app",
        lambda: Node(WARM),
        [
            (0, paused(), ["record:pause"]),
            (0, Boot(), ["record:paused"]),
            (60, Tick(), []),
            (1, resumed(), ["start"]),
        ],
        S.STARTING,
        end_role=Role.STANDBY,
    ),
    Row(
        "resume when nothing was held back: recorded only",
        running_active,
        [(0, paused(), ["record:pause"]), (0, paused(), []), (5, resumed(), ["record:resume"])],
        S.RUNNING,
    ),
    # --- switchover and forced failover ---------------------------------------------------
    Row(
        "switchover out (cold): drain, graceful stop, release the lease for the target only",
        running_active,
        [
            (1, switchover(), ["drain", "stop"]),
            (1, status(AppState.STOPPING), []),
            (1, stopped(), ["step-down"]),
            (1, HandoverEnded("switchover to node2 ended"), []),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
        never=frozenset({"alert:failover", "kill"}),
    ),
    Row(
        "switchover in (cold): the target takes the released lease, starts, ends the intent",
        booted,
        [
            (0, switchover("node1", "node2", 4), ["record:switchover"]),
            (1, LeaseGained(5), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (1, status(RUNNING), ["record:running", "end-handover"]),
            (1, HandoverEnded("switchover to node1 ended"), []),
        ],
        S.RUNNING,
    ),
    Row(
        "switchover out (warm): the app keeps running as a standby, only the lease moves",
        lambda: running_active(WARM),
        [(1, switchover(), ["drain", "step-down"]), (1, status(RUNNING), [])],
        S.RUNNING,
        end_role=Role.STANDBY,
        never=frozenset({"stop", "kill"}),
    ),
    Row(
        "switchover in (warm): the running standby is promoted and ends the intent at once",
        lambda: running_active(WARM),
        [
            (1, LeaseLost(1, "released"), ["kill", "alert:fence"]),
            (1, stopped(), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (1, status(RUNNING), ["record:running"]),
            (1, switchover("node1", "node2", 3), ["record:switchover"]),
            (1, LeaseGained(4), ["record:promoted", "end-handover"]),
        ],
        S.RUNNING,
    ),
    Row(
        "switchover asked while paused is still carried out (an operator's action)",
        running_active,
        [
            (0, paused(), ["record:pause"]),
            (1, switchover(), ["drain", "stop"]),
            (1, stopped(), ["step-down"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "switchover while a restart's stop is under way: step down once the app is gone",
        running_active,
        [
            *[
                (1, status(DOWN), sigs)
                for sigs in (["record:detected"], [], ["stop", "alert:crash"])
            ],
            (0, switchover(), ["record:switchover"]),
            (1, stopped(), ["step-down"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
        never=frozenset({"start"}),
    ),
    Row(
        "switchover away from a node that gave up (MANUAL): the lease goes, MANUAL stays",
        lambda: starting_active(restart_attempts=0),
        [
            (1, crash("exit code 1", 1), ["alert:failed-start!"]),
            (1, switchover(), ["step-down"]),
        ],
        S.MANUAL,
        end_role=Role.STANDBY,
    ),
    Row(
        "switchover asked under an older epoch: the active ignores it",
        running_active,
        [(1, switchover(epoch=0), [])],
        S.RUNNING,
        never=ACTING,
    ),
    Row(
        "a bystander standby: nothing to do",
        booted,
        [(1, switchover("node3", "node2", 4), []), (1, HandoverEnded("ended"), [])],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "forced failover in: take the lease at once, start, end the intent",
        booted,
        [
            (0, forced("node1", "node2", 4), ["take-lease"]),
            (0.5, LeaseGained(5), ["start"]),
            (0, lambda n: AppStarted(n.next_pid + 1), ["record:started"]),
            (1, status(RUNNING), ["record:running", "end-handover"]),
        ],
        S.RUNNING,
    ),
    Row(
        "forced failover out: the old active fences itself when its renewal fails",
        running_active,
        [
            (0, forced(), ["record:failover"]),
            (0.5, LeaseLost(1, "node2 holds it"), ["kill", "alert:fence"]),
            (0.1, stopped(), ["record:fenced"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
        never=frozenset({"step-down"}),
    ),
    Row(
        "handover to a nofailover node: refused",
        lambda: booted(no_failover=True),
        [(0, switchover("node1", "node2", 4), ["end-handover"])],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "handover to the node that is already active: refused",
        running_active,
        [(0, forced("node1", "node2", 1), ["end-handover"])],
        S.RUNNING,
    ),
]


@pytest.mark.parametrize("row", OPERATOR_ROWS, ids=[row.name for row in OPERATOR_ROWS])
def test_operator_table(row: Row) -> None:
    test_failure_table(row)


def test_pause_record_says_what_would_have_been_done_and_who_paused() -> None:
    node = running_active()
    node.feed(paused())
    node.feed(crash(), after=5)
    (reason,) = node.reasons("record:paused")
    assert reason.startswith("would start the app (app on node1 exited (killed by SIGKILL)")
    assert "operator:alice (maintenance) paused the cluster: no action" in reason
    view = node.policy.view()
    assert view.paused and view.state is S.PAUSED and view.role is Role.ACTIVE
    assert not view.app_running and view.failure_times == ()  # nothing counted while paused


def test_resume_reason_names_the_operator() -> None:
    node = running_active()
    node.feed(paused())
    node.feed(crash(), after=5)
    node.feed(resumed(), after=5)
    (reason,) = node.reasons("start")
    assert reason == (
        "operator:alice (done) resumed the cluster: the app on node1 is not running; starting it"
    )


def test_paused_nodes_never_lead_but_a_handover_target_does() -> None:
    node = booted(step_down_cooldown=9.0)
    assert node.policy.may_lead(node.now + 7)  # past the boot grace: no records, no wait
    node.feed(paused())
    assert not node.policy.may_lead(node.now + 1e6)
    node.feed(switchover("node1", "node2", 4))
    assert node.policy.may_lead(node.now)  # the operator's target, paused or not
    node.feed(HandoverEnded("done"))
    assert not node.policy.may_lead(node.now + 1e6)
    node.feed(resumed())
    assert node.policy.may_lead(node.now)


def test_during_a_handover_only_the_target_may_lead() -> None:
    bystander = booted()
    bystander.feed(switchover("node3", "node2", 4))
    assert not bystander.policy.may_lead(bystander.now + 1e6)
    assert bystander.policy.view().handover_target == "node3"
    bystander.feed(HandoverEnded("expired"))
    assert bystander.policy.may_lead(bystander.now)


def test_switchover_target_ignores_its_step_down_cooldown() -> None:
    node = running_active(restart_attempts=0, step_down_cooldown=60.0)
    node.feed(crash(), after=5)  # stepped down: cooling down for 60 s
    assert not node.policy.may_lead(node.now + 1)
    node.feed(switchover("node1", "node2", 2), after=1)
    assert node.policy.may_lead(node.now)


def test_switchover_out_reasons() -> None:
    node = running_active()
    node.feed(switchover(), after=1)
    drain, stop = node.actions
    assert drain.reason == (
        "operator:alice asked for a switchover to node2 (patch): draining node1 "
        "(the router holds new requests)"
    )
    assert isinstance(stop, StopApp) and not stop.kill
    node.feed(stopped(), after=1)
    step_down = node.actions[-1]
    assert isinstance(step_down, StepDown) and step_down.kind == "switchover"
    assert step_down.reason == (
        "app on node1 stopped for the switchover; releasing the lease of epoch 1: "
        "only node2 may take it"
    )
    assert not node.policy.may_lead(node.now)  # node2 is the target


def test_handover_end_reason_names_who_asked() -> None:
    node = booted()
    node.feed(forced("node1", "node2", 4))
    node.feed(LeaseGained(5), after=0.5)
    node.started()
    node.feed(status(RUNNING), after=1)
    (reason,) = node.reasons("end-handover")
    assert (
        reason
        == "failover to node1 complete: serving under epoch 5 (asked by operator:alice: gone)"
    )
    assert node.policy.view().handover_target is None


def test_nofailover_node_never_leads() -> None:
    node = booted(no_failover=True)
    for later in (0, 10, 1e6):
        assert not node.policy.may_lead(node.now + later)
    node.feed(forced("node1", "node2", 4))
    assert not node.policy.may_lead(node.now + 1e6)


def test_nofailover_warm_standby_still_runs_its_app() -> None:
    node = Node(WARM, no_failover=True)
    assert node.feed(Boot()) == ["start"]
    assert "nofailover tag: it never becomes active" in node.actions[0].reason


# --- startup: the last active goes first ---------------------------------------------------


def test_cold_start_the_last_active_competes_at_once() -> None:
    node = Node(COLD, boot_grace=6.0)
    node.feed(Boot(served_epoch=7, newest_epoch=7, newest_node="node1"))
    assert node.policy.may_lead(node.now)
    assert node.actions[0].reason.endswith(
        "node1 was the last active (epoch 7): competing for the lease at once"
    )


def test_cold_start_other_nodes_wait_the_grace() -> None:
    node = Node(COLD, boot_grace=6.0)
    node.feed(Boot(served_epoch=3, newest_epoch=7, newest_node="node2"))
    assert not node.policy.may_lead(node.now)
    assert not node.policy.may_lead(node.now + 5.9)
    assert node.policy.may_lead(node.now + 6.0)
    assert node.actions[0].reason.endswith(
        "node2 was the last active (epoch 7; node1: epoch 3): giving it 6.0s to take the lease first"
    )


def test_cold_start_without_history_competes_at_once() -> None:
    for boot in (Boot(), Boot(0, 0, "")):
        node = Node(COLD, boot_grace=6.0)
        node.feed(boot)
        assert node.policy.may_lead(node.now)


def test_last_active_picks_the_highest_epoch() -> None:
    assert last_active({}) == ("", 0)
    assert last_active({"node1": 0, "node2": 0}) == ("", 0)
    assert last_active({"node1": 3, "node2": 7, "node3": 5}) == ("node2", 7)


OPERATOR_IMPOSSIBLE: list[tuple[str, PolicyEvent, str]] = [
    ("INIT", Resumed("a", "b"), "Resumed"),
    ("INIT", switchover(), "HandoverRequested"),
    ("INIT", HandoverEnded("x"), "HandoverEnded"),
    ("INIT", LeaseVacant(), "LeaseVacant"),
    ("PAUSED", AppStarted(5), "AppStarted"),
    ("PAUSED", AppExited(5, 0, False, False, ""), "AppExited"),
    ("PAUSED", Boot(), "Boot"),
]


@pytest.mark.parametrize(("state", "event", "event_name"), OPERATOR_IMPOSSIBLE)
def test_impossible_operator_events_raise(state: str, event: PolicyEvent, event_name: str) -> None:
    if state == "PAUSED":
        node = running_active()
        node.feed(paused())
        node.feed(crash())
        assert node.policy.state is S.PAUSED
    else:
        node = _in_state(state)
    before = node.policy.view()
    with pytest.raises(InvalidTransition) as caught:
        node.policy.handle(event, node.now + 1)
    assert caught.value.state == state and event_name in caught.value.event
    assert node.policy.view() == before


def test_a_held_back_event_that_raises_leaves_the_policy_unchanged() -> None:
    node = running_active()
    node.feed(paused())
    before = node.policy.view()
    with pytest.raises(InvalidTransition):
        node.policy.handle(AppExited(999, -9, False, False, ""), node.now)  # not our pid
    assert node.policy.view() == before


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_with_pauses_never_act_while_paused(mode: Mode, seed: int) -> None:
    """The random worlds above, with an operator pausing and resuming now and then."""
    rng = random.Random(seed * 17 + len(mode.value))
    policy = Policy(
        settings(mode, restart_attempts=rng.randint(0, 2), fall=rng.randint(1, 3)), "node1"
    )
    world = World(policy, rng)
    world.carry_out(policy.handle(Boot(), 0.0), S.INIT)
    for _ in range(600):
        world.now += rng.choice([0.0, 0.5, 1.0, 5.0, 30.0, 200.0])
        roll = rng.random()
        event: PolicyEvent
        if roll < 0.04:
            event = paused()
        elif roll < 0.07:
            event = resumed()
        elif roll < 0.09:
            event = LeaseVacant()
        else:
            event = world.next_event()
        was_paused = policy.view().paused
        before = policy.state
        actions = policy.handle(event, world.now)
        if was_paused and not isinstance(event, Resumed):
            acted = [sig(a) for a in actions if sig(a) in ACTING]
            assert not acted, (event, acted)
        world.carry_out(actions, before)
        view = policy.view()
        assert view.app_running == (world.pid is not None or world.start_pending), (event, view)
        assert (view.role is Role.ACTIVE) == world.holds_lease, (event, view)
        if view.state is S.PAUSED:
            assert not view.app_running and view.paused
        if mode in (COLD, RESTART_ONLY) and world.pid is not None and not world.stopping:
            assert world.holds_lease, "cold standby: a live app without the lease"
        if policy.state is S.MANUAL and world.pid is None and rng.random() < 0.2:
            world.carry_out(policy.reset(world.now), S.MANUAL, operator=True)


# --- the routers' lost path to the active node (hakit.health.datapath) ----------------------------

LOST = "router r1 has not reached node1 since 12:00:00 (4 silent checks in a row; ...)"


def path_lost(target: str = "node2") -> PathLost:
    return PathLost(target, LOST)


def path_loss_handover(target: str = "node2", source: str = "node1") -> HandoverRequested:
    return HandoverRequested(
        target, source, 1, forced=False, actor=f"agent:{source}", reason=LOST, label="path-loss"
    )


def test_path_loss_asks_for_a_handover_once_then_hands_over_like_a_switchover() -> None:
    node = running_active()
    assert node.feed(path_lost(), after=1) == ["request-handover:node2", "alert:failover"]
    assert node.feed(path_lost(), after=0.5) == []  # asked already: not again
    # The intent comes back through the store like an operator's.
    assert node.feed(path_loss_handover(), after=0.5) == ["drain", "stop"]
    assert node.actions[-2].reason.startswith("node1 hands over to node2 (path loss)")
    assert node.feed(stopped(), after=1) == ["step-down"]
    step_down = node.actions[-1]
    assert isinstance(step_down, StepDown) and step_down.kind == "failover"
    assert step_down.actor == "agent:node1"
    assert step_down.reason == (
        f"{LOST}; app on node1 stopped for the handover; releasing the lease of epoch 1: "
        "only node2 may take it"
    )
    assert node.policy.view().role is Role.STANDBY and not node.policy.may_lead(node.now)
    node.feed(HandoverEnded("path-loss to node2 ended"), after=5)
    assert not node.policy.may_lead(node.now)  # no failback: the cooldown holds
    assert node.feed(path_lost(), after=1) == []  # a standby has nothing to hand over


def test_path_loss_target_takes_the_lease_once_released() -> None:
    node = Node()
    node.policy = Policy(settings(COLD), "node2")
    node.feed(Boot())
    assert node.feed(path_loss_handover()) == ["record:path-loss"]
    assert node.actions[-1].reason == (
        "node1 hands over to node2 (path loss): taking the lease once node1 releases it"
    )
    assert node.policy.may_lead(node.now)
    assert node.feed(LeaseGained(2), after=1) == ["start"]


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        (lambda: running_active(ACTIVE_ACTIVE), "active-active: the routers skip the node"),
        (lambda: running_active(RESTART_ONLY), "restart-only: no standby"),
        (booted, "a standby"),
        (starting_active, "the app is not RUNNING yet"),
    ],
)
def test_path_loss_changes_nothing_elsewhere(setup: Callable[[], Node], why: str) -> None:
    node = setup()
    assert node.feed(path_lost(), after=1) == [], why


def test_path_loss_while_paused_is_only_said() -> None:
    node = running_active()
    node.feed(paused())
    assert node.feed(path_lost(), after=1) == ["record:paused"]
    assert "would hand over to another node" in node.actions[-1].reason
    assert node.feed(path_lost(), after=1) == []  # said once
    node.feed(resumed())
    assert node.feed(path_lost(), after=1) == ["request-handover:node2", "alert:failover"]


def test_path_loss_waits_for_an_operator_handover_in_progress() -> None:
    node = running_active()
    node.feed(switchover("node2"), after=1)
    assert node.feed(path_lost(), after=1) == []
