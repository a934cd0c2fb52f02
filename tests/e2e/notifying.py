"""conftest's make_cluster, with the agents' ``[notify]`` pointing at real local receivers
(tests/support/receivers.py): the e2e tests that check what reaches a human."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hakit.config import load_config
from hakit.demo.cluster import DemoCluster

from .conftest import ClusterFactory, cluster_factory


@contextmanager
def notifying_clusters(
    tmp_path: Path, notify: str, edit: Callable[[str], str] | None = None
) -> Iterator[ClusterFactory]:
    """A factory of started clusters whose config ends with ``notify`` (a [notify] table);
    ``edit`` rewrites the rest first (a key the demo's settings do not offer)."""

    def prepare(cluster: DemoCluster) -> None:
        text = cluster.config_path.read_text()
        cluster.config_path.write_text((edit(text) if edit else text) + notify)
        cluster.cfg = load_config(cluster.config_path)

    with cluster_factory(tmp_path, prepare) as factory:
        yield factory
