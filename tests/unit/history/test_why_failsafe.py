"""``hakit why`` with failsafe mode ([coordination] failsafe, hakit.policy.failsafe): which
case happened when the coordination store was unreachable. The events are the ones the
agents record (hakit.agent.failsafe, hakit.agent.lease), facts in their data."""

from __future__ import annotations

from datetime import UTC

from hakit.history.facts import ASKER, CONFIRMED, FAILSAFE, MISSING
from hakit.history.kinds import CAUSE, LOST_EPOCH, EventCause
from hakit.history.why import explain
from hakit.policy.failsafe import FENCED, NO_PROMOTION, RECOVERED, REFUSED, SERVING
from tests.unit.history.test_why import BOOT, Row, alert, history

SERVED = "failsafe: serving on 1 confirmation (node2) while the coordination store is unreachable"
NO_PROMO = (
    "no promotion: store unreachable; node2 confirmed to node1 (epoch 1) that it is not "
    "promoting (node2 cannot reach the coordination store either: it will not promote)"
)
SERVING_ROWS = (
    Row(30.0, "node1", 1, "failsafe", f"node1 {SERVED}", {FAILSAFE: SERVING, CONFIRMED: ["node2"]}),
    alert(30.0, "node1", 0, "failsafe", f"node1 cannot reach the coordination store; {SERVED}"),
    Row(30.1, "node2", 0, "failsafe", NO_PROMO, {FAILSAFE: NO_PROMOTION, ASKER: "node1"}),
    alert(30.1, "node2", 0, "failsafe", NO_PROMO),
)  # fmt: skip


def lost(t: float, why: str) -> Row:
    words = f"node1 lost the leader lease (epoch 1: {why})"
    data = {CAUSE: EventCause.LEASE_LOST, LOST_EPOCH: 1, "what": words}
    return Row(t, "node1", 0, "stop", f"{words}; killing its app at once", data)


def fenced(t: float, node: str, why: str) -> Row:
    reason = f"failsafe: fenced, {node} did not confirm it is not promoting ({node}: {why})"
    return Row(
        t, "node1", 1, "failsafe", f"node1 {reason}", {FAILSAFE: FENCED, MISSING: {node: why}}
    )


def test_store_down_everywhere_failsafe_kept_the_active_serving() -> None:
    recovered = Row(
        42.0, "node1", 1, "failsafe", "node1 renewed its lease of epoch 1 again",
        {FAILSAFE: RECOVERED, "seconds": 12.0, "rounds": 24},
    )  # fmt: skip
    lines = explain(history(*BOOT, *SERVING_ROWS, recovered), tz=UTC)
    assert lines[0] == (
        "no failover at 04:40:30: the coordination store was unreachable; failsafe mode kept "
        "node1 serving (epoch 1) on the confirmations of node2 for 12s, no node promoted, and "
        "node1 renewed its lease once the store answered"
    )
    assert any(NO_PROMO in line for line in lines)


def test_store_still_down_failsafe_keeps_serving() -> None:
    lines = explain(history(*BOOT, *SERVING_ROWS), tz=UTC)
    assert lines[0].startswith(
        "no failover at 04:40:30: the coordination store is unreachable; failsafe mode keeps "
        "node1 serving (epoch 1) on the confirmations of node2"
    )


def test_store_down_everywhere_a_node_did_not_confirm_so_the_active_fenced() -> None:
    why = "its agent could not be reached (ConnectError)"
    rows = (*BOOT, fenced(32.5, "node2", why), lost(32.5, "failsafe: fenced, ..."))
    lines = explain(history(*rows), tz=UTC)
    assert lines[0] == (
        "no failover at 04:40:32: the coordination store was unreachable from node1 (epoch 1) "
        "and node2 did not confirm it was not promoting, so node1 fenced itself (failsafe "
        "mode); no node promoted"
    )
    assert len([line for line in lines if "lost the leader lease" in line]) == 1
    assert len([line for line in lines if "failsafe: fenced, node2" in line]) == 1


def test_served_then_fenced_says_both() -> None:
    rows = (*BOOT, *SERVING_ROWS, fenced(36.0, "node2", "no answer"), lost(36.0, "failsafe"))
    lines = explain(history(*rows), tz=UTC)
    assert (
        "node1 fenced itself (failsafe mode); failsafe mode had kept it serving on the "
        "confirmations of node2 since 04:40:30; no node promoted" in lines[0]
    )


def test_store_unreachable_from_the_active_only_the_standby_promoted() -> None:
    refusal = (
        "the store answers node2 and shows node1's lease of epoch 1 expired: node1 is cut off "
        "from it alone and must fence"
    )
    rows = (
        *BOOT,
        *SERVING_ROWS[:2],
        Row(31.0, "node2", 0, "failsafe", f"node2 did not confirm to node1 (epoch 1): {refusal}",
            {FAILSAFE: REFUSED, ASKER: "node1", MISSING: {"node2": refusal}}),
        fenced(33.0, "node2", refusal),
        lost(33.0, f"failsafe: fenced, node2 did not confirm ({refusal})"),
        Row(40.0, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
        Row(41.0, "node2", 2, "running", "app on node2 RUNNING after 1.0s"),
    )  # fmt: skip
    lines = explain(history(*rows), tz=UTC)
    assert lines[0].startswith("node1 failed over to node2 at 04:40:40 (epoch 1 → 2)")
    assert "cut off from it alone" in lines[0]
