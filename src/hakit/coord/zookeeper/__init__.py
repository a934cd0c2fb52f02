"""The ZooKeeper coordination backend (kazoo): one cluster's store in a ZooKeeper ensemble.

Layout. A cluster lives under ``<prefix>/<cluster>`` (``[coordination.zookeeper]
prefix``, default ``/hakit``; ``cluster`` defaults to ``cluster.name``: the
per-cluster prefix of hakit.coord.keys), in znodes made together, in one
transaction, when the store is created:

- ``identity``: the cluster identity and lineage (hakit.coord.base, "Identity");
- ``epoch``: the highest epoch ever handed out (``{"last_epoch": N}``);
- ``leader``: the lease as stored (holder, epoch, revision, granted_at, ttl, the
  session it is bound to), ``{}`` when free; ``alive``: an EPHEMERAL znode of the
  holder's session (see below); the hold of ``hakit init --reinit`` (holder,
  epoch, ttl: reinit.py) is bound to no session;
- ``clock``: an empty znode written to read the server's clock (below);
- ``nodes/<node>``: each node's record; ``events/e-<sequence>``: the event history,
  SEQUENTIAL znodes, the id being the sequence number + 1 (assigned by the server
  in commit order, so strictly increasing); the oldest are deleted beyond
  ``max_events`` (checked every ``trim_every`` appends);
- ``state``: the whole cluster-state map in one znode (small JSON objects), so
  ``cluster_state`` is one read at one moment and every change a compare-and-set.

Every lease step (``acquire_or_renew``, ``renew_epoch``, ``take_over``,
``release``) reads the znodes, decides, and writes in ONE ZooKeeper transaction
conditioned on the versions it read (``leader``, ``epoch``, ``alive``) and on the
``identity`` znode: a concurrent step makes it fail and the call starts again from
the read (until its deadline). A new epoch and the lease naming it are written in
the same transaction; ZooKeeper replies once a quorum has it in its log.

Lease expiry: the server's clock, and the holder's session. Chosen so that the
contract (a lease never expires sooner than the ttl asked for, and it can be
renewed under its epoch after expiry when nobody took over) holds, while
ZooKeeper's own failure detection still ends a lease:

- Time: a lease expires ``ttl`` seconds after it was granted or renewed, by the
  ZooKeeper leader's clock. The backend reads that clock by writing the ``clock``
  znode and reading the ``mtime`` of its answer (the time the leader stamped on
  the write) at the start of each call; the grant time stored is that reading,
  taken before the lease is written (so the lease lasts at least ``ttl`` from
  when the caller asked). ``Lease.remaining`` is ``granted_at + ttl - now``, both
  on the server's clock; ``expires_at`` is on that clock too (display only).
  The write also orders the call's reads after everything committed before it
  (a ``sync``): a reader on a lagging follower does not see an old lease.
- Session: the lease is bound to the session of the process that was granted it
  (an EPHEMERAL ``alive`` znode made in the same transaction). When that session
  ends (the client closed, or ZooKeeper expired it), the lease is judged expired
  at once (``remaining`` at most 0), whatever the clock says. The session
  timeout must be at least the lease TTL (checked), so a session cannot expire
  before the holder's own deadline (hakit.agent.lease) unless it was closed: the
  session bounds the lease even if a ZooKeeper leader with a slow clock takes
  over, never the other way round.
- ``renew_epoch`` extends a lease stored under the caller's epoch even when it
  expired (by time or by its session), binding it to the caller's current
  session; ``acquire_or_renew`` of an expired lease hands out a new epoch, also
  to its former holder. ``take_over`` binds the lease to the caller's session: in
  hakit it is the new holder's own agent that takes over.

What an operator sees when the holder's process freezes (SIGSTOP, a long GC)
past its session timeout: ``ttl`` after its last renewal the lease shows as
expired in ``hakit status`` and another node may take it (a new epoch); once
the session timeout has passed, ZooKeeper deletes the ``alive`` znode. When the
process thaws, kazoo finds its session expired and opens a new one; the agent's
``renew_epoch`` fails if another node took over (it fences itself), or keeps its
epoch, bound to the new session, if nobody did.

Costs, known limits: each call that needs the server's time writes the ``clock``
znode once (a replicated write, also for reads); the identity and epoch znodes
are read again only when data watches say they changed (guardcache.py); the
change token (watch.py) lets the router skip reads, and wakes it;
a timed-out write may still be applied later (ZooKeeper keeps a session's queued
requests): a grant the caller never heard of lasts one TTL and names the
caller's own node; times come from the ZooKeeper leader's wall clock, so keep the
ensemble's clocks in sync (NTP): a leader change to a server whose clock is ahead
shortens running leases by that much (the session rule keeps a slow one from
lengthening them).

Identity: as hakit.coord.sqlite. The ``identity`` znode is checked at every call
(read, or kept from the last read while its watch has not fired: guardcache.py);
a coordinator refuses (``StoreReplacedError``) a store with another identity, a
last epoch below the highest it saw, or none where it saw one, and only a
process that never saw one creates a store (``create``). Every write
transaction also checks that the ``identity`` znode is still the one read.

Failures: each call has a deadline (``timeout``, default 2 s, below the lease
TTL: checked by the config): past it, or on a
ZooKeeper error, it raises ``CoordinationError``; it never hangs. Connecting is
bounded by the same timeout; kazoo reconnects in the background after.

The modules, one job each:

- ``section.py``: ``[coordination.zookeeper]`` (``ZooKeeperSection``, ``ZooKeeperAuth``);
- ``layout.py``: the znode documents as read and written (JSON), the race signal;
- ``session.py``: the settings and the state of one coordinator, its kazoo client
  and session, the call's deadline;
- ``identity.py``: the identity guard, the store's creation, the read and the
  write transaction every call goes through, and the retry loop;
- ``guardcache.py``: the identity and epoch znodes kept while their watches are quiet;
- ``watch.py``: the change token (``data_version``, ``wait_change``) from watches;
- ``leases.py``: the leader lease's steps;
- ``records.py``: node records, events, cluster state;
- ``coordinator.py``: ``ZooKeeperCoordinator`` putting them together, ``open_zookeeper``.
- ``reinit.py``: ``hakit init`` and ``hakit init --reinit`` (one transaction, the hold).
"""

from hakit.coord.zookeeper.coordinator import ZooKeeperCoordinator, open_zookeeper
from hakit.coord.zookeeper.section import (
    DEFAULT_MAX_EVENTS,
    DEFAULT_TRIM_EVERY,
    ZooKeeperAuth,
    ZooKeeperSection,
    cluster_root,
)

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_TRIM_EVERY",
    "ZooKeeperAuth",
    "ZooKeeperCoordinator",
    "ZooKeeperSection",
    "cluster_root",
    "open_zookeeper",
]
