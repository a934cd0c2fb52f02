"""Situations that must NOT cause a restart or a failover, and a failed start that must stop."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from hakit.demo.cluster import DemoCluster, wait_for
from tests.support.receivers import notify_section, smtp_receiver, webhook_receiver

from .conftest import ClusterFactory, events_of, router_get, wait_serving
from .notifying import notifying_clusters

pytestmark = pytest.mark.e2e


def app_url(cluster: DemoCluster, node: str) -> str:
    config = cluster.cfg.node(node)
    return f"http://{config.host}:{config.port}"


def assert_quiet(cluster: DemoCluster, node: str, seconds: float) -> None:
    """Over ``seconds``, the node keeps the lease and no restart, stop or failover happens."""
    starts = len(events_of(cluster, "start"))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.leader() == node
        time.sleep(0.2)
    assert len(events_of(cluster, "start")) == starts
    assert not events_of(cluster, "failover")
    assert not events_of(cluster, "stop")


def test_starting_for_long_is_patience_not_failure(make_cluster: ClusterFactory) -> None:
    # Startup takes 6 s: longer than fall * interval, shorter than startup_timeout.
    # No hold: the router answers the maintenance page at once instead of holding.
    cluster = make_cluster(startup_delay=6.0, startup_timeout="30s", hold_timeout="0s")
    node = wait_for(cluster.leader, 20, "a leader")
    wait_for(
        lambda: (r := cluster.node_record(node)) is not None and r.app_state == "STARTING",
        20,
        "the app to report STARTING",
    )
    # While it starts the router shows the maintenance page, not an error.
    response = router_get(cluster, "/")
    assert response is not None and response.status_code == 503
    assert "Retry-After" in response.headers
    assert wait_serving(cluster, timeout=30) == node
    assert len(events_of(cluster, "start")) == 1
    assert not events_of(cluster, "failover")


def test_maintenance_is_not_a_failure(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(patience="2s", fall=2)
    node = wait_serving(cluster)
    lock = httpx.post(app_url(cluster, node) + "/admin/lock", timeout=5)
    assert lock.status_code in (200, 201), lock.text
    token = lock.json()["token"]
    wait_for(
        lambda: (r := cluster.node_record(node)) is not None and r.app_state == "MAINTENANCE",
        10,
        "the agent to see MAINTENANCE",
    )
    # Far longer than patience (2 s) and fall * interval.
    assert_quiet(cluster, node, 5.0)
    released = httpx.delete(app_url(cluster, node) + f"/admin/lock/{token}", timeout=5)
    assert released.status_code in (200, 204)
    assert wait_serving(cluster) == node


def test_hang_shorter_than_patience_causes_nothing(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(patience="8s", fall=2, probe_timeout="500ms")
    node = wait_serving(cluster)
    httpx.post(app_url(cluster, node) + "/faults/hang", params={"seconds": 4}, timeout=5)
    wait_for(
        lambda: (r := cluster.node_record(node)) is not None and r.app_state == "TIMEOUT",
        10,
        "the agent to see /status time out",
    )
    assert_quiet(cluster, node, 5.0)
    assert wait_serving(cluster) == node


def test_hang_longer_than_patience_restarts(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(patience="2s", fall=2, probe_timeout="500ms")
    node = wait_serving(cluster)
    pid = cluster.app_pid(node)
    httpx.post(app_url(cluster, node) + "/faults/hang", params={"seconds": 60}, timeout=5)
    wait_for(
        lambda: cluster.app_pid(node) not in (None, pid) and cluster.active_running() == node,
        30,
        "the hung app to be restarted",
    )
    assert not events_of(cluster, "failover")


def test_database_loss_alerts_only(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(patience="2s", fall=2)
    node = wait_serving(cluster)
    pid = cluster.app_pid(node)
    database_dir = Path(cluster.cfg.app.database_url.removeprefix("sqlite:///")).parent
    away = database_dir.with_name(database_dir.name + ".away")
    database_dir.rename(away)  # the database is gone for everyone: agent and app alike
    try:
        wait_for(
            lambda: [e for e in events_of(cluster, "alert") if e.data.get("alert") == "database"],
            20,
            "a database alert",
        )
        assert_quiet(cluster, node, 4.0)
    finally:
        away.rename(database_dir)
    assert wait_serving(cluster) == node
    # Recovered in place: the same app process, never restarted, no failover.
    assert cluster.app_pid(node) == pid
    assert len(events_of(cluster, "start")) == 1
    assert not events_of(cluster, "failover")


def test_failed_start_stops_and_asks_for_a_human(tmp_path: Path) -> None:
    """...by webhook and by e-mail: real agents to a real HTTP receiver and a real aiosmtpd."""
    with webhook_receiver() as webhook, smtp_receiver() as mailbox:
        notify = notify_section(webhook, mailbox, events=("manual-intervention",))
        with notifying_clusters(tmp_path, notify) as make_cluster:
            cluster = make_cluster(
                restart_attempts=2,
                app_env={"HAKIT_DEMO_FAIL_START": "1"},
                hold_timeout="0s",
                startup_delay=0.3,
            )
            [alert] = wait_for(
                lambda: [
                    e for e in events_of(cluster, "alert") if e.data.get("manual_intervention")
                ],
                40,
                "a manual-intervention alert",
            )
            failed_start_gives_up(cluster)
            # Only the selected kind is sent: the failed starts before it were not.
            [note] = wait_for(webhook.manual, 15, "the manual-intervention webhook")
            assert (note["kind"], note["node"], note["reason"]) == (
                "failed-start",
                alert.node,
                alert.reason,
            )
            [mail] = wait_for(mailbox.messages, 15, "the manual-intervention e-mail")
    assert webhook.bodies == [note]
    assert mailbox.recipients() == [["ops@example.com"]]
    assert mail["Subject"] == f"[hakit demo] failed-start on {alert.node}"
    assert mail["X-Priority"] == "1"  # manual intervention: urgent
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert alert.reason in body.decode() and "MANUAL INTERVENTION REQUIRED" in body.decode()


def failed_start_gives_up(cluster: DemoCluster) -> None:
    node = cluster.leader()
    starts = len(events_of(cluster, "start"))
    assert starts == 3  # the first start and restart_attempts retries
    # It stays given up: no more starts, and no failover (the standby would fail too).
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(events_of(cluster, "start")) == starts
    assert not events_of(cluster, "failover")
    assert all(e.node == node for e in events_of(cluster, "start"))
    response = router_get(cluster, "/")
    assert response is not None and response.status_code == 503
