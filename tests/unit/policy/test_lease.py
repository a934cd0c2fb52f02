"""The lease: gained (promotion, its epoch, a failover alert when the old holder's lease
expired; warm standby promotion), lost (self-fencing), and no failback: the step-down
cooldown, and a fenced node that may not lead until its app is gone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.policy import (
    AppStarted,
    Boot,
    LeaseGained,
    LeaseLost,
    Role,
    Tick,
)
from tests.support.policy_builders import (
    COLD,
    DOWN,
    RESTART_ONLY,
    RUNNING,
    WARM,
    Node,
    Row,
    S,
    crash,
    in_state,
    play,
    running_active,
    status,
    stopped,
)

LEASE_ROWS: list[Row] = [
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


@pytest.mark.parametrize("row", LEASE_ROWS, ids=[row.name for row in LEASE_ROWS])
def test_lease_table(row: Row) -> None:
    play(row)


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
        (lambda: in_state("MANUAL", active=False), ["record:lease", "alert:failover!"]),
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


def test_epochs_only_grow() -> None:
    node = Node(COLD)
    node.feed(Boot())
    node.feed(LeaseGained(5))
    node.started()
    node.feed(LeaseLost(5, "could not renew in time"))
    node.feed(stopped())
    with pytest.raises(InvalidTransition, match="epochs only grow"):
        node.policy.handle(LeaseGained(5), node.now)
