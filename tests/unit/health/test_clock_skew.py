"""Hosts need not share a clock: a router whose clock is minutes off, and a reader (a
standby's or the active's agent) whose clock is minutes off, reach the same decisions
on the routers' reports (hakit.health.datapath) as when every clock agrees.

Every report here is one a current router writes: published with a store TTL
(``expiring``) and stamped with its view of the lease (``LeaseSeen``). Its wall times
(``at``, ``answered_at``, ``checked_at``, ``failing_since``) are on the router's clock,
``now`` on the reader's; the lease is as the store answered it (``remaining``, its own
clock's judgement). Each decision is taken under every combination of skews and must
come out identical, reasons included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from hakit.coord.base import Lease, NodeRecord
from hakit.coord.keys import router_report
from hakit.coord.sqlite import SqliteCoordinator
from hakit.fencing.fence import FenceNeed, answered_after_end, pending_in, stood_down
from hakit.health.datapath import (
    REFUSED,
    SILENT,
    HolderVerdict,
    LeaseSeen,
    PathReport,
    Sight,
    fresh_reports,
    in_flight,
    judge_holder,
    path_lost,
    report_ttl,
    reports_in,
)

TTL, RENEW, PATIENCE, FALL = 3.0, 0.5, 10.0, 2
EVERY, CHECK_EVERY = 0.5, 1.5
BASE = 1_000_000.0  # the true time of the decision
SKEWS = (-300.0, 0.0, 300.0)  # minutes off either way
T = TypeVar("T")
PAIRS = list(itertools.product(SKEWS, SKEWS))  # (router's clock, reader's clock)

# The holder node1's lease of epoch 7: last renewed (revision 5) 3.2 s ago, expired 0.2 s
# ago as the store judges it. Its expires_at is the store's clock, far off both others.
EXPIRED = Lease("node1", 7, BASE + 5_000.0, -0.2, 5)


def seen(left: float, shown: float, revision: int = 5, epoch: int = 7) -> LeaseSeen:
    return LeaseSeen(epoch, revision, left, shown)


def stamped(router_skew: float, ago: float, router: str = "r1", **nodes: Sight) -> PathReport:
    """A report written ``ago`` seconds before the decision, on the router's clock; its
    view of the lease then: expired (revision 5)."""
    at = BASE + router_skew - ago
    return PathReport(router, at, EVERY, CHECK_EVERY, nodes, seen(-0.1, 3.0), expiring=True)


def answered(router_skew: float, ago: float, lease: LeaseSeen) -> Sight:
    at = BASE + router_skew - ago
    return Sight(at, at + 0.01, answered_lease=lease)


def silent(router_skew: float, since_ago: float, count: int, lease: LeaseSeen) -> Sight:
    since = BASE + router_skew - since_ago
    return Sight(
        since - 1.0, BASE + router_skew - 0.1, SILENT, since, count, "timeout", 0, False, lease
    )


def same_under_every_skew(decide: Callable[[float, float], T]) -> T:
    """``decide(router_skew, reader_skew)`` for every pair: all equal; returns the one."""
    results = {pair: decide(*pair) for pair in PAIRS}
    assert len(set(map(repr, results.values()))) == 1, results
    return results[(0.0, 0.0)]


# --- judge_holder --------------------------------------------------------------------------


def judge(reports: Callable[[float], list[PathReport]], lease: Lease = EXPIRED) -> HolderVerdict:
    def decide(router_skew: float, reader_skew: float) -> HolderVerdict:
        return judge_holder(
            lease,
            reports(router_skew),
            BASE + reader_skew,
            ttl=TTL,
            renew=RENEW,
            patience=PATIENCE,
        )

    return same_under_every_skew(decide)


def test_an_answer_long_after_the_renewal_is_a_stall_whatever_the_clocks() -> None:
    verdict = judge(lambda r: [stamped(r, 0.1, node1=answered(r, 0.3, seen(0.2, 2.5)))])
    assert not verdict.take_over and verdict.witness == "r1"


def test_an_answer_while_the_view_showed_the_lease_expired_is_a_stall() -> None:
    verdict = judge(lambda r: [stamped(r, 0.1, node1=answered(r, 0.15, seen(-0.05, 3.05)))])
    assert not verdict.take_over


def test_an_answer_just_after_the_renewal_proves_nothing_then_the_silence_decides() -> None:
    # Answered 0.3 s after the router saw the renewal (within 1.5 renewals): the node may
    # have died right after; since then its checks time out.
    verdict = judge(lambda r: [stamped(r, 0.1, node1=silent(r, 2.5, 5, seen(2.7, 0.3)))])
    assert verdict.take_over and "dead or cut off" in verdict.reason


def test_an_answer_under_an_older_revision_or_epoch_proves_nothing() -> None:
    for old in (seen(-1.0, 9.0, revision=4), seen(-1.0, 9.0, epoch=6)):
        verdict = judge(lambda r, old=old: [stamped(r, 0.1, node1=silent(r, 2.0, 4, old))])
        assert verdict.take_over


def test_a_report_from_before_the_router_saw_the_expiry_waits() -> None:
    def reports(r: float) -> list[PathReport]:
        report = stamped(r, 0.1, node1=answered(r, 0.4, seen(2.9, 0.1)))
        # Its view still showed the lease valid (0.3 s left) when it wrote the report.
        return [PathReport("r1", report.at, EVERY, CHECK_EVERY, report.nodes, seen(0.3, 2.7), True)]

    verdict = judge(reports)
    assert not verdict.take_over and verdict.reason == ""
    # ... but never past the patience.
    late = Lease("node1", 7, BASE + 5_000.0, -PATIENCE - 0.1, 5)
    assert judge(reports, late).take_over


def test_past_the_patience_the_lease_alone_decides_whatever_the_clocks() -> None:
    late = Lease("node1", 7, BASE + 5_000.0, -PATIENCE, 5)
    verdict = judge(lambda r: [stamped(r, 0.1, node1=answered(r, 0.3, seen(-5.0, 8.0)))], late)
    assert verdict.take_over and "detection patience" in verdict.reason


def test_no_report_the_store_still_holds_means_the_lease_alone_decides() -> None:
    verdict = judge(lambda r: [])
    assert verdict.take_over and "no fresh router report" in verdict.reason


# --- fresh reports: the store's TTL, not the reader's clock -----------------------------------


def test_a_report_is_fresh_while_the_store_keeps_it(tmp_path: Path) -> None:
    store_time = [50_000.0]  # the store's clock: far from the router's and the readers'
    store = SqliteCoordinator(tmp_path / "c.db", clock=lambda: store_time[0])
    try:
        for router_skew in SKEWS:
            report = stamped(router_skew, 0.0, node1=answered(router_skew, 0.2, seen(1.0, 1.0)))
            store.set_state(router_report("r1"), report.as_json(), ttl=report_ttl(EVERY))
            store_time[0] += report_ttl(EVERY) - 0.1
            for reader_skew in SKEWS:
                found = fresh_reports(reports_in(store.cluster_state()), BASE + reader_skew)
                assert found == [report]
            store_time[0] += 0.2  # the router stopped publishing: the store forgets it
            assert reports_in(store.cluster_state()) == []
    finally:
        store.close()


def test_a_report_without_ttl_from_an_older_router_is_judged_the_old_way() -> None:
    old = PathReport("r-old", BASE - 2.0, EVERY, CHECK_EVERY, {})
    assert not old.expiring and fresh_reports([old], BASE) == []
    assert fresh_reports([old], BASE - 1.0) == [old]


# --- in_flight -----------------------------------------------------------------------------


def test_a_drain_waits_for_the_same_routers_whatever_the_clocks() -> None:
    def decide(router_skew: float, reader_skew: float) -> tuple[int, list[str]]:
        def load(count: int, draining: bool = True) -> Sight:
            return Sight(
                BASE + router_skew - 1, BASE + router_skew - 1, in_flight=count, draining=draining
            )

        reports = [
            stamped(router_skew, 0.1, "r1", node1=load(2)),
            stamped(router_skew + 7.0, 1.0, "r2", node1=load(0)),  # another router, another clock
            stamped(router_skew, 0.2, "r3", node1=load(0, draining=False)),
        ]
        return in_flight("node1", reports, BASE + reader_skew)

    assert same_under_every_skew(decide) == (2, ["r1", "r3"])


# --- path_lost -----------------------------------------------------------------------------


def lost(answering_for: float) -> str | None:
    def decide(router_skew: float, reader_skew: float) -> str | None:
        refused_since = BASE + router_skew - 20.0
        node1 = Sight(
            refused_since - 1.0, BASE + router_skew - 0.2, REFUSED, refused_since, 8, "refused"
        )
        standby = Sight(None, BASE + router_skew - 0.3, REFUSED, BASE + router_skew - 90, 60)
        reports = [stamped(router_skew, 0.1, node1=node1, node2=standby)]
        loss = path_lost(
            "node1",
            reports,
            ["node2"],
            BASE + reader_skew,
            fall=FALL,
            patience=PATIENCE,
            answering_since=BASE + reader_skew - answering_for,
        )
        return loss.target if loss is not None else None

    return same_under_every_skew(decide)


def test_a_lost_path_is_found_whatever_the_clocks() -> None:
    assert lost(answering_for=60.0) == "node2"  # the app answers here since long before


def test_failures_from_before_the_app_answered_here_wait_whatever_the_clocks() -> None:
    # The app answers here for 5 s only (the refusals began while it started): the
    # routers must keep failing for the patience after that first.
    assert lost(answering_for=5.0) is None
    # Answering for 12 s: the last refusal (0.3 s before the report) surely came after
    # it, and the patience has passed since.
    assert lost(answering_for=12.0) == "node2"


# --- fencing ----------------------------------------------------------------------------------


def test_fencing_judges_with_stamps_and_the_stores_ages() -> None:
    need = FenceNeed("node1", 7, BASE - 3.0, "its lease expired", "agent-a")  # this host's clock
    heard_late = Sight(BASE + 300.0, BASE + 300.0, answered_lease=seen(-0.5, 3.5))
    heard_before = Sight(BASE + 300.0, BASE + 300.0, answered_lease=seen(0.5, 2.5))
    report = stamped(300.0, 0.0, node1=heard_late)  # the router's clock 5 minutes ahead
    assert answered_after_end(report, heard_late, need)
    assert not answered_after_end(report, heard_before, need)
    assert answered_after_end(report, Sight(BASE, BASE, answered_lease=seen(1.0, 0.0, 1, 8)), need)
    # The old holder's agent published 1 s ago by the store's clock; its own clock says an
    # hour earlier: it ran after the lease ended all the same.
    woke = NodeRecord("node1", "standby", "STOPPED", 0, BASE - 3600.0, {"agent_id": "agent-a"}, 1.0)
    assert stood_down(woke, need, BASE)
    assert not stood_down(
        NodeRecord("node1", "standby", "STOPPED", 0, BASE + 3600.0, {"agent_id": "agent-a"}, 5.0),
        need,
        BASE,
    )
    # Another node (its clock 10 minutes behind) could not fence node1: its lease ended 20 s
    # before that node stored its record, 1 s before this host read it.
    pending = {"node1": {"epoch": 7, "since": BASE - 620.0, "why": "expired", "ended_ago": 20.0}}
    other = NodeRecord(
        "node3", "standby", "STOPPED", 0, BASE - 600.0, {"fence_pending": pending}, 1.0
    )
    (need3,) = pending_in(other, BASE)
    assert need3.since == pytest.approx(BASE - 21.0)
