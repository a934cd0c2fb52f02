"""Coordination: leader lease with fencing epoch, cluster state, event history."""

from hakit.coord.base import Coordinator, Event, Lease, NodeRecord

__all__ = ["Coordinator", "Event", "Lease", "NodeRecord"]
