"""The connection to one store file: opening it, locking, and the checks at each call.

``SqliteConnection`` (the base of hakit.coord.sqlite.SqliteCoordinator) opens its
connection lazily, per process (never one inherited through fork), switches the
file to WAL, creates or migrates the schema, and before each call compares the
file at the path with the one its connection opened and the store's identity with
the one this process remembers (hakit.coord.memory); ``_using`` runs one call, a
write inside one ``BEGIN IMMEDIATE`` transaction. See hakit.coord.sqlite for why.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hakit.coord.memory import Memory, read_memory, write_memory
from hakit.coord.sqlite.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SIDE_FILES,
    StoreIdentity,
    file_id,
    insert_identity,
    main_file_identity,
    read_identity,
)
from hakit.errors import CoordinationError, StoreReplacedError

log = logging.getLogger("hakit.coord")
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_BUSY_TIMEOUT = 5.0

# Connections inherited through fork: kept referenced so the child never closes
# (and never checkpoints or unlinks the WAL of) a connection the parent still uses.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


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


class SqliteConnection:
    """The connection to the store at ``path`` and this process's memory of it.

    The parameters are SqliteCoordinator's (see its docstring), which adds the operations.
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
            if version in MIGRATIONS:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                # The identity is made once, with the store (or when a version 2 store
                # is upgraded): every process that opens it later reads this one.
                if version < 3:
                    insert_identity(conn, str(uuid.uuid4()), (), self._clock(), 0.0)
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
