"""conftest's make_cluster, with the agents' ``[notify]`` pointing at real local receivers
(tests/support/receivers.py): the e2e tests that check what reaches a human."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hakit.config import load_config
from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports

from .conftest import ClusterFactory, dump_history


@contextmanager
def notifying_clusters(
    tmp_path: Path, notify: str, edit: Callable[[str], str] | None = None
) -> Iterator[ClusterFactory]:
    """A factory of started clusters whose config ends with ``notify`` (a [notify] table);
    ``edit`` rewrites the rest first (a key the demo's settings do not offer)."""
    clusters: list[DemoCluster] = []

    def factory(**overrides: Any) -> DemoCluster:
        router_port, *node_ports = free_ports(3)
        settings = DemoSettings(router_port=router_port, node_ports=tuple(node_ports), **overrides)
        cluster = DemoCluster(tmp_path / f"cluster{len(clusters)}", settings)
        clusters.append(cluster)
        text = cluster.config_path.read_text()
        cluster.config_path.write_text((edit(text) if edit else text) + notify)
        cluster.cfg = load_config(cluster.config_path)
        cluster.start()
        return cluster

    try:
        yield factory
    finally:
        for cluster in clusters:
            cluster.stop()
            dump_history(cluster)
            cluster.close()
