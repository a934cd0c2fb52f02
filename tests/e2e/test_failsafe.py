"""Failsafe mode (``[coordination] failsafe = true``, hakit.policy.failsafe), with real agents.

The store is made unreachable to every agent the way tests/e2e/test_store_locked.py does:
another process holds the SQLite store's write lock, so every lease renewal and every
write waits the store's busy timeout (5 s) and fails, longer than the lease TTL (3 s).

- failsafe on, every agent up: the active asks the standby over the admin API, the
  standby confirms (and promises), the active keeps serving past its lease deadline;
  the standby never promotes; once the lock is gone the active renews the same epoch;
- failsafe on, the standby's agent killed: nobody can confirm, the active fences at its
  deadline, and says who did not confirm;
- failsafe off: the active fences at its deadline, as always.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from hakit.config import load_config
from hakit.demo.cluster import DemoCluster, free_ports
from hakit.history.facts import FAILSAFE, MISSING
from hakit.history.why import explain
from hakit.policy.failsafe import FENCED, NO_PROMOTION, RECOVERED, SERVING
from tests.support.waiting import wait_until

from .conftest import ClusterFactory, cluster_factory, store_locked, wait_serving

pytestmark = pytest.mark.e2e

TOKEN = "failsafe-test-token-0123456789"


def turn_failsafe_on(cluster: DemoCluster) -> None:
    text = cluster.config_path.read_text()
    text = text.replace("[coordination]\n", "[coordination]\nfailsafe = true\n", 1)
    cluster.config_path.write_text(text)
    cluster.cfg = load_config(cluster.config_path)
    assert cluster.cfg.coordination.failsafe


@pytest.fixture
def failsafe_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    with cluster_factory(tmp_path, prepare=turn_failsafe_on) as factory:
        yield factory


def start(factory: ClusterFactory) -> tuple[DemoCluster, str, str, int]:
    """A two-node cluster serving: (cluster, active, standby, the active's app pid)."""
    cluster = factory(admin_ports=tuple(free_ports(2)), admin_token=TOKEN)
    active = wait_serving(cluster)
    standby = next(n.name for n in cluster.cfg.nodes if n.name != active)
    app = cluster.app_pid(active)
    assert app is not None
    return cluster, active, standby, app


def app_of(cluster: DemoCluster, node: str) -> int | None:
    """The pid of the app node's agent runs (its shim's child), read from the processes:
    the store is locked, the node records cannot say."""
    try:
        shims = psutil.Process(cluster.agent_pid(node)).children()
    except psutil.NoSuchProcess:
        return None
    for shim in shims:
        try:
            for child in shim.children():
                if child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def answers(cluster: DemoCluster, node: str) -> bool:
    config = cluster.cfg.node(node)
    try:
        return httpx.get(f"http://{config.host}:{config.port}/status", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def failsafe_events(cluster: DemoCluster, case: str) -> list[str]:
    return [
        e.node for e in cluster.events() if e.kind == "failsafe" and e.data.get(FAILSAFE) == case
    ]


def test_store_down_everywhere_the_active_keeps_serving_and_nobody_promotes(
    failsafe_cluster: ClusterFactory,
) -> None:
    cluster, active, standby, app = start(failsafe_cluster)
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == active
    ttl = cluster.cfg.coordination.lease_ttl
    with store_locked(cluster.cfg.coordination_path):
        locked_at = time.monotonic()
        # Well past the lease deadline (TTL minus half a renewal after the last renewal):
        # the app lives on confirmations only. Checked all along: never two apps.
        while time.monotonic() - locked_at < 2.5 * ttl:
            assert app_of(cluster, active) == app, "the active's app was fenced"
            assert app_of(cluster, standby) is None, "the standby started its app"
            time.sleep(0.2)
        assert answers(cluster, active)
    # The store answers again: the same epoch is renewed, nobody promoted.
    wait_until(
        lambda: (
            failsafe_events(cluster, SERVING)
            and failsafe_events(cluster, NO_PROMOTION)
            and failsafe_events(cluster, RECOVERED)
        ),
        15,
        "the failsafe events to reach the store",
    )
    assert failsafe_events(cluster, SERVING) == [active]
    assert standby in failsafe_events(cluster, NO_PROMOTION)
    now = cluster.coordinator.current_lease()
    assert now is not None and (now.holder, now.epoch) == (active, lease.epoch) and now.valid
    assert app_of(cluster, active) == app
    kinds = [(e.node, e.kind) for e in cluster.events()]
    assert (standby, "promoted") not in kinds and (active, "fenced") not in kinds
    why = explain(cluster.events())
    print("\n".join(why))
    assert (
        f"failsafe mode kept {active} serving (epoch {lease.epoch}) on the confirmations of "
        f"{standby}" in why[0]
    )
    assert "no node promoted" in why[0]


def test_a_node_that_cannot_confirm_makes_the_active_fence(
    failsafe_cluster: ClusterFactory,
) -> None:
    cluster, _, standby, app = start(failsafe_cluster)
    cluster.kill_agent(standby)  # its admin API is gone with it: it cannot confirm
    with store_locked(cluster.cfg.coordination_path):
        locked_at = time.monotonic()
        wait_until(lambda: not psutil.pid_exists(app), 10, "the active to fence its app")
        fenced_in = time.monotonic() - locked_at
    print(f"fenced {fenced_in:.2f} s into the outage")
    assert fenced_in < cluster.cfg.coordination.lease_ttl + 0.5

    def fence_event() -> dict[str, str] | None:
        for event in cluster.events():
            if event.kind == "failsafe" and event.data.get(FAILSAFE) == FENCED:
                missing = event.data.get(MISSING)
                return missing if isinstance(missing, dict) else None
        return None

    missing = wait_until(fence_event, 15, "the failsafe fence to be recorded")
    assert set(missing) == {standby}, missing
    why = explain(cluster.events())
    print("\n".join(why))
    assert f"{standby} did not confirm it was not promoting" in why[0]
    assert "fenced itself (failsafe mode)" in why[0] and "no node promoted" in why[0]


def test_failsafe_off_the_active_fences_at_its_deadline(make_cluster: ClusterFactory) -> None:
    cluster, _, standby, app = start(make_cluster)
    assert not cluster.cfg.coordination.failsafe
    with store_locked(cluster.cfg.coordination_path):
        locked_at = time.monotonic()
        wait_until(lambda: not psutil.pid_exists(app), 10, "the active to fence its app")
        fenced_in = time.monotonic() - locked_at
        assert app_of(cluster, standby) is None  # nobody can take the lease meanwhile
    assert fenced_in < cluster.cfg.coordination.lease_ttl + 0.5
    assert not [e for e in cluster.events() if e.kind == "failsafe"]
