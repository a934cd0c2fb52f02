"""A frozen snapshot of the cluster, read once per tick (Patroni's ``Cluster``).

Decisions (the router's choice of backend, ``hakit status``) are made on this
view, never on live reads scattered through the decision.

Lease validity is decided here, in hakit.coord, from the store's own judgement
at the read (``Lease.remaining``) and the time elapsed since on the reader's own
clock: never by comparing the store's ``expires_at`` with the reader's clock, so
a reader whose clock is off (another host) decides alike. The elapsed time is a
difference of two readings of the reader's wall clock (the clock the router and
the tests pass as ``now``); a step of that clock while a view is kept shifts it,
as it always did; the holder's own deadline is monotonic (hakit.agent.lease).
"""

from __future__ import annotations

from dataclasses import dataclass

from hakit.coord.base import Coordinator, Lease, NodeRecord, SupportsLeaseAndNodes


@dataclass(frozen=True, slots=True)
class ClusterView:
    lease: Lease | None
    nodes: dict[str, NodeRecord]
    read_at: float  # the reader's wall-clock seconds the view stands for
    # The reader's wall clock when the store answered (None: ``read_at``). A view reused
    # under a later read time (hakit.router.viewreader, ``at``) keeps it.
    lease_read_at: float | None = None

    @property
    def leader(self) -> str | None:
        """The node holding a valid lease at ``read_at``, if any."""
        if self.lease is not None and self.lease_left(self.read_at) > 0:
            return self.lease.holder
        return None

    def lease_left(self, now: float) -> float:
        """Seconds of validity the lease has left at ``now`` (the reader's clock, at or after
        the read): what the store judged then, less the time elapsed since on this clock."""
        lease = self.lease
        if lease is None:
            return -float("inf")
        since = self.read_at if self.lease_read_at is None else self.lease_read_at
        return lease.remaining - max(0.0, now - since)

    def lease_valid(self, now: float) -> bool:
        """The lease is valid at the reader's ``now`` (see ``lease_left``)."""
        return self.lease_left(now) > 0

    def at(self, now: float) -> ClusterView:
        """The same lease and records, standing for the reader's later time ``now``."""
        read = self.read_at if self.lease_read_at is None else self.lease_read_at
        return ClusterView(self.lease, self.nodes, now, read)

    @property
    def epoch(self) -> int:
        return self.lease.epoch if self.lease is not None else 0


def read_cluster(coordinator: Coordinator, now: float) -> ClusterView:
    if isinstance(coordinator, SupportsLeaseAndNodes):  # one read instead of two (etcd)
        lease, records = coordinator.lease_and_nodes()
    else:
        lease, records = coordinator.current_lease(), coordinator.nodes()
    return ClusterView(lease=lease, nodes={record.node: record for record in records}, read_at=now)
