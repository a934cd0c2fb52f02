"""Capturing the app's database at one transaction point, into a local file.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies the whole
database in one step under a read transaction, so the copy is one committed
state, whatever the app writes meanwhile (WAL or rollback journal). Its
position is read from the copy: the header's file change counter, the page
count and the schema version. PostgreSQL (``pg_dump`` or a base backup with its
LSN) and MySQL / MariaDB are not captured yet: the next step of issue 14.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.format import SnapshotError

SQLITE = "sqlite"


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    kind: str
    path: Path


def database_target(url: str) -> DatabaseTarget | None:
    """What ``app.database_url`` names; None for no database. Only SQLite is captured yet."""
    if url == "":
        return None
    if url.startswith("sqlite:///"):
        return DatabaseTarget(SQLITE, Path(url.removeprefix("sqlite:///").partition("?")[0]))
    scheme = url.partition(":")[0]
    raise SnapshotError(
        f"snapshots of {scheme} databases are not supported yet (only sqlite:///): "
        "PostgreSQL (pg_dump / base backup) is the next step"
    )


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
