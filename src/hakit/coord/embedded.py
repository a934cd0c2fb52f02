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
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.errors import CoordinationError

SCHEMA_VERSION = 2
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_BUSY_TIMEOUT = 5.0

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
_MIGRATIONS = {0: _SCHEMA_V1 + _SCHEMA_V2, 1: _SCHEMA_V2}

# Connections inherited through fork: kept referenced so the child never closes
# (and never checkpoints or unlinks the WAL of) a connection the parent still uses.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def next_lease(
    stored: Lease | None, last_epoch: int, node: str, now: float, ttl: float
) -> Lease | None:
    """The lease ``node`` holds after asking at ``now``, or None if another node holds it.

    A valid lease held by ``node`` is extended under the same epoch. A free,
    expired or released lease gets a new epoch, also for its former holder:
    once expired, another node may have seen it free and acted on that.
    """
    if stored is not None and stored.valid_at(now):
        if stored.holder != node:
            return None
        return Lease(node, stored.epoch, now + ttl)
    newest = max(last_epoch, stored.epoch if stored is not None else 0)
    return Lease(node, newest + 1, now + ttl)


def advice_for(error: sqlite3.Error, path: Path) -> str:
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
            "the file is not a hakit coordination store or is damaged; "
            "move it away or set coordination.path to another file"
        )
    return "check the file and its directory (permissions, free space)"


class SqliteCoordinator:
    """The ``Coordinator`` protocol on one SQLite file (several processes, one machine).

    The event history is bounded: only the newest ``max_events`` events
    (default 10,000) are kept; older ones are deleted as new ones are appended.
    Ids keep increasing across the deletion. ``detail`` and ``data`` must be
    JSON-serializable.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_events: int = DEFAULT_MAX_EVENTS,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.path = Path(path)
        self._clock = clock
        self._max_events = max_events
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        # One connection is shared by the threads of a process; the lock keeps
        # their transactions from interleaving on it.
        self._lock = threading.Lock()

    # --- connection -----------------------------------------------------------

    def _adopt_process(self) -> None:
        """After a fork, forget the parent's connection and lock (never reuse them)."""
        if self._pid == os.getpid():
            return
        if self._conn is not None:
            _INHERITED_CONNECTIONS.append(self._conn)
        self._conn = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
            try:
                self._enable_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
                self._ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

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

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(conn)  # another process may have created it meanwhile
            if version in _MIGRATIONS:
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
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

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _using(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection for ``action``; inside one BEGIN IMMEDIATE transaction if ``write``."""
        self._adopt_process()
        with self._lock:
            try:
                conn = self._connection()
                if not write:
                    yield conn
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise CoordinationError(
                    f"coordination store {self.path}: could not {action}: {error}; "
                    f"{advice_for(error, self.path)}"
                ) from error

    # --- leader lease ---------------------------------------------------------

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"acquire or renew the lease for {node}", write=True) as conn:
            now = self._clock()  # read under the write lock: grants are ordered in time
            lease = next_lease(_read_lease(conn), _read_last_epoch(conn), node, now, ttl)
            if lease is None:
                return None
            conn.execute(
                "INSERT OR REPLACE INTO lease (singleton, holder, epoch, expires_at) "
                "VALUES (1, ?, ?, ?)",
                (lease.holder, lease.epoch, lease.expires_at),
            )
            conn.execute(
                "UPDATE epoch_counter SET last_epoch = MAX(last_epoch, ?) WHERE singleton = 1",
                (lease.epoch,),
            )
            return lease

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"renew the lease of {node} under epoch {epoch}", write=True) as conn:
            now = self._clock()
            stored = _read_lease(conn)
            if stored is None or stored.holder != node or stored.epoch != epoch:
                return None
            lease = Lease(node, epoch, now + ttl)
            conn.execute(
                "UPDATE lease SET expires_at = ? WHERE singleton = 1 AND holder = ? AND epoch = ?",
                (lease.expires_at, node, epoch),
            )
            return lease

    def take_over(self, node: str, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"hand the lease to {node}", write=True) as conn:
            now = self._clock()
            stored = _read_lease(conn)
            newest = max(_read_last_epoch(conn), stored.epoch if stored is not None else 0)
            lease = Lease(node, newest + 1, now + ttl)
            conn.execute(
                "INSERT OR REPLACE INTO lease (singleton, holder, epoch, expires_at) "
                "VALUES (1, ?, ?, ?)",
                (lease.holder, lease.epoch, lease.expires_at),
            )
            conn.execute(
                "UPDATE epoch_counter SET last_epoch = MAX(last_epoch, ?) WHERE singleton = 1",
                (lease.epoch,),
            )
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
            return _read_lease(conn)

    def last_epoch(self) -> int:
        with self._using("read the last epoch", write=False) as conn:
            return _read_last_epoch(conn)

    def data_version(self, *, wait: bool = True) -> tuple[int, int] | None:
        """A token that changes when another connection (another process) commits.

        SQLite's ``PRAGMA data_version``: no table is read, so a poller (the
        router) can skip its reads while the store is unchanged. Writes through
        this coordinator's own connection do not change it. Compare tokens of
        one coordinator only (the connection is part of the token).
        ``wait=False`` (from an event loop): None at once, not an error, when
        another thread is using the connection or SQLite answers busy.
        """
        if wait:
            with self._using("read the data version", write=False) as conn:
                return id(conn), int(conn.execute("PRAGMA data_version").fetchone()[0])
        self._adopt_process()
        if not self._lock.acquire(blocking=False):
            return None
        try:
            conn = self._connection()
            return id(conn), int(conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            self._lock.release()

    # --- node records ---------------------------------------------------------

    def publish_node(self, record: NodeRecord) -> None:
        detail = json.dumps(record.detail, sort_keys=True)
        with self._using(f"publish the record of {record.node}", write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO nodes (node, role, app_state, epoch, updated_at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.node,
                    record.role,
                    record.app_state,
                    record.epoch,
                    record.updated_at,
                    detail,
                ),
            )

    def nodes(self) -> Sequence[NodeRecord]:
        with self._using("read the node records", write=False) as conn:
            rows = conn.execute(
                "SELECT node, role, app_state, epoch, updated_at, detail FROM nodes ORDER BY node"
            ).fetchall()
        return [
            NodeRecord(node, role, app_state, epoch, updated_at, _load_json(detail))
            for node, role, app_state, epoch, updated_at, detail in rows
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

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, sort_keys=True)
        with self._using(f"store the cluster state {key!r}", write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cluster_state (key, value) VALUES (?, ?)", (key, text)
            )

    def get_state(self, key: str) -> dict[str, Any] | None:
        with self._using(f"read the cluster state {key!r}", write=False) as conn:
            row = conn.execute("SELECT value FROM cluster_state WHERE key = ?", (key,)).fetchone()
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
            rows = conn.execute("SELECT key, value FROM cluster_state ORDER BY key").fetchall()
        return {key: _load_json(value) for key, value in rows}

    # --- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connection; a later call opens a new one."""
        self._adopt_process()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_lease(conn: sqlite3.Connection) -> Lease | None:
    row = conn.execute("SELECT holder, epoch, expires_at FROM lease WHERE singleton = 1").fetchone()
    return Lease(row[0], int(row[1]), float(row[2])) if row is not None else None


def _read_last_epoch(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT last_epoch FROM epoch_counter WHERE singleton = 1").fetchone()
    return int(row[0])


def _load_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
