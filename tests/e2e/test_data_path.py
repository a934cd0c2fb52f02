"""The data path end to end (the failure table's "the routers lose their path to the
active"): real agents, apps and router, a real network namespace.

node1 (its agent, hence its app) runs inside a network namespace joined to the root
namespace by a veth pair (tests/support/netns.py); node2 and the router run in the
root namespace, so the router reaches node1 only through the veth. The coordination
store is a file, shared through the file system: cutting the veth leaves node1's
lease renewing and its app answering locally, and takes away only the router's
path to it. The router's reports say so; node1's agent hands over to node2.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from hakit.demo.cluster import DemoCluster, wait_for
from hakit.history.why import explain
from tests.support.netns import NetNs, netns_unavailable, veth_namespace

from .conftest import ClusterFactory, served_by, wait_serving

pytestmark = pytest.mark.e2e


@pytest.fixture
def netns() -> Iterator[NetNs]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces: {reason}")
    with veth_namespace() as ns:
        yield ns


class SplitBrainWatch:
    """Reads the node records every 50 ms from a thread: two nodes active under the same
    epoch, or two nodes active with running apps at once, is a split brain."""

    def __init__(self, cluster: DemoCluster) -> None:
        self.cluster = cluster
        self.violations: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(100_000):  # bounded; the test stops it long before
            if self._stop.wait(0.05):
                return
            active = [
                record
                for record in self.cluster.coordinator.nodes()
                if record.role == "active" and record.app_state in ("RUNNING", "FIRST_RUN")
            ]
            self.reads += 1
            if len(active) > 1:
                self.violations.append(
                    ", ".join(f"{r.node} active under epoch {r.epoch}" for r in active)
                )

    def __enter__(self) -> SplitBrainWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def switchover_to(cluster: DemoCluster, node: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hakit",
            "switchover",
            "--to",
            node,
            "--reason",
            "node1 first",
            "--config",
            str(cluster.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_router_losing_its_path_to_the_active_fails_over(
    netns: NetNs, make_cluster: ClusterFactory
) -> None:
    cluster = make_cluster(
        node_hosts=(netns.ns_ip, ""),
        node_prefix={"node1": netns.prefix()},
        lease_ttl="3s",  # 2 s leases were lost to a slow store on a loaded machine
        renew_interval="500ms",
        patience="2s",
        fall=2,
        health_interval="250ms",
        probe_timeout="500ms",
        check_interval="250ms",
        startup_delay=0.2,
    )
    if wait_serving(cluster) != "node1":
        switchover_to(cluster, "node1")  # the test needs the namespaced node active
    wait_for(lambda: served_by(cluster) == "n1", 30, "node1 to serve through the router")
    before = cluster.coordinator.current_lease()
    assert before is not None and before.holder == "node1"
    mark = cluster.events()[-1].id

    with SplitBrainWatch(cluster) as watch:
        netns.cut()
        cut_at = time.monotonic()
        wait_for(lambda: served_by(cluster) == "n2", 40, "node2 to serve through the router")
        took = time.monotonic() - cut_at
        # No failback: node1 stays standby (its path is still cut, its lease long given up).
        ttl = cluster.cfg.coordination.lease_ttl
        for _ in range(int(3 * ttl / 0.2)):
            assert cluster.leader() == "node2"
            record = cluster.node_record("node1")
            assert record is not None and record.role != "active", record
            time.sleep(0.2)
    print(f"path cut -> node2 serving through the router: {took:.1f} s")
    assert watch.reads > 10 and watch.violations == []

    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == "node2" and lease.epoch > before.epoch
    record = cluster.node_record("node1")
    assert record is not None and (record.role, record.app_state) == ("standby", "STOPPED")
    since = cluster.events(mark)
    # node1's agent named the path loss, then released its lease (not an expiry).
    (loss,) = [e for e in since if e.kind == "path-loss" and e.node == "node1"]
    assert loss.actor == "agent:node1"
    assert "router 127.0.0.1:" in loss.reason and "has not reached node1 since" in loss.reason
    assert "handing over to node2" in loss.reason
    released = [e for e in since if e.kind == "failover" and e.node == "node1"]
    assert released and f"releasing the lease of epoch {before.epoch}" in released[-1].reason
    assert not [e for e in since if e.kind == "fence" and e.data.get("result") == "ok"]
    # `hakit why` explains the move from the history alone.
    headline = explain(cluster.events())[0]
    assert headline.startswith("node1 failed over to node2") and "has not reached node1" in headline
