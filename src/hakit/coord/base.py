"""The Coordinator interface every backend (SQLite, etcd) implements.

Contract (like Patroni's AbstractDCS, but small):

- One leader lease per cluster. ``acquire_or_renew(node, ttl)`` is atomic: it
  succeeds when the lease is free, expired, or already held by ``node``; a new
  holder (or the same node after its lease expired) gets a strictly greater
  ``epoch``. The epoch is the fencing token: never reused, never decreasing,
  even across ``release``.
- Node records: each agent publishes what it sees of its own node (role, app
  state, pid, epoch it believes in) so the router and ``hakit status`` read the
  same view instead of probing again.
- Event history: append-only, ids strictly increasing, every event carries a
  one-sentence reason.
- Cluster state: a small key/value map of JSON objects that operators write and
  every agent reads each turn (``paused``, ``handover``: see hakit.operator.intents).
  ``clear_state`` with ``if_value`` is a compare-and-delete, so an agent never
  removes an intent newer than the one it acted on.
- ``renew_epoch(node, epoch, ttl)`` extends the lease only if it is still stored
  for ``node`` under ``epoch``, even after it expired: an agent that woke up past
  its deadline keeps its epoch when nobody took over meanwhile (a concurrent
  takeover changed the stored epoch, so this fails and the agent fences itself).
- ``take_over`` is the one way around a valid lease: an operator's forced
  failover. It hands the lease to ``node`` under a new epoch at once; the old
  holder's next renewal fails and it fences itself.

- Identity: a store carries a cluster identity made once, with the store, and
  the identities of the stores it replaces (``hakit init --reinit``). A backend
  remembers the identity and the highest epoch its process has seen (an agent's
  memory also survives restarts, in ``<state_dir>/memory/<node>.json``) and
  raises ``StoreReplacedError`` (a ``CoordinationError``) instead of using a store
  with another identity, none, or a lower last epoch, and instead of creating one
  where a store it knew is gone. It checks again at every call, so once a store
  it trusts is back it reconnects by itself. The caller treats the error as "not
  the leader": an agent fences its app at once.

Times are wall-clock seconds (``time.time()``) as seen by the backend, but no
decision compares a stored time with the reader's clock: the backend judges at
each read (``Lease.remaining``, ``NodeRecord.age``, expired cluster-state values
left out), so readers on hosts whose clocks disagree decide alike.

What a distributed backend (etcd, Consul...) must guarantee on top, because its
callers run on several machines:

- Linearizable lease steps: ``acquire_or_renew``, ``renew_epoch``, ``take_over``
  and ``release`` are each one compare-and-set on the store (a transaction
  conditioned on the stored holder and epoch, or on its revision), never a read
  followed by a separate write.
- Expiry decided by the store: whether a lease has expired is judged on the
  store's side (server-side TTL, or the store's clock inside the transaction),
  never on the caller's clock; a lease must not expire sooner than the ``ttl``
  asked for. ``expires_at`` is reported in the caller's wall-clock seconds as
  nearly as the backend can tell (for display only; ``Lease.remaining`` is what decides).
- Epochs strictly increasing and never reused: an epoch is durable (replicated)
  before it is returned, and survives the store's own leader changes and
  restores.
- Identity checks as above (``StoreReplacedError``), and event ids strictly
  increasing in the order the events were stored.
- Cluster-state keys: callers pass the names of hakit.coord.keys; a store whose
  keyspace clusters share keeps each under the cluster's prefix
  (``hakit.coord.keys.Keys``).
- Failures raise ``CoordinationError`` within a lease TTL, never hang.

Optional capabilities: ``SupportsChangeToken`` (a cheap token that changes
whenever the stored lease, node records or state may have; the router skips
reads while it is unchanged) and, on top, ``SupportsWaitChange`` (a store that
pushes changes: etcd's watch, ZooKeeper's watches; a reader blocks until the
token moves instead of polling for it). A backend without them is polled.
A token must also change when a lease expires by the store's judgement (etcd
deletes the keys attached to it; ZooKeeper's ephemeral ``alive`` znode goes
with its session), and readers still count a cached lease down on their own
clock (``ClusterView.at``): skipping a read never lengthens a lease.
``SupportsLeaseAndNodes``: ``current_lease()`` and ``nodes()`` in one read, cheaper
than the two (hakit.coord.view.read_cluster uses it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# The holder of the lease ``hakit init --reinit`` writes on a distributed store: no node
# takes the lease before the store expires it (hakit.coord.reinit). It names no node:
# nobody follows it, and nobody is fenced for it (hakit.fencing.fence.fence_needs).
REINIT_HOLDER = "(re-initialised)"


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease as the store answered it.

    Its validity is judged by the store, at the read, on the store's own clock:
    ``remaining`` seconds were left then (<= 0: expired, for ``-remaining``
    seconds). Nobody outside hakit.coord compares ``expires_at`` with a local
    clock: nodes need not share a clock (an etcd or ZooKeeper backend serves
    several hosts). A reader that keeps judging later counts the time elapsed since
    its read on its own clock (``ClusterView.lease_left``: differences of one
    clock's readings, never two clocks compared); the holder's own deadline is
    monotonic (hakit.agent.lease). ``expires_at`` (by the store's clock) is
    shown to humans and is the SQLite backend's own bookkeeping.

    ``revision`` grows at each grant and renewal of one epoch (1 for a new
    epoch): "the last renewal" without a clock.
    """

    holder: str
    epoch: int
    expires_at: float  # the store's wall clock: for display only outside hakit.coord
    remaining: float = field(compare=False)  # seconds left as judged by the store at the read
    revision: int = field(default=0, compare=False)

    @property
    def valid(self) -> bool:
        """Valid when read (the store's judgement)."""
        return self.remaining > 0

    @classmethod
    def as_read(
        cls, holder: str, epoch: int, expires_at: float, now: float, revision: int = 0
    ) -> Lease:
        """The lease a store whose clock reads ``now`` answers (backends, and tests)."""
        return cls(holder, epoch, expires_at, expires_at - now, revision)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node's published record. ``updated_at`` is the publisher's clock (display);
    ``age`` is the seconds since the store stored it, by the store's clock at the read
    (0 for a record not read from a store): freshness is judged on ``age``, never by
    comparing ``updated_at`` with the reader's clock."""

    node: str
    role: str  # "active", "standby", "stopped", ...
    app_state: str  # an AppState value
    epoch: int  # the epoch this node acts under (0: none)
    updated_at: float
    detail: dict[str, Any] = field(default_factory=dict)  # pid, restarts, message...
    age: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Event:
    id: int  # assigned by the store on append; 0 before
    time: float
    node: str  # the node it concerns ("" for the cluster)
    kind: str  # e.g. "detected", "restart", "failover", "lease", "alert"
    reason: str  # one sentence a human can read
    epoch: int = 0
    actor: str = ""  # who/what caused it: "agent:node1", "operator:alice", ...
    data: dict[str, Any] = field(default_factory=dict)


class Coordinator(Protocol):
    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        """Take or extend the leader lease for ``node``; None if another node holds it."""
        ...

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        """Extend the lease if it is stored for ``node`` under ``epoch`` (valid or expired);
        None if it was released or another epoch is stored."""
        ...

    def release(self, node: str, epoch: int) -> bool:
        """Give the lease up if ``node`` holds it under ``epoch``; True if it did."""
        ...

    def current_lease(self) -> Lease | None:
        """The lease as stored (may be expired: check ``valid``); None if never held."""
        ...

    def last_epoch(self) -> int:
        """The highest epoch ever handed out (0 if none)."""
        ...

    def take_over(self, node: str, ttl: float) -> Lease:
        """Give the lease to ``node`` under a new epoch, even if another node holds it."""
        ...

    def publish_node(self, record: NodeRecord) -> None:
        """Replace ``record.node``'s record."""
        ...

    def nodes(self) -> Sequence[NodeRecord]:
        """Every published node record, sorted by node name."""
        ...

    def append_event(self, event: Event) -> Event:
        """Store ``event``; return it with its assigned id."""
        ...

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        """Events with id > after_id, oldest first."""
        ...

    def recent_events(self, limit: int) -> Sequence[Event]:
        """The newest ``limit`` events, oldest first."""
        ...

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        """Store ``value`` (JSON-serializable) under ``key``, replacing what was there.
        ``ttl``: the store forgets it ``ttl`` seconds later, by its own clock (reads leave
        it out): "still there" means "written lately", without comparing clocks."""
        ...

    def get_state(self, key: str) -> dict[str, Any] | None:
        """The value under ``key``, or None."""
        ...

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        """Delete ``key`` (only if it still holds ``if_value``, when given); True if deleted."""
        ...

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        """Every key and value, read at one moment."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SupportsChangeToken(Protocol):
    """A backend's optional cheap change token (see the module doc)."""

    def data_version(self, *, wait: bool = True) -> Hashable | None:
        """A token equal to the last one only if nothing was written since; None
        when unknown (``wait=False``: it would have to wait, e.g. on a lock)."""
        ...


@runtime_checkable
class SupportsWaitChange(SupportsChangeToken, Protocol):
    """A backend that pushes changes (see the module doc)."""

    def wait_change(self, token: Hashable | None, timeout: float) -> Hashable | None:
        """Block until the token differs from ``token`` (at most ``timeout`` seconds) and
        return the token then; None while the store cannot say (no watch established)."""
        ...


@runtime_checkable
class SupportsLeaseAndNodes(Protocol):
    """A backend that reads the lease and the node records together (see the module doc)."""

    def lease_and_nodes(self) -> tuple[Lease | None, Sequence[NodeRecord]]:
        """What ``current_lease()`` and ``nodes()`` answer, read at one moment."""
        ...
