"""The routers' lost path to the active node (hakit.health.datapath): the active asks for a
handover once, then hands over like a switchover; nothing elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hakit.policy import (
    Boot,
    HandoverEnded,
    HandoverRequested,
    LeaseGained,
    PathLost,
    Policy,
    Role,
    StepDown,
)
from tests.support.policy_builders import (
    ACTIVE_ACTIVE,
    COLD,
    RESTART_ONLY,
    Node,
    booted,
    paused,
    resumed,
    running_active,
    settings,
    starting_active,
    stopped,
    switchover,
)

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
