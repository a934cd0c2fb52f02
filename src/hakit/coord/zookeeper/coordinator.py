"""``ZooKeeperCoordinator``: the Coordinator protocol on a ZooKeeper ensemble, and its opener.

It puts together the parts of the package (see hakit.coord.zookeeper): the
session, the identity guard, the lease steps, and the records, events and state.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

from hakit.coord.memory import make_private_dir, memory_file
from hakit.coord.zookeeper.leases import LeaseSteps
from hakit.coord.zookeeper.records import Records
from hakit.coord.zookeeper.section import ZooKeeperSection, cluster_root
from hakit.coord.zookeeper.watch import ZkWatch
from hakit.errors import NoClusterState

FIRST_WATCH_WAIT = 0.25  # at most this long (and a quarter of the timeout) for the first arming


class ZooKeeperCoordinator(LeaseSteps, Records):
    """The ``Coordinator`` protocol on a ZooKeeper ensemble (see hakit.coord.zookeeper).

    ``root``: the cluster's znode. ``clock``: None (always, outside tests): the
    server's clock, read at each call; a callable stands in for it (the contract
    tests move time with it). ``memory_path``, ``create``, ``config``: as
    hakit.coord.sqlite.SqliteCoordinator. ``detail`` and ``data`` must be
    JSON-serializable.
    """

    # --- the change token (hakit.coord.zookeeper.watch) ---------------------------

    def _watch(self) -> ZkWatch:
        watch: ZkWatch | None = getattr(self, "_zk_watch", None)
        if watch is None:
            paths = [self._path(name) for name in ("identity", "epoch", "leader", "alive", "state")]
            watch = self._zk_watch = ZkWatch(paths, self._path("nodes"))
        return watch

    def data_version(self, *, wait: bool = True) -> Hashable | None:
        """A token that changes with any change of the lease, the node records, the
        cluster state or the identity (a lease's end with its holder's session included),
        kept by watches (hakit.coord.zookeeper.watch): no request per call while they
        hold. ``wait=False`` (the router's event loop): the token, or None while no watch
        is armed. ``wait=True``: the first call arms them and waits briefly; without them
        the answer is a token equal to no other (read the store)."""
        self._adopt_process()
        watch = self._watch()
        if not wait:
            client = self._client
            if client is not None:
                watch.arm(client)  # no request waited on: the answers come later
            return watch.token()
        with self._using("watch the coordination store") as zk:
            watch.arm(zk)
        token = watch.wait_synced(min(FIRST_WATCH_WAIT, self._timeout / 4))
        return token if token is not None else object()

    def wait_change(self, token: Hashable | None, timeout: float) -> Hashable | None:
        """Block until the token differs from ``token`` (at most ``timeout`` seconds);
        the token then (None: no watch armed). Opens the session if need be (a
        ``CoordinationError`` when it cannot): it may block, unlike ``data_version(wait=False)``."""
        self._adopt_process()
        watch = self._watch()
        with self._using("watch the coordination store") as zk:
            watch.arm(zk)
        return watch.wait_change(token, timeout)

    def close(self) -> None:
        """End the session (see Session.close) and its watches."""
        watch: ZkWatch | None = getattr(self, "_zk_watch", None)
        if watch is not None:
            watch.forget()
        super().close()

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
