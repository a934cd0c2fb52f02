"""Boot and cold start: the last active goes first, the other nodes wait the boot grace."""

from __future__ import annotations

from hakit.policy import (
    Boot,
)
from hakit.policy.rules import (
    last_active,
)
from tests.support.policy_builders import (
    COLD,
    Node,
)


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
