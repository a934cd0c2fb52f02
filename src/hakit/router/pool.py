"""Which node gets the next request: a pure function of the cluster view.

No I/O and no clock reads here: the router passes the view it last read, the
passive-failure marks and ``now``. Stickiness (a later issue) adds the
request's cookies as one more input; the rules below stay the base case.

Passive-failure marks (``down``) map a node name to the ``updated_at`` of the
node's record when the router saw that node refuse or reset a connection. A
mark holds while the record is unchanged; once the node's agent publishes
again (new ``updated_at``, which every app-state change implies) the node is
tried again. Comparing the record's own timestamp with itself keeps this
independent of clock skew between the router and the agent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from hakit.config import Config, Mode, NodeConfig
from hakit.contract import AppState, is_routable
from hakit.coord.base import NodeRecord
from hakit.coord.view import ClusterView

# A mark taken for a node that had no record: any record that appears later clears it.
NO_RECORD = -1.0


def record_routable(record: NodeRecord | None) -> bool:
    """The record says its app serves users (contract.is_routable); unknown states do not."""
    if record is None:
        return False
    try:
        state = AppState(record.app_state)
    except ValueError:
        return False
    return is_routable(state)


def down_mark_for(view: ClusterView, node: str) -> float:
    """The value to store in ``down`` when ``node`` fails a connection now."""
    record = view.nodes.get(node)
    return record.updated_at if record is not None else NO_RECORD


def is_marked_down(view: ClusterView, node: str, down: Mapping[str, float]) -> bool:
    """``node`` failed a connection and its record has not changed since."""
    mark = down.get(node)
    return mark is not None and mark == down_mark_for(view, node)


def prune_down(view: ClusterView, down: Mapping[str, float]) -> dict[str, float]:
    """The marks that still hold for ``view`` (the others' records changed)."""
    return {node: mark for node, mark in down.items() if is_marked_down(view, node, down)}


def _standby_holder(view: ClusterView, now: float) -> str | None:
    """The lease holder, when the lease is valid and its record confirms it serves.

    The lease must be valid both when the view was read and ``now``: a stale
    view (the store unreadable for a while) never extends a lease.
    """
    lease = view.lease
    if lease is None or not (lease.valid_at(view.read_at) and lease.valid_at(now)):
        return None
    record = view.nodes.get(lease.holder)
    if record is None or record.role != "active" or record.epoch != lease.epoch:
        return None
    if not record_routable(record):
        return None
    return lease.holder


def eligible_backends(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    exclude: Collection[str] = (),
) -> tuple[NodeConfig, ...]:
    """Every configured node that may take a new request, in config order.

    Standby modes: at most the current epoch's active node. active-active:
    every node whose record is routable. Nodes marked down or in ``exclude``
    (already tried for this request) are left out; nodes the view knows but
    the config does not are ignored (the config says where a node listens).
    """
    if cfg.cluster.mode is Mode.ACTIVE_ACTIVE:
        names = {name for name, record in view.nodes.items() if record_routable(record)}
    else:
        holder = _standby_holder(view, now)
        names = {holder} if holder is not None else set()
    return tuple(
        node
        for node in cfg.nodes
        if node.name in names
        and node.name not in exclude
        and not is_marked_down(view, node.name, down)
    )


def choose_backend(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    turn: int = 0,
    exclude: Collection[str] = (),
) -> NodeConfig | None:
    """The node for the next request, or None: show the maintenance page.

    ``turn`` is the caller's request counter: round robin over the eligible
    nodes in active-active mode (one node at most in the standby modes).
    """
    candidates = eligible_backends(view, cfg, down, now, exclude=exclude)
    if not candidates:
        return None
    return candidates[turn % len(candidates)]
