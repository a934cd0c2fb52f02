"""Fencing and stalls, end to end: real agents, apps, router, signals.

The main fencing test: the active node's agent AND app are frozen
with SIGSTOP; the standby fences the old node (a fence command that SIGKILLs
its app's group, standing in for a power-off) and takes over under a new epoch;
then both are woken with SIGCONT. From then on the old node must not serve a
single request (through the router or directly) nor write a single row.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psycopg
import pytest

from hakit.coord.base import Event
from hakit.demo.cluster import DemoCluster, wait_for
from tests.pgserver import PostgresServer
from tests.support.freeze import freeze_group
from tests.support.procnet import request_unanswered
from tests.support.receivers import Webhook, notify_section, webhook_receiver

from .conftest import ClusterFactory, events_of, served_by, store_locked, wait_serving
from .notifying import notifying_clusters

pytestmark = pytest.mark.e2e

FENCE_KILL = (sys.executable, str(Path(__file__).parents[1] / "support" / "fence_kill.py"))


def fresh_database(postgres: PostgresServer) -> str:
    """A database of its own on the shared server, so row counts are this test's only."""
    name = f"fence_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


def row_count(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as connection:
        row = connection.execute("SELECT count(*) FROM records").fetchone()
    assert row is not None
    return int(row[0])


def app_url(cluster: DemoCluster, node: str) -> str:
    config = cluster.cfg.node(node)
    return f"http://{config.host}:{config.port}"


def other_node(cluster: DemoCluster, node: str) -> str:
    return next(n.name for n in cluster.cfg.nodes if n.name != node)


def signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


@contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """SIGSTOP each process group; SIGCONT them (in the order given) however the block ends.

    Never inside a write transaction on a shared SQLite file (``freeze_group``): on
    one machine that would freeze the coordination store for every node.
    """
    try:
        for pid in pids:
            freeze_group(pid)
        yield
    finally:
        for pid in pids:
            signal_group(pid, signal.SIGCONT)


def events_since(cluster: DemoCluster, after_id: int, node: str) -> list[Event]:
    return [e for e in cluster.events(after_id) if e.node == node]


def last_event_id(cluster: DemoCluster) -> int:
    events = cluster.events()
    return events[-1].id if events else 0


def alerts(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == "alert" and e.data.get("alert") == kind]


class RouterLoad:
    """GETs through the router from a thread; remembers who answered each one."""

    def __init__(self, cluster: DemoCluster) -> None:
        self.url = cluster.router_url
        self.answers: list[tuple[int, str]] = []  # (status, X-Hakit-Node)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    response = client.get("/records")
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                    continue
                self.answers.append(
                    (response.status_code, response.headers.get("X-Hakit-Node", ""))
                )

    def __enter__(self) -> RouterLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def write_through_router(cluster: DemoCluster, count: int, prefix: str) -> list[str]:
    """POST records through the router; the X-Hakit-Node of each answer."""
    nodes = []
    with httpx.Client(base_url=cluster.router_url, timeout=5) as client:
        for i in range(count):
            response = client.post("/records", json={"title": f"{prefix}-{i}", "attachment": "x"})
            assert response.status_code == 201, response.text
            nodes.append(response.headers.get("X-Hakit-Node", ""))
    return nodes


def direct_write_fails(cluster: DemoCluster, node: str) -> str:
    """Try to write a record straight to ``node``'s app port; why it failed (asserts it did)."""
    try:
        response = httpx.post(
            app_url(cluster, node) + "/records", json={"title": "from the old node"}, timeout=3
        )
    except httpx.HTTPError as error:
        return repr(error)
    assert response.status_code >= 400, f"the old node accepted a write: {response.text}"
    return f"HTTP {response.status_code}"


def test_frozen_old_active_cannot_serve_or_write_after_failover(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    with (
        webhook_receiver() as webhook,
        notifying_clusters(tmp_path, notify_section(webhook)) as make_cluster,
    ):
        frozen_old_active(make_cluster, postgres, webhook)


def frozen_old_active(
    make_cluster: ClusterFactory, postgres: PostgresServer, webhook: Webhook
) -> None:
    url = fresh_database(postgres)
    cluster = make_cluster(
        database_url=url,
        fence_command=(*FENCE_KILL, "--node", "{node}"),
        fence_database_sessions=True,
        # 3 s: with 2 s (renewed within 1.75 s) the new active lost its fresh lease to a slow
        # store on a loaded machine, fenced itself and took a third epoch (a second alert).
        lease_ttl="3s",
        renew_interval="500ms",
        startup_delay=0.2,
    )
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    new_route = cluster.cfg.node(new).route_name
    old_route = cluster.cfg.node(old).route_name
    assert write_through_router(cluster, 3, "before") == [old_route] * 3
    old_app, old_agent = cluster.app_pid(old), cluster.agent_pid(old)
    assert old_app is not None
    # The agent names the app's PostgreSQL sessions after the node (PGAPPNAME, libpq).
    environ = Path(f"/proc/{old_app}/environ").read_bytes().split(b"\0")
    assert f"PGAPPNAME=hakit-{old}".encode() in environ
    # A session the old node holds (e.g. a connection its frozen app keeps open).
    lingering = psycopg.connect(url, application_name=f"hakit-{old}", autocommit=True)
    bystander = psycopg.connect(url, application_name="someone-else", autocommit=True)
    epoch_before = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    mark = last_event_id(cluster)

    with frozen(old_agent, old_app):
        # The standby fences the old node, then takes over under a new epoch.
        wait_for(lambda: served_by(cluster) == new_route, 30, f"{new} to serve")
        lease = cluster.coordinator.current_lease()
        assert lease is not None and lease.holder == new and lease.epoch > epoch_before
        fences = [e for e in events_since(cluster, mark, new) if e.kind == "fence"]
        assert [(e.data["target"], e.data["result"]) for e in fences] == [(old, "ok"), (old, "ok")]
        assert "expired" in fences[0].reason and "fence command exited 0" in fences[0].reason
        assert fences[1].data["sessions"] >= 1 and "database session" in fences[1].reason
        # STONITH happened before the promotion: the old app is gone while still frozen.
        wait_for(lambda: not _alive(old_app), 5, "the fenced app to be gone")
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
        bystander.execute("SELECT 1")  # only the old node's sessions were terminated
        assert write_through_router(cluster, 2, "during") == [new_route] * 2
        rows_before_wake = row_count(url)
        with RouterLoad(cluster) as load:
            wait_for(lambda: len(load.answers) >= 5, 10, "requests through the router")
            # SIGCONT (leaving the block): the old agent and its app wake up.
            wake_mark = last_event_id(cluster)
            signal_group(old_agent, signal.SIGCONT)
            signal_group(old_app, signal.SIGCONT)
            # It fences itself at once and never starts its app again.
            wait_for(
                lambda: alerts(events_since(cluster, wake_mark, old), "fence"),
                15,
                f"{old} to fence itself on waking",
            )
            failures = [direct_write_fails(cluster, old) for _ in range(5)]
            wait_for(
                lambda: (r := cluster.node_record(old)) is not None and r.role == "standby",
                15,
                f"{old} to publish itself standby",
            )
            failures += [direct_write_fails(cluster, old) for _ in range(5)]
            answered = len(load.answers)
            wait_for(lambda: len(load.answers) >= answered + 5, 10, "more requests after the wake")
        assert load.errors == []
        assert {answer for answer in load.answers} == {(200, new_route)}, load.answers
    assert all("ConnectError" in f or f.startswith("HTTP") for f in failures), failures
    assert write_through_router(cluster, 2, "after") == [new_route] * 2
    # Not a single row from the old node: only the two written through the router.
    assert row_count(url) == rows_before_wake + 2
    woke = events_since(cluster, wake_mark, old)
    self_fence = alerts(woke, "fence")[0]
    assert "lost the leader lease" in self_fence.reason and "killing its app" in self_fence.reason
    assert not [e for e in woke if e.kind == "start"], "the old node started its app again"
    assert not alerts(woke, "crash"), "the fenced app's exit was taken for a crash"
    assert cluster.leader() == new
    lingering.close()
    bystander.close()
    # A human hears of all three at the real webhook: the STONITH (fence), the promotion
    # over the expired lease (failover), and the old node killing its app on waking (fence).
    [fenced] = alerts(events_since(cluster, mark, new), "fence")
    assert fenced.reason == fences[0].reason  # "fenced node1 ... the fence command exited 0"
    [failover] = alerts(events_since(cluster, mark, new), "failover")
    assert f"under epoch {lease.epoch} after {old}'s lease of epoch {epoch_before}" in (
        failover.reason
    )
    expected = {
        ("fence", new, fenced.reason),
        ("failover", new, failover.reason),
        ("fence", old, self_fence.reason),
    }
    wait_for(
        lambda: expected <= {(b["kind"], b["node"], b["reason"]) for b in webhook.bodies},
        15,
        "the fence and failover webhooks",
    )
    new_fence = next(b for b in webhook.alerts("fence") if b["node"] == new)
    assert new_fence["epoch"] == lease.epoch


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
        return False


def test_frozen_agent_cannot_keep_its_app_past_the_lease_deadline(
    make_cluster: ClusterFactory,
) -> None:
    """Only the active's agent is frozen (SIGSTOP): its watchdog thread is frozen with it,
    but the app's shim (hakit.supervisor.shim) is not, and kills the app at the lease deadline,
    before the stored lease expires and so before any standby may start. The standby
    then takes over; the agent, on waking, fences itself and stays a standby."""
    cluster = make_cluster(lease_ttl="3s", renew_interval="1s", startup_delay=0.2)
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    old_app, old_agent = cluster.app_pid(old), cluster.agent_pid(old)
    assert old_app is not None
    mark = last_event_id(cluster)
    with frozen(old_agent):
        lease = cluster.coordinator.current_lease()
        assert lease is not None and lease.holder == old
        # Polled every 10 ms: the death seen is at most that late, never early.
        wait_for(lambda: not _alive(old_app), 10, "the shim to kill the frozen agent's app")
        died = time.time()
        renewed = cluster.coordinator.current_lease()
        assert renewed is not None and renewed.holder == old and renewed.epoch == lease.epoch
        assert died < renewed.expires_at, "the app outlived the stored lease"
        direct_write_fails(cluster, old)
        wait_for(lambda: cluster.active_running() == new, 30, f"{new} to take over")
        wake_mark = last_event_id(cluster)
    # Woken: the lease is gone; the agent says so and never starts its app as active.
    fenced = wait_for(
        lambda: [e for e in events_since(cluster, wake_mark, old) if e.kind == "fenced"],
        15,
        f"{old} to fence itself on waking",
    )
    assert fenced
    woke = events_since(cluster, wake_mark, old)
    assert not [e for e in woke if e.kind == "start"], woke
    since = cluster.events(mark)
    assert any("killed by the app's shim" in e.reason for e in since if e.node == old), since
    assert cluster.active_running() == new


def test_failed_fence_blocks_the_promotion_until_the_old_node_stands_down(
    make_cluster: ClusterFactory,
) -> None:
    refuse = (sys.executable, "-c", "import sys; print('BMC unreachable'); sys.exit(1)", "{node}")
    cluster = make_cluster(
        fence_command=refuse, lease_ttl="2s", renew_interval="500ms", startup_delay=0.2
    )
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    old_app, old_agent = cluster.app_pid(old), cluster.agent_pid(old)
    assert old_app is not None
    epoch_before = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    mark = last_event_id(cluster)
    with frozen(old_agent, old_app):
        alert = wait_for(
            lambda: alerts(events_since(cluster, mark, new), "fence"), 30, "a fence alert"
        )[0]
        assert f"could not fence {old}" in alert.reason and "BMC unreachable" in alert.reason
        failed = [e for e in events_since(cluster, mark, new) if e.kind == "fence"]
        assert failed and all(e.data["result"] == "failed" for e in failed)
        # No promotion: the standby never started its app, nobody serves.
        assert not [e for e in events_since(cluster, mark, new) if e.kind == "start"]
        assert cluster.active_running() is None
        # It says which node is still to fence, for any other node about to promote.
        wait_for(
            lambda: (
                (r := cluster.node_record(new)) is not None
                and r.role == "standby"
                and old in r.detail.get("fence_pending", {})
            ),
            10,
            f"{new} to publish that {old} is still to fence",
        )
    # Once the old node has woken and fenced itself, a node takes over under a new epoch
    # (whichever wins the lease), and no fence is pending any more.
    leader = wait_for(cluster.active_running, 30, "a node to serve again")
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == leader and lease.epoch > epoch_before
    if leader == new:
        results = [e.data["result"] for e in events_since(cluster, mark, new) if e.kind == "fence"]
        assert results[-1] == "not-needed"
    assert not _alive(old_app)  # killed by its own agent on waking


def test_stalled_agent_does_not_count_timeouts_from_its_own_freeze(
    make_cluster: ClusterFactory,
) -> None:
    # Patience: 2 timeouts over 2 s. The lease (10 s) outlives the stall (3 s).
    cluster = make_cluster(
        patience="2s",
        fall=2,
        health_interval="100ms",
        probe_timeout="1s",
        lease_ttl="10s",
        renew_interval="1s",
        startup_delay=0.2,
    )
    node = wait_serving(cluster)
    app, agent = cluster.app_pid(node), cluster.agent_pid(node)
    assert app is not None
    starts = len(events_of(cluster, "start", node))
    port = cluster.cfg.node(node).port
    mark = last_event_id(cluster)
    # A VM freeze: the app stops first; the agent sees a real timeout (1 of 2) ...
    with frozen(app):
        wait_for(
            lambda: [e for e in events_since(cluster, mark, node) if e.kind == "detected"],
            10,
            "a first /status timeout",
        )
        # ... then the agent itself freezes while its next probe waits for the app. The probe
        # must still be in flight once the agent is stopped, checked while it is: on a loaded
        # machine this test can run late and stop it between two probes, and then no timeout
        # overlaps the stall. If so, thaw at once and catch the next probe (one more real
        # timeout, 1.1 s after the first, is still short of the patience).
        for _attempt in range(2):
            wait_for(lambda: request_unanswered(agent, port), 5, "a probe in flight")
            with frozen(agent):
                if request_unanswered(agent, port):
                    time.sleep(3.0)  # the stall: longer than patience and than the probe timeout
                    break
        else:
            pytest.fail("the agent could not be frozen while one of its probes was in flight")
        # SIGCONT: the agent first (its probe's timer fired late), then the app.
    wait_for(
        lambda: [e for e in events_since(cluster, mark, node) if e.kind == "stall"],
        10,
        "the stall to be recorded",
    )
    ignored = wait_for(
        lambda: [
            e
            for e in events_since(cluster, mark, node)
            if e.kind == "status" and e.reason.startswith("ignored")
        ],
        10,
        "the timeout of the probe the stall delayed to be ignored",
    )
    assert "agent was stalled for" in ignored[0].reason
    wait_for(
        lambda: (
            (r := cluster.node_record(node)) is not None and r.app_state in ("RUNNING", "FIRST_RUN")
        ),
        10,
        "the app to answer again",
    )
    # Without the stall detector this was 2 timeouts over 3 s: a hang, and a restart.
    assert len(events_of(cluster, "start", node)) == starts
    assert cluster.app_pid(node) == app
    assert not alerts(events_since(cluster, mark, node), "hang")
    assert cluster.leader() == node


def exit_time(pid: int, timeout: float) -> float:
    """Wall-clock time at which ``pid`` (not our child) exits: waits on a pidfd."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        gone_at = time.time()
    finally:
        os.close(fd)
    assert ready, f"pid {pid} still runs after {timeout:.0f} s"
    return gone_at


def test_awake_agent_whose_store_refuses_kills_its_app_before_the_lease_ends(
    make_cluster: ClusterFactory,
) -> None:
    """Self-fencing while awake: the agent runs on, only its renewals fail (the store is
    locked by another process). Its app must be dead before the lease it holds ends, since
    from then on another node may take the lease over and start its own app."""
    cluster = make_cluster(lease_ttl="3s", renew_interval="1s", startup_delay=0.2)
    node = wait_serving(cluster)
    app, agent = cluster.app_pid(node), cluster.agent_pid(node)
    assert app is not None
    mark = last_event_id(cluster)
    with store_locked(cluster.cfg.coordination_path) as store:
        row = store.execute("SELECT holder, epoch, expires_at FROM lease").fetchone()
        holder, epoch, expires_at = str(row[0]), int(row[1]), float(row[2])
        assert holder == node  # the lease it holds can no longer be renewed from here on
        gone_at = exit_time(app, timeout=15)
        # The agent itself is up all along: only its store refuses.
        assert cluster.processes[f"agent-{node}"].poll() is None and _alive(agent)
    margin = expires_at - gone_at
    assert margin > 0, f"the app outlived the lease by {-margin:.2f} s"
    # Afterwards (the store writable again) the self-fence is in the history, alerted.
    [alert] = wait_for(
        lambda: alerts(events_since(cluster, mark, node), "fence"),
        20,
        f"{node}'s self-fence alert in the history",
    )
    [stop] = [e for e in events_since(cluster, mark, node) if e.kind == "stop"]
    assert stop.id < alert.id and stop.reason == alert.reason
    assert "killing its app at once" in stop.reason
    assert f"lost the leader lease (epoch {epoch}" in stop.reason
    assert "lease not renewed before its deadline" in stop.reason
    assert "on waking" not in stop.reason  # awake: no stall, nothing to ask the store
    print(f"app killed {margin:.2f} s before its lease of epoch {epoch} ended")
