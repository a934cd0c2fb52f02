"""The sample app's database: SQLite by path or PostgreSQL by URL.

SQLite: a connection is opened per operation: it is cheap, keeps the code free
of reconnect logic, and means every ``/status`` really reaches the database
(the contract asks for ERROR as soon as it cannot).

PostgreSQL: a small pool keeps idle connections open, as Jira's connection pool
does, so the app holds server sessions between requests (what session fencing
and a DBA's ``pg_terminate_backend`` act on). A connection that fails is thrown
away with every idle one (they likely died with it), so one failed operation is
all a lost connection costs; the next opens a fresh connection, and ``/status``
still reports ERROR as soon as the database cannot be reached.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.errors import HakitError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records ("
    " id TEXT PRIMARY KEY, title TEXT NOT NULL, attachment TEXT NOT NULL,"
    " sha256 TEXT NOT NULL, size BIGINT NOT NULL, created TEXT NOT NULL)",
)
_RECORD_COLUMNS = "id, title, attachment, sha256, size, created"
# Every record's write, in the order the database assigned (seq), with the lease epoch its
# app was started under: demo.integrity finds writes under an older epoch after a newer
# one's first write. A table of its own, so databases made before it keep working.
_WRITE_LOG = (
    "CREATE TABLE IF NOT EXISTS write_log ("
    " seq {serial} PRIMARY KEY, record_id TEXT NOT NULL, epoch BIGINT NOT NULL,"
    " node TEXT NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class LoggedWrite:
    seq: int  # the database's order of the writes
    record_id: str
    epoch: int  # 0: the app did not know its epoch
    node: str


class DatabaseUnavailable(HakitError):
    """The database cannot be reached or queried; the app reports ERROR."""


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    path: Path


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    url: str


@dataclass(frozen=True, slots=True)
class RecordRow:
    id: str
    title: str
    attachment: str  # path relative to the home directory
    sha256: str
    size: int
    created: str  # ISO 8601, UTC

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "attachment": self.attachment,
            "sha256": self.sha256,
            "size": self.size,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    reachable: bool
    configured: bool  # POST /setup has been done (FIRST_RUN otherwise)
    problem: str = ""  # why it is unreachable, for the log


def parse_database_url(url: str) -> SqliteTarget | PostgresTarget:
    """``sqlite:///rel.db``, ``sqlite:////abs.db`` (SQLAlchemy style) or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path not in ("/", ":memory:"):
            return SqliteTarget(Path(path))
    elif url.startswith(("postgresql://", "postgres://")):
        return PostgresTarget(url)
    raise ValueError(
        f"database URL {url!r} is not supported; use sqlite:////absolute/path.db, "
        "sqlite:///relative/path.db or postgresql://user@host:port/dbname"
    )


class Database:
    """Schema, setup flag and records. Subclasses only know how to connect."""

    placeholder = "?"
    serial = "INTEGER"  # SQLite: an INTEGER PRIMARY KEY counts up by itself

    def __init__(self) -> None:
        self._lost = threading.Event()  # the lose-database fault
        self.initialized = False

    def simulate_loss(self, lost: bool) -> None:
        if lost:
            self._lost.set()
        else:
            self._lost.clear()

    def describe(self) -> str:
        raise NotImplementedError

    def _connect(self, create: bool) -> Any:
        """A DB-API connection; ``create`` only for the first start."""
        raise NotImplementedError

    def _prepare(self, connection: Any) -> None:
        """Per-database setup done once, when the schema is created."""

    @contextmanager
    def _transaction(self, create: bool = False) -> Iterator[Any]:
        if self._lost.is_set():
            raise DatabaseUnavailable("database connection lost (fault injected)")
        try:
            connection = self._connect(create)
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # sqlite3.Error, psycopg.Error, OSError
            raise DatabaseUnavailable(f"cannot connect to {self.describe()}: {exc}") from exc
        failed = True
        try:
            yield connection
            connection.commit()
            failed = False
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(f"query failed on {self.describe()}: {exc}") from exc
        finally:
            self._release(connection, failed)

    def _release(self, connection: Any, failed: bool) -> None:
        """Done with ``connection`` (``failed``: an operation on it raised)."""
        _close_quietly(connection)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    def initialize(self) -> None:
        """Create the schema (first start) or check it is there."""
        with self._transaction(create=True) as connection:
            self._prepare(connection)
            for statement in (*SCHEMA, _WRITE_LOG.format(serial=self.serial)):
                connection.execute(statement)
        self.initialized = True

    def status(self) -> DatabaseStatus:
        """One cheap query that answers both "reachable?" and "configured?"."""
        try:
            if not self.initialized:
                self.initialize()
            with self._transaction() as connection:
                rows = connection.execute(
                    self._sql("SELECT value FROM settings WHERE key = ?"), ("configured",)
                ).fetchall()
        except DatabaseUnavailable as exc:
            return DatabaseStatus(reachable=False, configured=False, problem=str(exc))
        return DatabaseStatus(reachable=True, configured=bool(rows) and rows[0][0] == "yes")

    def mark_configured(self) -> None:
        with self._transaction() as connection:
            connection.execute(
                self._sql(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                ("configured", "yes"),
            )

    def insert_record(self, row: RecordRow, epoch: int = 0, node: str = "-") -> None:
        """The row and its write-log entry, in one transaction."""
        with self._transaction() as connection:
            connection.execute(
                self._sql(f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"),
                (row.id, row.title, row.attachment, row.sha256, row.size, row.created),
            )
            connection.execute(
                self._sql("INSERT INTO write_log (record_id, epoch, node) VALUES (?, ?, ?)"),
                (row.id, epoch, node),
            )

    def write_log(self) -> list[LoggedWrite]:
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT seq, record_id, epoch, node FROM write_log ORDER BY seq"
            ).fetchall()
        return [LoggedWrite(*row) for row in rows]

    def records(self) -> list[RecordRow]:
        with self._transaction() as connection:
            rows = connection.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records ORDER BY created, id"
            ).fetchall()
        return [RecordRow(*row) for row in rows]

    def record(self, record_id: str) -> RecordRow | None:
        with self._transaction() as connection:
            rows = connection.execute(
                self._sql(f"SELECT {_RECORD_COLUMNS} FROM records WHERE id = ?"), (record_id,)
            ).fetchall()
        return RecordRow(*rows[0]) if rows else None


class SqliteDatabase(Database):
    """SQLite on (possibly shared) storage: WAL and a busy timeout, because two app
    processes on one machine may open the same file (one active at a time)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path.absolute()

    def describe(self) -> str:
        return f"SQLite database {self.path}"

    def _connect(self, create: bool) -> sqlite3.Connection:
        # Without mode=rw, sqlite would silently create an empty database where the
        # real one vanished; a missing file must read as "unreachable" instead.
        if not self.path.parent.is_dir():
            raise DatabaseUnavailable(f"directory {self.path.parent} of {self.describe()} is gone")
        if not create and not self.path.is_file():
            raise DatabaseUnavailable(f"{self.describe()} is gone")
        mode = "rwc" if create else "rw"
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode={mode}"
        connection = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 5000")
        return connection

    def _prepare(self, connection: Any) -> None:
        connection.execute("PRAGMA journal_mode = WAL")


class PostgresDatabase(Database):
    placeholder = "%s"
    serial = "BIGSERIAL"
    POOL_IDLE = 4  # idle connections kept open; busier moments open more, closed after use

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._idle: list[Any] = []
        self._pool_lock = threading.Lock()

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return (
            f"PostgreSQL database {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        )

    def _connect(self, create: bool) -> Any:
        import psycopg  # imported here: SQLite-only runs start faster without it

        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        # 2 s is libpq's minimum; a /status probe must answer ERROR before its own
        # timeout, or an unreachable database would look like a hung app.
        return psycopg.connect(self.url, connect_timeout=2)

    def _release(self, connection: Any, failed: bool) -> None:
        if failed or connection.closed or connection.broken:
            # The server may have ended every session (restart, pg_terminate_backend):
            # the idle ones would fail the next operations one by one.
            with self._pool_lock:
                stale, self._idle = self._idle, []
            for idle in (connection, *stale):
                _close_quietly(idle)
            return
        with self._pool_lock:
            if len(self._idle) < self.POOL_IDLE:
                self._idle.append(connection)
                return
        _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is being thrown away anyway
        connection.close()


def open_database(url: str) -> Database:
    """The database for ``url``; raises ValueError naming the accepted forms."""
    target = parse_database_url(url)
    if isinstance(target, SqliteTarget):
        return SqliteDatabase(target.path)
    return PostgresDatabase(target.url)
