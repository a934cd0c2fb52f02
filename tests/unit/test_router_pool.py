"""The router's pure decisions: which node gets a request, and small HTTP rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hakit.config import AppConfig, ClusterConfig, Config, Mode, NodeConfig
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from hakit.router.headers import (
    Body,
    RequestHead,
    end_to_end,
    response_framing,
    upstream_request_headers,
)
from hakit.router.pages import prefers_json
from hakit.router.pool import NO_RECORD, choose_backend, down_mark_for, prune_down

T = 1000.0  # when the view was read


def config(mode: Mode) -> Config:
    return Config(
        cluster=ClusterConfig(mode=mode),
        app=AppConfig(start="true", home="/srv/home", database_url="sqlite:////srv/app.db"),
        nodes=(
            NodeConfig(name="n1", port=8101),
            NodeConfig(name="n2", port=8102),
            NodeConfig(name="n3", port=8103),
        ),
    )


def rec(node: str, role: str = "active", state: str = "RUNNING", epoch: int = 5) -> NodeRecord:
    return NodeRecord(node=node, role=role, app_state=state, epoch=epoch, updated_at=T - 1)


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


VALID = Lease("n1", 5, T + 10)
COLD = Mode.COLD_STANDBY

CASES = {
    "holder running": Case(COLD, VALID, [rec("n1"), rec("n2", "standby", epoch=0)], "n1"),
    "holder first run": Case(COLD, VALID, [rec("n1", state="FIRST_RUN")], "n1"),
    "warm standby: holder": Case(Mode.WARM_STANDBY, VALID, [rec("n1"), rec("n2", "standby")], "n1"),
    "warm standby: running standby gets nothing": Case(
        Mode.WARM_STANDBY, Lease("n2", 6, T + 10), [rec("n1", "standby"), rec("n2", epoch=6)], "n2"
    ),
    "restart-only: holder": Case(Mode.RESTART_ONLY, VALID, [rec("n1")], "n1"),
    "no lease": Case(COLD, None, [rec("n1")], None),
    "lease expired when read": Case(COLD, Lease("n1", 5, T - 0.1), [rec("n1")], None),
    "lease expired since (stale view)": Case(
        COLD, Lease("n1", 5, T + 1), [rec("n1")], None, now=T + 2
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
    "holder not in config": Case(COLD, Lease("n9", 5, T + 10), [rec("n9")], None),
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


def test_forwarded_headers_append_the_client() -> None:
    head = request(
        headers=[
            (b"Host", b"app:8443"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-Proto", b"https"),
        ]
    )
    out = upstream_request_headers(head, b"127.0.0.1:8101")
    assert (b"X-Forwarded-For", b"10.0.0.1, 192.0.2.7") in out
    assert (b"X-Forwarded-Proto", b"http") in out
    assert (b"X-Forwarded-Host", b"app:8443") in out
    assert [value for key, value in out if key == b"Host"] == [b"app:8443"]
