"""``ZooKeeperCoordinator``: the Coordinator protocol on a ZooKeeper ensemble, and its opener.

It puts together the parts of the package (see hakit.coord.zookeeper): the
session, the identity guard, the lease steps, and the records, events and state.
"""

from __future__ import annotations

from pathlib import Path

from hakit.coord.memory import make_private_dir, memory_file
from hakit.coord.zookeeper.leases import LeaseSteps
from hakit.coord.zookeeper.records import Records
from hakit.coord.zookeeper.section import ZooKeeperSection, cluster_root
from hakit.errors import NoClusterState


class ZooKeeperCoordinator(LeaseSteps, Records):
    """The ``Coordinator`` protocol on a ZooKeeper ensemble (see hakit.coord.zookeeper).

    ``root``: the cluster's znode. ``clock``: None (always, outside tests): the
    server's clock, read at each call; a callable stands in for it (the contract
    tests move time with it). ``memory_path``, ``create``, ``config``: as
    hakit.coord.sqlite.SqliteCoordinator. ``detail`` and ``data`` must be
    JSON-serializable.
    """

    def __enter__(self) -> ZooKeeperCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_zookeeper(
    section: ZooKeeperSection,
    *,
    state_dir: Path,
    config: str | None,
    create: bool,
    node: str | None,
    cluster: str,
) -> ZooKeeperCoordinator:
    """The opener hakit.coord.registry names (see hakit.coord.factory.open_coordinator);
    ``cluster``: cluster.name, the znode under the prefix unless the section names one."""
    cluster = section.cluster or cluster
    memory = None
    if node is not None:
        make_private_dir(state_dir)
        memory = memory_file(state_dir, node)
    coordinator = ZooKeeperCoordinator(
        section.hosts,
        cluster_root(section.prefix, cluster),
        session_timeout=section.session_timeout,
        timeout=section.timeout,
        auth=(section.auth.scheme, section.auth.credential) if section.auth else None,
        memory_path=memory,
        create=create,
        config=config,
    )
    if not create:
        try:
            exists = coordinator.store_exists()
        except BaseException:
            coordinator.close()
            raise
        if not exists:
            coordinator.close()
            raise NoClusterState(coordinator.where)
    return coordinator
