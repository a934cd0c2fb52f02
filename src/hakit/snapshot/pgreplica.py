"""Replicated storage with PostgreSQL: a generation's dump loaded beside, swapped with the home.

Each node has its own PostgreSQL database (``[[nodes]] database_url``: its own
server, or for a test its own database on a shared one). A standby applying a
generation (hakit.snapshot.apply) does, with this module:

- **prepare** (slow, the app stopped or not): ``load_for_swap`` restores the
  generation's ``pg_dump`` into a NEW database ``<db>_hakit_restore_<tag>`` on
  the node's server and checks it (hakit.snapshot.pgrestore.load_dump: any failure
  drops it), then writes ``POSTGRESQL.json`` (which databases) into the prepared
  generation's directory and removes the dump;
- **swap** (the app not running, no lease): ``swap_database`` renames, in one
  transaction, the live database to ``<db>_hakit_before_<tag>`` and the restored
  one to ``<db>``; then the home's link is renamed (hakit.snapshot.apply.swap_in).
  A failure of the link's rename undoes the renames (``undo``): the node keeps
  the previous home AND database, never one of each. Sessions on the live
  database refuse the swap (listed; retried at the next turn): on a cold standby
  nothing should be connected to it, and a database in use is never renamed
  away under its users;
- **prune** (``drop_databases``): removing a generation's directory drops the
  database that generation displaced (``before``) and a restored one never
  swapped in, so the server keeps as many previous databases as ``keep``
  generations; the node's own database from before its first generation is kept
  (like its adopted home directory), to be dropped by hand.

The URL's user needs ``CREATEDB`` and to own the live database.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgrestore import (
    PgSwap,
    database_exists,
    drop_database,
    load_dump,
    maintenance,
    restore_names,
    swap_back,
    swap_in,
)
from hakit.snapshot.postgres import PgConnection, parse_postgres_url
from hakit.snapshot.restore import DATABASE

MARKER = "POSTGRESQL.json"  # in a prepared generation's directory


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a prepared generation holds on the node's server (its ``MARKER``)."""

    live: str  # the app's database name
    scratch: str  # the restored database, until swapped in
    before: str  # the name the live database gets at the swap
    tables: int
    swapped: bool = False
    kept: str | None = None  # the displaced database's name after the swap (None: none was)
    adopted: bool = False  # the displaced one was the node's own, from before replication

    def write(self, directory: Path) -> None:
        temporary = directory / f".{MARKER}.tmp"
        with open(temporary, "w") as handle:
            json.dump(
                {
                    "live": self.live,
                    "scratch": self.scratch,
                    "before": self.before,
                    "tables": self.tables,
                    "swapped": self.swapped,
                    "kept": self.kept,
                    "adopted": self.adopted,
                },
                handle,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, directory / MARKER)


def read_prepared(directory: Path) -> Prepared | None:
    try:
        raw = json.loads((directory / MARKER).read_text())
        return Prepared(
            live=str(raw["live"]),
            scratch=str(raw["scratch"]),
            before=str(raw["before"]),
            tables=int(raw["tables"]),
            swapped=bool(raw.get("swapped")),
            kept=None if raw.get("kept") is None else str(raw["kept"]),
            adopted=bool(raw.get("adopted")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SnapshotError(f"{directory / MARKER} is unreadable: {error}") from None


def live_database(connection: PgConnection) -> str:
    """The app's database name (the URL's, else the server's default for the user)."""
    name = connection.params.get("dbname")
    if name:
        return name
    session = connection.connect()
    try:
        (name,) = session.execute("SELECT current_database()").fetchone()
    finally:
        session.close()
    return str(name)


def load_for_swap(restored: Path, url: str, generation: str) -> Prepared:
    """Load ``restored``'s dump into a new database beside the live one (see the module)."""
    connection = parse_postgres_url(url)
    live = live_database(connection)
    scratch, before = restore_names(live, generation)
    dumps = sorted((restored / DATABASE).iterdir())
    if len(dumps) != 1:
        raise SnapshotError(f"{restored / DATABASE} holds {len(dumps)} files, one dump expected")
    with maintenance(connection, live, scratch, before) as admin:
        drop_database(admin, scratch)  # an attempt interrupted before its cleanup
    report = load_dump(connection, dumps[0], scratch, like=live)
    prepared = Prepared(live, scratch, before, report.tables)
    try:
        prepared.write(restored)
        dumps[0].unlink()
        (restored / DATABASE).rmdir()
    except BaseException:
        with maintenance(connection, live, scratch) as admin:
            drop_database(admin, scratch)
        raise
    return prepared


def swap_database(prepared_dir: Path, url: str, adopted: bool) -> PgSwap | None:
    """The restored database in as the live one (None: the generation has no PostgreSQL)."""
    prepared = read_prepared(prepared_dir)
    if prepared is None:
        return None
    connection = parse_postgres_url(url)
    with maintenance(connection, prepared.live, prepared.scratch) as admin:
        if not database_exists(admin, prepared.scratch):
            raise SnapshotError(
                f"the restored database {prepared.scratch} of {prepared_dir.name} is gone "
                "from the server; the generation is prepared again"
            )
    kept, terminated = swap_in(
        connection, prepared.live, prepared.scratch, prepared.before, force=False
    )
    swapped = Prepared(
        prepared.live,
        prepared.scratch,
        prepared.before,
        prepared.tables,
        swapped=True,
        kept=kept,
        adopted=adopted,
    )
    swapped.write(prepared_dir)
    return PgSwap(prepared.live, kept, prepared.scratch, prepared.tables, terminated)


def undo(prepared_dir: Path, url: str, swap: PgSwap) -> None:
    """The home's swap failed: the previous database back under its name, the restored one
    dropped (the generation is prepared again next time)."""
    swap_back(parse_postgres_url(url), swap)
    (prepared_dir / MARKER).unlink(missing_ok=True)


def drop_databases(generation_dir: Path, url: str) -> list[str]:
    """Before ``generation_dir`` is removed: the databases it alone still names (above)."""
    prepared = read_prepared(generation_dir)
    if prepared is None:
        return []
    doomed = [prepared.scratch] if not prepared.swapped else []
    if prepared.swapped and prepared.kept is not None and not prepared.adopted:
        doomed.append(prepared.kept)
    connection = parse_postgres_url(url)
    with maintenance(connection, prepared.live, *doomed) as admin:
        for name in doomed:
            drop_database(admin, name)
    return doomed
