"""hakit.dbfence's pure parts (engines, URLs, which sessions are the old node's) and an
optional app.database_url (no database: no check, no session fencing, "" substituted).

The database work itself runs against real servers: tests/integration/test_dbfence_mariadb.py
(MariaDB), tests/integration/health/test_probe.py and tests/e2e/test_fencing.py (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hakit.config import AppConfig, Config, FailoverConfig, NodeConfig, load_config
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.dbfence import (
    Engine,
    addresses,
    client_host,
    engine_of,
    fences_sessions,
    mysql_connect_args,
    sessions_of,
    sessions_to_kill,
)
from hakit.fencing.fence import AGENT_ID_KEY, Fencer, Predecessor
from hakit.health.probe import check_database
from hakit.supervisor.launch import substitutions


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("sqlite:///app.db", Engine.SQLITE),
        ("/srv/app.db", Engine.SQLITE),
        ("postgresql://app@db/app", Engine.POSTGRESQL),
        ("postgres://app@db/app", Engine.POSTGRESQL),
        ("mysql://app:pw@db/app", Engine.MYSQL),
        ("MariaDB://app:pw@db/app", Engine.MARIADB),
        ("oracle://db/app", None),
        ("", None),
    ],
)
def test_engine_of(url: str, engine: Engine | None) -> None:
    assert engine_of(url) is engine


def test_which_databases_have_sessions_to_fence() -> None:
    assert fences_sessions("postgresql://app@db/app")
    assert fences_sessions("mysql://app@db/app") and fences_sessions("mariadb://app@db/app")
    assert not fences_sessions("sqlite:///app.db") and not fences_sessions("")


def test_sessions_are_named_per_engine() -> None:
    assert sessions_of("postgresql://app@db/app", "node1", "10.0.0.5") == (
        "application_name hakit-node1"
    )
    assert sessions_of("mysql://jira:pw@db/jira", "node1", "10.0.0.5") == "user jira from 10.0.0.5"


def test_mysql_connect_args() -> None:
    args = mysql_connect_args("mariadb://j%40ra:p%2Fw%3A@db.example:3307/jira%20db", 2.5, "x")
    assert (args["host"], args["port"], args["user"], args["password"]) == (
        "db.example",
        3307,
        "j@ra",
        "p/w:",
    )
    assert args["database"] == "jira db" and args["program_name"] == "x"
    assert args["connect_timeout"] == args["read_timeout"] == args["write_timeout"] == 2.5
    local = mysql_connect_args("mysql://app@localhost/?unix_socket=/run/mysqld/mysqld.sock", 1, "x")
    assert (local["port"], local["database"], local["password"]) == (3306, None, "")
    assert local["unix_socket"] == "/run/mysqld/mysqld.sock"


@pytest.mark.parametrize(
    ("host", "client"),
    [
        ("10.0.0.5:41234", "10.0.0.5"),
        ("::1:41234", "::1"),
        ("::ffff:10.0.0.5:41234", "::ffff:10.0.0.5"),
        ("jira1.example:41234", "jira1.example"),
        ("localhost", "localhost"),  # a local socket: no port
    ],
)
def test_client_host(host: str, client: str) -> None:
    assert client_host(host) == client


def test_addresses() -> None:
    assert addresses("10.0.0.5") == {"10.0.0.5"}
    assert addresses("::ffff:10.0.0.5") == {"10.0.0.5"}  # IPv4-mapped: the same client
    assert addresses("[::1]") == {"::1"}
    assert "127.0.0.1" in addresses("localhost")  # names by what they resolve to
    assert addresses("no-such-host.invalid") == frozenset()
    assert addresses("") == frozenset()


ROWS = [
    (11, "10.0.0.5:40001"),
    (12, "::ffff:10.0.0.5:40002"),
    (13, "10.0.0.6:40003"),
    (14, "localhost"),
]


def test_sessions_to_kill_are_those_from_the_old_nodes_address() -> None:
    assert sessions_to_kill(ROWS, "10.0.0.6:50000", "10.0.0.5") == ([11, 12], None)
    assert sessions_to_kill(ROWS, "10.0.0.6:50000", "10.0.0.7") == ([], None)


def test_sessions_to_kill_refuses_when_this_node_has_the_old_nodes_address() -> None:
    ids, problem = sessions_to_kill(ROWS, "10.0.0.5:50000", "10.0.0.5")
    assert ids == [] and problem is not None and "cannot be told apart" in problem
    ids, problem = sessions_to_kill(ROWS, "localhost:50000", "127.0.0.1")
    assert ids == [] and problem is not None and "127.0.0.1" in problem


def test_sessions_to_kill_needs_an_address_for_the_old_node() -> None:
    ids, problem = sessions_to_kill(ROWS, "10.0.0.6:1", "no-such-host.invalid")
    assert ids == [] and problem == "no-such-host.invalid resolves to no address"


# --- app.database_url is optional --------------------------------------------------------


def test_database_url_may_be_left_out(tmp_path: Path) -> None:
    assert AppConfig(start="app", home=tmp_path).database_url == ""
    assert AppConfig(start="app", home=tmp_path, database_url=None).database_url == ""  # type: ignore[arg-type]
    path = tmp_path / "hakit.toml"
    path.write_text(
        '[app]\nstart = ["app", "--db", "{database_url}"]\nhome = "home"\n\n'
        '[[nodes]]\nname = "node1"\nport = 8101\n\n[[nodes]]\nname = "node2"\nport = 8102\n'
    )
    cfg = load_config(path)
    assert cfg.app.database_url == ""
    assert substitutions(cfg, cfg.nodes[0])["database_url"] == ""
    # No database: nothing to check (the policy reads None as "reachability unknown").
    assert asyncio.run(check_database(cfg.app.database_url, 1.0)) is None


@pytest.mark.parametrize(
    "url", ["mysql://jira:pw@db:3306/jira", "mariadb://jira@db/jira", "mysql://db/jira"]
)
def test_mysql_and_mariadb_urls_are_accepted(url: str) -> None:
    assert AppConfig(start="app", home="h", database_url=url).database_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql:db/jira", "is not a URL"),
        ("mysql://jira:pw@db:99999/jira", "has an invalid port"),
        ("mariadb://db:port/jira", "has an invalid port"),
        ("oracle://db/jira", 'scheme "oracle" is not supported'),
    ],
)
def test_bad_mysql_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppConfig(start="app", home="h", database_url=url)


def test_no_session_fencing_without_a_database(tmp_path: Path) -> None:
    cfg = Config(
        app=AppConfig(start=("app",), home=tmp_path),
        nodes=(NodeConfig(name="node1", port=8101), NodeConfig(name="node2", port=8102)),
        failover=FailoverConfig(fence_database_sessions=True),
    )
    events: list[tuple[str, str, dict[str, Any]]] = []
    store = SqliteCoordinator(tmp_path / "coordination.db")
    made = Fencer(cfg, "node2", store, lambda *event: events.append(event), tmp_path / "f.log")
    now = time.time()
    frozen = NodeRecord("node1", "active", "RUNNING", 1, now - 10, {AGENT_ID_KEY: "agent-a"})
    store.publish_node(frozen)
    before = Predecessor(Lease.as_read("node1", 1, now - 1, now), 1, frozen, now)
    verdict = asyncio.run(made.clear_to_promote(Lease.as_read("node2", 2, now + 3, now), before))
    assert verdict.ok and verdict.alerts == ()
    # The fence-command step only; no database step was tried.
    assert [data["result"] for _, _, data in events] == ["not-configured"]
    store.close()
