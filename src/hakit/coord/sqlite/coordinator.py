"""``SqliteCoordinator``: the ``Coordinator`` protocol on one SQLite file, and its opener.

The lease, the node records, the event history and the cluster state, each call
one transaction on the connection ``SqliteConnection`` keeps
(hakit.coord.sqlite.connection); ``SqliteSection``, this backend's config table,
and ``open_sqlite``, the opener hakit.coord.registry names. See hakit.coord.sqlite
for why it is safe.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.coord.memory import make_private_dir, memory_file
from hakit.coord.sqlite.connection import SqliteConnection
from hakit.coord.sqlite.leases import next_lease, read_last_epoch, read_lease
from hakit.coord.sqlite.schema import file_id
from hakit.errors import CoordinationError, NoClusterState

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


class SqliteCoordinator(SqliteConnection):
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

    # --- leader lease ---------------------------------------------------------

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        with self._using(f"acquire or renew the lease for {node}", write=True) as conn:
            now = self._clock()  # read under the write lock: grants are ordered in time
            stored, last = read_lease(conn, now), read_last_epoch(conn)
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
            stored = read_lease(conn, now)
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
            stored = read_lease(conn, now)
            newest = max(read_last_epoch(conn), stored.epoch if stored is not None else 0)
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
            lease = read_lease(conn, self._clock())
            if lease is not None:
                self._saw(lease.epoch)
            return lease

    def last_epoch(self) -> int:
        with self._using("read the last epoch", write=False) as conn:
            last = read_last_epoch(conn)
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


def _load_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
