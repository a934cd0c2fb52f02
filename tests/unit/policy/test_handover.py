"""Handovers: an operator's switchover and forced failover, out of and into a node; only the
target may lead meanwhile; nofailover nodes never lead."""

from __future__ import annotations

import pytest

from hakit.contract import AppState
from hakit.policy import (
    AppStarted,
    Boot,
    HandoverEnded,
    LeaseGained,
    LeaseLost,
    Role,
    StepDown,
    StopApp,
)
from tests.support.policy_builders import (
    ACTING,
    DOWN,
    RUNNING,
    WARM,
    Node,
    Row,
    S,
    booted,
    crash,
    forced,
    paused,
    play,
    running_active,
    starting_active,
    status,
    stopped,
    switchover,
)

HANDOVER_ROWS: list[Row] = [
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


@pytest.mark.parametrize("row", HANDOVER_ROWS, ids=[row.name for row in HANDOVER_ROWS])
def test_handover_table(row: Row) -> None:
    play(row)


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
