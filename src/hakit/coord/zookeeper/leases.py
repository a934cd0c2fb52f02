"""The leader lease: each step reads, decides, and writes one transaction conditioned on it.

The lease is stored in ``leader`` and bound to the holder's session by the
EPHEMERAL ``alive`` znode; it expires ``ttl`` after its grant by the server's
clock, or at once when that session ends (the package docstring,
hakit.coord.zookeeper, says why). The hold ``hakit init --reinit`` writes
(``REINIT_HOLDER``) is bound to no session: it ends by the server's clock alone. A grant of a new holder writes the new epoch
in the same transaction, so an epoch is never handed out twice.
"""

from __future__ import annotations

from typing import Any

from kazoo.client import KazooClient

from hakit.coord.base import REINIT_HOLDER, Lease
from hakit.coord.zookeeper.identity import Guard
from hakit.coord.zookeeper.layout import Node, dump, last_epoch_in
from hakit.errors import CoordinationError


class LeaseSteps(Guard):
    """The Coordinator's calls on the leader lease."""

    def _check_ttl(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        if ttl > self._session_timeout:
            raise CoordinationError(
                f"coordination store {self.where}: a lease TTL of {ttl:g} s is longer than the "
                f"session timeout {self._session_timeout:g} s; set [coordination.zookeeper] "
                "session_timeout to at least coordination.lease_ttl (a lease is bound to its "
                "holder's session)"
            )

    def _lease(self, leader: Node | None, alive: Node | None, now: float) -> Lease | None:
        """The stored lease judged at ``now``: expired by time, or when its session ended."""
        doc = leader.doc if leader is not None else None
        if leader is None or not isinstance(doc, dict) or "holder" not in doc:
            return None
        if doc["holder"] == REINIT_HOLDER:
            # `hakit init --reinit`'s hold (hakit.coord.zookeeper.reinit): from its commit,
            # stamped by the server's clock, bound to no session; nobody to fence.
            expires_at = leader.stat.mtime / 1000.0 + float(doc["ttl"])
            return Lease(REINIT_HOLDER, int(doc["epoch"]), expires_at, expires_at - now, 0)
        expires_at = float(doc["granted_at"]) + float(doc["ttl"])
        remaining = expires_at - now
        bound = (
            alive is not None
            and alive.stat.ephemeralOwner == doc.get("session")
            and isinstance(alive.doc, dict)
            and alive.doc.get("epoch") == doc["epoch"]
        )
        if not bound:
            remaining = min(remaining, 0.0)  # its session ended: so did the lease
        return Lease(
            str(doc["holder"]), int(doc["epoch"]), expires_at, remaining, int(doc["revision"])
        )

    def _grant(
        self,
        zk: KazooClient,
        found: dict[str, Node | None],
        lease: Lease,
        granted_at: float,
        *,
        new_epoch: bool,
    ) -> Lease:
        """Write ``lease`` (bound to this session) if nothing changed since ``found``."""
        session = self.session_id
        leader, alive, epoch = (found[self._path(n)] for n in ("leader", "alive", "epoch"))
        assert leader is not None and epoch is not None
        doc = {
            "holder": lease.holder,
            "epoch": lease.epoch,
            "revision": lease.revision,
            "granted_at": granted_at,
            "ttl": lease.remaining,
            "session": session,
        }

        def build(txn: Any) -> None:
            txn.set_data(self._path("leader"), dump(doc), leader.stat.version)
            if new_epoch:
                txn.set_data(
                    self._path("epoch"), dump({"last_epoch": lease.epoch}), epoch.stat.version
                )
            if alive is not None:
                txn.delete(self._path("alive"), alive.stat.version)
            txn.create(
                self._path("alive"),
                dump({"holder": lease.holder, "epoch": lease.epoch}),
                ephemeral=True,
            )

        self._commit(zk, build)
        self._saw(lease.epoch)
        return lease

    def _lease_paths(self) -> list[str]:
        return [self._path("leader"), self._path("alive")]

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        self._check_ttl(ttl)

        def attempt() -> Lease | None:
            now, found = self._read(zk, self._lease_paths(), now=True)
            stored = self._lease(found[self._path("leader")], found[self._path("alive")], now)
            last = last_epoch_in(found[self._path("epoch")])
            self._saw(max(last, stored.epoch if stored is not None else 0))
            if stored is not None and stored.valid:
                if stored.holder != node:
                    return None
                renewed = Lease(node, stored.epoch, now + ttl, ttl, stored.revision + 1)
                return self._grant(zk, found, renewed, now, new_epoch=False)
            newest = max(last, stored.epoch if stored is not None else 0)
            granted = Lease(node, newest + 1, now + ttl, ttl, 1)
            return self._grant(zk, found, granted, now, new_epoch=True)

        with self._using(f"acquire or renew the lease for {node}") as zk:
            return self._until_settled(attempt)

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        self._check_ttl(ttl)

        def attempt() -> Lease | None:
            now, found = self._read(zk, self._lease_paths(), now=True)
            stored = self._lease(found[self._path("leader")], found[self._path("alive")], now)
            if stored is None or stored.holder != node or stored.epoch != epoch:
                return None
            self._saw(stored.epoch)
            renewed = Lease(node, epoch, now + ttl, ttl, stored.revision + 1)
            return self._grant(zk, found, renewed, now, new_epoch=False)

        with self._using(f"renew the lease of {node} under epoch {epoch}") as zk:
            return self._until_settled(attempt)

    def take_over(self, node: str, ttl: float) -> Lease:
        self._check_ttl(ttl)

        def attempt() -> Lease:
            now, found = self._read(zk, self._lease_paths(), now=True)
            stored = self._lease(found[self._path("leader")], found[self._path("alive")], now)
            last = last_epoch_in(found[self._path("epoch")])
            newest = max(last, stored.epoch if stored is not None else 0)
            return self._grant(
                zk, found, Lease(node, newest + 1, now + ttl, ttl, 1), now, new_epoch=True
            )

        with self._using(f"hand the lease to {node}") as zk:
            return self._until_settled(attempt)

    def release(self, node: str, epoch: int) -> bool:
        def attempt() -> bool:
            _, found = self._read(zk, self._lease_paths(), now=False)
            leader, alive = found[self._path("leader")], found[self._path("alive")]
            stored = self._lease(leader, alive, 0.0)
            if stored is None or stored.holder != node or stored.epoch != epoch:
                return False
            assert leader is not None

            def build(txn: Any) -> None:
                txn.set_data(self._path("leader"), dump({}), leader.stat.version)
                if alive is not None:
                    txn.delete(self._path("alive"), alive.stat.version)

            self._commit(zk, build)
            return True

        with self._using(f"release the lease of {node}") as zk:
            return self._until_settled(attempt)

    def current_lease(self) -> Lease | None:
        with self._using("read the lease") as zk:
            now, found = self._read(zk, self._lease_paths(), now=True)
            lease = self._lease(found[self._path("leader")], found[self._path("alive")], now)
            if lease is not None:
                self._saw(lease.epoch)
            return lease

    def last_epoch(self) -> int:
        with self._using("read the last epoch") as zk:
            _, found = self._read(zk, [], now=False)
            return last_epoch_in(found[self._path("epoch")])
