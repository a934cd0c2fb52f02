"""``hakit why`` and fencing, over event histories as the agents record them.

The sequences are the ones real clusters wrote in the end-to-end fencing and
operator tests (tests/e2e/test_fencing.py, test_operator.py, test_failover.py),
with their times moved to 04:40 UTC. Fence events are recorded by the
promoting node with epoch 0 and the epoch they were for in ``data["epoch"]``
(hakit.fencing.fence.Fencer); the alert that follows a failed fence repeats its reason.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC
from typing import Any

import pytest

from hakit.coord.base import Event
from hakit.history.why import explain

from .test_why import BASE, Row, alert, history

FENCE_CMD = ["/usr/bin/python3", "fence_kill.py", "--node", "node1"]


def fence(t: float, node: str, reason: str, **data: Any) -> Row:
    return Row(t, node, 0, "fence", reason, data)


def by_operator(events: list[Event], who: str = "bob") -> list[Event]:
    """The operator's events (asked, took the lease, complete) carry ``operator:<who>``."""

    def operators(event: Event) -> bool:
        return event.reason.startswith("operator:") or "(asked by operator:" in event.reason

    return [dataclasses.replace(e, actor=f"operator:{who}") if operators(e) else e for e in events]


START = (
    Row(20.0, "node1", 0, "agent", "agent for node1 started (pid 16444)"),
    Row(20.1, "node2", 0, "agent", "agent for node2 started (pid 16445)"),
    Row(20.5, "node1", 1, "start", "node1 promoted to active under epoch 1; starting the app"),
    Row(20.5, "node1", 1, "started", "app on node1 started as pid 16504"),
    Row(21.0, "node1", 1, "running", "app on node1 FIRST_RUN after 0.5s: running, not yet configured"),
)  # fmt: skip

EXPIRED = "its lease of epoch 1 expired at 04:40:23 without being released"
FENCED_OK = (
    f"fenced node1 before node2 promotes under epoch 2 ({EXPIRED}): the fence command "
    "exited 0 after 0.3 s"
)
SESSIONS = (
    "terminated 1 database session of node1 (application_name hakit-node1) before node2 "
    "promotes under epoch 2"
)
WOKE = (
    "node1 lost the leader lease (epoch 1: lease not renewed before its deadline (1.9 s late: "
    "the store was too slow or this agent was stalled)); killing its app at once so it "
    "cannot write beside a new active"
)
# test_frozen_old_active_cannot_serve_or_write_after_failover: node1 (agent and app)
# frozen; node2 fences it (STONITH, then its database sessions) and takes over; node1
# wakes and fences itself.
FENCE_THEN_FAILOVER = (
    *START,
    fence(23.5, "node2", FENCED_OK, target="node1", result="ok", epoch=2, command=FENCE_CMD, summary="exited 0 after 0.3 s", returncode=0, seconds=0.3, output=""),
    fence(23.6, "node2", SESSIONS, target="node1", result="ok", sessions=1, epoch=2),
    Row(23.7, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    Row(23.7, "node2", 2, "started", "app on node2 started as pid 16546"),
    Row(24.2, "node2", 2, "running", "app on node2 FIRST_RUN after 0.5s: running, not yet configured"),
    Row(24.6, "node1", 0, "stall", "agent on node1 was stalled for 3.4 s (frozen, swapping or blocked); check failures overlapping the stall are not counted"),
    Row(24.7, "node1", 0, "stop", WOKE),
    alert(24.7, "node1", 0, "fence", WOKE),
    Row(24.7, "node1", 0, "fenced", "app on node1 is gone after fencing; staying standby"),
)  # fmt: skip


def refused(t: float, epoch: int) -> str:
    return (
        f"could not fence node1 before node2 promotes under epoch {epoch} (its lease of epoch 1 "
        f"expired at 04:40:{int(t):02d} without being released): the fence command exited with "
        "status 1 after 0.0 s; its output: BMC unreachable; not promoting: node2 gives the "
        "lease back and tries again later (`hakit failover --force` promotes without fencing)"
    )


def failed_fence(t: float, epoch: int) -> tuple[Row, ...]:
    """What a failed fence_command leaves: the fence event, the lease given back, the alert."""
    return (
        fence(t, "node2", refused(t, epoch), target="node1", result="failed", epoch=epoch, command=FENCE_CMD, summary="exited with status 1 after 0.0 s", returncode=1, seconds=0.0, output="BMC unreachable"),
        Row(t, "node2", 0, "lease", f"node2 gave the lease of epoch {epoch} back: fencing failed"),
        alert(t, "node2", 0, "fence", refused(t, epoch)),
    )  # fmt: skip


# test_failed_fence_blocks_the_promotion_until_the_old_node_stands_down, while node1 is
# still frozen: node2 cannot fence it and does not promote (three attempts).
FENCE_BLOCKED = (*START, *failed_fence(29.0, 2), *failed_fence(31.0, 3), *failed_fence(34.0, 4))

# ... then node1 wakes, fences itself, and (lease free, its agent back) takes the lease
# again: here node1 wins it, as happens in that test when the old node is quicker.
LOST_AFTER_WAKE = (
    "node1 lost the leader lease (epoch 1: lease not renewed before its deadline (0.3 s late: "
    "the store was too slow or this agent was stalled)); killing its app at once so it "
    "cannot write beside a new active"
)
FENCE_BLOCKED_UNTIL_WAKE = (
    *START,
    *failed_fence(29.0, 2),
    Row(31.5, "node1", 0, "stall", "agent on node1 was stalled for 4.0 s (frozen, swapping or blocked); check failures overlapping the stall are not counted"),
    Row(31.5, "node1", 0, "stop", LOST_AFTER_WAKE),
    alert(31.5, "node1", 0, "fence", LOST_AFTER_WAKE),
    Row(31.5, "node1", 0, "fenced", "app on node1 is gone after fencing; staying standby"),
    Row(32.0, "node1", 3, "start", "node1 promoted to active under epoch 3; starting the app"),
    Row(32.5, "node1", 3, "running", "app on node1 FIRST_RUN after 0.5s: running, not yet configured"),
)  # fmt: skip

# ... or node2 retries once node1's agent has published that it stands down.
NOT_NEEDED = (
    "node1 needs no fencing before node2 promotes under epoch 3: its lease of epoch 1 "
    "expired at 04:40:29 without being released, but its agent has run since and does not "
    "claim the lease (it fenced itself)"
)
FENCE_BLOCKED_THEN_FAILOVER = (
    *START,
    *failed_fence(29.0, 2),
    Row(29.5, "node1", 0, "stop", LOST_AFTER_WAKE),
    alert(29.5, "node1", 0, "fence", LOST_AFTER_WAKE),
    fence(30.9, "node2", NOT_NEEDED, target="node1", result="not-needed", epoch=3),
    Row(31.0, "node2", 3, "start", "node2 promoted to active under epoch 3; starting the app"),
    Row(31.5, "node2", 3, "running", "app on node2 FIRST_RUN after 0.5s: running, not yet configured"),
)  # fmt: skip

# test_forced_failover_from_a_frozen_active, with `hakit failover --force`: no fencing.
FORCED = (
    *START,
    Row(58.0, "node2", 1, "failover", "operator:bob forced a failover from node1 to node2 (the active hung)"),
    Row(58.2, "node2", 2, "failover", "operator:bob forced a failover to node2 (the active hung): taking the lease from node1 under a new epoch: took epoch 2"),
    fence(58.7, "node2", "not fencing node1 (the operator forced a failover away from its lease of epoch 1): the operator forced the promotion of node2 under epoch 2", target="node1", result="skipped", epoch=2),
    Row(58.7, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    Row(59.8, "node2", 2, "running", "app on node2 FIRST_RUN after 1.1s: running, not yet configured"),
    Row(59.8, "node2", 2, "failover", "failover to node2 complete: serving under epoch 2 (asked by operator:bob: the active hung)"),
    Row(59.9, "node1", 0, "stop", "node1 lost the leader lease (epoch 1: could not renew the lease: the store is unreachable); killing its app at once so it cannot write beside a new active"),
)  # fmt: skip

# test_node_loss_hands_lease_to_standby: no fence_command configured.
NOT_CONFIGURED = (
    "no failover.fence_command configured: node2 promotes under epoch 2 trusting node1 to "
    f"have fenced itself ({EXPIRED})"
)
NODE_LOSS_UNFENCED = (
    *START,
    fence(23.5, "node2", NOT_CONFIGURED, target="node1", result="not-configured", epoch=2),
    Row(23.5, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    Row(24.7, "node2", 2, "running", "app on node2 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip

TIMED_OUT = (
    f"could not fence node1 before node2 promotes under epoch 2 ({EXPIRED}): the fence "
    "command did not finish within fence_timeout 10 s (killed); not promoting: node2 gives "
    "the lease back and tries again later (`hakit failover --force` promotes without fencing)"
)
FENCE_TIMED_OUT = (
    *START,
    fence(33.5, "node2", TIMED_OUT, target="node1", result="failed", epoch=2, command=FENCE_CMD, summary="did not finish within fence_timeout 10 s (killed)", returncode=None, seconds=10.0, output=""),
    alert(33.5, "node2", 0, "fence", TIMED_OUT),
)  # fmt: skip

CASES: list[tuple[str, tuple[Row, ...], float | None, list[str]]] = [
    (
        "a fence that worked is part of the failover's story",
        FENCE_THEN_FAILOVER,
        None,
        [
            "node1 failed over to node2 at 04:40:23 (epoch 1 → 2): node1's lease expired "
            "without a word from its agent: the node was lost (agent and app gone together), "
            "its agent died, or it was cut off from the coordination store (no agent has come "
            "back on it yet to tell); node1 fenced first (the fence command "
            "exited 0 after 0.3 s)",
            "  04:40:21  last heard from node1: app on node1 FIRST_RUN after 0.5s: running, "
            "not yet configured",
            f"  04:40:23  {FENCED_OK}",
            f"  04:40:23  {SESSIONS}",
            "  04:40:23  node2 promoted to active under epoch 2; starting the app",
            "  04:40:24  node2 serving: app on node2 FIRST_RUN after 0.5s: running, not yet "
            "configured (0.5s after the takeover)",
            "  04:40:24  node1 lost the leader lease (epoch 1: lease not renewed before its "
            "deadline (1.9 s late: the store was too slow or this agent was stalled)); it "
            "killed its app (self-fencing)",
        ],
    ),
    (
        "a failed fence_command blocks the promotion",
        FENCE_BLOCKED,
        None,
        [
            "not failed over at 04:40:29: fence_command for node1 failed (exit 1), promotion "
            "of node2 waits; force with `hakit failover --force`",
            f"  04:40:29  {refused(29.0, 2)}",
            "  04:40:34  3 fence attempts failed since 04:40:29 (last: exit 1)",
            "  no node promotes until the fence command succeeds or node1's agent comes back "
            "and stands down (it fences itself)",
        ],
    ),
    (
        "a fence command that timed out",
        FENCE_TIMED_OUT,
        None,
        [
            "not failed over at 04:40:33: fence_command for node1 failed (did not finish "
            "within fence_timeout 10 s (killed)), promotion of node2 waits; force with "
            "`hakit failover --force`",
            f"  04:40:33  {TIMED_OUT}",
            "  no node promotes until the fence command succeeds or node1's agent comes back "
            "and stands down (it fences itself)",
        ],
    ),
    (
        "the old node woke, fenced itself and took the lease back",
        FENCE_BLOCKED_UNTIL_WAKE,
        None,
        [
            "no failover at 04:40:32: node1 took the lease again (epoch 1 → 3) after node1 "
            "lost the leader lease (epoch 1: lease not renewed before its deadline (0.3 s "
            "late: the store was too slow or this agent was stalled)); it killed its app "
            "(self-fencing)",
            f"  04:40:29  {refused(29.0, 2)}",
            f"  04:40:31  {LOST_AFTER_WAKE}",
            "  04:40:32  node1 promoted to active under epoch 3; starting the app",
            "  04:40:32  node1 serving: app on node1 FIRST_RUN after 0.5s: running, not yet "
            "configured (1.0s after it lost the lease)",
        ],
    ),
    (
        "--at the blocked promotion explains it, and what came of it",
        FENCE_BLOCKED_UNTIL_WAKE,
        BASE + 29,
        [
            "not failed over at 04:40:29: fence_command for node1 failed (exit 1), node2 did "
            "not promote (node1 took the lease at 04:40:32)",
            f"  04:40:29  {refused(29.0, 2)}",
            "  04:40:32  node1 promoted to active under epoch 3; starting the app",
        ],
    ),
    (
        "blocked, then the old node stood down and the standby promoted",
        FENCE_BLOCKED_THEN_FAILOVER,
        None,
        [
            "node1 failed over to node2 at 04:40:31 (epoch 1 → 3): node1 lost the leader lease "
            "(epoch 1: lease not renewed before its deadline (0.3 s late: the store was too "
            "slow or this agent was stalled)); it killed its app (self-fencing)",
            f"  04:40:29  {refused(29.0, 2)}",
            f"  04:40:29  {LOST_AFTER_WAKE}",
            f"  04:40:30  {NOT_NEEDED}",
            "  04:40:31  node2 promoted to active under epoch 3; starting the app",
            "  04:40:31  node2 serving: app on node2 FIRST_RUN after 0.5s: running, not yet "
            "configured (2.0s after node1 gave up)",
        ],
    ),
    (
        "a forced failover says the old node was not fenced",
        FORCED,
        None,
        [
            "node1 failed over to node2 at 04:40:58 (epoch 1 → 2): failover by operator bob: "
            "operator:bob forced a failover from node1 to node2 (the active hung); node1 not "
            "fenced: the operator forced the promotion",
            "  04:40:58  operator:bob forced a failover from node1 to node2 (the active hung)",
            "  04:40:58  operator:bob forced a failover to node2 (the active hung): taking the "
            "lease from node1 under a new epoch: took epoch 2",
            "  04:40:58  not fencing node1 (the operator forced a failover away from its lease "
            "of epoch 1): the operator forced the promotion of node2 under epoch 2",
            "  04:40:59  node2 serving: app on node2 FIRST_RUN after 1.1s: running, not yet "
            "configured (1.8s after the operator's command)",
            "  04:40:59  node1 lost the leader lease (epoch 1: could not renew the lease: the "
            "store is unreachable); it killed its app (self-fencing)",
        ],
    ),
    (
        "node loss without a fence_command: said in the story, not in the headline",
        NODE_LOSS_UNFENCED,
        None,
        [
            "node1 failed over to node2 at 04:40:23 (epoch 1 → 2): node1's lease expired "
            "without a word from its agent: the node was lost (agent and app gone together), "
            "its agent died, or it was cut off from the coordination store (no agent has come "
            "back on it yet to tell)",
            "  04:40:21  last heard from node1: app on node1 FIRST_RUN after 0.5s: running, "
            "not yet configured",
            f"  04:40:23  {NOT_CONFIGURED}",
            "  04:40:23  node2 promoted to active under epoch 2; starting the app",
            "  04:40:24  node2 serving: app on node2 FIRST_RUN after 1.2s: running, not yet "
            "configured (1.2s after the takeover)",
        ],
    ),
]


@pytest.mark.parametrize(
    ("events", "at", "expected"),
    [pytest.param(rows, at, lines, id=name) for name, rows, at, lines in CASES],
)
def test_explain_fencing(events: tuple[Row, ...], at: float | None, expected: list[str]) -> None:
    assert explain(by_operator(history(*events)), at=at, tz=UTC) == expected


def test_the_fence_alert_is_not_a_second_incident() -> None:
    """The alert repeating a failed fence, and the lease given back, add nothing of their own."""
    lines = explain(history(*START, *failed_fence(29.0, 2)), tz=UTC)
    assert lines[0].startswith("not failed over at 04:40:29: fence_command for node1 failed")
    assert not [line for line in lines if "gave the lease of epoch 2 back" in line]
    assert sum(1 for line in lines if "could not fence node1" in line) == 1
