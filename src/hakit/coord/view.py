"""A frozen snapshot of the cluster, read once per tick (Patroni's ``Cluster``).

Decisions (the router's choice of backend, ``hakit status``) are made on this
view, never on live reads scattered through the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from hakit.coord.base import Coordinator, Lease, NodeRecord


@dataclass(frozen=True, slots=True)
class ClusterView:
    lease: Lease | None
    nodes: dict[str, NodeRecord]
    read_at: float  # wall-clock seconds when it was read

    @property
    def leader(self) -> str | None:
        """The node holding a valid lease at ``read_at``, if any."""
        if self.lease is not None and self.lease.valid_at(self.read_at):
            return self.lease.holder
        return None

    @property
    def epoch(self) -> int:
        return self.lease.epoch if self.lease is not None else 0


def read_cluster(coordinator: Coordinator, now: float) -> ClusterView:
    return ClusterView(
        lease=coordinator.current_lease(),
        nodes={record.node: record for record in coordinator.nodes()},
        read_at=now,
    )
