"""Operator commands end to end: real agents, apps, router and `hakit` CLI processes.

Switchover under load (zero failed requests, counted), forced failover from a
frozen active, pause/resume around a crash, a nofailover node that never leads,
and a cold start that picks the last active.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from hakit.coord.base import Event
from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for

from .conftest import dump_history, events_of, kill_app, wait_serving

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin-token-0123456789"


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[list[DemoCluster]]:
    made: list[DemoCluster] = []
    try:
        yield made
    finally:
        for cluster in made:
            cluster.stop()
            dump_history(cluster)
            cluster.close()


def start_cluster(
    clusters: list[DemoCluster], root: Path, *, admin: bool = True, **overrides: object
) -> DemoCluster:
    router_port, *ports = free_ports(5)
    settings = DemoSettings(
        router_port=router_port,
        node_ports=tuple(ports[:2]),
        admin_ports=tuple(ports[2:]) if admin else (),
        admin_token=TOKEN if admin else "",
        **overrides,  # type: ignore[arg-type]
    )
    cluster = DemoCluster(root / f"cluster{len(clusters)}", settings)
    clusters.append(cluster)
    cluster.start()
    return cluster


def hakit(
    cluster: DemoCluster, *args: str, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "USER": user, "COLUMNS": "200", "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hakit", *args, "--config", str(cluster.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, f"hakit {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def other(cluster: DemoCluster, node: str) -> str:
    return next(n.name for n in cluster.cfg.nodes if n.name != node)


MAX_IN_FLIGHT = 128  # the load's threads: enough for every request held during a move


@dataclass
class Load:
    """An open-loop load through the router: ``rate`` requests a second, started on time
    whether or not earlier ones were answered (held requests do not slow the offered
    load down), every other one a POST; every answer counted, every acknowledged write's
    id kept. Bounded: it stops when the test leaves the block."""

    url: str
    rate: float = 50.0
    ok: int = 0
    started: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: set[str] = field(default_factory=set)
    written: list[str] = field(default_factory=list)  # ids of acknowledged records
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ticker: threading.Thread | None = None
    _pool: ThreadPoolExecutor | None = None
    _client: httpx.Client | None = None

    def _one(self, turn: int) -> None:
        assert self._client is not None
        post = turn % 2 == 0
        try:
            if post:
                response = self._client.post(
                    "/records", json={"title": f"load {turn}", "attachment": "x" * 64}
                )
            else:
                response = self._client.get("/records")
        except httpx.HTTPError as error:
            with self._lock:
                self.failures.append(f"{type(error).__name__}: {error}")
            return
        with self._lock:
            if response.status_code == (201 if post else 200):
                self.ok += 1
                self.served_by.add(response.headers.get("x-hakit-node", "?"))
                if post:
                    self.written.append(response.json()["id"])
            else:
                self.failures.append(f"{response.status_code}: {response.text[:100]}")

    def _tick(self) -> None:
        assert self._pool is not None
        began = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self.started += 1
                turn = self.started
            self._pool.submit(self._one, turn)
            self._stop.wait(max(0.0, began + turn / self.rate - time.monotonic()))

    def __enter__(self) -> Load:
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=16)
        self._client = httpx.Client(base_url=self.url, timeout=60, limits=limits)
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT)
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._ticker is not None and self._pool is not None and self._client is not None
        self._ticker.join(10)
        self._pool.shutdown(wait=True)  # every request started gets its answer counted
        self._client.close()

    def count(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)


def test_switchover_under_load_fails_no_request(clusters, tmp_path: Path) -> None:
    cluster = start_cluster(clusters, tmp_path, hold_timeout="20s")
    active = wait_serving(cluster)
    target = other(cluster, active)
    epoch = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    with Load(cluster.router_url) as load:
        wait_for(lambda: load.count() >= 50, 20, "requests flowing before the switchover")
        started, before = time.monotonic(), load.started
        result = hakit(cluster, "switchover", "--to", target, "--reason", "kernel patch")
        during, took = load.started - before, time.monotonic() - started
        before_end = load.count()
        wait_for(lambda: load.count() >= before_end + 50, 20, "requests after the switchover")
    print(f"during the switchover: {during} requests sent in {took:.2f} s ({during / took:.0f}/s)")
    assert during / took >= 40  # the offered load did not slacken while requests were held
    assert f"{target} is active under epoch" in result.stdout
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 100 and load.served_by == {"n1", "n2"}, (load.ok, load.served_by)
    # Every acknowledged write is there, read back through the router.
    assert len(load.written) >= 50
    with httpx.Client(base_url=cluster.router_url, timeout=30) as client:
        missing = [i for i in load.written if client.get(f"/records/{i}").status_code != 200]
    assert missing == []
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == target and lease.epoch > epoch
    assert cluster.active_running() == target
    # Who asked and why, then what each node did, in the history.
    asked = events_of(cluster, "switchover", target)[0]
    assert asked.actor == "operator:alice"
    assert (
        asked.reason
        == f"operator:alice asked for a switchover from {active} to {target} (kernel patch)"
    )
    caused = events_of(cluster, "drain", active) + events_of(cluster, "switchover", active)
    caused += [e for e in events_of(cluster, "stop", active) if e.epoch == epoch]
    assert len(caused) == 4 and {e.actor for e in caused} == {"operator:alice"}, caused
    # The app stopped only once no request was in flight to it.
    (drained,) = [e for e in caused if e.kind == "drain" and "drained" in e.reason]
    assert drained.data["in_flight"] == 0
    (done,) = [e for e in events_of(cluster, "switchover", target) if "complete" in e.reason]
    assert "asked by operator:alice: kernel patch" in done.reason
    assert not events_of(cluster, "failover") and not events_of(cluster, "alert")
    assert cluster.coordinator.get_state("handover") is None
    # The old active stays standby (only the target could take the lease).
    assert not [e for e in events_of(cluster, "start", active) if e.epoch > epoch]
    why = hakit(cluster, "why").stdout
    assert f"{active} handed over to {target}" in why
    assert "switchover by operator alice: operator:alice asked for a switchover" in why


def test_forced_failover_from_a_frozen_active(clusters, tmp_path: Path) -> None:
    # A long lease: without the forced failover, nothing would move for 20 s.
    cluster = start_cluster(clusters, tmp_path, lease_ttl="20s", renew_interval="500ms")
    active = wait_serving(cluster)
    target = other(cluster, active)
    app_pid = cluster.app_pid(active)
    assert app_pid is not None
    frozen = [cluster.agent_pid(active), app_pid]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # the active does not answer at all
    try:
        hakit(cluster, "failover", "--to", target, "--reason", "the active hung", user="bob")
        assert wait_serving(cluster, timeout=30) == target
    finally:
        for pid in frozen:  # the agent first: it may kill (and reap) the app at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    # The old active wakes up, sees the new epoch and kills its app (self-fencing).
    wait_for(
        lambda: (
            (r := cluster.node_record(active)) is not None
            and r.role != "active"
            and r.app_state == "STOPPED"
        ),
        20,
        "the old active to fence itself",
    )
    with pytest.raises(ProcessLookupError):
        os.kill(app_pid, 0)
    asked = events_of(cluster, "failover", target)[0]
    assert asked.actor == "operator:bob" and asked.reason.startswith("operator:bob forced a")
    (took,) = [e for e in events_of(cluster, "failover", target) if "took epoch" in e.reason]
    assert took.actor == "operator:bob"
    assert [e for e in events_of(cluster, "alert", active) if e.data.get("alert") == "fence"]
    assert cluster.active_running() == target


def test_pause_holds_back_the_restart_until_resume(clusters, tmp_path: Path) -> None:
    cluster = start_cluster(clusters, tmp_path)
    active = wait_serving(cluster)
    hakit(cluster, "pause", "--reason", "storage maintenance")
    wait_for(lambda: events_of(cluster, "pause", active), 10, f"{active} to hear the pause")
    status = hakit(cluster, "status")
    assert "paused: yes, by operator:alice" in status.stdout

    old = kill_app(cluster, active)
    (would,) = wait_for(lambda: events_of(cluster, "paused", active), 10, "the held-back restart")
    assert would.reason.startswith("would start the app (app on")
    assert "operator:alice (storage maintenance) paused the cluster: no action" in would.reason
    # Monitoring and reporting go on: the record says the app is down; nobody took over.
    wait_for(
        lambda: (r := cluster.node_record(active)) is not None and r.app_state == "STOPPED",
        10,
        "the record to say STOPPED",
    )
    assert cluster.leader() == active
    assert len(events_of(cluster, "start", active)) == 1  # only the first start

    hakit(cluster, "resume", "--reason", "done", user="carol")
    pid = wait_for(
        lambda: (
            (p := cluster.app_pid(active)) not in (None, old) and cluster.active_running() and p
        ),
        30,
        "the restart after resume",
    )
    assert pid != old and wait_serving(cluster) == active
    restart = events_of(cluster, "start", active)[-1]
    assert restart.reason.startswith("operator:carol (done) resumed the cluster")
    assert not events_of(cluster, "failover")


def test_nofailover_node_never_takes_the_lease(clusters, tmp_path: Path) -> None:
    cluster = start_cluster(clusters, tmp_path, admin=False, nofailover=("node2",))
    assert wait_serving(cluster) == "node1"
    boot = wait_for(lambda: events_of(cluster, "boot", "node2"), 10, "node2's boot")
    assert "node2 has the nofailover tag: it never becomes active" in boot[0].reason
    # Node loss of the active: agent and app die together.
    app_pid = cluster.app_pid("node1")
    assert app_pid is not None
    cluster.lose_node("node1")
    lease = cluster.coordinator.current_lease()
    assert lease is not None
    renew = cluster.cfg.coordination.renew_interval
    # node2's agent keeps running its loops well after the lease became free ...
    wait_for(
        lambda: (
            (r := cluster.node_record("node2")) is not None
            and r.updated_at > lease.expires_at + 4 * renew
        ),
        30,
        "node2 to run several turns after the lease expired",
    )
    # ... and still never took it.
    assert cluster.leader() is None
    assert cluster.coordinator.last_epoch() == lease.epoch
    assert not events_of(cluster, "start", "node2")


def test_cold_start_picks_the_last_active(clusters, tmp_path: Path) -> None:
    # No admin API: the CLI writes the switchover to the store directly.
    cluster = start_cluster(clusters, tmp_path, admin=False)
    first = wait_serving(cluster)
    last = other(cluster, first)
    hakit(cluster, "switchover", "--to", last, "--reason", "move before shutdown")
    assert cluster.active_running() == last
    served = cluster.coordinator.last_epoch()

    cluster.stop()  # the whole cluster goes down (planned)
    mark = cluster.events()[-1].id

    def booted(node: str) -> list[Event]:
        return [e for e in events_of(cluster, "boot", node) if e.id > mark]

    # Cold start, the former first active's agent first: it must leave the lease to `last`.
    cluster.start_agent(first)
    (boot,) = wait_for(lambda: booted(first), 20, f"{first} to boot")
    assert f"{last} was the last active (epoch {served}; {first}: epoch 1)" in boot.reason
    cluster.start_agent(last)
    wait_for(lambda: cluster.active_running() == last, 30, f"{last} to serve again")
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == last and lease.epoch > served
    (last_boot,) = booted(last)
    assert f"{last} was the last active (epoch {served}): competing" in last_boot.reason
    assert not [e for e in events_of(cluster, "start", first) if e.id > mark]


def test_forced_failover_in_warm_standby_waits_for_the_old_active_to_stand_down(
    clusters, tmp_path: Path
) -> None:
    # Warm standby, shared storage, no fence command: the old active is alive and
    # answers. The target takes the lease; the old active's agent sees it lost at its
    # next renewal and stops its app. Promotion must wait for that (never two
    # writers) and then happen, not stall on the old node's app answering again as a
    # warm standby.
    cluster = start_cluster(clusters, tmp_path, mode="warm-standby")
    active = wait_serving(cluster)
    target = other(cluster, active)
    wait_for(
        lambda: (
            (r := cluster.node_record(target)) is not None
            and r.app_state in ("RUNNING", "FIRST_RUN")
        ),
        30,
        "the warm standby's app running",
    )
    epoch = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    hakit(cluster, "failover", "--to", target, "--reason", "testing", user="bob")
    assert wait_serving(cluster, timeout=30) == target
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == target and lease.epoch > epoch
    wait_for(
        lambda: (r := cluster.node_record(active)) is not None and r.role == "standby",
        20,
        "the old active a standby",
    )
    fences = [e for e in events_of(cluster, "fence", target) if e.epoch >= epoch]
    assert not [e for e in fences if e.data.get("result") == "still-answering"], fences
