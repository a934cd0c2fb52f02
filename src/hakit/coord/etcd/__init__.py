"""The etcd v3 coordination backend: one etcd cluster shared by the agents of several hosts.

It speaks to etcd's JSON gateway (gRPC-gateway, ``/v3/`` since etcd 3.4) over
keep-alive ``http.client`` connections (http.py; the watch's stream over
requests): synchronous like the Coordinator interface, plain HTTP(S), no gRPC
stack. Everything of a cluster lives under
``<prefix>/<cluster>/`` (``P``):

- ``P/identity``: the cluster identity (a uuid4 made once, with the store) and
  its lineage; a process remembers it (and the highest epoch it saw) and raises
  StoreReplacedError when it changes, vanishes or the last epoch went back;
- ``P/epoch``: the epoch counter, the highest epoch ever handed out;
- ``P/leader``: the lease as stored (holder, epoch, revision, the etcd lease id,
  ``expires_at`` by the writer's clock for display). It stays after the lease
  expired (so ``current_lease`` answers an expired lease, and ``renew_epoch``
  can revive it under the same epoch); ``release`` deletes it;
- ``P/leader/alive``: attached to the etcd lease (TTL: the lease ttl rounded up to
  whole seconds, never shorter): its existence is the server's judgement that
  the lease is valid. etcd deletes it when the holder stops renewing;
- ``P/nodes/<node>``, ``P/events/<id>``, ``P/event_id``, ``P/state/<key>``:
  node records, the event history and the cluster state (records.py).

Lease steps (acquire, renew, renew_epoch, take_over, release) each read, then
write in ONE transaction that compares the ``mod_revision`` (or absence) of every
key the decision was made on, the identity key included; a transaction that
lost a race is retried from a fresh read. A grant of a new holder increments
``P/epoch`` in that same transaction, so an epoch is never handed out twice.
Renewing an alive lease refreshes the same etcd lease (keepalive) and bumps
``revision`` in ``P/leader``; ``renew_epoch`` of an expired lease grants a new
etcd lease under the same epoch only if ``P/leader`` and ``P/epoch`` are
unchanged and ``P/leader/alive`` is still absent.

Times. Nothing here compares a stored time with this host's clock to decide.
``Lease.remaining`` of an alive lease is the TTL left by the server (whole
seconds, rounded down by etcd: a reader may see a lease expire up to a second
early, never late); of an expired lease, ``min(0, expires_at - now)`` (how long
ago is a display estimate; that it expired is the server's judgement). etcd
revokes expired leases on a 500 ms tick: a lease lasts at most ~0.5 s longer
than its TTL. ``NodeRecord.age`` has the same one-second resolution (rounded up).

Every call raises CoordinationError within ``timeout`` seconds (each HTTP
request gets what is left of it; endpoints are tried in turn).

The modules, one job each:

- ``section.py``: ``[coordination.etcd]`` (``EtcdSection``);
- ``transport.py``: HTTP to the gateway: endpoints, authentication, TLS,
  deadlines, errors, etcd leases;
- ``layout.py``: the key names and the gateway's request and answer shapes;
- ``identity.py``: the identity guard and the read-check-retry loop;
- ``leases.py``: the leader lease's transactions;
- ``records.py``: node records, events, cluster state;
- ``watch.py``: the change token, kept by a watch on ``P``;
- ``coordinator.py``: ``EtcdCoordinator`` putting them together, ``open_etcd``.
"""

from hakit.coord.etcd.coordinator import EtcdCoordinator, open_etcd
from hakit.coord.etcd.section import DEFAULT_MAX_EVENTS, EtcdSection
from hakit.coord.etcd.transport import API_PATH

__all__ = ["API_PATH", "DEFAULT_MAX_EVENTS", "EtcdCoordinator", "EtcdSection", "open_etcd"]
