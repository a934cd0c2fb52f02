"""The embedded coordination store: one SQLite file shared by the processes of one machine.

Why it is safe for several processes (agents, routers, ``hakit status``):

- every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, so the
  write lock is taken *before* the lease is read and two agents can never both
  see it free; the clock is read inside that transaction for the same reason;
- WAL mode lets readers (the router polls every 100 ms) go on while an agent
  writes; a busy timeout makes concurrent writers queue instead of failing;
- ``synchronous=FULL``: a committed epoch survives a power loss, so a fencing
  token is never handed out twice;
- each coordinator object opens its own connection lazily, per process: a
  connection inherited through ``fork`` is never used (nor closed) by the child.

The epoch counter lives apart from the lease row: ``release`` deletes the lease
but the counter keeps the highest epoch ever handed out.

The store cannot be swapped under a running cluster (schema version 3 on):

- the store carries a cluster identity (a uuid4 made once, when the store is
  created) and a lineage (the identities of the stores it replaces, written by
  ``hakit init --reinit``);
- every coordinator remembers the identity and the highest epoch it has seen.
  Before each call it compares the file at the path (``os.stat``: device and
  inode) with the file its connection opened. A deleted, renamed or replaced file
  is noticed at the next call: the connection is closed, and a store is used
  again only if it has the remembered identity (or lists it in its lineage) and a
  last epoch at least the highest seen; otherwise ``StoreReplacedError``. Each
  later call checks again, so once a trusted store is back at the path the
  process reconnects by itself. Every write transaction also checks the identity
  and the epoch counter it runs on, and a write during which the path changed is
  rolled back, so nothing is ever granted in a store this process does not trust;
- a process that has seen an identity never creates a store; one that has not
  creates it only when asked to (``create``), and never beside the -wal/-shm
  files a deleted store left (their content would be mixed into the new file);
- an agent's memory survives its restarts (``memory_path``, see
  ``hakit.coord.memory``); routers and CLI commands keep theirs in the process;
- a re-initialised store grants no lease before ``leases_from`` (one lease TTL
  after it was put in place): a node that held the lease in the replaced store
  has fenced itself by then, so two nodes never act as active at once.

Files are private: the database (and so its -wal and -shm, which SQLite creates
with the database's mode) is created 0600.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.coord.memory import Memory, make_private_dir, memory_file, read_memory, write_memory
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError

SCHEMA_VERSION = 4
log = logging.getLogger("hakit.coord")
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_BUSY_TIMEOUT = 5.0
DEFAULT_FILE = "coordination.db"  # in cluster.state_dir


class SqliteSection(BaseModel):
    """``[coordination.sqlite]``: this backend's own part of the config.

    ``path``: the store's file (relative: to the config file's directory);
    default ``<state_dir>/coordination.db``. ``[coordination] path``, the older
    spelling, still works (not both).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = None


def store_path(section: SqliteSection, state_dir: Path) -> Path:
    return section.path or state_dir / DEFAULT_FILE


def open_sqlite(
    section: SqliteSection,
    *,
    state_dir: Path,
    config: str | None,
    create: bool,
    node: str | None,
    cluster: str = "",  # unused: the file holds one cluster (hakit.coord.keys)
) -> SqliteCoordinator:
    """The opener hakit.coord.registry names (see hakit.coord.factory.open_coordinator)."""
    path = store_path(section, state_dir)
    if create:
        make_private_dir(path.parent)
    elif not path.is_file():
        raise NoClusterState(path)
    memory = None
    if node is not None:
        make_private_dir(state_dir)
        memory = memory_file(state_dir, node)
    return SqliteCoordinator(path, memory_path=memory, create=create, config=config)


# Statements creating schema version 1, run in one transaction (DDL is transactional in SQLite).
_SCHEMA_V1 = (
    """CREATE TABLE lease (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        expires_at REAL NOT NULL)""",
    """CREATE TABLE epoch_counter (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        last_epoch INTEGER NOT NULL)""",
    "INSERT INTO epoch_counter (singleton, last_epoch) VALUES (1, 0)",
    """CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        app_state TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        detail TEXT NOT NULL)""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        actor TEXT NOT NULL,
        data TEXT NOT NULL)""",
    "PRAGMA user_version = 1",
)
# Version 2: the cluster_state key/value map (operator intents: pause, switchover).
_SCHEMA_V2 = (
    """CREATE TABLE cluster_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    "PRAGMA user_version = 2",
)
# Version 3: the cluster identity (one row; see the module docstring). The row itself
# is inserted by the code that runs these (a new uuid4, or the one ``create_store`` got).
# Every write transaction counts itself in ``writes``: so the row's page is in every
# -wal that holds anything, and a -wal beside another store's file is recognised.
_SCHEMA_V3 = (
    """CREATE TABLE cluster (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        identity TEXT NOT NULL,
        lineage TEXT NOT NULL,
        created_at REAL NOT NULL,
        leases_from REAL NOT NULL,
        writes INTEGER NOT NULL DEFAULT 0)""",
    "PRAGMA user_version = 3",
)
# Version 4: validity judged by the store at each read, on its own clock (hakit.coord.base):
# the lease's renewal ``revision``, the time the store stored each node record, and an
# expiry for cluster-state values (``set_state(..., ttl=)``). NULL in rows written before.
_SCHEMA_V4 = (
    "ALTER TABLE lease ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE nodes ADD COLUMN stored_at REAL",
    "ALTER TABLE cluster_state ADD COLUMN expires_at REAL",
    "PRAGMA user_version = 4",
)
_MIGRATIONS = {
    0: _SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4,
    1: _SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4,
    2: _SCHEMA_V3 + _SCHEMA_V4,
    3: _SCHEMA_V4,
}
# The -wal and -shm files SQLite keeps beside a store in WAL mode.
SIDE_FILES = ("-wal", "-shm")

# Connections inherited through fork: kept referenced so the child never closes
# (and never checkpoints or unlinks the WAL of) a connection the parent still uses.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def next_lease(
    stored: Lease | None, last_epoch: int, node: str, now: float, ttl: float
) -> Lease | None:
    """The lease ``node`` holds after asking at ``now``, or None if another node holds it.

    A valid lease held by ``node`` is extended under the same epoch (its revision
    grows). A free, expired or released lease gets a new epoch (revision 1), also
    for its former holder: once expired, another node may have seen it free and
    acted on that. Validity is judged here on the store's clock (``now``).
    """
    if stored is not None and now < stored.expires_at:
        if stored.holder != node:
            return None
        return Lease(node, stored.epoch, now + ttl, ttl, stored.revision + 1)
    newest = max(last_epoch, stored.epoch if stored is not None else 0)
    return Lease(node, newest + 1, now + ttl, ttl, 1)


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Who a store is: its identity, the identities it replaces, its last epoch."""

    identity: str
    lineage: tuple[str, ...]
    last_epoch: int
    leases_from: float = 0.0  # no lease is granted before (a re-initialised store)


def advice_for(error: sqlite3.Error, path: Path, config: str = "CONFIG") -> str:
    """What an admin should do about ``error`` on the store at ``path``."""
    message = str(error).lower()
    if "unable to open" in message or "readonly" in message or "read-only" in message:
        return (
            f"check that the directory {path.parent} exists and this user can write to it "
            "(SQLite also creates -wal and -shm files beside the store), "
            "or set coordination.path to a writable place"
        )
    if "locked" in message or "busy" in message:
        return (
            "another process kept the store locked longer than the busy timeout; "
            "look for a stuck hakit process using this file"
        )
    if "not a database" in message or "malformed" in message:
        return (
            "the file is not a hakit coordination store or is damaged; restore a good copy "
            f"(moved into place), or run `hakit init --reinit -c {config}`, which moves it aside "
            "and starts a new store whose epochs continue above the ones used; agents and "
            "routers reconnect by themselves once a healthy store is at the path (no restart)"
        )
    return "check the file and its directory (permissions, free space)"


class SqliteCoordinator:
    """The ``Coordinator`` protocol on one SQLite file (several processes, one machine).

    The event history is bounded: only the newest ``max_events`` events
    (default 10,000) are kept; older ones are deleted as new ones are appended.
    Ids keep increasing across the deletion. ``detail`` and ``data`` must be
    JSON-serializable.

    ``memory_path`` (agents): the file holding this node's memory of the store
    (identity, highest epoch), loaded at the first call and rewritten when either
    changes; None (routers, CLI commands): the memory lives in this object only.
    ``create``: a process that has never seen an identity may create a missing
    store (the first agent at first start); one that has seen one never does.
    ``config`` names the config file in messages (``hakit init --reinit -c ...``).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_events: int = DEFAULT_MAX_EVENTS,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        memory_path: Path | None = None,
        create: bool = True,
        config: str | None = None,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.path = Path(path)
        self._clock = clock
        self._max_events = max_events
        self._busy_timeout = busy_timeout
        self._memory_path = Path(memory_path) if memory_path is not None else None
        self._create = create
        self._config = config or "CONFIG"
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) the connection opened
        self._side_files: dict[str, tuple[int, int]] = {}  # its -wal and -shm: (device, inode)
        self._pid = os.getpid()
        # One connection is shared by the threads of a process; the lock keeps
        # their transactions from interleaving on it.
        self._lock = threading.Lock()
        # The memory: guarded by the lock too.
        self._memory_loaded = False
        self._identity: str | None = None  # the store's identity, once seen
        self._lineage: tuple[str, ...] = ()  # the identities it replaces
        self._seen_epoch = 0  # the highest epoch seen in it
        self._saved: Memory | None = None  # what memory_path holds
        self._leases_from = 0.0
        self._pending_epoch = 0  # epochs seen by the call in progress

    # --- identity -------------------------------------------------------------

    @property
    def identity(self) -> str | None:
        """The cluster identity this process trusts (None before the first call)."""
        return self._identity

    @property
    def highest_epoch(self) -> int:
        """The highest epoch this process has seen (its memory included)."""
        return self._seen_epoch

    @property
    def leases_from(self) -> float:
        """Wall-clock time before which the store grants no lease (0: none)."""
        return self._leases_from

    def _load_memory(self) -> None:
        if self._memory_loaded:
            return
        if self._memory_path is not None:
            memory = read_memory(self._memory_path)  # a damaged file raises
            if memory is not None:
                self._identity = memory.identity
                self._lineage = memory.lineage
                self._seen_epoch = max(self._seen_epoch, memory.epoch)
                self._saved = memory
        self._memory_loaded = True

    def _saw(self, epoch: int) -> None:
        """Note an epoch read in the call in progress (remembered once it succeeded)."""
        if epoch > self._pending_epoch:
            self._pending_epoch = epoch

    def _remember(self) -> None:
        if self._pending_epoch > self._seen_epoch:
            self._seen_epoch = self._pending_epoch
        self._pending_epoch = 0
        self._save_memory()

    def _save_memory(self) -> None:
        if self._memory_path is None or self._identity is None:
            return
        wanted = Memory(self._identity, self._seen_epoch, self._lineage)
        if wanted != self._saved:
            self._saved = write_memory(self._memory_path, wanted)
            self._seen_epoch = max(self._seen_epoch, self._saved.epoch)

    def _refused(self, found: str) -> StoreReplacedError:
        assert self._identity is not None
        return StoreReplacedError(
            self.path,
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

    def _check(self, found: StoreIdentity | None) -> None:
        """Raise StoreReplacedError unless ``found`` is a store this process may use."""
        if self._identity is None:
            return
        if found is None:
            raise self._refused("a store without an identity: an empty or new file")
        same = found.identity == self._identity or self._identity in found.lineage
        if not same or found.last_epoch < self._seen_epoch:
            raise self._refused(f"identity {found.identity}, last epoch {found.last_epoch}")

    def _accept(self, found: StoreIdentity | None) -> None:
        self._check(found)
        if found is None:
            raise CoordinationError(
                f"coordination store {self.path}: its cluster identity row is missing, so the "
                f"store is damaged; run `hakit init --reinit -c {self._config}` to start a new "
                "store whose epochs continue above the ones used"
            )
        self._identity = found.identity
        self._lineage = found.lineage
        self._leases_from = found.leases_from
        self._saw(found.last_epoch)

    # --- connection -----------------------------------------------------------

    def _adopt_process(self) -> None:
        """After a fork, forget the parent's connection and lock (never reuse them)."""
        if self._pid == os.getpid():
            return
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
        self._conn = None
        self._file = None
        self._side_files = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _drop_connection(self) -> None:
        """Close the connection (its file was replaced, or this process refuses it).

        SQLite neither checkpoints nor deletes the -wal of a file that was moved or
        unlinked when its last connection closes, so nothing reaches the new file.
        """
        conn, self._conn, self._file = self._conn, None, None
        self._side_files = {}
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def _forget_replaced_file(self) -> None:
        """The file at the path is no longer the connection's: drop the connection, and
        move the -wal and -shm of the old file aside if they are still at the path.

        SQLite finds a store's -wal and -shm by name: left beside a new file, they
        would be read into it (the old store's pages over the new one's). These
        are known to be the old file's because this connection had them open.
        """
        old = self._side_files
        self._drop_connection()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix, known in old.items():
            side = Path(f"{self.path}{suffix}")
            if file_id(side) != known:
                continue  # gone, or a new file's: not ours to move
            aside = Path(f"{self.path}.stale-{stamp}-{os.getpid()}{suffix}")
            try:
                os.rename(side, aside)
            except OSError as error:
                log.warning(
                    "coordination store %s was replaced, but its old %s could not be moved "
                    "aside (%s); move it away before the store is used again",
                    self.path,
                    side,
                    error,
                )
                continue
            log.warning(
                "coordination store %s was replaced or deleted while in use: its old %s is "
                "moved aside to %s so that SQLite does not read it into the new file",
                self.path,
                side,
                aside,
            )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            if file_id(self.path) == self._file:
                return self._conn
            self._forget_replaced_file()  # deleted, renamed or replaced since it was opened
        self._load_memory()
        current = file_id(self.path)
        creating = current is None
        if creating:
            self._prepare_creation()
            current = file_id(self.path)
        else:
            self._verify_read_only()
        # Read the file's id before connecting: if the path changes in between, the
        # next call sees a difference and checks again (never the other way round).
        conn = self._connect(create=creating)
        try:
            if self._schema_version(conn) == 0 and not (self._create and self._identity is None):
                self._refuse_uninitialised()  # before anything is written into the file
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            self._ensure_schema(conn)
            self._pending_epoch = 0
            self._accept(read_identity(conn))
            self._remember()
            sides = {suffix: file_id(Path(f"{self.path}{suffix}")) for suffix in SIDE_FILES}
        except BaseException:
            conn.close()
            raise
        self._conn, self._file = conn, current
        self._side_files = {suffix: known for suffix, known in sides.items() if known is not None}
        return conn

    def _verify_read_only(self) -> None:
        """Check an existing store before any read-write connection to it exists.

        The identity is written into the main file when the store is made; read
        without the -wal (``immutable``), it must be the one seen through the -wal
        (which, when it holds anything, holds the identity row: every write
        touches it), or the -wal and -shm at the path belong to another store (a
        file was moved over one in use). Then it is checked like any store,
        through a read-only connection, which never checkpoints: nothing reaches
        the file if it is refused.
        A file whose main part holds no identity yet (a young store, an older
        schema, not a store) is checked by the read-write path as before.
        """
        main = main_file_identity(self.path)
        if main is None:
            return
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout)
            try:
                seen = read_identity(conn) if self._schema_version(conn) >= 3 else None
            finally:
                conn.close()
        except sqlite3.Error:
            return  # the read-write connection reports it, with advice
        if seen is None or seen.identity != main:
            found = (
                f"identity {main} in the file, but its -wal and -shm belong to another store"
                f"{f' (identity {seen.identity})' if seen is not None else ''}: a file was moved "
                f"over the store while it was in use; move {self.path}-wal and {self.path}-shm "
                "aside"
            )
            if self._identity is not None:
                raise self._refused(found)
            raise CoordinationError(
                f"coordination store {self.path}: {found} (or run "
                f"`hakit init --reinit -c {self._config}`, which does), so that SQLite does not "
                "mix them into it"
            )
        self._check(seen)

    def _prepare_creation(self) -> None:
        """There is no file at the path: create it (0600) if this process may."""
        if self._identity is not None:
            raise self._refused("the file is gone")
        if not self._create:
            raise CoordinationError(
                f"coordination store {self.path}: there is none; the first agent creates it "
                f"(or `hakit init -c {self._config}`); check coordination.path and "
                "cluster.state_dir if the cluster already runs"
            )
        leftovers = [
            name for name in SIDE_FILES if Path(f"{self.path}{name}").exists()
        ]  # checked before the file again: a store being created makes its file first
        if leftovers and file_id(self.path) is None:
            raise CoordinationError(
                f"coordination store {self.path}: the file is missing but its "
                f"{' and '.join(leftovers)} files are still there, so the store was deleted "
                "while processes used it and a new one here would mix with their content; "
                "restore the store (moved into place), or run "
                f"`hakit init --reinit -c {self._config}`, which moves the leftovers aside and "
                "starts a new store whose epochs continue above the ones used"
            )
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process created it meanwhile
        except OSError:
            pass  # SQLite's own attempt reports it, with the advice that fits

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        # A URI with mode=rw never creates a file: a store deleted between the checks
        # above and this connect is not silently made anew.
        uri = "file:{}?mode={}".format(
            urllib.parse.quote(str(self.path.absolute())), "rwc" if create else "rw"
        )
        return sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL once; retry while another process holds it.

        Switching needs an exclusive lock, and SQLite answers "locked" at once
        (no busy wait) when another connection holds a write lock in rollback
        mode, so the wait is done here, bounded by the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        for _ in range(10_000):
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            if mode == "wal":
                return
            raise CoordinationError(
                f"coordination store {self.path}: SQLite refused WAL mode (got {mode!r}); "
                "put the store on a local filesystem (not NFS or another network filesystem)"
            )
        raise sqlite3.OperationalError("database is locked")  # unreachable within the deadline

    def _refuse_uninitialised(self) -> None:
        """A file without a store in it, which this process may not make one of."""
        if self._identity is not None:
            raise self._refused("a store without an identity: an empty or new file")
        raise CoordinationError(
            f"coordination store {self.path}: the file holds no store yet; the first agent "
            f"creates it (or `hakit init -c {self._config}`); check coordination.path if the "
            "cluster already runs"
        )

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        may_create = self._create and self._identity is None
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(conn)  # another process may have created it meanwhile
            if version == 0 and not may_create:
                self._refuse_uninitialised()
            if version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                # The identity is made once, with the store (or when a version 2 store
                # is upgraded): every process that opens it later reads this one.
                if version < 3:
                    _insert_identity(conn, str(uuid.uuid4()), (), self._clock(), 0.0)
            elif version > SCHEMA_VERSION:
                raise CoordinationError(
                    f"coordination store {self.path}: schema version {version} was written by a "
                    f"newer hakit (this one knows up to {SCHEMA_VERSION}); upgrade hakit on this "
                    "node or set coordination.path to another file"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        # Copy the new identity into the main file (not only the -wal): see _verify_read_only.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _using(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection for ``action``; inside one BEGIN IMMEDIATE transaction if ``write``.

        A write checks, inside its transaction, that the store is still one this
        process trusts, and is rolled back if the file at the path changed while
        it ran. Epochs noted with ``_saw`` are remembered once the call succeeded.
        """
        self._adopt_process()
        with self._lock:
            try:
                conn = self._connection()
                self._pending_epoch = 0
                if not write:
                    yield conn
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute("UPDATE cluster SET writes = writes + 1 WHERE singleton = 1")
                        self._accept(read_identity(conn))
                        yield conn
                        if file_id(self.path) != self._file:
                            raise self._replaced_during(action)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                self._remember()
            except StoreReplacedError:
                self._pending_epoch = 0
                if self._conn is not None and file_id(self.path) != self._file:
                    self._forget_replaced_file()
                else:
                    self._drop_connection()
                raise
            except sqlite3.Error as error:
                self._pending_epoch = 0
                raise CoordinationError(
                    f"coordination store {self.path}: could not {action}: {error}; "
                    f"{advice_for(error, self.path, self._config)}"
                ) from error

    def _replaced_during(self, action: str) -> StoreReplacedError:
        # A write read the identity first, so this process has one.
        return self._refused(f"the file was replaced while this process tried to {action}")

    # --- leader lease ---------------------------------------------------------

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"acquire or renew the lease for {node}", write=True) as conn:
            now = self._clock()  # read under the write lock: grants are ordered in time
            stored, last = _read_lease(conn, now), _read_last_epoch(conn)
            self._saw(max(last, stored.epoch if stored is not None else 0))
            if now < self._leases_from:
                return None  # a re-initialised store: see leases_from
            lease = next_lease(stored, last, node, now, ttl)
            if lease is None:
                return None
            conn.execute(
                "INSERT OR REPLACE INTO lease (singleton, holder, epoch, expires_at, revision) "
                "VALUES (1, ?, ?, ?, ?)",
                (lease.holder, lease.epoch, lease.expires_at, lease.revision),
            )
            conn.execute(
                "UPDATE epoch_counter SET last_epoch = MAX(last_epoch, ?) WHERE singleton = 1",
                (lease.epoch,),
            )
            self._saw(lease.epoch)
            return lease

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"renew the lease of {node} under epoch {epoch}", write=True) as conn:
            now = self._clock()
            stored = _read_lease(conn, now)
            if stored is None or stored.holder != node or stored.epoch != epoch:
                return None
            self._saw(stored.epoch)
            lease = Lease(node, epoch, now + ttl, ttl, stored.revision + 1)
            conn.execute(
                "UPDATE lease SET expires_at = ?, revision = ? "
                "WHERE singleton = 1 AND holder = ? AND epoch = ?",
                (lease.expires_at, lease.revision, node, epoch),
            )
            return lease

    def take_over(self, node: str, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"hand the lease to {node}", write=True) as conn:
            now = self._clock()
            if now < self._leases_from:
                raise CoordinationError(
                    f"coordination store {self.path}: could not hand the lease to {node}: the "
                    "store was re-initialised and grants no lease before "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self._leases_from))} "
                    "(one lease TTL after, so that a node that held the lease in the replaced "
                    "store has fenced itself); run the failover again then"
                )
            stored = _read_lease(conn, now)
            newest = max(_read_last_epoch(conn), stored.epoch if stored is not None else 0)
            lease = Lease(node, newest + 1, now + ttl, ttl, 1)
            conn.execute(
                "INSERT OR REPLACE INTO lease (singleton, holder, epoch, expires_at, revision) "
                "VALUES (1, ?, ?, ?, ?)",
                (lease.holder, lease.epoch, lease.expires_at, lease.revision),
            )
            conn.execute(
                "UPDATE epoch_counter SET last_epoch = MAX(last_epoch, ?) WHERE singleton = 1",
                (lease.epoch,),
            )
            self._saw(lease.epoch)
            return lease

    def release(self, node: str, epoch: int) -> bool:
        with self._using(f"release the lease of {node}", write=True) as conn:
            cursor = conn.execute(
                "DELETE FROM lease WHERE singleton = 1 AND holder = ? AND epoch = ?",
                (node, epoch),
            )
            return cursor.rowcount == 1

    def current_lease(self) -> Lease | None:
        with self._using("read the lease", write=False) as conn:
            lease = _read_lease(conn, self._clock())
            if lease is not None:
                self._saw(lease.epoch)
            return lease

    def last_epoch(self) -> int:
        with self._using("read the last epoch", write=False) as conn:
            last = _read_last_epoch(conn)
            self._saw(last)
            return last

    def data_version(self, *, wait: bool = True) -> tuple[int, int] | None:
        """A token that changes when another connection (another process) commits.

        SQLite's ``PRAGMA data_version``: no table is read, so a poller (the
        router) can skip its reads while the store is unchanged. Writes through
        this coordinator's own connection do not change it. Compare tokens of
        one coordinator only (the connection is part of the token).
        ``wait=False`` (from an event loop): None at once, not an error, when
        another thread is using the connection or SQLite answers busy, and when
        there is no connection or its file was replaced (the waiting call, in a
        thread, opens and checks the store).
        """
        if wait:
            with self._using("read the data version", write=False) as conn:
                return id(conn), int(conn.execute("PRAGMA data_version").fetchone()[0])
        self._adopt_process()
        if not self._lock.acquire(blocking=False):
            return None
        try:
            current = self._conn
            if current is None or file_id(self.path) != self._file:
                return None
            return id(current), int(current.execute("PRAGMA data_version").fetchone()[0])
        except (sqlite3.Error, CoordinationError):
            return None
        finally:
            self._lock.release()

    # --- node records ---------------------------------------------------------

    def publish_node(self, record: NodeRecord) -> None:
        detail = json.dumps(record.detail, sort_keys=True)
        with self._using(f"publish the record of {record.node}", write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO nodes "
                "(node, role, app_state, epoch, updated_at, detail, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.node,
                    record.role,
                    record.app_state,
                    record.epoch,
                    record.updated_at,
                    detail,
                    self._clock(),  # the store's clock: ages are judged on it alone
                ),
            )

    def nodes(self) -> Sequence[NodeRecord]:
        with self._using("read the node records", write=False) as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT node, role, app_state, epoch, updated_at, detail, "
                "COALESCE(stored_at, updated_at) FROM nodes ORDER BY node"
            ).fetchall()
        return [
            NodeRecord(
                node, role, app_state, epoch, updated_at, _load_json(detail), now - float(stored)
            )
            for node, role, app_state, epoch, updated_at, detail, stored in rows
        ]

    # --- event history --------------------------------------------------------

    def append_event(self, event: Event) -> Event:
        data = json.dumps(event.data, sort_keys=True)
        with self._using(f"append a {event.kind} event", write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO events (time, node, kind, reason, epoch, actor, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event.time, event.node, event.kind, event.reason, event.epoch, event.actor, data),
            )
            event_id = cursor.lastrowid
            assert event_id is not None  # an INSERT into a rowid table always sets it
            # AUTOINCREMENT ids never repeat, so "older than the newest N" is an id range.
            conn.execute("DELETE FROM events WHERE id <= ?", (event_id - self._max_events,))
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

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history", write=False) as conn:
            rows = conn.execute(
                "SELECT id, time, node, kind, reason, epoch, actor, data FROM events "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [
            Event(event_id, at, node, kind, reason, epoch, actor, _load_json(data))
            for event_id, at, node, kind, reason, epoch, actor, data in rows
        ]

    def recent_events(self, limit: int) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history", write=False) as conn:
            rows = conn.execute(
                "SELECT id, time, node, kind, reason, epoch, actor, data FROM events "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            Event(event_id, at, node, kind, reason, epoch, actor, _load_json(data))
            for event_id, at, node, kind, reason, epoch, actor, data in reversed(rows)
        ]

    # --- cluster state --------------------------------------------------------

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        text = json.dumps(value, sort_keys=True)
        if ttl is not None and ttl <= 0:
            raise ValueError(f"state ttl must be positive, got {ttl}")
        with self._using(f"store the cluster state {key!r}", write=True) as conn:
            now = self._clock()
            # Values past their expiry are never read again: removed as others are written.
            conn.execute("DELETE FROM cluster_state WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO cluster_state (key, value, expires_at) VALUES (?, ?, ?)",
                (key, text, now + ttl if ttl is not None else None),
            )

    def get_state(self, key: str) -> dict[str, Any] | None:
        with self._using(f"read the cluster state {key!r}", write=False) as conn:
            row = conn.execute(
                "SELECT value FROM cluster_state WHERE key = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (key, self._clock()),
            ).fetchone()
        return _load_json(row[0]) if row is not None else None

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        with self._using(f"clear the cluster state {key!r}", write=True) as conn:
            if if_value is None:
                cursor = conn.execute("DELETE FROM cluster_state WHERE key = ?", (key,))
            else:
                cursor = conn.execute(
                    "DELETE FROM cluster_state WHERE key = ? AND value = ?",
                    (key, json.dumps(if_value, sort_keys=True)),
                )
            return cursor.rowcount == 1

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        with self._using("read the cluster state", write=False) as conn:
            rows = conn.execute(
                "SELECT key, value FROM cluster_state "
                "WHERE expires_at IS NULL OR expires_at > ? ORDER BY key",
                (self._clock(),),
            ).fetchall()
        return {key: _load_json(value) for key, value in rows}

    # --- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connection; a later call opens a new one."""
        self._adopt_process()
        with self._lock:
            self._drop_connection()

    def __enter__(self) -> SqliteCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise CoordinationError(
            f"coordination store {path}: could not look at the file: {error}; check that this "
            "user may search its directory"
        ) from error
    return st.st_dev, st.st_ino


def main_file_identity(path: Path) -> str | None:
    """The identity written in the main file at ``path``, read without its -wal; None
    when it holds none (yet) or cannot be read that way."""
    uri = f"file:{urllib.parse.quote(str(Path(path).absolute()))}?immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) < 3:
                return None
            row = conn.execute("SELECT identity FROM cluster WHERE singleton = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row is not None else None


def read_identity(conn: sqlite3.Connection) -> StoreIdentity | None:
    """The identity of the store ``conn`` is open on (None: the row is missing)."""
    row = conn.execute(
        "SELECT c.identity, c.lineage, c.leases_from, e.last_epoch "
        "FROM cluster AS c, epoch_counter AS e WHERE c.singleton = 1 AND e.singleton = 1"
    ).fetchone()
    if row is None:
        return None
    lineage = json.loads(row[1])
    return StoreIdentity(
        str(row[0]),
        tuple(str(x) for x in lineage) if isinstance(lineage, list) else (),
        int(row[3]),
        float(row[2]),
    )


def _insert_identity(
    conn: sqlite3.Connection,
    identity: str,
    lineage: Sequence[str],
    created_at: float,
    leases_from: float,
) -> None:
    conn.execute(
        "INSERT INTO cluster (singleton, identity, lineage, created_at, leases_from) "
        "VALUES (1, ?, ?, ?, ?)",
        (identity, json.dumps(sorted(set(lineage))), created_at, leases_from),
    )


def create_store(
    path: Path,
    identity: StoreIdentity,
    *,
    event: Event | None = None,
    now: float | None = None,
) -> None:
    """Write a new, complete store file at ``path``, which must not exist (0600).

    It has ``identity`` (lineage, epoch counter at ``last_epoch``, ``leases_from``)
    and ``event`` as its first event. The file is left in rollback-journal mode,
    without -wal or -shm, so it can be moved into place as one file; coordinators
    switch it to WAL when they open it.
    """
    now = time.time() if now is None else now
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        _insert_identity(conn, identity.identity, identity.lineage, now, identity.leases_from)
        conn.execute(
            "UPDATE epoch_counter SET last_epoch = ? WHERE singleton = 1", (identity.last_epoch,)
        )
        if event is not None:
            conn.execute(
                "INSERT INTO events (time, node, kind, reason, epoch, actor, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.time,
                    event.node,
                    event.kind,
                    event.reason,
                    event.epoch,
                    event.actor,
                    json.dumps(event.data, sort_keys=True),
                ),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lease(conn: sqlite3.Connection, now: float) -> Lease | None:
    """The stored lease, judged at ``now`` (the store's clock)."""
    row = conn.execute(
        "SELECT holder, epoch, expires_at, revision FROM lease WHERE singleton = 1"
    ).fetchone()
    if row is None:
        return None
    return Lease.as_read(row[0], int(row[1]), float(row[2]), now, int(row[3]))


def _read_last_epoch(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT last_epoch FROM epoch_counter WHERE singleton = 1").fetchone()
    return int(row[0])


def _load_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
