"""MySQL/MariaDB as the app's database, against a real MariaDB server (tests/mariadbserver.py):
the agent's database check (hakit.health.probe -> hakit.dbfence) and the fencing of an old node's
sessions on promotion (hakit.fencing.fence.Fencer -> hakit.dbfence).

Loopback source addresses stand for the nodes' hosts: 127.0.0.2 is node1 (the old
active), 127.0.0.3 is node2; the fencing itself connects from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from hakit.config import AppConfig, Config, FailoverConfig, NodeConfig
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.dbfence import terminate_sessions
from hakit.fencing.fence import AGENT_ID_KEY, Fencer, Predecessor
from hakit.health.probe import check_database, database_problem
from tests.mariadbserver import OTHER_PASSWORD, OTHER_USER, MariaDBServer

NODE1, NODE2 = "127.0.0.2", "127.0.0.3"


def alive(session: Any) -> bool:
    """The session still runs queries (a killed one fails on its next)."""
    try:
        with session.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))
    except pymysql.err.Error:
        return False


@pytest.fixture
def sessions() -> Iterator[list[Any]]:
    """Sessions a test opens; closed at its end."""
    opened: list[Any] = []
    yield opened
    for session in opened:
        with contextlib.suppress(pymysql.err.Error):  # killed: nothing to close
            session.close()


def open_session(mariadb: MariaDBServer, sessions: list[Any], source: str, **kwargs: str) -> Any:
    session = mariadb.connect(source, **kwargs)
    sessions.append(session)
    return session


# --- the database check -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_check_answers(mariadb: MariaDBServer, scheme: str) -> None:
    url = mariadb.url(scheme)
    assert asyncio.run(database_problem(url, 5.0)) is None
    assert asyncio.run(check_database(url, 5.0)) is True


def test_check_refused_login_is_a_problem(mariadb: MariaDBServer) -> None:
    url = mariadb.url("mariadb", password="wrong")
    problem = asyncio.run(database_problem(url, 5.0))
    assert problem is not None
    assert problem.startswith("MariaDB cannot be reached: Access denied for user 'app'")
    assert asyncio.run(check_database(url, 5.0)) is False


def test_check_fails_while_the_server_is_stopped(mariadb: MariaDBServer) -> None:
    url = mariadb.url()
    assert asyncio.run(check_database(url, 5.0)) is True
    mariadb.shutdown()
    try:
        problem = asyncio.run(database_problem(url, 5.0))
        assert problem is not None and problem.startswith("MySQL cannot be reached: ")
        assert "Can't connect" in problem
        assert asyncio.run(check_database(url, 5.0)) is False
    finally:
        mariadb.start()
    assert asyncio.run(check_database(url, 5.0)) is True  # back with the server


def test_check_of_a_silent_server_ends_at_the_timeout() -> None:
    # A port that accepts TCP connections (the kernel's backlog) but never says hello.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        problem = asyncio.run(database_problem(f"mysql://app:x@127.0.0.1:{port}/app", 0.5))
        elapsed = time.monotonic() - started
    assert problem == "MySQL did not answer within 0.5s"
    assert 0.4 < elapsed < 5


# --- fencing the old node's sessions ----------------------------------------------------


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_fencing_kills_the_old_nodes_sessions_only(
    mariadb: MariaDBServer, sessions: list[Any], scheme: str
) -> None:
    old = [open_session(mariadb, sessions, NODE1) for _ in range(2)]
    survivor = open_session(mariadb, sessions, NODE2)
    # Another account on the old node's host (a DBA's client, say): not the app's.
    bystander = open_session(mariadb, sessions, NODE1, user=OTHER_USER, password=OTHER_PASSWORD)
    assert all(alive(s) for s in [*old, survivor, bystander])

    count, problem = asyncio.run(terminate_sessions(mariadb.url(scheme), "node1", NODE1, 5.0))

    assert (count, problem) == (2, None)
    assert [alive(s) for s in old] == [False, False]
    assert alive(survivor) and alive(bystander)


def test_fencing_with_no_session_of_the_old_node_kills_nothing(
    mariadb: MariaDBServer, sessions: list[Any]
) -> None:
    survivor = open_session(mariadb, sessions, NODE2)
    assert asyncio.run(terminate_sessions(mariadb.url(), "node1", NODE1, 5.0)) == (0, None)
    assert alive(survivor)


def test_fencing_refuses_when_the_old_node_shares_this_nodes_address(
    mariadb: MariaDBServer, sessions: list[Any]
) -> None:
    # The fencing connects from 127.0.0.1, which the server shows as "localhost": an old
    # node at "localhost" cannot be told apart from this node (both on one host, or
    # behind one proxy), so nothing may be killed.
    same_host = open_session(mariadb, sessions, "127.0.0.1")
    count, problem = asyncio.run(terminate_sessions(mariadb.url(), "node1", "localhost", 5.0))
    assert count == 0
    assert problem is not None and "cannot be told apart" in problem and "127.0.0.1" in problem
    assert alive(same_host)


def test_fencing_an_unreachable_database_says_why(mariadb: MariaDBServer) -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"mysql://app:x@127.0.0.1:{bound.getsockname()[1]}/app"
        count, problem = asyncio.run(terminate_sessions(url, "node1", NODE1, 2.0))
    assert count == 0
    assert problem is not None and problem.startswith("OperationalError: Can't connect")


# --- through the Fencer, as an agent promotes ---------------------------------------------


def fencer(tmp_path: Path, url: str) -> tuple[Fencer, list[tuple[str, str, dict[str, Any]]]]:
    cfg = Config(
        app=AppConfig(start=("app",), home=tmp_path, database_url=url),
        nodes=(
            NodeConfig(name="node1", host=NODE1, port=8101),
            NodeConfig(name="node2", host=NODE2, port=8102),
        ),
        failover=FailoverConfig(fence_database_sessions=True, fence_timeout=5.0),
    )
    events: list[tuple[str, str, dict[str, Any]]] = []
    store = SqliteCoordinator(tmp_path / "coordination.db")
    made = Fencer(
        cfg,
        "node2",
        store,
        lambda kind, reason, data: events.append((kind, reason, data)),
        tmp_path / "fence.log",
    )
    return made, events


def take_over(made: Fencer) -> Any:
    """node1 held epoch 1 and froze; node2 takes the lease after it expired."""
    now = time.time()
    frozen = NodeRecord("node1", "active", "RUNNING", 1, now - 10, {AGENT_ID_KEY: "agent-a"})
    made.coordinator.publish_node(frozen)
    before = Predecessor(Lease.as_read("node1", 1, now - 1, now), 1, frozen, now)
    return asyncio.run(made.clear_to_promote(Lease.as_read("node2", 2, now + 3, now), before))


def test_promotion_kills_the_old_nodes_mariadb_sessions(
    tmp_path: Path, mariadb: MariaDBServer, sessions: list[Any]
) -> None:
    lingering = open_session(mariadb, sessions, NODE1)  # the frozen app's connection
    bystander = open_session(mariadb, sessions, NODE2)
    made, events = fencer(tmp_path, mariadb.url("mariadb"))

    verdict = take_over(made)

    assert verdict.ok and verdict.alerts == ()
    [(kind, reason, data)] = [e for e in events if "sessions" in e[2]]
    assert kind == "fence" and data == {
        "target": "node1",
        "result": "ok",
        "sessions": 1,
        "epoch": 2,
    }
    assert reason.startswith(
        f"terminated 1 database session of node1 (user app from {NODE1}) before node2 promotes"
    )
    assert not alive(lingering)
    assert alive(bystander)


def test_promotion_goes_on_when_the_sessions_cannot_be_fenced(tmp_path: Path) -> None:
    with socket.socket() as bound:  # the database is down: refused
        bound.bind(("127.0.0.1", 0))
        made, events = fencer(tmp_path, f"mysql://app:x@127.0.0.1:{bound.getsockname()[1]}/app")
        verdict = take_over(made)
    # The old node is fenced otherwise (here: trusted to have fenced itself); its sessions
    # are an alert, never a reason to stay without an active node.
    assert verdict.ok
    [alert] = verdict.alerts
    assert alert.startswith(
        f"could not terminate the database sessions of node1 (user app from {NODE1})"
    )
    assert "Can't connect" in alert and events[-1][2]["result"] == "failed"
