"""The key names of the coordination store's cluster state, defined once.

The cluster state (``Coordinator.set_state``, ``get_state``, ``clear_state``,
``cluster_state``) is a small map of JSON objects; its keys are named here and
nowhere else (docs/architecture.md, section 6, says who writes and clears each):

- ``PAUSED`` (``paused``): the operator's pause (hakit.operator.intents);
- ``HANDOVER`` (``handover``): a switchover, forced failover or path-loss
  handover in progress (hakit.operator.intents);
- ``router_report(name)`` (``router/<name>``, all under ``ROUTER_REPORTS``):
  each router's report of what it sees of the nodes (hakit.health.datapath).

Relative and full names. Callers of a ``Coordinator`` always pass the RELATIVE
names above: a store holds one cluster, so the name says which entry of that
cluster. A backend whose keyspace is shared by several clusters (etcd, Consul)
must keep clusters apart: it stores each entry under the cluster's prefix,
``Keys(cluster).full(key)`` (``/hakit/<cluster>/paused``), and hands the
relative name back when it reads (``Keys(cluster).relative(full)``; entries
outside the prefix are not its cluster's and are skipped). The cluster name is
``cluster.name`` of the config.

The SQLite backend stores the RELATIVE name: its file belongs to one cluster
already (``<state_dir>/coordination.db``), so a prefix would say nothing, would
make every store written before it unreadable, and would tie the file to a
cluster name an operator may still change.
"""

from __future__ import annotations

from dataclasses import dataclass

PAUSED = "paused"
HANDOVER = "handover"
ROUTER_REPORTS = "router/"  # the prefix of every router's report
ROOT = "/hakit/"  # under which a shared keyspace holds every cluster


def router_report(router: str) -> str:
    """The key of router ``router``'s report (``router/<host:port>``)."""
    return ROUTER_REPORTS + router


def is_router_report(key: str) -> bool:
    return key.startswith(ROUTER_REPORTS)


def prefix(cluster: str) -> str:
    """The prefix of cluster ``cluster``'s entries in a shared keyspace: ``/hakit/<cluster>/``."""
    if not cluster or "/" in cluster:
        raise ValueError(f"a cluster name without '/' is needed for a key prefix, got {cluster!r}")
    return f"{ROOT}{cluster}/"


@dataclass(frozen=True, slots=True)
class Keys:
    """Full key names of one cluster, for a backend whose keyspace clusters share."""

    cluster: str

    @property
    def prefix(self) -> str:
        return prefix(self.cluster)

    def full(self, key: str) -> str:
        """``paused`` -> ``/hakit/<cluster>/paused``."""
        return self.prefix + key

    def relative(self, full: str) -> str | None:
        """The inverse of ``full``; None for a key outside this cluster's prefix."""
        start = self.prefix
        return full[len(start) :] if full.startswith(start) else None

    @property
    def paused(self) -> str:
        return self.full(PAUSED)

    @property
    def handover(self) -> str:
        return self.full(HANDOVER)

    def router_report(self, router: str) -> str:
        return self.full(router_report(router))
