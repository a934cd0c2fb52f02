"""Capturing the app's database at one transaction point, into a local file.

``database_target`` reads ``app.database_url``; ``capture_database`` dispatches
on its kind:

SQLite: the online backup API (``sqlite3.Connection.backup``) copies the whole
database in one step under a read transaction, so the copy is one committed
state, whatever the app writes meanwhile (WAL or rollback journal). Its
position is read from the copy: the header's file change counter, the page
count and the schema version.

PostgreSQL, by the method the operator configures (``[snapshot]
postgres_method``): ``dump`` (the default), ``pg_dump`` of one exported snapshot
(``hakit.snapshot.postgres``), its LSN recorded, restored by
``hakit.snapshot.pgrestore``; or ``basebackup``, a physical base backup of the
whole cluster with its start and stop LSN (``hakit.snapshot.basebackup``),
restored as a data directory. MySQL / MariaDB are not captured yet.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.basebackup import BASEBACKUP, capture_basebackup
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.postgres import POSTGRESQL, capture_postgres

SQLITE = "sqlite"

# How a PostgreSQL database is captured ([snapshot] postgres_method).
DUMP = "dump"
BASEBACKUP_METHOD = "basebackup"
POSTGRES_METHODS = (DUMP, BASEBACKUP_METHOD)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    kind: str  # SQLITE or POSTGRESQL
    path: Path | None = None  # SQLite's file
    url: str = ""  # PostgreSQL's connection URL (with its password: never print it)
    method: str = DUMP  # PostgreSQL: one of POSTGRES_METHODS


@dataclass(frozen=True, slots=True)
class DatabaseCopy:
    kind: str  # SQLITE, POSTGRESQL (a dump) or BASEBACKUP
    file: Path  # the copy (SQLite), the dump or the base backup's archive, in the scratch directory
    position: dict[str, int | str]


def database_target(url: str, postgres_method: str = DUMP) -> DatabaseTarget | None:
    """What ``app.database_url`` names, captured by ``postgres_method`` when it is
    PostgreSQL; None for no database."""
    if postgres_method not in POSTGRES_METHODS:
        raise SnapshotError(f"postgres_method {postgres_method!r} is not one of {POSTGRES_METHODS}")
    if url == "":
        return None
    if url.startswith("sqlite:///"):
        return DatabaseTarget(SQLITE, Path(url.removeprefix("sqlite:///").partition("?")[0]))
    scheme = url.partition(":")[0]
    if scheme in ("postgresql", "postgres"):
        return DatabaseTarget(POSTGRESQL, url=url, method=postgres_method)
    raise SnapshotError(
        f"snapshots of {scheme} databases are not supported yet (sqlite:/// and postgresql:// are)"
    )


def capture_database(target: DatabaseTarget, scratch: Path) -> DatabaseCopy:
    """Copy the database at one transaction point into a new file in ``scratch``."""
    if target.kind == POSTGRESQL and target.method == BASEBACKUP_METHOD:
        archive, position = capture_basebackup(target.url, scratch)
        return DatabaseCopy(BASEBACKUP, archive, position)
    if target.kind == POSTGRESQL:
        dump, position = capture_postgres(target.url, scratch)
        return DatabaseCopy(POSTGRESQL, dump, position)
    assert target.path is not None
    copy = scratch / target.path.name
    return DatabaseCopy(SQLITE, copy, dict(capture_sqlite(target.path, copy)))


def _header_counter(path: Path) -> int:
    with open(path, "rb") as handle:
        header = handle.read(100)
    return int.from_bytes(header[24:28], "big") if len(header) == 100 else 0


def capture_sqlite(source: Path, copy: Path) -> dict[str, int]:
    """Copy ``source`` to ``copy`` (a new file) at one transaction point; its position."""
    if not source.is_file():
        raise SnapshotError(f"the SQLite database {source} does not exist")
    try:
        # mode=rw: never create an empty database where the app's should be.
        with sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=30.0) as origin:
            target = sqlite3.connect(copy)
            try:
                origin.backup(target)  # pages=-1: all in one step, one read transaction
                (pages,) = target.execute("PRAGMA page_count").fetchone()
                (schema,) = target.execute("PRAGMA schema_version").fetchone()
                (result,) = target.execute("PRAGMA quick_check").fetchone()
            finally:
                target.close()
        origin.close()
    except sqlite3.Error as error:
        raise SnapshotError(f"could not copy the SQLite database {source}: {error}") from None
    if result != "ok":
        raise SnapshotError(f"the copy of the SQLite database {source} is damaged: {result}")
    return {
        "change_counter": _header_counter(copy),
        "page_count": int(pages),
        "schema_version": int(schema),
    }
