"""Which node gets the next request: a pure function of what the router knows.

No I/O and no clock reads here: the router passes the cluster view it last
read, its passive-failure marks, its health board, its in-flight counts, the
request's sticky node (sticky.py) and the times. ``route`` is the whole
decision; the pieces below it are small rules tested one by one.

Which nodes may serve, by mode:

- cold-standby, warm-standby, restart-only: only the lease holder of the
  current epoch, and only if its record says it is active under that epoch
  (a node claiming to be active without the epoch gets nothing). A warm
  standby's running app gets no traffic either.

  The epoch is the fencing token, not the lease's expiry: once the holder's
  lease has expired it still serves while (1) the stored lease is still its
  epoch (nobody holds a newer one: a newer epoch in the store switches routing
  at once), (2) the lease was not released (a handover, switchover or shutdown
  deletes it, which stops routing at once), (3) the router's own health checks
  say it serves (its last check answered: ``HealthBoard.answering``) and (4) the
  view is fresh (read within ``stale_view``): a view the router can no longer
  refresh never extends a lease. An agent stalled past its deadline thus keeps
  its users served (hakit.health.datapath: the standby does not take over while the
  routers get answers), and a dead node stops getting new users at its first
  failed check.
- active-active: every node whose record is routable.

Each such node is SERVING (new and sticky users) or DRAINING: its app reports
STOPPING or MAINTENANCE, its record carries ``detail["draining"] = true``, or
the health board says DRAIN. A draining node keeps its sticky users (their
sessions finish there) but gets no new ones, until ``router.drain_timeout``
after the drain began; then its sticky users are moved too (HAProxy #2894,
Envoy #7218: drains without an end strand users). In the standby modes a
holder whose agent flags a planned move (a switchover) gets nobody at all: its
app stops once what is in flight is done, so every new request, sticky or not,
is held for the next active.

A sticky user whose node is down, or draining past the deadline, is handled
by ``router.sticky_down``, the same for every strategy: ``move`` (balance it
as a new user; the router rewrites its own cookie), ``hold`` (wait up to
``sticky_hold`` for the node, then move) or ``fail`` (the maintenance page).
In the standby modes that applies only to a user of the lease holder: a user
of any other node is simply moved, since that node will not serve again
(there is no automatic failback).

Passive-failure marks (``down``) map a node name to the ``updated_at`` of the
node's record when the router saw that node refuse or reset a connection. A
mark holds while the record is unchanged; once the node's agent publishes
again (new ``updated_at``, which every app-state change implies) the node is
tried again. Comparing the record's own timestamp with itself keeps this
independent of clock skew between the router and the agent.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from hakit.config import Balance, Config, Mode, NodeConfig, StickyDown
from hakit.contract import AppState, is_routable
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.view import ClusterView
from hakit.router.balance import HealthView, pick_new, ramp_weight

# A mark taken for a node that had no record: any record that appears later clears it.
NO_RECORD: Final = -1.0

# App states that keep sticky users but take no new ones (they drain).
DRAIN_STATES: Final = frozenset({AppState.STOPPING.value, AppState.MAINTENANCE.value})


class Verdict(enum.Enum):
    """``route``'s answer when it names no node."""

    NO_NODE = "no-node"  # nobody may serve: the maintenance page (or a hold, exchange.py)
    HOLD = "hold"  # wait for the sticky node to come back (sticky_down = "hold")
    FAIL = "fail"  # the sticky node is gone and the policy is to fail (sticky_down = "fail")


@dataclass(frozen=True, slots=True)
class Eligibility:
    serving: tuple[NodeConfig, ...]  # may take new users, in config order
    draining: tuple[NodeConfig, ...]  # keep their sticky users only
    members: frozenset[str]  # nodes the mode lets serve at all (see module doc)


# --- records ------------------------------------------------------------------------------


def record_routable(record: NodeRecord | None) -> bool:
    """The record says its app serves users (contract.is_routable); unknown states do not."""
    if record is None:
        return False
    try:
        state = AppState(record.app_state)
    except ValueError:
        return False
    return is_routable(state)


def record_draining(record: NodeRecord | None) -> bool:
    """The app is stopping or in maintenance, or its agent flagged it as draining."""
    if record is None:
        return False
    if record.app_state in DRAIN_STATES:
        return True
    return record.detail.get("draining") is True and record_routable(record)


def handing_over(record: NodeRecord | None) -> bool:
    """Its agent flagged a planned move (a switchover's drain, ``detail["draining"]``)."""
    return record is not None and record.detail.get("draining") is True


def draining_nodes(view: ClusterView, health: HealthView | None = None) -> list[str]:
    """Every node draining according to its record or to the health board."""
    names = [name for name, record in view.nodes.items() if record_draining(record)]
    if health is not None:
        names += [name for name in view.nodes if name not in names and health.draining(name)]
    return names


def routable_nodes(view: ClusterView) -> list[str]:
    """Nodes whose record takes new users (for slow start without a health board)."""
    return [
        name
        for name, record in view.nodes.items()
        if record_routable(record) and not record_draining(record)
    ]


# --- passive down marks ---------------------------------------------------------------------


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


# --- drains -----------------------------------------------------------------------------------


def track_drains(
    previous: Mapping[str, float], draining: Iterable[str], now: float
) -> dict[str, float]:
    """When each draining node began draining: kept from ``previous``, else ``now``.

    Fed every node draining in the latest observation; a node that stopped
    draining is forgotten (its next drain starts a new deadline).
    """
    return {name: previous.get(name, now) for name in draining}


def drain_expired(
    node: str, drain_began: Mapping[str, float], drain_timeout: float, now: float
) -> bool:
    """``node``'s drain began ``drain_timeout`` or more ago (``now``: same clock)."""
    began = drain_began.get(node)
    return began is not None and now - began >= drain_timeout


# --- eligibility --------------------------------------------------------------------------------


def _lease_holder(view: ClusterView) -> str | None:
    """The holder of the stored lease (valid or expired, never released), when its record
    is active under the lease's epoch."""
    lease = view.lease
    if lease is None:
        return None
    record = view.nodes.get(lease.holder)
    if record is None or record.role != "active" or record.epoch != lease.epoch:
        return None
    return lease.holder


@dataclass(frozen=True, slots=True)
class Standing:
    """What the records alone say, computed once per view (not per request)."""

    base: Eligibility  # before down marks, health, exclusions and the lease's expiry
    lease: Lease | None  # standby modes: once it expired, ``base`` needs ``serves_expired``


NOBODY: Final = Eligibility((), (), frozenset())


def standing(view: ClusterView, cfg: Config) -> Standing:
    """Which configured nodes the records let serve, and how (see the module doc)."""
    if cfg.cluster.mode is Mode.ACTIVE_ACTIVE:
        members = frozenset(node.name for node in cfg.nodes)
        lease = None
    else:
        holder = _lease_holder(view)
        if holder is None:
            return Standing(NOBODY, None)
        members, lease = frozenset((holder,)), view.lease
    serving: list[NodeConfig] = []
    draining: list[NodeConfig] = []
    for node in cfg.nodes:
        if node.name not in members:
            continue
        record = view.nodes.get(node.name)
        if lease is not None and handing_over(record):
            # A planned move in a standby mode: its app stops once the requests in flight
            # are done, and no session of it survives that, so sticky users are held with
            # the rest for the new active instead of being sent to the old one meanwhile.
            continue
        if record_draining(record):
            draining.append(node)
        elif record_routable(record):
            serving.append(node)
    return Standing(Eligibility(tuple(serving), tuple(draining), members), lease)


def stale_view(cfg: Config) -> float:
    """A view read longer ago than this cannot let an expired lease's holder serve."""
    return max(1.0, 10 * cfg.router.state_poll_interval)


def serves_expired(
    view: ClusterView, cfg: Config, lease: Lease, now: float, health: HealthView | None
) -> bool:
    """May the holder of ``lease``, expired by ``now``, still serve? (the module doc)"""
    if health is None or now - view.read_at > stale_view(cfg):
        return False
    return health.answering(lease.holder)


def eligibility(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    exclude: Collection[str] = (),
    health: HealthView | None = None,
    known: Standing | None = None,
) -> Eligibility:
    """Which configured nodes may serve now, and how (see the module doc).

    Nodes marked down, not routable on the health board, or in ``exclude``
    (already tried for this request) are left out; nodes the view knows but
    the config does not are ignored (the config says where a node listens).
    A lease that has expired by ``now`` still lets its holder serve only under
    the conditions of the module doc (``serves_expired``). ``known``:
    ``standing(view, cfg)`` if the caller keeps it.
    """
    st = known if known is not None else standing(view, cfg)
    if (
        st.lease is not None
        and not view.lease_valid(now)
        and not serves_expired(view, cfg, st.lease, now, health)
    ):
        return NOBODY
    base = st.base
    if not (down or exclude or health is not None):
        return base
    for node in (*base.serving, *base.draining):  # usually nothing is filtered: check first
        name = node.name
        if name in exclude or (down and is_marked_down(view, name, down)):
            break
        if health is not None and not health.routable(name):
            break
    else:
        return base
    serving: list[NodeConfig] = []
    draining: list[NodeConfig] = []
    for nodes, drained in ((base.serving, False), (base.draining, True)):
        for node in nodes:
            name = node.name
            if name in exclude or (down and is_marked_down(view, name, down)):
                continue
            drains = drained
            if health is not None and not health.routable(name):
                if not health.draining(name):
                    continue  # the router's own checks say it is down
                drains = True
            (draining if drains else serving).append(node)
    return Eligibility(tuple(serving), tuple(draining), base.members)


def eligible_backends(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    exclude: Collection[str] = (),
    health: HealthView | None = None,
) -> tuple[NodeConfig, ...]:
    """Every configured node that may take a NEW user, in config order."""
    return eligibility(view, cfg, down, now, exclude=exclude, health=health).serving


# --- the decision -------------------------------------------------------------------------------


def sticky_target(
    found: Eligibility,
    sticky: str | None,
    *,
    policy: StickyDown,
    drain_over: bool,
    hold_over: bool,
) -> NodeConfig | Verdict | None:
    """Where a request pinned to ``sticky`` goes; None: balance it as a new user.

    ``drain_over``: the sticky node's drain deadline has passed.
    ``hold_over``: this request was held for its node already (sticky_hold ran out).
    """
    if sticky is None:
        return None
    for node in found.serving:
        if node.name == sticky:
            return node
    if not drain_over:
        for node in found.draining:
            if node.name == sticky:
                return node
    if sticky not in found.members or policy is StickyDown.MOVE:
        return None
    if policy is StickyDown.HOLD:
        return None if hold_over else Verdict.HOLD
    return Verdict.FAIL


def route(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    clock: float = 0.0,
    sticky: str | None = None,
    exclude: Collection[str] = (),
    health: HealthView | None = None,
    in_flight: Mapping[str, int] | None = None,
    turn: int = 0,
    drain_began: Mapping[str, float] | None = None,
    up_since: Mapping[str, float | None] | None = None,
    hold_over: bool = False,
    known: Standing | None = None,
) -> NodeConfig | Verdict:
    """The node for a request, or why there is none.

    ``now`` is wall-clock time (leases); ``clock`` the router's monotonic time
    (drain deadlines, slow start). ``sticky``: the node the request is pinned
    to. ``in_flight``: requests in flight per node (least-outstanding).
    ``turn``: the router's request counter (round robin, ties, slow start).
    ``up_since``: when each routable node came back by its records (slow
    start without, or besides, the health board). ``known``: ``standing(view, cfg)``,
    kept by the caller between views.
    """
    rc = cfg.router
    found = eligibility(view, cfg, down, now, exclude=exclude, health=health, known=known)
    if sticky is not None:
        over = drain_expired(sticky, drain_began or {}, rc.drain_timeout, clock)
        target = sticky_target(
            found, sticky, policy=rc.sticky_down, drain_over=over, hold_over=hold_over
        )
        if target is not None:
            return target
    weights = None
    if rc.slowstart > 0 and len(found.serving) > 1:
        weights = slowstart_weights(found.serving, health, up_since or {}, clock, rc.slowstart)
    chosen = pick_new(
        found.serving, balance=rc.balance, in_flight=in_flight or {}, turn=turn, weights=weights
    )
    return chosen if chosen is not None else Verdict.NO_NODE


def slowstart_weights(
    nodes: Iterable[NodeConfig],
    health: HealthView | None,
    up_since: Mapping[str, float | None],
    clock: float,
    slowstart: float,
) -> list[float] | None:
    """Each node's slow-start weight; None when nobody is ramping (the common case).

    A node's comeback is the later of what its records and the health board saw.
    """
    weights = []
    for node in nodes:
        came = up_since.get(node.name)
        board = health.up_since(node.name) if health is not None else None
        if board is not None and (came is None or board > came):
            came = board
        weights.append(ramp_weight(came, clock, slowstart))
    return weights if any(weight < 1.0 for weight in weights) else None


def choose_backend(
    view: ClusterView,
    cfg: Config,
    down: Mapping[str, float],
    now: float,
    *,
    turn: int = 0,
    exclude: Collection[str] = (),
) -> NodeConfig | None:
    """The node for a new user by round robin, or None: show the maintenance page.

    The base case of ``route`` (no stickiness, no load, no health board).
    """
    chosen = pick_new(
        eligible_backends(view, cfg, down, now, exclude=exclude),
        balance=Balance.ROUND_ROBIN,
        in_flight={},
        turn=turn,
    )
    return chosen
