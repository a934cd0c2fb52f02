"""The ZooKeeper coordination backend (kazoo): one cluster's store in a ZooKeeper ensemble.

Layout. A cluster lives under ``<prefix>/<cluster>`` (``[coordination.zookeeper]
prefix``, default ``/hakit``; ``cluster`` defaults to ``cluster.name``: the
per-cluster prefix of hakit.coord.keys), in znodes made together, in one
transaction, when the store is created:

- ``identity``: the cluster identity and lineage (hakit.coord.base, "Identity");
- ``epoch``: the highest epoch ever handed out (``{"last_epoch": N}``);
- ``leader``: the lease as stored (holder, epoch, revision, granted_at, ttl, the
  session it is bound to), ``{}`` when free; ``alive``: an EPHEMERAL znode of the
  holder's session (see below);
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

Costs, known limits: each call writes the ``clock`` znode once (a replicated
write, also for reads; the router polls, as this backend has no change token);
a timed-out write may still be applied later (ZooKeeper keeps a session's queued
requests): a grant the caller never heard of lasts one TTL and names the
caller's own node; times come from the ZooKeeper leader's wall clock, so keep the
ensemble's clocks in sync (NTP): a leader change to a server whose clock is ahead
shortens running leases by that much (the session rule keeps a slow one from
lengthening them).

Identity: as hakit.coord.sqlite. The ``identity`` znode is read at every call;
a coordinator refuses (``StoreReplacedError``) a store with another identity, a
last epoch below the highest it saw, or none where it saw one, and only a
process that never saw one creates a store (``create``). Every write
transaction also checks that the ``identity`` znode is still the one read.

Failures: each call has a deadline (``timeout``, default 2 s, below the lease
TTL: checked by the config): past it, or on a
ZooKeeper error, it raises ``CoordinationError``; it never hangs. Connecting is
bounded by the same timeout; kazoo reconnects in the background after.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hakit.coord import keys
from hakit.coord.base import Event, Lease, NodeRecord
from hakit.coord.memory import Memory, make_private_dir, memory_file, read_memory, write_memory
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError

log = logging.getLogger("hakit.coord")
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_TRIM_EVERY = 100
T = TypeVar("T")


class ZooKeeperAuth(BaseModel):
    """``[coordination.zookeeper.auth]``: credentials added to the session. With them,
    the znodes hakit creates are readable and writable by those credentials only
    (ZooKeeper's ``auth`` ACL): give every agent, router and operator the same."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str = "digest"
    credential: str  # digest: "user:password"


class ZooKeeperSection(BaseModel):
    """``[coordination.zookeeper]``: this backend's own part of the config.

    ``hosts``: the ensemble's ``host:port`` addresses; ``prefix``: the znode under
    which each cluster has its own (``<prefix>/<cluster>``); ``cluster``: that
    znode's name, default ``cluster.name``; ``session_timeout`` (seconds): the
    ZooKeeper session's, at least ``lease_ttl`` (the server may clamp it to its
    ``minSessionTimeout``..``maxSessionTimeout``); ``timeout`` (seconds): the
    longest one call waits before it raises, below ``lease_ttl``; ``auth``: optional credentials.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1:2181"], min_length=1)
    prefix: str = "/hakit"
    cluster: str | None = None
    session_timeout: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    auth: ZooKeeperAuth | None = None

    @field_validator("prefix")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        parts = value.split("/")
        if not value.startswith("/") or (value != "/" and "" in parts[1:]):
            raise ValueError(
                f"{json.dumps(value)} is not a znode path; expected an absolute path without a "
                'trailing "/", e.g. "/hakit"'
            )
        return value

    @field_validator("cluster")
    @classmethod
    def _one_name(cls, value: str | None) -> str | None:
        if value is not None:
            keys.prefix(value)  # raises ValueError for "" or a name with "/"
        return value


def cluster_root(prefix: str, cluster: str) -> str:
    """``/hakit`` and ``c1`` -> ``/hakit/c1``."""
    keys.prefix(cluster)
    return prefix.rstrip("/") + "/" + cluster


def open_zookeeper(
    section: ZooKeeperSection,
    *,
    state_dir: Path,
    config: str | None,
    create: bool,
    node: str | None,
    cluster: str,
) -> ZooKeeperCoordinator:
    """The opener hakit.coord.registry names (see hakit.coord.factory.open_coordinator);
    ``cluster``: cluster.name, the znode under the prefix unless the section names one."""
    cluster = section.cluster or cluster
    memory = None
    if node is not None:
        make_private_dir(state_dir)
        memory = memory_file(state_dir, node)
    coordinator = ZooKeeperCoordinator(
        section.hosts,
        cluster_root(section.prefix, cluster),
        session_timeout=section.session_timeout,
        timeout=section.timeout,
        auth=(section.auth.scheme, section.auth.credential) if section.auth else None,
        memory_path=memory,
        create=create,
        config=config,
    )
    if not create:
        try:
            exists = coordinator.store_exists()
        except BaseException:
            coordinator.close()
            raise
        if not exists:
            coordinator.close()
            raise NoClusterState(coordinator.where)
    return coordinator


@dataclass(frozen=True, slots=True)
class _Node:
    """A znode as read: its JSON document and its stat."""

    doc: Any
    stat: ZnodeStat


class _Conflict(Exception):
    """A transaction lost a race: read again and decide again."""


def _dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _load(data: bytes) -> Any:
    return json.loads(data) if data else None


def _same(a: Any, b: Any) -> bool:
    return _dump(a) == _dump(b)


class ZooKeeperCoordinator:
    """The ``Coordinator`` protocol on a ZooKeeper ensemble (see the module doc).

    ``root``: the cluster's znode. ``clock``: None (always, outside tests): the
    server's clock, read at each call; a callable stands in for it (the contract
    tests move time with it). ``memory_path``, ``create``, ``config``: as
    hakit.coord.sqlite.SqliteCoordinator. ``detail`` and ``data`` must be
    JSON-serializable.
    """

    def __init__(
        self,
        hosts: Sequence[str] | str,
        root: str,
        *,
        session_timeout: float = 10.0,
        timeout: float = 2.0,
        auth: tuple[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        trim_every: int = DEFAULT_TRIM_EVERY,
        memory_path: Path | None = None,
        create: bool = True,
        config: str | None = None,
    ) -> None:
        if max_events < 1 or trim_every < 1:
            raise ValueError("max_events and trim_every must be at least 1")
        self.hosts = hosts if isinstance(hosts, str) else ",".join(hosts)
        self.root = root.rstrip("/")
        self.where = f"zookeeper://{self.hosts}{self.root}"
        self._session_timeout = session_timeout
        self._timeout = timeout
        self._auth = auth
        self._clock = clock
        self._max_events = max_events
        self._trim_every = trim_every
        self._memory_path = Path(memory_path) if memory_path is not None else None
        self._create = create
        self._config = config or "CONFIG"
        self._client: KazooClient | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one call at a time; guards the memory below
        self._deadline = 0.0  # of the call in progress
        self._memory_loaded = False
        self._identity: str | None = None
        self._lineage: tuple[str, ...] = ()
        self._seen_epoch = 0
        self._saved: Memory | None = None
        self._pending_epoch = 0
        self._identity_version = 0  # of the identity znode read by the call in progress

    # --- paths ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def _identity_path(self) -> str:
        return self._path("identity")

    # --- identity (as hakit.coord.sqlite) ---------------------------------------

    @property
    def identity(self) -> str | None:
        return self._identity

    @property
    def highest_epoch(self) -> int:
        return self._seen_epoch

    def _load_memory(self) -> None:
        if self._memory_loaded:
            return
        if self._memory_path is not None:
            memory = read_memory(self._memory_path)
            if memory is not None:
                self._identity = memory.identity
                self._lineage = memory.lineage
                self._seen_epoch = max(self._seen_epoch, memory.epoch)
                self._saved = memory
        self._memory_loaded = True

    def _saw(self, epoch: int) -> None:
        self._pending_epoch = max(self._pending_epoch, epoch)

    def _remember(self) -> None:
        self._seen_epoch = max(self._seen_epoch, self._pending_epoch)
        self._pending_epoch = 0
        if self._memory_path is None or self._identity is None:
            return
        wanted = Memory(self._identity, self._seen_epoch, self._lineage)
        if wanted != self._saved:
            self._saved = write_memory(self._memory_path, wanted)
            self._seen_epoch = max(self._seen_epoch, self._saved.epoch)

    def _refused(self, found: str) -> StoreReplacedError:
        assert self._identity is not None
        return StoreReplacedError(
            self.where,
            found,
            self._identity,
            self._seen_epoch,
            config=self._config,
            consequence=(
                "the app on this node is fenced"
                if self._memory_path is not None
                else "this process neither reads nor writes it"
            ),
        )

    def _accept(self, identity: _Node, epoch: _Node | None) -> None:
        doc = identity.doc if isinstance(identity.doc, dict) else {}
        found = str(doc.get("identity", ""))
        lineage = tuple(str(x) for x in doc.get("lineage", []))
        last = _last_epoch(epoch)
        if not found or epoch is None:
            raise CoordinationError(
                f"coordination store {self.where}: its identity or epoch znode is damaged; "
                f"restore it, or delete {self.root} and run `hakit init --reinit -c "
                f"{self._config}` where the epochs continue above the ones used"
            )
        if self._identity is not None:
            same = found == self._identity or self._identity in lineage
            if not same or last < self._seen_epoch:
                raise self._refused(f"identity {found}, last epoch {last}")
        self._identity, self._lineage = found, lineage
        self._identity_version = identity.stat.version
        self._saw(last)

    # --- session and calls ------------------------------------------------------

    def _adopt_process(self) -> None:
        """After a fork: never use the parent's client (its threads are not here)."""
        if self._pid != os.getpid():
            self._client = None
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def _zk(self) -> KazooClient:
        if self._client is not None:
            return self._client
        client = KazooClient(
            hosts=self.hosts,
            timeout=self._session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0),
            auth_data=[self._auth] if self._auth else None,
            default_acl=CREATOR_ALL_ACL if self._auth else OPEN_ACL_UNSAFE,
        )
        try:
            client.start(timeout=max(0.1, self._deadline - time.monotonic()))
        except BaseException:
            with suppress(Exception):
                client.stop()
            with suppress(Exception):
                client.close()
            raise
        self._client = client
        return client

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session (None: not connected yet)."""
        client = self._client
        return client.client_id[0] if client is not None and client.client_id else None

    @contextmanager
    def _using(self, action: str) -> Iterator[KazooClient]:
        """The client for ``action``, under the lock, with the call's deadline; ZooKeeper
        errors and time-outs become CoordinationError; epochs seen are remembered after."""
        self._adopt_process()
        with self._lock:
            self._pending_epoch = 0
            self._deadline = time.monotonic() + self._timeout
            try:
                self._load_memory()
                yield self._zk()
                self._remember()
            except CoordinationError:
                self._pending_epoch = 0
                raise
            except (KazooException, KazooTimeoutError) as error:
                self._pending_epoch = 0
                what = str(error) or type(error).__name__
                raise CoordinationError(
                    f"coordination store {self.where}: could not {action}: {what}; check that "
                    "the ZooKeeper ensemble runs and answers on "
                    f"{self.hosts} (each call waits {self._timeout:g} s at most)"
                ) from error

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise KazooTimeoutError(f"no answer within {self._timeout:g} s")
        return left

    def _read(
        self, zk: KazooClient, paths: Sequence[str], *, now: bool
    ) -> tuple[float, dict[str, _Node | None]]:
        """The server's time (``now``; else 0) and the znodes at ``paths``, with the identity
        checked (the store created first when missing and allowed). Pipelined: ZooKeeper
        answers a session's requests in order, so the reads see the clock write."""
        for _ in range(2):
            touch = zk.set_async(self._path("clock"), b"") if now and self._clock is None else None
            wanted = [self._identity_path, self._path("epoch"), *paths]
            pending = [zk.get_async(path) for path in wanted]
            try:
                at = self._server_time(touch) if touch is not None else 0.0
            except NoNodeError:
                at = 0.0  # no store: handled below
            found: dict[str, _Node | None] = {}
            for path, result in zip(wanted, pending, strict=True):
                try:
                    data, stat = result.get(timeout=self._left())
                    found[path] = _Node(_load(data), stat)
                except NoNodeError:
                    found[path] = None
            identity = found[self._identity_path]
            if identity is None:
                self._no_store(zk)
                continue
            self._accept(identity, found[self._path("epoch")])
            if now and self._clock is not None:
                at = self._clock()
            return at, found
        raise CoordinationError(f"coordination store {self.where}: it vanished while created")

    def _server_time(self, touch: Any) -> float:
        stat: ZnodeStat = touch.get(timeout=self._left())
        return float(stat.mtime) / 1000.0

    def _no_store(self, zk: KazooClient) -> None:
        """No identity znode: create the store if this process may, or say why not."""
        if self._identity is not None:
            raise self._refused("no store: its identity znode is gone")
        if not self._create:
            raise CoordinationError(
                f"coordination store {self.where}: there is none; the first agent creates it "
                f"(or `hakit init -c {self._config}`); check [coordination.zookeeper] if the "
                "cluster already runs"
            )
        parent = self.root.rsplit("/", 1)[0]
        if parent:
            zk.ensure_path_async(parent).get(timeout=self._left())
        txn = zk.transaction()
        txn.create(self.root, b"")
        identity = {"identity": str(uuid.uuid4()), "lineage": [], "created_at": time.time()}
        txn.create(self._identity_path, _dump(identity))
        txn.create(self._path("epoch"), _dump({"last_epoch": 0}))
        txn.create(self._path("leader"), _dump({}))
        txn.create(self._path("clock"), b"")
        for name in ("nodes", "events"):
            txn.create(self._path(name), b"")
        txn.create(self._path("state"), _dump({"entries": {}}))
        results = txn.commit_async().get(timeout=self._left())
        failures = [r for r in results if isinstance(r, Exception)]
        if not failures:
            log.info("created the coordination store %s", self.where)
            return
        if any(isinstance(r, NodeExistsError) for r in failures):
            try:
                zk.get_async(self._identity_path).get(timeout=self._left())
                return  # another process created it meanwhile
            except NoNodeError:
                raise CoordinationError(
                    f"coordination store {self.where}: the znode {self.root} exists but holds "
                    "no hakit store (no identity znode); delete it (zkCli.sh deleteall "
                    f"{self.root}) or set [coordination.zookeeper] prefix or cluster to another "
                    "place"
                ) from None
        raise failures[0]

    def _commit(self, zk: KazooClient, build: Callable[[Any], None]) -> list[Any]:
        """One transaction: the identity checked, then what ``build`` adds; _Conflict if it
        lost a race."""
        txn = zk.transaction()
        txn.check(self._identity_path, self._identity_version)
        build(txn)
        results: list[Any] = txn.commit_async().get(timeout=self._left())
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            if isinstance(results[0], NoNodeError):
                raise self._refused_or_gone()
            raise _Conflict(failures)
        return results

    def _refused_or_gone(self) -> CoordinationError:
        if self._identity is not None:
            return self._refused("its identity znode vanished during a write")
        return CoordinationError(f"coordination store {self.where}: it vanished during a write")

    def _until_settled(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` again while it loses races (each reads afresh), within the deadline."""
        while True:
            try:
                return attempt()
            except _Conflict:
                self._left()
                self._pending_epoch = 0

    def store_exists(self) -> bool:
        """A store is at the root (its identity znode), read without creating one."""
        self._adopt_process()
        with self._lock:
            self._deadline = time.monotonic() + self._timeout
            try:
                zk = self._zk()
                return zk.exists_async(self._identity_path).get(timeout=self._left()) is not None
            except (KazooException, KazooTimeoutError) as error:
                raise CoordinationError(
                    f"coordination store {self.where}: could not look for it: "
                    f"{str(error) or type(error).__name__}; check that the ZooKeeper ensemble "
                    f"runs and answers on {self.hosts}"
                ) from error

    # --- leader lease -------------------------------------------------------------

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

    def _lease(self, leader: _Node | None, alive: _Node | None, now: float) -> Lease | None:
        """The stored lease judged at ``now``: expired by time, or when its session ended."""
        doc = leader.doc if leader is not None else None
        if not isinstance(doc, dict) or "holder" not in doc:
            return None
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
        found: dict[str, _Node | None],
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
            txn.set_data(self._path("leader"), _dump(doc), leader.stat.version)
            if new_epoch:
                txn.set_data(
                    self._path("epoch"), _dump({"last_epoch": lease.epoch}), epoch.stat.version
                )
            if alive is not None:
                txn.delete(self._path("alive"), alive.stat.version)
            txn.create(
                self._path("alive"),
                _dump({"holder": lease.holder, "epoch": lease.epoch}),
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
            last = _last_epoch(found[self._path("epoch")])
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
            last = _last_epoch(found[self._path("epoch")])
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
                txn.set_data(self._path("leader"), _dump({}), leader.stat.version)
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
            return _last_epoch(found[self._path("epoch")])

    # --- node records -------------------------------------------------------------

    def _node_path(self, node: str) -> str:
        return self._path("nodes/" + quote(node, safe=""))

    def publish_node(self, record: NodeRecord) -> None:
        path = self._node_path(record.node)

        def attempt() -> None:
            now, found = self._read(zk, [path], now=True)
            doc = _dump(
                {
                    "role": record.role,
                    "app_state": record.app_state,
                    "epoch": record.epoch,
                    "updated_at": record.updated_at,
                    "detail": record.detail,
                    "stored_at": now,  # the server's clock: ages are judged on it alone
                }
            )
            existing = found[path]

            def build(txn: Any) -> None:
                if existing is None:
                    txn.create(path, doc)
                else:
                    txn.set_data(path, doc, existing.stat.version)

            self._commit(zk, build)

        with self._using(f"publish the record of {record.node}") as zk:
            self._until_settled(attempt)

    def nodes(self) -> Sequence[NodeRecord]:
        with self._using("read the node records") as zk:
            now, _ = self._read(zk, [], now=True)
            listing = zk.get_children_async(self._path("nodes"))
            names = sorted(listing.get(timeout=self._left()))
            docs = self._get_many(zk, [f"{self._path('nodes')}/{name}" for name in names])
        records = []
        for name, doc in zip(names, docs, strict=True):
            if isinstance(doc, dict):
                records.append(
                    NodeRecord(
                        unquote(name),
                        str(doc["role"]),
                        str(doc["app_state"]),
                        int(doc["epoch"]),
                        float(doc["updated_at"]),
                        _dict(doc.get("detail")),
                        max(0.0, now - float(doc["stored_at"])),
                    )
                )
        return sorted(records, key=lambda r: r.node)

    def _get_many(self, zk: KazooClient, paths: Sequence[str]) -> list[Any]:
        """The documents at ``paths`` (None for a znode gone meanwhile), pipelined."""
        pending = [zk.get_async(path) for path in paths]
        docs: list[Any] = []
        for result in pending:
            try:
                docs.append(_load(result.get(timeout=self._left())[0]))
            except NoNodeError:
                docs.append(None)
        return docs

    # --- event history ------------------------------------------------------------

    def append_event(self, event: Event) -> Event:
        doc = _dump(
            {
                "time": event.time,
                "node": event.node,
                "kind": event.kind,
                "reason": event.reason,
                "epoch": event.epoch,
                "actor": event.actor,
                "data": event.data,
            }
        )

        def attempt() -> int:
            self._read(zk, [], now=False)
            results = self._commit(
                zk, lambda txn: txn.create(self._path("events/e-"), doc, sequence=True)
            )
            return _event_id(str(results[1]).rsplit("/", 1)[1])

        with self._using(f"append a {event.kind} event") as zk:
            event_id = self._until_settled(attempt)
            if event_id % self._trim_every == 0:
                self._trim(zk)
        return Event(
            event_id,
            event.time,
            event.node,
            event.kind,
            event.reason,
            event.epoch,
            event.actor,
            dict(event.data),
        )

    def _trim(self, zk: KazooClient) -> None:
        """Delete the oldest events beyond ``max_events``."""
        names = sorted(zk.get_children_async(self._path("events")).get(timeout=self._left()))
        pending = [
            zk.delete_async(f"{self._path('events')}/{name}")
            for name in names[: max(0, len(names) - self._max_events)]
        ]
        for result in pending:
            with suppress(NoNodeError):
                result.get(timeout=self._left())

    def _event_names(self, zk: KazooClient) -> list[tuple[int, str]]:
        self._read(zk, [], now=False)
        listing = zk.get_children_async(self._path("events"))
        names = listing.get(timeout=self._left())
        return sorted((_event_id(name), name) for name in names if name.startswith("e-"))

    def _events_at(self, zk: KazooClient, chosen: Sequence[tuple[int, str]]) -> list[Event]:
        docs = self._get_many(zk, [f"{self._path('events')}/{name}" for _, name in chosen])
        return [
            Event(
                event_id,
                float(doc["time"]),
                str(doc["node"]),
                str(doc["kind"]),
                str(doc["reason"]),
                int(doc["epoch"]),
                str(doc["actor"]),
                _dict(doc.get("data")),
            )
            for (event_id, _), doc in zip(chosen, docs, strict=True)
            if isinstance(doc, dict)
        ]

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history") as zk:
            chosen = [entry for entry in self._event_names(zk) if entry[0] > after_id][:limit]
            return self._events_at(zk, chosen)

    def recent_events(self, limit: int) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history") as zk:
            return self._events_at(zk, self._event_names(zk)[-limit:])

    # --- cluster state --------------------------------------------------------------

    def _entries(self, found: dict[str, _Node | None]) -> tuple[dict[str, Any], _Node]:
        state = found[self._path("state")]
        if state is None:
            raise CoordinationError(
                f"coordination store {self.where}: its state znode is missing; the store is "
                f"damaged: run `hakit init --reinit -c {self._config}`"
            )
        doc = state.doc if isinstance(state.doc, dict) else {}
        entries = doc.get("entries")
        return (dict(entries) if isinstance(entries, dict) else {}), state

    @staticmethod
    def _live(entry: Any, now: float) -> bool:
        expires_at = entry.get("expires_at") if isinstance(entry, dict) else None
        return isinstance(entry, dict) and (expires_at is None or float(expires_at) > now)

    def _change_state(
        self, zk: KazooClient, change: Callable[[dict[str, Any], float], bool]
    ) -> bool:
        """Read the state map, apply ``change`` (False: nothing to write), compare-and-set."""

        def attempt() -> bool:
            now, found = self._read(zk, [self._path("state")], now=True)
            entries, state = self._entries(found)
            if not change(entries, now):
                return False
            self._commit(
                zk,
                lambda txn: txn.set_data(
                    self._path("state"), _dump({"entries": entries}), state.stat.version
                ),
            )
            return True

        return self._until_settled(attempt)

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"state ttl must be positive, got {ttl}")
        stored = json.loads(json.dumps(value))

        def change(entries: dict[str, Any], now: float) -> bool:
            for name in [k for k, entry in entries.items() if not self._live(entry, now)]:
                del entries[name]  # past their expiry: never read again
            entries[key] = {"value": stored, "expires_at": now + ttl if ttl is not None else None}
            return True

        with self._using(f"store the cluster state {key!r}") as zk:
            self._change_state(zk, change)

    def get_state(self, key: str) -> dict[str, Any] | None:
        return self._read_state(f"read the cluster state {key!r}").get(key)

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        def change(entries: dict[str, Any], now: float) -> bool:
            entry = entries.get(key)
            if not isinstance(entry, dict):
                return False
            if if_value is not None and not _same(entry.get("value"), if_value):
                return False
            del entries[key]
            return True

        with self._using(f"clear the cluster state {key!r}") as zk:
            return self._change_state(zk, change)

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        return self._read_state("read the cluster state")

    def _read_state(self, action: str) -> dict[str, dict[str, Any]]:
        with self._using(action) as zk:
            now, found = self._read(zk, [self._path("state")], now=True)
            entries, _ = self._entries(found)
        return {
            key: _dict(entry.get("value"))
            for key, entry in sorted(entries.items())
            if self._live(entry, now)
        }

    # --- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """End this process's session (a lease bound to it ends too); a later call opens one."""
        self._adopt_process()
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                with suppress(Exception):
                    client.stop()
                with suppress(Exception):
                    client.close()

    def __enter__(self) -> ZooKeeperCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _last_epoch(node: _Node | None) -> int:
    doc = node.doc if node is not None else None
    return int(doc.get("last_epoch", 0)) if isinstance(doc, dict) else 0


def _event_id(name: str) -> int:
    """``e-0000000041`` -> 42: the server's sequence number (from 0) + 1."""
    return int(name.rsplit("-", 1)[1]) + 1


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
