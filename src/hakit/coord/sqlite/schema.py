"""The store's schema and its migrations, its identity row, and the files it is made of.

``SCHEMA_VERSION`` and the statements creating each version (``MIGRATIONS``: from
each older version to this one); the cluster identity (``StoreIdentity``, read by
``read_identity``, written by ``insert_identity``); ``create_store``, which writes a
whole new store file; ``file_id`` and ``main_file_identity``, how a file at the path
is recognised, and ``SIDE_FILES``, the -wal and -shm SQLite keeps beside it. See
hakit.coord.sqlite for why.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hakit.coord.base import Event
from hakit.errors import CoordinationError

SCHEMA_VERSION = 4


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
MIGRATIONS = {
    0: _SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4,
    1: _SCHEMA_V2 + _SCHEMA_V3 + _SCHEMA_V4,
    2: _SCHEMA_V3 + _SCHEMA_V4,
    3: _SCHEMA_V4,
}
# The -wal and -shm files SQLite keeps beside a store in WAL mode.
SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Who a store is: its identity, the identities it replaces, its last epoch."""

    identity: str
    lineage: tuple[str, ...]
    last_epoch: int
    leases_from: float = 0.0  # no lease is granted before (a re-initialised store)


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


def insert_identity(
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
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        insert_identity(conn, identity.identity, identity.lineage, now, identity.leases_from)
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
