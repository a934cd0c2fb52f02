"""The failure table (docs/architecture.md), the rows no other e2e file covers: real agents, sample
apps, router, a real PostgreSQL and a real webhook receiver.

| row                                   | test                                              |
|---------------------------------------|---------------------------------------------------|
| app out of memory                     | test_out_of_memory_restarts_on_the_same_node      |
| database down                         | test_database_down_alerts_and_recovers_in_place   |
| app loses its database connection     | test_lost_database_sessions_change_nothing        |
| old active comes back                 | test_old_active_comes_back_as_standby             |

The other rows: app crash and node loss (test_failover.py, test_fencing.py),
failed start and database loss on SQLite (test_no_false_failover.py), split
brain (test_fencing.py), the router losing its path (test_data_path.py).

PostgreSQL: the lost-sessions test uses the worker's shared server (a database
of its own on it); the database-down test stops its server, so it runs one of
its own rather than take the shared one away from other tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from hakit.coord.base import Event
from hakit.demo.cluster import DemoCluster, wait_for
from tests.pgserver import PostgresServer, start_postgres
from tests.support.receivers import Webhook, notify_section, webhook_receiver

from .conftest import events_of, served_by, wait_serving
from .notifying import notifying_clusters

pytestmark = pytest.mark.e2e

# --- clusters whose agents notify a real webhook receiver -----------------------------------

Factory = Callable[..., DemoCluster]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with webhook_receiver() as hook:
        yield hook


@pytest.fixture
def make_cluster(tmp_path: Path, webhook: Webhook) -> Iterator[Factory]:
    """conftest's make_cluster, with ``[notify]`` pointing at ``webhook`` (every alert kind)."""
    with notifying_clusters(tmp_path, notify_section(webhook)) as factory:
        yield factory


# --- helpers ---------------------------------------------------------------------------------


def app_url(cluster: DemoCluster, node: str) -> str:
    config = cluster.cfg.node(node)
    return f"http://{config.host}:{config.port}"


def last_event_id(cluster: DemoCluster) -> int:
    return max((e.id for e in cluster.events()), default=0)


def since(cluster: DemoCluster, mark: int, kinds: tuple[str, ...] = ()) -> list[Event]:
    return [e for e in cluster.events(mark) if not kinds or e.kind in kinds]


def alerts(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == "alert" and e.data.get("alert") == kind]


def epoch_of(cluster: DemoCluster) -> int:
    lease = cluster.coordinator.current_lease()
    assert lease is not None
    return lease.epoch


def assert_nothing_done(
    cluster: DemoCluster, node: str, pid: int, epoch: int, seconds: float
) -> None:
    """For ``seconds``: ``node`` keeps the lease of ``epoch`` and its app process ``pid``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.leader() == node
        assert epoch_of(cluster) == epoch
        assert cluster.app_pid(node) == pid
        time.sleep(0.2)


def app_state(cluster: DemoCluster, node: str) -> str | None:
    record = cluster.node_record(node)
    return record.app_state if record is not None else None


def fresh_database(postgres: PostgresServer) -> str:
    """A database of its own on ``postgres``: this test's sessions and rows only."""
    name = f"rows_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


def app_sessions(url: str, node: str) -> set[int]:
    """Backend pids of ``node``'s app sessions (the agent sets PGAPPNAME=hakit-<node>)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (f"hakit-{node}",),
        ).fetchall()
    return {int(row[0]) for row in rows}


# --- app out of memory: restart on the same node -------------------------------------------


def test_out_of_memory_restarts_on_the_same_node(make_cluster: Factory, webhook: Webhook) -> None:
    cluster = make_cluster(restart_attempts=2)
    node = wait_serving(cluster)
    epoch = epoch_of(cluster)
    # Two ways to run out of memory: exit 137 (an OOM kill), and OutOfMemoryError in the
    # log with an ordinary exit code (a JVM with -XX:+ExitOnOutOfMemoryError exits 3).
    for number, exit_code in enumerate((137, 3), start=1):
        pid = cluster.app_pid(node)
        mark = last_event_id(cluster)
        answer = httpx.post(
            app_url(cluster, node) + "/faults/oom", params={"exit_code": exit_code}, timeout=5
        )
        assert answer.status_code == 202, answer.text
        wait_for(
            lambda pid=pid: (
                cluster.app_pid(node) not in (None, pid)  # type: ignore[misc]
                and cluster.active_running() == node
            ),
            30,
            f"the app on {node} to be restarted after out-of-memory exit {exit_code}",
        )
        [oom] = alerts(since(cluster, mark), "oom")
        assert oom.node == node
        assert "out of memory" in oom.reason and f"restart {number} of 2" in oom.reason
        if exit_code == 137:
            assert "exit 137" in oom.reason
        else:
            assert "OutOfMemoryError in the log" in oom.reason and "code 3" in oom.reason
        assert [e.node for e in since(cluster, mark, ("start",))] == [node]
        # Out of memory is a restart, never a failover: same node, same epoch.
        assert cluster.leader() == node and epoch_of(cluster) == epoch
        note = wait_for(lambda n=number: webhook.alerts("oom")[n - 1 :], 15, "the oom webhook")[0]
        assert (note["node"], note["epoch"], note["reason"]) == (node, epoch, oom.reason)
    assert not events_of(cluster, "failover")
    assert served_by(cluster) == cluster.cfg.node(node).route_name


# --- database down: alert, no restart, no failover; recovers in place ---------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server this test may stop: not the worker's shared one."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


def test_database_down_alerts_and_recovers_in_place(
    make_cluster: Factory, webhook: Webhook, own_postgres: PostgresServer
) -> None:
    # Patience 2 s: an app failure would be acted on within ~2 s; the outage below
    # lasts well past that.
    cluster = make_cluster(database_url=own_postgres.url, patience="2s", fall=3)
    node = wait_serving(cluster)
    configured = httpx.post(cluster.router_url + "/setup", timeout=5)
    assert configured.status_code == 200, configured.text
    wait_for(lambda: app_state(cluster, node) == "RUNNING", 10, "the app to report RUNNING")
    pid, epoch = cluster.app_pid(node), epoch_of(cluster)
    assert pid is not None
    mark = last_event_id(cluster)

    own_postgres.shutdown()  # pg_ctl stop -m fast: the database is gone for everyone
    wait_for(lambda: app_state(cluster, node) == "ERROR", 15, "the app to report ERROR")
    [outage] = wait_for(
        lambda: alerts(since(cluster, mark), "database"), 15, "a database-outage alert"
    )
    assert outage.node == node and "database is unreachable" in outage.reason
    assert "no restart, no failover" in outage.reason
    note = wait_for(lambda: webhook.alerts("database"), 15, "the database webhook")[0]
    assert note["node"] == node and note["reason"] == outage.reason
    # Far past patience (2 s): no restart, no failover, no second alert.
    assert_nothing_done(cluster, node, pid, epoch, 4.0)
    assert len(alerts(since(cluster, mark), "database")) == 1

    own_postgres.start()
    wait_for(lambda: app_state(cluster, node) == "RUNNING", 20, "the app to report RUNNING again")
    assert wait_serving(cluster) == node
    assert cluster.app_pid(node) == pid  # the same process: it was never restarted
    assert not since(cluster, mark, ("start", "stop", "failover"))
    assert epoch_of(cluster) == epoch
    recovered = [e for e in since(cluster, mark, ("status",)) if "RUNNING again" in e.reason]
    # At least one (a database still starting up may make the app flap once more).
    assert recovered and {e.node for e in recovered} == {node}, "no RUNNING-again record"


# --- app loses its database connection: nothing happens, the app reconnects ---------------


def test_lost_database_sessions_change_nothing(
    make_cluster: Factory, webhook: Webhook, postgres: PostgresServer
) -> None:
    url = fresh_database(postgres)
    cluster = make_cluster(database_url=url)
    node = wait_serving(cluster)
    pid, epoch = cluster.app_pid(node), epoch_of(cluster)
    assert pid is not None
    # The app keeps pooled sessions open between requests (its /status probes use them).
    before = wait_for(lambda: app_sessions(url, node), 10, f"{node}'s app to hold sessions")
    mark = last_event_id(cluster)

    with psycopg.connect(postgres.url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (f"hakit-{node}",),
        ).fetchall()
    assert killed and all(row[0] for row in killed)

    # The app opens new sessions and serves again, the same process on the same node.
    wait_for(
        lambda: (now := app_sessions(url, node)) and not now & before,
        15,
        f"{node}'s app to open new sessions",
    )
    assert wait_serving(cluster) == node

    def write() -> httpx.Response | None:
        response = httpx.post(cluster.router_url + "/records", json={"title": "after"}, timeout=5)
        # The router's own 503 (it never reaches the app): on a loaded machine the agent can
        # publish the ERROR its probe saw at the kill after the app recovered, and the router
        # follows that record until the next one. Any other answer is the app's: judged below.
        router_503 = response.status_code == 503 and "X-Hakit-Node" not in response.headers
        return None if router_503 else response

    created = wait_for(write, 15, "a write through the router")
    assert created.status_code == 201, created.text
    assert_nothing_done(cluster, node, pid, epoch, 3.0)
    assert not since(cluster, mark, ("start", "stop", "failover"))
    assert not [e for e in since(cluster, mark) if e.kind == "alert"]
    assert not webhook.bodies


# --- old active comes back: stays standby --------------------------------------------------


def test_old_active_comes_back_as_standby(make_cluster: Factory) -> None:
    # The demo's 3 s lease: a 2 s one (renewed within 1.75 s) was lost to a slow store on a
    # loaded machine, and the watchdog then rightly killed the app (a restart in the window).
    cluster = make_cluster(lease_ttl="3s")
    ttl = cluster.cfg.coordination.lease_ttl
    old = wait_serving(cluster)
    new = next(n.name for n in cluster.cfg.nodes if n.name != old)
    app = cluster.app_pid(old)
    assert app is not None
    # Node loss: agent and app gone together.
    cluster.lose_node(old)
    assert wait_serving(cluster, timeout=40) == new
    epoch = epoch_of(cluster)
    new_pid = cluster.app_pid(new)
    assert new_pid is not None
    mark = last_event_id(cluster)

    agent = cluster.start_agent(old)  # the node is back
    wait_for(
        lambda: (
            (r := cluster.node_record(old)) is not None
            and r.detail.get("agent_pid") == agent.pid
            and r.role == "standby"
        ),
        20,
        f"{old}'s new agent to publish itself standby",
    )
    # Well past the returning node's step-down cooldown (3 lease TTLs): no failback.
    assert_nothing_done(cluster, new, new_pid, epoch, 3 * ttl + 1.0)
    record = cluster.node_record(old)
    assert record is not None and record.role == "standby" and record.detail.get("pid") is None
    assert not since(cluster, mark, ("start", "failover", "switchover"))
    assert served_by(cluster) == cluster.cfg.node(new).route_name
