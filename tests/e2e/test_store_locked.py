"""The agent supervises on while its coordination store is locked (hakit.agent.storeio).

Another process holds the SQLite store's write lock (``BEGIN EXCLUSIVE``) longer than
the store's busy timeout. Every store write of the agent waits for it, on the agent's
store thread; its event loop does not: it notices its app crash, restarts it and
probes it back to RUNNING while the lock is still held. Once the lock is gone, the
history shows all of it, in the order it happened, and the lease was kept.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest

from hakit.coord.sqlite import DEFAULT_BUSY_TIMEOUT
from hakit.demo.cluster import wait_for

from .conftest import ClusterFactory, store_locked, wait_serving

pytestmark = pytest.mark.e2e


def new_app(agent_pid: int, old_pid: int) -> int | None:
    """The pid of the agent's app when it is not ``old_pid`` (the store is locked: the
    node record cannot say). The app is the child of the agent's child, its shim."""
    for shim in psutil.Process(agent_pid).children():
        try:
            for child in shim.children():
                if child.pid != old_pid and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
        except psutil.NoSuchProcess:
            continue  # the old app's shim, ending after it
    return None


def answers_running(url: str) -> bool:
    try:
        response = httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def test_agent_restarts_a_crashed_app_while_the_store_is_locked(
    make_cluster: ClusterFactory,
) -> None:
    # The lease (12 s) outlives the lock (busy timeout + 1.5 s), so nothing is fenced.
    cluster = make_cluster(
        lease_ttl="12s", renew_interval="1s", health_interval="200ms", startup_delay=0.2
    )
    node = wait_serving(cluster)
    agent = cluster.agent_pid(node)
    old_app = cluster.app_pid(node)
    assert old_app is not None
    lease = cluster.coordinator.current_lease()
    assert lease is not None and lease.holder == node
    mark = cluster.events()[-1].id
    config = cluster.cfg.node(node)
    status_url = f"http://{config.host}:{config.port}/status"

    with store_locked(cluster.cfg.coordination_path):
        locked_at = time.monotonic()
        os.kill(old_app, signal.SIGKILL)
        app = wait_for(lambda: new_app(agent, old_app), 10, f"{node}'s agent to restart its app")
        wait_for(lambda: answers_running(status_url), 10, "the restarted app to answer")
        restarted_in = time.monotonic() - locked_at
        # None of it has reached the store yet: every write waits for the lock.
        assert cluster.events(mark) == []
        # The fault lasts past the busy timeout: the write then in flight is refused and
        # retried, the ones queued behind it wait their turn.
        time.sleep(max(0.0, locked_at + DEFAULT_BUSY_TIMEOUT + 1.5 - time.monotonic()))
    print(f"app restarted and answering {restarted_in:.2f} s into the lock")
    # Seen and acted on while every store write was waiting (each waits up to 5 s).
    assert restarted_in < DEFAULT_BUSY_TIMEOUT

    # Afterwards the history holds all of it, in the order it happened.
    def caught_up() -> bool:
        # The record and the "running" event: a newer record replaces one still queued
        # (hakit.agent.storeio), so it may land before an event queued after the older one.
        record = cluster.node_record(node)
        return (
            record is not None
            and record.detail.get("pid") == app
            and record.app_state in ("RUNNING", "FIRST_RUN")
            and any(e.kind == "running" and e.node == node for e in cluster.events(mark))
        )

    wait_for(caught_up, 15, f"{node}'s record to show the restarted app")
    since = [e for e in cluster.events(mark) if e.node == node]
    kinds = [e.kind for e in since]
    times = [e.time for e in since]
    assert times == sorted(times), "events landed out of the order they were issued"
    assert kinds.index("start") < kinds.index("started") < kinds.index("running"), kinds
    started = next(e for e in since if e.kind == "started")
    assert str(app) in started.reason
    # The agent's own loop never stalled, nothing was fenced, the lease stayed.
    assert "stall" not in kinds and "fenced" not in kinds and "lease" not in kinds, kinds
    lease_now = cluster.coordinator.current_lease()
    assert lease_now is not None and (lease_now.holder, lease_now.epoch) == (node, lease.epoch)
    assert lease_now.valid
