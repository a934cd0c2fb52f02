"""The cluster identity as this process trusts it, and the way every call reads and writes.

``_using`` runs a call: under the lock, within its deadline, ZooKeeper errors
turned into ``CoordinationError``, the epochs seen remembered after (in the
memory file of ``memory_path``). ``_read`` reads the identity and epoch znodes
and what the call asks for, with the server's clock, and accepts them only if the
identity is the one this process remembers (or lists it in its lineage) with a
last epoch no lower than the highest it saw; otherwise ``StoreReplacedError``.
Absent, the store is made (``create``) or refused. ``_commit`` writes one
transaction that also checks the identity znode is still the one read;
``_until_settled`` repeats a step that lost a race (``Conflict``) until the
deadline.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat

from hakit.coord.memory import Memory, read_memory, write_memory
from hakit.coord.zookeeper.layout import Conflict, Node, fresh_store, last_epoch_in, load
from hakit.coord.zookeeper.session import Session
from hakit.errors import CoordinationError, StoreReplacedError

log = logging.getLogger("hakit.coord")
T = TypeVar("T")


class Guard(Session):
    """The identity guard and the calls' read, write and retry (see the module doc)."""

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

    def _accept(self, identity: Node, epoch: Node | None) -> None:
        doc = identity.doc if isinstance(identity.doc, dict) else {}
        found = str(doc.get("identity", ""))
        lineage = tuple(str(x) for x in doc.get("lineage", []))
        last = last_epoch_in(epoch)
        if not found or epoch is None:
            raise CoordinationError(
                f"coordination store {self.where}: its identity or epoch znode is damaged; "
                f"restore it, or run `hakit init --reinit -c {self._config}` where the "
                "epochs continue above the ones used (the last active's host)"
            )
        if self._identity is not None:
            same = found == self._identity or self._identity in lineage
            if not same or last < self._seen_epoch:
                raise self._refused(f"identity {found}, last epoch {last}")
        self._identity, self._lineage = found, lineage
        self._identity_version = identity.stat.version
        self._saw(last)

    # --- calls ------------------------------------------------------------------

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
                if isinstance(error, ConnectionClosedError):
                    # kazoo's connection thread is gone (it died on an error of its own):
                    # this client never reconnects. The next call opens a new one, as
                    # after a session expiry; a lease bound to the old session ends.
                    self._discard_client()
                what = str(error) or type(error).__name__
                raise CoordinationError(
                    f"coordination store {self.where}: could not {action}: {what}; check that "
                    "the ZooKeeper ensemble runs and answers on "
                    f"{self.hosts} (each call waits {self._timeout:g} s at most)"
                ) from error

    def _read(
        self, zk: KazooClient, paths: Sequence[str], *, now: bool
    ) -> tuple[float, dict[str, Node | None]]:
        """The server's time (``now``; else 0) and the znodes at ``paths``, with the identity
        checked (the store created first when missing and allowed). Pipelined: ZooKeeper
        answers a session's requests in order, so the reads see the clock write. The
        identity and epoch znodes come from the guard cache while its watches say they
        did not change (hakit.coord.zookeeper.guardcache), else are read (with watches)."""
        cache = self._guard_cache
        identity_path, epoch_path = self._identity_path, self._path("epoch")
        # A cached identity needs an answer to this call to order the watch events before
        # the barrier (guardcache's docstring): a call that asks nothing else reads the
        # epoch znode, and the identity still comes from the cache.
        asks = bool(paths) or (now and self._clock is None)
        for _ in range(3):  # a store made meanwhile, a cache found stale: read again
            cached = cache.get(zk)
            changes = cached[1] if cached is not None else cache.changes()
            if cached is None:
                guard_paths = [identity_path, epoch_path]
            else:
                guard_paths = [] if asks else [epoch_path]
            touch = zk.set_async(self._path("clock"), b"") if now and self._clock is None else None
            guard = [zk.get_async(path, watch=cache.watcher) for path in guard_paths]
            pending = [zk.get_async(path) for path in paths]
            try:
                at = self._server_time(touch) if touch is not None else 0.0
            except NoNodeError:
                at = 0.0  # no store: handled below
            found: dict[str, Node | None] = {}
            for path, result in zip([*guard_paths, *paths], guard + pending, strict=True):
                try:
                    data, stat = result.get(timeout=self._left())
                    found[path] = self._parsed(path, data, stat)
                except NoNodeError:
                    found[path] = None
            if cached is not None:
                if not cache.confirm(zk, changes, self._left()):
                    cache.drop()
                    continue  # one of them changed, or the session did: read them
                found[identity_path] = cached[0][0]
                found.setdefault(epoch_path, cached[0][1])
            identity, epoch = found[identity_path], found[epoch_path]
            if identity is None:
                self._no_store(zk)
                continue
            self._accept(identity, epoch)
            if epoch is not None:
                cache.put(zk, identity, epoch, changes)
            if now and self._clock is not None:
                at = self._clock()
            return at, found
        raise CoordinationError(
            f"coordination store {self.where}: it kept changing while read (or vanished "
            "while created)"
        )

    def _parsed(self, path: str, data: bytes, stat: ZnodeStat) -> Node | None:
        """The znode's JSON document. One that is not JSON is read as no document (as one
        of the wrong shape is: readers tolerate it), but an epoch znode as missing:
        ``_accept`` then says the store is damaged (for the identity too)."""
        try:
            return Node(load(data), stat)
        except ValueError:
            return None if path == self._path("epoch") else Node(None, stat)

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
        for name, data in fresh_store(identity, 0, {}):
            txn.create(self._path(name), data)
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
        """One transaction: the identity checked, then what ``build`` adds; Conflict if it
        lost a race."""
        txn = zk.transaction()
        txn.check(self._identity_path, self._identity_version)
        build(txn)
        results: list[Any] = txn.commit_async().get(timeout=self._left())
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            if isinstance(results[0], NoNodeError):
                raise self._refused_or_gone()
            raise Conflict(failures)
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
            except Conflict:
                self._left()
                self._pending_epoch = 0
                self._guard_cache.drop()  # read the identity and epoch again too

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
