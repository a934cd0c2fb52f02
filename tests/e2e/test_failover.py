"""End to end: a demo cluster of real processes, real signals, real HTTP through the router."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hakit.demo.cluster import wait_for
from tests.support.receivers import Webhook, notify_section, webhook_receiver

from .conftest import ClusterFactory, events_of, kill_app, router_get, wait_serving
from .notifying import notifying_clusters

pytestmark = pytest.mark.e2e


def write_records(url: str, count: int, prefix: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, timeout=5) as client:
        for i in range(count):
            response = client.post(
                "/records", json={"title": f"{prefix}-{i}", "attachment": f"body {prefix} {i}"}
            )
            assert response.status_code in (200, 201), response.text
            ids.append(str(response.json()["id"]))
    return ids


def app_restarted(cluster, node: str, old_pid: int):  # type: ignore[no-untyped-def]
    def check() -> int | None:
        pid = cluster.app_pid(node)
        response = router_get(cluster, "/status")
        if pid and pid != old_pid and response is not None and response.status_code == 200:
            return pid
        return None

    return check


def test_crash_restarts_then_fails_over_and_keeps_data(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(restart_attempts=2)
    active = wait_serving(cluster)
    standby = next(n.name for n in cluster.cfg.nodes if n.name != active)
    epoch_before = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    ids = write_records(cluster.router_url, 5, "before")

    # Two crashes: each is restarted on the same node, and service returns.
    for attempt in (1, 2):
        old = kill_app(cluster, active)
        wait_for(app_restarted(cluster, active, old), 30, f"restart {attempt} of {active}")
        assert cluster.leader() == active
    assert len(events_of(cluster, "start", active)) == 3  # first start + two restarts

    # The third crash within the window exceeds restart_attempts: fail over.
    kill_app(cluster, active)
    assert wait_serving(cluster) == standby
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == standby and lease.epoch > epoch_before
    assert events_of(cluster, "failover", active)

    # Everything written before is there, home and database agree.
    ids += write_records(cluster.router_url, 3, "after")
    listed = httpx.get(cluster.router_url + "/records", timeout=5).json()
    listed_ids = {str(r["id"]) for r in (listed["records"] if isinstance(listed, dict) else listed)}
    assert set(ids) <= listed_ids
    integrity = httpx.get(cluster.router_url + "/integrity", timeout=5).json()
    assert integrity["ok"], integrity
    # Each app logged its writes with the epoch its agent started it under (HAKIT_EPOCH):
    # the first active's, then the new active's; none under an older epoch after a newer.
    assert integrity["write_epochs"] == {str(epoch_before): 5, str(lease.epoch): 3}, integrity
    assert integrity["stale_epoch_writes"] == []

    # No automatic failback: the old active stays standby for well past its
    # step-down cooldown (3 lease TTLs) while the new active keeps the lease.
    ttl = cluster.cfg.coordination.lease_ttl
    deadline = time.monotonic() + 4 * ttl
    while time.monotonic() < deadline:
        assert cluster.leader() == standby
        record = cluster.node_record(active)
        assert record is not None and record.role != "active"
        time.sleep(0.2)
    assert not [e for e in events_of(cluster, "start", active) if e.epoch > lease.epoch]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with webhook_receiver() as hook:
        yield hook


def test_node_loss_hands_lease_to_standby(tmp_path: Path, webhook: Webhook) -> None:
    with notifying_clusters(tmp_path, notify_section(webhook)) as make_cluster:
        node_loss(make_cluster, webhook)


def node_loss(make_cluster: ClusterFactory, webhook: Webhook) -> None:
    cluster = make_cluster()
    active = wait_serving(cluster)
    standby = next(n.name for n in cluster.cfg.nodes if n.name != active)
    epoch_before = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]
    ids = write_records(cluster.router_url, 3, "node-loss")

    # Node loss: agent and app die together, no chance to hand over.
    app_pid = cluster.app_pid(active)
    assert app_pid is not None
    cluster.lose_node(active)

    assert wait_serving(cluster, timeout=40) == standby
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == standby and lease.epoch > epoch_before
    # The standby dealt with fencing the lost node before promoting (no fence_command
    # here: it records that it relies on the old node's self-fencing).
    [fence] = events_of(cluster, "fence", standby)
    assert fence.data["target"] == active and fence.data["epoch"] == lease.epoch
    assert fence.data["result"] == "not-configured"
    assert fence.id < min(e.id for e in events_of(cluster, "start", standby))
    listed = httpx.get(cluster.router_url + "/records", timeout=5).json()
    records = listed["records"] if isinstance(listed, dict) else listed
    assert set(ids) <= {str(r["id"]) for r in records}
    # The lost node could not tell anyone: the standby alerts the failover it made.
    [alert] = [e for e in events_of(cluster, "alert", standby) if e.data["alert"] == "failover"]
    assert f"{standby} promoted to active under epoch {lease.epoch} after {active}'s lease" in (
        alert.reason
    )
    assert "expired at" in alert.reason and "without being released" in alert.reason
    [note] = wait_for(lambda: webhook.alerts("failover"), 15, "the failover webhook")
    assert (note["cluster"], note["node"], note["epoch"]) == ("demo", standby, lease.epoch)
    assert note["reason"] == alert.reason and note["manual_intervention"] is False
    assert not webhook.alerts("fence")  # nothing was fenced: no fence_command configured
