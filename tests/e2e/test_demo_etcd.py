"""The demo cluster on etcd (``hakit demo --coordination etcd``): DemoCluster starts a local
three-member etcd (hakit.demo.etcd), the agents and the router coordinate through it, a
node loss fails over, and close() ends every etcd member by its PID."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from hakit.demo.cluster import wait_for
from tests.e2e.conftest import ClusterFactory, cluster_factory, served_by, wait_serving
from tests.support.etcd import MISSING, etcd_available

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not etcd_available(), reason=MISSING)]


def test_the_demo_on_etcd_serves_fails_over_and_stops_its_etcd(tmp_path: Path) -> None:
    with cluster_factory(tmp_path) as make_cluster:
        factory: ClusterFactory = make_cluster
        cluster = factory(coordination="etcd", startup_delay=0.2)
        assert cluster.etcd is not None and len(cluster.etcd.pids) == 3
        etcd_pids = list(cluster.etcd.pids)
        assert cluster.cfg.coordination.backend == "etcd"
        assert cluster.cfg.coordination.etcd.endpoints == cluster.etcd.endpoints
        old = wait_serving(cluster, 60)
        mark = cluster.events()[-1].id
        cluster.lose_node(old)

        def other_serves() -> str | None:
            node = cluster.active_running()
            if node is None or node == old:
                return None
            return node if served_by(cluster) == cluster.cfg.node(node).route_name else None

        new = wait_for(other_serves, 60, "the other node to serve through the router")
        kinds = {(e.kind, e.node) for e in cluster.events(mark)}
        assert any(node == new for _, node in kinds), kinds
    # cluster_factory stopped and closed it: every etcd member ended, its data kept.
    assert not [pid for pid in etcd_pids if psutil.pid_exists(pid) and _not_zombie(pid)]
    assert (tmp_path / "cluster0" / "etcd" / "etcd1" / "data").is_dir()


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
