"""Builders for the policy engine's tests (tests/unit/policy/): a policy with a fake clock
(plain floats, no patching), events, short action signatures (``sig``), the nodes the tests
start from, and the table rows they play (``Row``, ``play``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from hakit.config import Mode
from hakit.contract import AppState
from hakit.policy import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    Boot,
    Drain,
    EndHandover,
    HandoverRequested,
    LeaseGained,
    LeaseLost,
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
)

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


def play(row: Row) -> None:
    """Plays a table row step by step: the actions expected at each, the state and role at the end."""
    node = row.setup()
    for index, (after, event, expected) in enumerate(row.steps):
        real_event = event(node) if callable(event) else event
        got = node.feed(real_event, after=after)
        assert got == expected, f"step {index} ({real_event}): {got} != {expected}"
        assert not set(got) & row.never, f"step {index} ({real_event}): forbidden {got}"
    assert node.policy.state is row.end_state
    assert node.policy.view().role is row.end_role


def in_state(name: str, active: bool = True) -> Node:
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
