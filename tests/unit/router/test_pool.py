"""The router's pure decisions: which node gets a request, and small HTTP rules."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from hakit.config import (
    AppConfig,
    Balance,
    ClusterConfig,
    Config,
    Mode,
    NodeConfig,
    RouterConfig,
    StickyDown,
)
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from hakit.router.forwarding import upstream_request_headers
from hakit.router.headers import (
    Body,
    RequestHead,
    end_to_end,
)
from hakit.router.health import HealthBoard, Result, ResultKind, dead, drain, ok
from hakit.router.pages import prefers_json
from hakit.router.pool import (
    NO_RECORD,
    Verdict,
    choose_backend,
    down_mark_for,
    drain_expired,
    draining_nodes,
    eligibility,
    prune_down,
    record_draining,
    routable_nodes,
    route,
    standing,
    track_drains,
)
from hakit.router.responses import (
    response_framing,
)

T = 1000.0  # when the view was read


def config(mode: Mode, **router: Any) -> Config:
    return Config(
        cluster=ClusterConfig(mode=mode),
        router=RouterConfig(**router),
        app=AppConfig(start="true", home="/srv/home", database_url="sqlite:////srv/app.db"),
        nodes=(
            NodeConfig(name="n1", port=8101),
            NodeConfig(name="n2", port=8102),
            NodeConfig(name="n3", port=8103),
        ),
    )


def rec(
    node: str,
    role: str = "active",
    state: str = "RUNNING",
    epoch: int = 5,
    detail: dict[str, Any] | None = None,
) -> NodeRecord:
    return NodeRecord(
        node=node, role=role, app_state=state, epoch=epoch, updated_at=T - 1, detail=detail or {}
    )


@dataclass
class Case:
    mode: Mode
    lease: Lease | None
    records: list[NodeRecord]
    expected: str | None
    down: dict[str, float] = field(default_factory=dict)
    now: float = T
    turn: int = 0
    exclude: tuple[str, ...] = ()


VALID = Lease.as_read("n1", 5, T + 10, T)
COLD = Mode.COLD_STANDBY

CASES = {
    "holder running": Case(COLD, VALID, [rec("n1"), rec("n2", "standby", epoch=0)], "n1"),
    "holder first run": Case(COLD, VALID, [rec("n1", state="FIRST_RUN")], "n1"),
    "warm standby: holder": Case(Mode.WARM_STANDBY, VALID, [rec("n1"), rec("n2", "standby")], "n1"),
    "warm standby: running standby gets nothing": Case(
        Mode.WARM_STANDBY,
        Lease.as_read("n2", 6, T + 10, T),
        [rec("n1", "standby"), rec("n2", epoch=6)],
        "n2",
    ),
    "restart-only: holder": Case(Mode.RESTART_ONLY, VALID, [rec("n1")], "n1"),
    "no lease": Case(COLD, None, [rec("n1")], None),
    "lease expired when read": Case(COLD, Lease.as_read("n1", 5, T - 0.1, T), [rec("n1")], None),
    "lease expired since (stale view)": Case(
        COLD, Lease.as_read("n1", 5, T + 1, T), [rec("n1")], None, now=T + 2
    ),
    "holder starting": Case(COLD, VALID, [rec("n1", state="STARTING")], None),
    "holder in maintenance": Case(COLD, VALID, [rec("n1", state="MAINTENANCE")], None),
    "holder stopping": Case(COLD, VALID, [rec("n1", state="STOPPING")], None),
    "holder error": Case(COLD, VALID, [rec("n1", state="ERROR")], None),
    "holder down": Case(COLD, VALID, [rec("n1", state="DOWN")], None),
    "holder unknown state": Case(COLD, VALID, [rec("n1", state="BOGUS")], None),
    "holder's record says standby": Case(COLD, VALID, [rec("n1", role="standby")], None),
    "epoch mismatch": Case(COLD, VALID, [rec("n1", epoch=4)], None),
    "holder without record": Case(COLD, VALID, [rec("n2", "standby")], None),
    "holder not in config": Case(COLD, Lease.as_read("n9", 5, T + 10, T), [rec("n9")], None),
    "holder marked down": Case(COLD, VALID, [rec("n1")], None, down={"n1": T - 1}),
    "mark cleared by a newer record": Case(COLD, VALID, [rec("n1")], "n1", down={"n1": T - 5}),
    "holder already tried": Case(COLD, VALID, [rec("n1")], None, exclude=("n1",)),
    "active-active: first turn": Case(
        Mode.ACTIVE_ACTIVE, None, [rec("n1"), rec("n2"), rec("n3", state="STARTING")], "n1"
    ),
    "active-active: next turn": Case(
        Mode.ACTIVE_ACTIVE, None, [rec("n1"), rec("n2"), rec("n3", state="STARTING")], "n2", turn=1
    ),
    "active-active: wraps around": Case(
        Mode.ACTIVE_ACTIVE, None, [rec("n1"), rec("n2"), rec("n3", state="ERROR")], "n1", turn=2
    ),
    "active-active: down node skipped": Case(
        Mode.ACTIVE_ACTIVE, None, [rec("n1"), rec("n2")], "n2", down={"n1": T - 1}
    ),
    "active-active: tried node skipped": Case(
        Mode.ACTIVE_ACTIVE, None, [rec("n1"), rec("n2")], "n2", exclude=("n1",)
    ),
    "active-active: none routable": Case(
        Mode.ACTIVE_ACTIVE, VALID, [rec("n1", state="STARTING"), rec("n2", state="ERROR")], None
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_choose_backend(case: Case) -> None:
    view = ClusterView(case.lease, {r.node: r for r in case.records}, read_at=T)
    chosen = choose_backend(
        view, config(case.mode), case.down, case.now, turn=case.turn, exclude=case.exclude
    )
    assert (chosen.name if chosen else None) == case.expected


def test_active_active_round_robin_visits_every_routable_node() -> None:
    view = ClusterView(None, {n: rec(n) for n in ("n1", "n2", "n3")}, read_at=T)
    cfg = config(Mode.ACTIVE_ACTIVE)
    chosen = [choose_backend(view, cfg, {}, T, turn=turn) for turn in range(6)]
    assert [node.name for node in chosen if node] == ["n1", "n2", "n3", "n1", "n2", "n3"]


def test_down_marks_follow_the_record() -> None:
    view = ClusterView(VALID, {"n1": rec("n1")}, read_at=T)
    assert down_mark_for(view, "n1") == T - 1
    assert down_mark_for(view, "n2") == NO_RECORD
    marks = {"n1": T - 1, "n2": NO_RECORD, "n3": T - 7}
    # n1 unchanged, n2 still without record: kept; n3 has no matching record: dropped.
    assert prune_down(view, marks) == {"n1": T - 1, "n2": NO_RECORD}
    republished = ClusterView(VALID, {"n1": NodeRecord("n1", "active", "RUNNING", 5, T)}, T)
    assert prune_down(republished, marks) == {"n2": NO_RECORD}


# --- stickiness, drains, balancing, slow start (pool.route) ------------------------------------

AA, WARM = Mode.ACTIVE_ACTIVE, Mode.WARM_STANDBY
MOVE, HOLD, FAIL = StickyDown.MOVE, StickyDown.HOLD, StickyDown.FAIL
CLOCK = 5000.0  # the router's monotonic clock
ALL_UP = [rec("n1"), rec("n2"), rec("n3")]


@dataclass
class Sticky:
    mode: Mode
    records: list[NodeRecord]
    sticky: str | None
    expected: str | Verdict  # a node name, or the verdict
    policy: StickyDown = MOVE
    lease: Lease | None = VALID  # n1 holds it (ignored in active-active)
    down: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    drain_began: dict[str, float] = field(default_factory=dict)
    hold_over: bool = False
    turn: int = 0


STICKY = {
    # active-active: the sticky node wins over the balance
    "aa: sticky node serves": Sticky(AA, ALL_UP, "n3", "n3"),
    "aa: new user is balanced": Sticky(AA, ALL_UP, None, "n2", turn=1),
    **{
        f"aa: sticky node down ({how}), {policy}": Sticky(
            AA, records, "n2", expected, policy, down=down, exclude=exclude
        )
        for how, records, down, exclude in [
            ("marked down", ALL_UP, {"n2": T - 1}, ()),
            ("connect failed for this request", ALL_UP, {}, ("n2",)),
            ("error", [rec("n1"), rec("n2", state="ERROR"), rec("n3")], {}, ()),
            ("starting", [rec("n1"), rec("n2", state="STARTING"), rec("n3")], {}, ()),
            ("no record", [rec("n1"), rec("n3")], {}, ()),
        ]
        for policy, expected in [(MOVE, "n1"), (HOLD, Verdict.HOLD), (FAIL, Verdict.FAIL)]
    },
    "aa: hold over, moved": Sticky(
        AA, ALL_UP, "n2", "n1", HOLD, down={"n2": T - 1}, hold_over=True
    ),
    "aa: moved user is balanced too": Sticky(AA, ALL_UP, "n2", "n3", down={"n2": T - 1}, turn=1),
    # drains
    **{
        f"aa: draining ({how}) keeps its sticky user": Sticky(
            AA, [rec("n1"), record, rec("n3")], "n2", "n2", FAIL
        )
        for how, record in [
            ("stopping", rec("n2", state="STOPPING")),
            ("maintenance", rec("n2", state="MAINTENANCE")),
            ("agent flag", rec("n2", detail={"draining": True})),
        ]
    },
    "aa: draining node gets no new user": Sticky(
        AA, [rec("n1"), rec("n2", state="STOPPING")], None, "n1", turn=1
    ),
    "aa: drain within its deadline": Sticky(
        AA, [rec("n1"), rec("n2", state="STOPPING")], "n2", "n2", drain_began={"n2": CLOCK - 299}
    ),
    "aa: drain deadline passed, moved": Sticky(
        AA, [rec("n1"), rec("n2", state="STOPPING")], "n2", "n1", drain_began={"n2": CLOCK - 300}
    ),
    "aa: drain deadline passed, fail": Sticky(
        AA,
        [rec("n1"), rec("n2", state="STOPPING")],
        "n2",
        Verdict.FAIL,
        FAIL,
        drain_began={"n2": CLOCK - 300},
    ),
    "aa: draining node marked down": Sticky(
        AA, [rec("n1"), rec("n2", state="STOPPING")], "n2", "n1", down={"n2": T - 1}
    ),
    "aa: draining flag on a starting app is not serving": Sticky(
        AA, [rec("n1"), rec("n2", state="STARTING", detail={"draining": True})], "n2", "n1"
    ),
    "aa: nobody serves": Sticky(AA, [rec("n1", state="ERROR")], None, Verdict.NO_NODE),
    "aa: nobody serves, sticky to a draining node": Sticky(
        AA, [rec("n1", state="MAINTENANCE")], "n1", "n1"
    ),
    # standby modes: only the holder of the current epoch
    "cold: sticky to the holder": Sticky(COLD, [rec("n1"), rec("n2", "standby")], "n1", "n1"),
    **{
        f"{mode}: user of a standby is moved to the holder ({policy})": Sticky(
            mode, [rec("n1"), rec("n2", "standby")], "n2", "n1", policy
        )
        for mode in (COLD, WARM)
        for policy in (MOVE, HOLD, FAIL)
    },
    **{
        f"cold: holder restarting, its user ({policy})": Sticky(
            COLD, [rec("n1", state="STARTING"), rec("n2", "standby")], "n1", expected, policy
        )
        for policy, expected in [
            (MOVE, Verdict.NO_NODE),
            (HOLD, Verdict.HOLD),
            (FAIL, Verdict.FAIL),
        ]
    },
    "cold: holder draining keeps its sticky users": Sticky(
        COLD, [rec("n1", state="STOPPING")], "n1", "n1"
    ),
    "cold: holder handing over (switchover) gets no sticky user either": Sticky(
        COLD, [rec("n1", detail={"draining": True})], "n1", Verdict.NO_NODE
    ),
    "warm: holder handing over gets no sticky user, the standby none either": Sticky(
        WARM, [rec("n1", detail={"draining": True}), rec("n2", "standby")], "n1", Verdict.NO_NODE
    ),
    "cold: holder draining takes no new users": Sticky(
        COLD, [rec("n1", state="STOPPING")], None, Verdict.NO_NODE
    ),
    "cold: a node claiming active without the epoch gets nothing, sticky or not": Sticky(
        COLD, [rec("n1", epoch=4)], "n1", Verdict.NO_NODE, FAIL
    ),
    "cold: sticky to a node claiming active under an old epoch": Sticky(
        COLD, [rec("n1"), rec("n2", epoch=4)], "n2", "n1", FAIL
    ),
    "cold: no lease, sticky user": Sticky(
        COLD, [rec("n1")], "n1", Verdict.NO_NODE, FAIL, lease=None
    ),
    "restart-only: sticky to the only node": Sticky(Mode.RESTART_ONLY, [rec("n1")], "n1", "n1"),
}


@pytest.mark.parametrize("case", STICKY.values(), ids=STICKY.keys())
def test_route_with_stickiness(case: Sticky) -> None:
    view = ClusterView(case.lease, {r.node: r for r in case.records}, read_at=T)
    chosen = route(
        view,
        config(case.mode, sticky_down=case.policy, drain_timeout=300),
        case.down,
        T,
        clock=CLOCK,
        sticky=case.sticky,
        exclude=case.exclude,
        turn=case.turn,
        drain_began=case.drain_began,
        hold_over=case.hold_over,
        in_flight={},
    )
    assert (chosen if isinstance(chosen, Verdict) else chosen.name) == case.expected


def test_route_without_a_sticky_node_matches_choose_backend() -> None:
    view = ClusterView(None, {r.node: r for r in ALL_UP}, read_at=T)
    cfg = config(AA, balance=Balance.ROUND_ROBIN)
    for turn in range(6):
        chosen = route(view, cfg, {}, T, turn=turn)
        assert chosen == choose_backend(view, cfg, {}, T, turn=turn)


def test_route_balances_new_users_by_least_outstanding() -> None:
    view = ClusterView(None, {r.node: r for r in ALL_UP}, read_at=T)
    cfg = config(AA)  # least-outstanding is the default
    busy = {"n1": 4, "n2": 1, "n3": 2}
    assert [route(view, cfg, {}, T, in_flight=busy, turn=t).name for t in range(3)] == ["n2"] * 3  # type: ignore[union-attr]
    # A sticky user stays on its busy node.
    assert route(view, cfg, {}, T, in_flight=busy, sticky="n1").name == "n1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("board_result", "sticky", "expected"),
    [
        (ok(), "n2", "n2"),
        (drain("STOPPING"), "n2", "n2"),  # the board says drain: sticky users stay
        (drain("STOPPING"), None, "n1"),  # ... new users avoid it
        (dead("refused"), "n2", "n1"),  # the board says down though the record says RUNNING
    ],
)
def test_route_consults_the_health_board(
    board_result: Any, sticky: str | None, expected: str
) -> None:
    view = ClusterView(None, {"n1": rec("n1"), "n2": rec("n2")}, read_at=T)
    board = HealthBoard(fall=1, rise=1, names=["n1", "n2"])
    board.feed("n1", ok(), 1.0)
    board.feed("n2", board_result, 1.0)
    chosen = route(view, config(AA), {}, T, sticky=sticky, health=board, turn=1)
    assert not isinstance(chosen, Verdict) and chosen.name == expected


def test_board_drain_of_one_node_leaves_the_others_serving() -> None:
    view = ClusterView(None, {r.node: r for r in ALL_UP}, read_at=T)
    board = HealthBoard(fall=1, rise=1, names=["n1", "n2", "n3"])
    board.feed("n1", drain("MAINTENANCE"), 1.0)
    board.feed("n3", dead("refused"), 1.0)
    found = eligibility(view, config(AA), {}, T, health=board)
    assert [n.name for n in found.serving] == ["n2"]
    assert [n.name for n in found.draining] == ["n1"]
    unfiltered = HealthBoard(fall=1, rise=1)
    known = standing(view, config(AA))
    assert eligibility(view, config(AA), {}, T, health=unfiltered, known=known) is known.base


def test_draining_nodes_from_records_and_board() -> None:
    view = ClusterView(
        None,
        {
            "n1": rec("n1"),
            "n2": rec("n2", state="MAINTENANCE"),
            "n3": rec("n3", detail={"draining": True}),
        },
        read_at=T,
    )
    assert draining_nodes(view) == ["n2", "n3"]
    assert routable_nodes(view) == ["n1"]
    board = HealthBoard(fall=1, rise=1)
    board.feed("n1", drain("STOPPING"), 1.0)
    assert sorted(draining_nodes(view, board)) == ["n1", "n2", "n3"]
    assert record_draining(None) is False
    assert record_draining(rec("n1", state="ERROR", detail={"draining": True})) is False


def test_drain_began_is_tracked_from_observations() -> None:
    began = track_drains({}, ["n2"], now=10.0)
    assert began == {"n2": 10.0}
    began = track_drains(began, ["n2", "n3"], now=20.0)
    assert began == {"n2": 10.0, "n3": 20.0}  # an ongoing drain keeps its start
    began = track_drains(began, ["n3"], now=30.0)
    assert began == {"n3": 20.0}  # n2 stopped draining: forgotten
    began = track_drains(began, ["n2", "n3"], now=40.0)
    assert began == {"n2": 40.0, "n3": 20.0}  # a new drain, a new deadline
    assert not drain_expired("n2", began, 300, now=339.9 + 0)
    assert drain_expired("n3", began, 300, now=320.0)
    assert not drain_expired("n1", began, 0, now=1e9)  # not draining


def test_slow_start_through_route() -> None:
    """n2 came back 15 s into a 60 s slow start: a quarter of its fair share of new users."""
    view = ClusterView(None, {"n1": rec("n1"), "n2": rec("n2")}, read_at=T)
    cfg = config(AA, slowstart=60)
    up_since: dict[str, float | None] = {"n1": None, "n2": CLOCK - 15}
    counts: Counter[str] = Counter()
    for turn in range(4000):
        chosen = route(view, cfg, {}, T, clock=CLOCK, up_since=up_since, turn=turn)
        assert not isinstance(chosen, Verdict)
        counts[chosen.name] += 1
    assert counts["n2"] / 4000 == pytest.approx(0.25 / 2, abs=0.01)
    # Sticky users of the ramping node are not throttled.
    assert route(view, cfg, {}, T, clock=CLOCK, up_since=up_since, sticky="n2").name == "n2"  # type: ignore[union-attr]
    # The health board's comeback counts too (the later of both).
    board = HealthBoard(fall=1, rise=1)
    board.feed("n1", dead("refused"), CLOCK - 30)
    board.feed("n1", ok(), CLOCK - 3)  # n1 came back 3 s ago: weight 0.05
    counts.clear()
    for turn in range(4000):
        chosen = route(view, cfg, {}, T, clock=CLOCK, up_since={}, health=board, turn=turn)
        assert not isinstance(chosen, Verdict)
        counts[chosen.name] += 1
    assert counts["n1"] / 4000 == pytest.approx(0.05 / 2, abs=0.01)


# --- other pure rules of the router ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        (None, False),
        ("*/*", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("application/json", True),
        ("application/json, text/plain, */*", True),
        ("text/html;q=0.5, application/json", True),
        ("application/json;q=0.2, text/html", False),
        ("application/*", True),
        ("application/json;q=0", False),
    ],
)
def test_prefers_json(accept: str | None, json: bool) -> None:
    assert prefers_json(accept) is json


def request(version: str = "1.1", keep_alive: bool = True, headers=()) -> RequestHead:  # type: ignore[no-untyped-def]
    return RequestHead(
        method=b"GET",
        target=b"/",
        version=version,
        headers=tuple(headers),
        keep_alive=keep_alive,
        body=Body.NONE,
        content_length=0,
        transfer_encoding=b"",
        client_ip="192.0.2.7",
    )


@pytest.mark.parametrize(
    ("upstream", "version", "keep", "out", "out_keep"),
    [
        (Body.LENGTH, "1.1", True, Body.LENGTH, True),
        (Body.CHUNKED, "1.1", True, Body.CHUNKED, True),
        (
            Body.UNTIL_CLOSE,
            "1.1",
            True,
            Body.CHUNKED,
            True,
        ),  # re-chunked: the client keeps its connection
        (Body.CHUNKED, "1.0", True, Body.UNTIL_CLOSE, False),  # 1.0 cannot read chunked
        (Body.UNTIL_CLOSE, "1.0", True, Body.UNTIL_CLOSE, False),
        (Body.NONE, "1.1", False, Body.NONE, False),
    ],
)
def test_response_framing(
    upstream: Body, version: str, keep: bool, out: Body, out_keep: bool
) -> None:
    framing = response_framing(upstream, request(version, keep))
    assert (framing.body, framing.keep_alive) == (out, out_keep)


def test_connection_cannot_strip_end_to_end_headers() -> None:
    headers = [
        (b"Host", b"app"),
        (b"Connection", b"Host, Cookie, Authorization, Content-Length, X-Drop"),
        (b"Cookie", b"a=b"),
        (b"Authorization", b"Basic eA=="),
        (b"X-Drop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    assert end_to_end(headers) == [
        (b"Host", b"app"),
        (b"Cookie", b"a=b"),
        (b"Authorization", b"Basic eA=="),
    ]


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "proto"),
    [
        (True, b"10.0.0.1, 192.0.2.7", b"https"),  # a trusted proxy's headers are extended
        (False, b"192.0.2.7", b"http"),  # anyone else's are replaced
    ],
)
def test_forwarded_headers_describe_the_client(
    trusted: bool, forwarded_for: bytes, proto: bytes
) -> None:
    head = request(
        headers=[
            (b"Host", b"app:8443"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-Proto", b"https"),
        ]
    )
    head.client_trusted = trusted
    out = upstream_request_headers(head, b"127.0.0.1:8101")
    assert [value for key, value in out if key == b"X-Forwarded-For"] == [forwarded_for]
    assert [value for key, value in out if key == b"X-Forwarded-Proto"] == [proto]
    assert (b"X-Forwarded-Host", b"app:8443") in out
    assert [value for key, value in out if key == b"Host"] == [b"app:8443"]


# --- the holder of an expired lease (its agent stalled): the epoch is the fencing token ------

EXPIRED = Lease.as_read("n1", 5, T - 0.5, T)


def answering_board(*results: Any) -> HealthBoard:
    board = HealthBoard(fall=3, rise=1, names=["n1", "n2", "n3"])
    for result in results or (ok(),):
        board.feed("n1", result, 1.0)
    return board


@pytest.mark.parametrize(
    ("lease", "records", "board", "now", "expected"),
    [
        pytest.param(EXPIRED, [rec("n1")], answering_board(), T, "n1", id="answering: serves"),
        pytest.param(
            EXPIRED, [rec("n1")], answering_board(ok(), dead("x")), T, None, id="board down"
        ),
        pytest.param(
            EXPIRED,
            [rec("n1")],
            answering_board(ok(), Result(ResultKind.FAIL, "timeout")),
            T,
            None,
            id="last check failed (still UP)",
        ),
        pytest.param(
            EXPIRED,
            [rec("n1")],
            HealthBoard(fall=3, rise=1, names=["n1"]),
            T,
            None,
            id="no verdict yet",
        ),
        pytest.param(EXPIRED, [rec("n1")], None, T, None, id="no health board"),
        pytest.param(EXPIRED, [rec("n1")], answering_board(), T + 5, None, id="stale view"),
        pytest.param(None, [rec("n1")], answering_board(), T, None, id="released"),
        pytest.param(
            Lease.as_read("n2", 6, T + 10, T),
            [rec("n1"), rec("n2", state="STARTING", epoch=6)],
            answering_board(),
            T,
            None,
            id="a newer epoch: the old holder gets nothing at once",
        ),
        pytest.param(
            Lease.as_read("n2", 6, T + 10, T),
            [rec("n1"), rec("n2", epoch=6)],
            answering_board(),
            T,
            "n2",
            id="a newer epoch: its holder serves",
        ),
    ],
)
def test_holder_of_an_expired_lease_serves_while_the_router_sees_it_answer(
    lease: Lease | None,
    records: list[NodeRecord],
    board: HealthBoard | None,
    now: float,
    expected: str | None,
) -> None:
    view = ClusterView(lease, {r.node: r for r in records}, read_at=T)
    chosen = route(view, config(COLD), {}, now, health=board)
    assert (None if isinstance(chosen, Verdict) else chosen.name) == expected
