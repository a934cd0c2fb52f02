"""The data-path decisions (hakit.health.datapath), table-driven on a fake wall clock.

Timeline used throughout: the holder renewed its lease (ttl 3 s, renewal every
0.5 s) at t=100, so it expires at t=103; an answer at or after t=100.75 (one and a
half renewals after the renewal) proves the node outlived its last renewal.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hakit.coord.base import Lease, NodeRecord
from hakit.health.datapath import (
    FORGET_AFTER,
    REFUSED,
    SILENT,
    PathReport,
    Sight,
    forgotten_reports,
    handover_candidates,
    in_flight,
    judge_holder,
    path_lost,
    reports_in,
)

TTL, RENEW, PATIENCE = 3.0, 0.5, 10.0


def lease_at(now: float) -> Lease:
    """The lease of the timeline as the store answers it at ``now``."""
    return Lease.as_read("node1", 7, 103.0, now)


def answering(at: float) -> Sight:
    return Sight(answered_at=at, checked_at=at + 0.01)


def failing(kind: str, since: float, count: int, answered: float | None = 99.0) -> Sight:
    return Sight(answered, since + count, kind, since, count, f"{kind} check")


def report(at: float, router: str = "r1", **nodes: Sight) -> PathReport:
    return PathReport(router, at, 0.5, 1.5, nodes)


@dataclass(frozen=True)
class Case:
    name: str
    now: float
    reports: tuple[PathReport, ...]
    take_over: bool
    says: str  # a fragment of the reason ("" = nothing recorded)


CASES = [
    Case("no router at all: the lease alone decides", 103.1, (), True, "no fresh router"),
    Case(
        "a stale report (router down) is ignored",
        110.0,
        (report(103.0, node1=answering(102.9)),),
        True,
        "no fresh router",
    ),
    Case(
        "a router got an answer after the renewal: an agent stall",
        103.2,
        (report(103.1, node1=answering(102.6)),),
        False,
        "router r1 got an answer from it after its last renewal (0.5 s before its last report): "
        "an agent stall, not a death",
    ),
    Case(
        "one router of two still gets answers: a stall",
        103.2,
        (
            report(103.1, "r1", node1=failing(SILENT, 101.0, 2)),
            report(103.0, "r2", node1=answering(102.5)),
        ),
        False,
        "router r2 got an answer",
    ),
    Case(
        "stalled beyond patience: the lease alone decides",
        113.5,
        (report(113.4, node1=answering(113.0)),),
        True,
        "longer than the detection patience",
    ),
    Case(
        "node loss (killed): refused since, take over at once",
        103.1,
        (report(102.9, node1=failing(REFUSED, 100.6, 2, answered=100.3)),),
        True,
        "no router (r1) got an answer from it since",
    ),
    Case(
        "node frozen: silent, and a report after the expiry",
        103.3,
        (report(103.2, node1=Sight(answered_at=100.4, checked_at=100.45)),),
        True,
        "the node is dead or cut off",
    ),
    Case(
        "a report from before the expiry without news: wait for the next one",
        103.1,
        (report(102.8, node1=Sight(answered_at=100.4, checked_at=100.45)),),
        False,
        "",
    ),
    Case(
        "a valid lease: nothing to judge", 102.0, (report(101.9, node1=answering(101.8)),), True, ""
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_judge_holder(case: Case) -> None:
    lease = lease_at(case.now)
    verdict = judge_holder(lease, case.reports, case.now, ttl=TTL, renew=RENEW, patience=PATIENCE)
    assert verdict.take_over is case.take_over
    if case.says:
        assert case.says in verdict.reason
        assert "node1" in verdict.reason
    elif not case.take_over:
        assert verdict.reason == ""


def test_judge_holder_of_a_released_lease() -> None:
    assert judge_holder(None, [], 1.0, ttl=TTL, renew=RENEW, patience=PATIENCE).take_over


# --- path loss -------------------------------------------------------------------------------

FALL = 3


def lost(now: float, *reports: PathReport, candidates: tuple[str, ...] = ("node2",)) -> str | None:
    loss = path_lost("node1", reports, list(candidates), now, fall=FALL, patience=PATIENCE)
    return loss.target if loss is not None else None


def test_path_loss_needs_fall_checks_over_the_patience() -> None:
    node2 = Sight(answered_at=None, checked_at=111.9, failure=REFUSED, failing_since=90.0)
    # Silent for 12 s, 4 checks: past the patience (10 s) and fall (3).
    cut = report(112.0, node1=failing(SILENT, 100.0, 4), node2=node2)
    assert lost(112.1, cut) == "node2"
    loss = path_lost("node1", [cut], ["node2"], 112.1, fall=FALL, patience=PATIENCE)
    assert loss is not None and "router r1 has not reached node1 since" in loss.reason
    assert "handing over to node2" in loss.reason and loss.routers == ("r1",)
    # Not yet past the patience, or not enough checks.
    assert lost(105.0, report(104.9, node1=failing(SILENT, 100.0, 4), node2=node2)) is None
    assert lost(112.1, report(112.0, node1=failing(SILENT, 100.0, 2), node2=node2)) is None
    # Refused is certain: fall checks are enough.
    assert lost(103.1, report(103.0, node1=failing(REFUSED, 100.0, 3), node2=node2)) == "node2"


def test_no_path_loss_while_any_router_reaches_the_node() -> None:
    node2 = answering(111.8)
    assert (
        lost(
            112.1,
            report(112.0, "r1", node1=failing(SILENT, 100.0, 5), node2=node2),
            report(112.0, "r2", node1=answering(111.5), node2=node2),
        )
        is None
    )
    # ... but a stale report (its router is down) does not count.
    assert (
        lost(
            112.1,
            report(112.0, "r1", node1=failing(SILENT, 100.0, 5), node2=node2),
            report(100.0, "r2", node1=answering(99.5), node2=node2),
        )
        == "node2"
    )


def test_no_path_loss_when_the_routers_reach_no_standby_or_say_nothing() -> None:
    node1 = failing(SILENT, 100.0, 5)
    assert lost(112.1, report(112.0, node1=node1, node2=failing(SILENT, 100.0, 5))) is None
    assert lost(112.1) is None  # no report at all
    assert lost(130.0, report(112.0, node1=node1, node2=answering(111.0))) is None  # stale
    # A standby whose last check is too old to speak for now is not reachable.
    assert lost(112.1, report(112.0, node1=node1, node2=answering(100.0))) is None
    # No candidate (the standby's agent is down, or nofailover).
    assert lost(112.1, report(112.0, node1=node1, node2=answering(111.9)), candidates=()) is None


def test_the_first_reachable_candidate_is_chosen() -> None:
    sights = {
        "node1": failing(SILENT, 100.0, 5),
        "node2": failing(SILENT, 100.0, 5),
        "node3": answering(111.9),
    }
    assert lost(112.1, report(112.0, **sights), candidates=("node2", "node3")) == "node3"


def record(node: str, role: str, updated: float, policy: str = "STANDBY") -> NodeRecord:
    """A record as the store answers it at t=100 (its age by the store's clock)."""
    return NodeRecord(node, role, "STOPPED", 0, updated, {"policy": policy}, 100.0 - updated)


def test_handover_candidates() -> None:
    records = {
        "node1": record("node1", "active", 100.0, "RUNNING"),
        "node2": record("node2", "standby", 99.9),
        "node3": record("node3", "standby", 90.0),  # its agent is silent
        "node4": record("node4", "standby", 99.9, "MANUAL"),
        "node5": record("node5", "standby", 99.9),  # nofailover
        "node6": record("node6", "standby", 99.9),
    }
    nodes = [(f"node{i}", i == 5) for i in range(1, 8)]
    assert handover_candidates("node1", nodes, records, 100.0, alive_within=3.0) == [
        "node2",
        "node6",
    ]


def test_reports_of_routers_silent_for_an_hour_are_forgotten() -> None:
    now = 10_000.0
    gone = report(now - FORGET_AFTER - 1, "r-crashed", node1=answering(now - FORGET_AFTER - 2))
    stale = report(now - 60.0, "r-stale")  # stale (says nothing) but not yet forgotten
    live = report(now - 0.2, "r-live", node1=answering(now - 0.3))
    state = {
        "router/r-crashed": gone.as_json(),
        "router/r-stale": stale.as_json(),
        "router/r-live": live.as_json(),
        "router/r-malformed": {"router": "r-malformed"},  # cannot be dated: left alone
        "handover": {"at": 0.0},  # not a report, however old it looks
    }
    assert forgotten_reports(state, now) == [("router/r-crashed", gone.as_json(), gone)]
    assert [key for key, _, _ in forgotten_reports(state, now, after=30.0)] == [
        "router/r-crashed",
        "router/r-stale",
    ]
    assert forgotten_reports(state, now - 2.0) == []  # just under the hour: kept


# --- a drain: requests still in flight (in_flight) ------------------------------------------


def load(count: int, draining: bool = True) -> Sight:
    return Sight(answered_at=99.0, checked_at=99.1, in_flight=count, draining=draining)


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        # No router running: nothing to wait for.
        ((), (0, [])),
        # Every router saw the drain and has nothing in flight: the drain is over.
        ((report(99.9, "r1", node1=load(0)), report(99.5, "r2", node1=load(0))), (0, [])),
        # Requests in flight: the routers that have them are named, the counts added.
        (
            (
                report(99.9, "r1", node1=load(2)),
                report(99.5, "r2", node1=load(0)),
                report(99.8, "r3", node1=load(1)),
            ),
            (3, ["r1", "r3"]),
        ),
        # A router that does not see the drain yet may still send new users: busy at 0.
        ((report(99.9, "r1", node1=load(0, draining=False)),), (0, ["r1"])),
        # Stale reports (a router down or cut off from the store) say nothing.
        ((report(98.4, "r1", node1=load(5)), report(99.9, "r2", node1=load(0))), (0, [])),
        ((report(98.5, "r1", node1=load(5)),), (5, ["r1"])),  # just fresh
        # A router that does not know the node sends it nothing.
        ((report(99.9, "r1", node2=load(4)),), (0, [])),
    ],
)
def test_in_flight(reports: tuple[PathReport, ...], expected: tuple[int, list[str]]) -> None:
    assert in_flight("node1", reports, 100.0) == expected


def test_in_flight_reads_what_a_router_published() -> None:
    published = report(99.9, "r1", node1=load(2), node2=load(0, draining=False))
    state = {"router/r1": published.as_json()}
    assert state["router/r1"]["nodes"]["node1"] == {
        **Sight(99.0, 99.1).as_json(),
        "in_flight": 2,
        "draining": True,
    }
    assert in_flight("node1", reports_in(state), 100.0) == (2, ["r1"])
    # A report from a router that publishes no counts (an older version): not draining,
    # so the drain waits for it (bounded by drain_timeout) rather than trusting a 0.
    old = published.as_json()
    for sight in old["nodes"].values():
        del sight["in_flight"], sight["draining"]
    assert in_flight("node1", reports_in({"router/r1": old}), 100.0) == (0, ["r1"])
