"""The coordination store cannot be swapped under a running cluster (hakit.coord.identity).

Real agents, apps and router. The store file is deleted while the cluster serves: the
active node fences its app at once (not at its lease deadline), nobody promotes in an
empty store under epoch 1 again, and after `hakit init --reinit` the agents reconnect
by themselves and a node serves again under an epoch above every one seen.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from hakit.demo.cluster import DemoCluster, wait_for
from hakit.supervisor import proctable

from .conftest import ClusterFactory, wait_serving


def alive(pid: int) -> bool:
    return proctable.is_live(proctable.stat_of(pid))


def serving_nodes(cluster: DemoCluster) -> list[str]:
    """Nodes whose app answers RUNNING/FIRST_RUN, asked directly (the store may be gone)."""
    serving = []
    for node in cluster.cfg.nodes:
        try:
            answer = httpx.get(f"http://{node.host}:{node.port}/status", timeout=1)
        except httpx.HTTPError:
            continue
        if answer.status_code == 200 and answer.json().get("state") in ("RUNNING", "FIRST_RUN"):
            serving.append(node.name)
    return serving


def test_deleted_store_fences_at_once_and_reinit_brings_the_cluster_back(
    make_cluster: ClusterFactory,
) -> None:
    # A long lease: the fence must come from noticing the swap, not from the deadline.
    cluster = make_cluster(lease_ttl="10s", renew_interval="500ms", startup_delay=0.2)
    old = wait_serving(cluster)
    # Every agent has opened the store (its record is there) before it is deleted: an
    # agent that never saw the store would make a new one, as a first start does (seen
    # when the standby's agent started late on a loaded machine).
    names = [node.name for node in cluster.cfg.nodes]
    wait_for(lambda: all(cluster.node_record(n) for n in names), 30, "every agent's record")
    app = cluster.app_pid(old)
    lease = cluster.coordinator.current_lease()
    assert app is not None and lease is not None
    path = cluster.cfg.coordination_path
    deleted = time.monotonic()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    wait_for(lambda: not alive(app), 8, "the active to fence its app")
    assert time.monotonic() - deleted < lease.expires_at - time.time() + 8
    # Nobody promotes in a fresh store: no app answers, and no file was recreated.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert serving_nodes(cluster) == []
        assert not path.exists()
        time.sleep(0.1)
    log = (cluster.cfg.cluster.state_dir / "logs" / f"agent-{old}.out").read_text()
    assert "was replaced or went back in time" in log
    reinit = subprocess.run(
        [sys.executable, "-m", "hakit", "init", "--reinit", "-c", str(cluster.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reinit.returncode == 0, reinit.stdout + reinit.stderr
    wait_for(lambda: len(serving_nodes(cluster)) == 1, 60, "a node to serve again")
    now = cluster.coordinator.current_lease()  # this process reconnects too (lineage)
    assert now is not None and now.epoch > lease.epoch
    wait_serving(cluster)
