"""Failed starts end to end (the failure table's "failed start"): real agents,
sample apps and router. Never RUNNING within startup_timeout, a webapp that failed to
deploy (/status 404), and ``failover.on_failed_start = "failover"`` for a node-local fault.
The whole-cluster bad start (every node fails) is in test_no_false_failover.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.base import Event
from hakit.demo.cluster import DemoCluster, wait_for
from tests.support.receivers import Webhook, notify_section, webhook_receiver

from .conftest import ClusterFactory, events_of, router_get, wait_serving
from .notifying import notifying_clusters

pytestmark = pytest.mark.e2e


def alerts(cluster: DemoCluster, kind: str) -> list[Event]:
    return [e for e in events_of(cluster, "alert") if e.data.get("alert") == kind]


def manual(cluster: DemoCluster) -> list[Event]:
    return [e for e in events_of(cluster, "alert") if e.data.get("manual_intervention")]


def gives_up_in_place(cluster: DemoCluster, seconds: float = 2.0) -> str:
    """After the manual-intervention alert: the same node keeps the lease and never starts
    again, nobody fails over, users get the maintenance page. Returns that node."""
    [alert] = wait_for(lambda: manual(cluster), 40, "a manual-intervention alert")
    node = alert.node
    starts = events_of(cluster, "start")
    assert len(starts) == 2 and {e.node for e in starts} == {node}  # first + 1 retry
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.leader() == node
        time.sleep(0.2)
    assert len(events_of(cluster, "start")) == 2
    assert not events_of(cluster, "failover")
    response = router_get(cluster, "/")
    assert response is not None and response.status_code == 503
    return node


def test_stuck_in_starting_past_startup_timeout_is_a_failed_start(
    make_cluster: ClusterFactory,
) -> None:
    # The app would need 60 s to start; startup_timeout allows 1.5 s.
    cluster = make_cluster(
        startup_delay=60.0, startup_timeout="1500ms", restart_attempts=1, hold_timeout="0s"
    )
    node = gives_up_in_place(cluster)
    retry, given_up = alerts(cluster, "failed-start")
    for alert in (retry, given_up):
        assert f"app on {node} did not reach RUNNING within 1.5s of being started" in alert.reason
    assert "retry 1 of 1" in retry.reason and not retry.data["manual_intervention"]
    assert "2 failed starts in a row (restart_attempts = 1)" in given_up.reason
    assert "another node would fail to start too" in given_up.reason
    # Each attempt was stopped (the app answered STARTING all along, never RUNNING).
    wait_for(lambda: len(events_of(cluster, "stop", node)) == 2, 10, "the second stop")
    record = cluster.node_record(node)
    assert record is not None and record.detail.get("policy") == "MANUAL"


def test_webapp_not_deployed_is_a_failed_start(make_cluster: ClusterFactory) -> None:
    # The server process answers, but /status is a 404 page: the webapp did not deploy.
    cluster = make_cluster(
        app_env={"HAKIT_DEMO_NOT_DEPLOYED": "1"},
        startup_delay=0.2,
        restart_attempts=1,
        fall=3,
        hold_timeout="0s",
    )
    node = gives_up_in_place(cluster)
    retry, given_up = alerts(cluster, "failed-start")
    for alert in (retry, given_up):
        assert f"app on {node} reports NOT_DEPLOYED 3 times in a row while starting" in (
            alert.reason
        )
        assert "HTTP 404: the webapp is not deployed" in alert.reason
    assert given_up.data["manual_intervention"] and "manual intervention" in given_up.reason
    assert not alerts(cluster, "crash")  # the process lives: not a crash


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with webhook_receiver() as hook:
        yield hook


def test_on_failed_start_failover_moves_a_node_local_fault_to_the_standby(
    tmp_path: Path, webhook: Webhook
) -> None:
    """A node-local fault (here a flag file only the active's app sees): its restarts fail
    to start, and with on_failed_start = "failover" the standby takes over."""
    flags = tmp_path / "flags"
    flags.mkdir()

    def on_failed_start(config: str) -> str:
        assert "auto_failback = false\n" in config
        return config.replace(
            "auto_failback = false\n", 'auto_failback = false\non_failed_start = "failover"\n'
        )

    with notifying_clusters(tmp_path, notify_section(webhook), on_failed_start) as make:
        cluster = make(
            app_env={"HAKIT_DEMO_FAIL_START_IF": str(flags / "fail-start-{node}")},
            startup_delay=0.2,
            restart_attempts=1,
        )
        old = wait_serving(cluster)
        new = next(n.name for n in cluster.cfg.nodes if n.name != old)
        (flags / f"fail-start-{old}").touch()  # from now on the app cannot start on old
        pid = cluster.app_pid(old)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash: restarted, and that start fails

        assert wait_serving(cluster, timeout=40) == new
        [crash] = alerts(cluster, "crash")
        assert crash.node == old and "restart 1 of 1" in crash.reason
        [retry] = alerts(cluster, "failed-start")
        assert retry.node == old and "exited with code 1" in retry.reason
        assert "retry 1 of 1" in retry.reason
        [failover] = [e for e in events_of(cluster, "failover") if e.node == old]
        assert "2 failed starts in a row (restart_attempts = 1)" in failover.reason
        assert 'stepping down so a standby takes over (failover.on_failed_start = "failover")' in (
            failover.reason
        )
        assert not manual(cluster)
        note = wait_for(lambda: webhook.alerts("failover"), 15, "the failover webhook")[0]
        assert note["node"] == old and 'on_failed_start = "failover"' in note["reason"]
        # `hakit why` names the failed starts as the cause.
        why = subprocess.run(
            [sys.executable, "-m", "hakit", "why", "--config", str(cluster.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert why.returncode == 0, why.stderr
        assert "failed starts in a row" in why.stdout, why.stdout
