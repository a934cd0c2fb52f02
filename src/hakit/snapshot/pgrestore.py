"""PostgreSQL restore: a dump into a NEW database, checked, then swapped in by two renames.

``load_dump`` creates the new database (``TEMPLATE template0``, with the live
database's encoding and locale when it exists), runs ``pg_restore --no-owner
--exit-on-error`` into it and checks it: pg_restore's exit status, and as many
tables as the dump's table of contents lists. Any failure, an interruption or a
killed pg_restore included, drops that new database; the live one was never
touched.

``swap_in`` then renames, in one transaction on a maintenance connection (the
``postgres`` database, ``template1`` when the app's database is ``postgres``):
the live database away (``<db>_hakit_before_<tag>``) and the restored one
(``<db>_hakit_restore_<tag>``) into its name. PostgreSQL renames only a
database nobody is connected to: sessions on the live database refuse the swap,
listed, unless ``force``, which first closes the database to new connections
(``ALLOW_CONNECTIONS false``, so a reconnecting app cannot slip in), terminates
them and waits (bounded) until they are gone. The previous database is kept
(``DROP DATABASE`` it once the restored one is accepted); ``swap_back`` undoes a
swap when what follows it (the home's swap) fails.

The URL's user needs ``CREATEDB`` and to own the live database (or be a superuser).
Database-level settings (``ALTER DATABASE ... SET``) and grants on the database
itself are not in a dump of its contents: set them again on the restored one.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.postgres import (
    PgConnection,
    client_environment,
    parse_postgres_url,
    pg_program,
    run_client,
)

NAME_BYTES = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1); longer ones are cut
SESSIONS_GONE_WITHIN = 10.0  # seconds for terminated sessions to end
STOPPED_APP_GRACE = 2.0  # seconds for a just-stopped app's sessions to end on their own
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (?!DATA )", re.MULTILINE)

OnStarted = Callable[[int], None]  # told pg_restore's PID once it runs


@dataclass(frozen=True, slots=True)
class PgSession:
    pid: int
    user: str
    application: str
    client: str
    state: str

    def describe(self) -> str:
        application = f" {self.application!r}" if self.application else ""
        return (
            f"pid {self.pid} ({self.user}{application} from {self.client or 'local'}, {self.state})"
        )


@dataclass(frozen=True, slots=True)
class LoadReport:
    database: str
    tables: int


@dataclass(frozen=True, slots=True)
class PgSwap:
    database: str  # the live name, now the restored database's
    kept: str | None  # the previous database's new name (None: there was none)
    restored: str  # the name the restored database had before the swap
    tables: int
    terminated: tuple[PgSession, ...]


def generation_tag(generation: str) -> str:
    """``20261206T113926.123456Z-abcdef01`` -> ``20261206t113926_abcdef01``: short, lower case."""
    stamp, _, suffix = generation.partition("-")
    return re.sub(r"[^a-z0-9_]", "_", f"{stamp.partition('.')[0]}_{suffix}".lower()).strip("_")


def _named(database: str, middle: str, tag: str) -> str:
    tail = f"_hakit_{middle}_{tag}"
    room = NAME_BYTES - len(tail.encode())
    head = database.encode()[: max(room, 0)].decode(errors="ignore")
    return head + tail


def restore_names(database: str, generation: str) -> tuple[str, str]:
    """(scratch, before) for restoring ``generation`` over ``database``, each within
    PostgreSQL's 63 bytes (the database's part shortened, never the generation's)."""
    tag = generation_tag(generation)
    return _named(database, "restore", tag), _named(database, "before", tag)


def tables_in_listing(listing: str) -> int:
    """Tables in ``pg_restore --list`` output (``TABLE`` entries, not ``TABLE DATA``)."""
    return len(_TOC_TABLE.findall(listing))


def _identifier(name: str) -> Any:
    from psycopg import sql

    return sql.Identifier(name)


def _sql(template: str, *names: str) -> Any:
    from psycopg import sql

    return sql.SQL(template).format(*(_identifier(name) for name in names))


@contextmanager
def maintenance(connection: PgConnection, *avoid: str) -> Iterator[Any]:
    """An autocommit connection on a database other than ``avoid`` (those are renamed,
    created or dropped, which needs nobody on them)."""
    dbname = "template1" if "postgres" in avoid else "postgres"
    admin = connection.connect(dbname)
    try:
        yield admin
    finally:
        admin.close()


def database_exists(admin: Any, name: str) -> bool:
    return (
        admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        is not None
    )


def sessions_on(admin: Any, name: str) -> list[PgSession]:
    rows = admin.execute(
        "SELECT pid, usename, application_name, client_addr::text, state"
        " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid",
        (name,),
    ).fetchall()
    return [PgSession(int(r[0]), r[1] or "", r[2] or "", r[3] or "", r[4] or "") for r in rows]


def drop_database(admin: Any, name: str) -> None:
    """Drop ``name`` if it exists; FORCE (13+) ends a killed pg_restore's lingering backend."""
    force = " WITH (FORCE)" if int(admin.info.server_version) >= 130000 else ""
    admin.execute(_sql("DROP DATABASE IF EXISTS {}" + force, name))


def _create_like(admin: Any, name: str, like: str | None) -> None:
    row = None
    if like is not None:
        row = admin.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
            " WHERE datname = %s",
            (like,),
        ).fetchone()
    if row is None:
        admin.execute(_sql("CREATE DATABASE {} TEMPLATE template0", name))
        return
    from psycopg import sql

    admin.execute(
        sql.SQL(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
        ).format(_identifier(name), sql.Literal(row[0]), sql.Literal(row[1]), sql.Literal(row[2]))
    )


def _count_tables(connection: PgConnection, name: str) -> int:
    session = connection.connect(name)
    try:
        (count,) = session.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'"
        ).fetchone()
    finally:
        session.close()
    return int(count)


def _pg_restore(
    connection: PgConnection, dump: Path, into: str, on_started: OnStarted | None
) -> None:
    command = [
        pg_program("pg_restore"),
        "--no-owner",
        "--exit-on-error",
        "--no-password",
        f"--dbname={connection.conninfo(into)}",
        str(dump),
    ]
    with tempfile.TemporaryFile("w+") as errors, client_environment(connection) as env:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            if on_started is not None:
                on_started(process.pid)
            status = process.wait()
        except BaseException:
            process.kill()  # ours, by its PID
            process.wait()
            raise
        errors.seek(0)
        output = errors.read().strip()
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"failed (exit {status})"
        raise SnapshotError(
            f"pg_restore into {into} {how}: {connection.scrub(output[-4000:]) or 'no output'}"
        )


def load_dump(
    connection: PgConnection,
    dump: Path,
    into: str,
    like: str | None = None,
    on_started: OnStarted | None = None,
) -> LoadReport:
    """Restore ``dump`` into the new database ``into`` and check it; on any failure
    ``into`` is dropped again and nothing else was touched."""
    listing = run_client(
        [pg_program("pg_restore"), "--list", str(dump)], connection, f"reading the dump {dump}"
    )
    expected = tables_in_listing(listing.stdout)
    with maintenance(connection, into, *([like] if like else [])) as admin:
        if database_exists(admin, into):
            raise SnapshotError(
                f"the database {into} exists on {connection.describe(into)}: "
                "restore into a new database"
            )
        _create_like(admin, into, like)
        try:
            _pg_restore(connection, dump, into, on_started)
            tables = _count_tables(connection, into)
            if tables != expected:
                raise SnapshotError(
                    f"the restored database {into} has {tables} tables, the dump lists {expected}"
                )
        except BaseException:
            drop_database(admin, into)
            raise
    return LoadReport(into, tables)


def _wait_gone(admin: Any, name: str, within: float = SESSIONS_GONE_WITHIN) -> list[PgSession]:
    deadline = time.monotonic() + within
    left = sessions_on(admin, name)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = sessions_on(admin, name)
    return left


def _refuse(live: str, sessions: list[PgSession], why: str) -> SnapshotError:
    listed = "; ".join(session.describe() for session in sessions)
    return SnapshotError(f"{len(sessions)} sessions on the database {live} {why}: {listed}")


def _rename_pairs(admin: Any, pairs: list[tuple[str, str]]) -> None:
    with admin.transaction():  # both renames, or neither
        for old, new in pairs:
            admin.execute(_sql("ALTER DATABASE {} RENAME TO {}", old, new))


def swap_in(
    connection: PgConnection, live: str, restored: str, before: str, force: bool
) -> tuple[str | None, tuple[PgSession, ...]]:
    """Rename ``live`` to ``before`` and ``restored`` to ``live`` in one transaction;
    (the kept name or None when there was no live database, the sessions terminated)."""
    import psycopg

    with maintenance(connection, live, restored, before) as admin:
        if database_exists(admin, before):
            raise SnapshotError(f"the database {before} exists: drop or rename it first")
        if not database_exists(admin, live):
            _rename_pairs(admin, [(restored, live)])
            return None, ()
        sessions = sessions_on(admin, live)
        if sessions and not force:
            # A backend outlives its client by a moment: an app stopped just now.
            sessions = _wait_gone(admin, live, STOPPED_APP_GRACE)
        if sessions and not force:
            raise _refuse(
                live, sessions, "(stop the app, or --force to terminate them); nothing was swapped"
            )
        closed = False
        try:
            if sessions:
                admin.execute(_sql("ALTER DATABASE {} ALLOW_CONNECTIONS false", live))
                closed = True
                for session in sessions:
                    admin.execute("SELECT pg_terminate_backend(%s)", (session.pid,))
                left = _wait_gone(admin, live)
                if left:
                    raise _refuse(live, left, "did not end; nothing was swapped")
            _rename_pairs(admin, [(live, before), (restored, live)])
        except psycopg.Error as error:
            raise SnapshotError(
                f"swapping {restored} in as {live} failed, nothing was swapped: "
                f"{connection.scrub(str(error))}"
            ) from None
        finally:
            if closed:  # the previous database, under whichever name it now has
                old = before if database_exists(admin, before) else live
                admin.execute(_sql("ALTER DATABASE {} ALLOW_CONNECTIONS true", old))
    return before, tuple(sessions)


def swap_back(connection: PgConnection, swap: PgSwap) -> None:
    """Undo ``swap``: the previous database back under its name, the restored one dropped."""
    import psycopg

    with maintenance(connection, swap.database, swap.restored, swap.kept or "") as admin:
        try:
            if swap.kept is None:
                _rename_pairs(admin, [(swap.database, swap.restored)])
            else:
                _rename_pairs(admin, [(swap.database, swap.restored), (swap.kept, swap.database)])
            drop_database(admin, swap.restored)
        except psycopg.Error as error:
            raise SnapshotError(
                f"undoing the database swap failed: {connection.scrub(str(error))}; "
                f"the previous database is "
                f"{swap.kept}, the restored one {swap.database}"
            ) from None


def restore_in_place(
    url: str,
    dump: Path,
    generation: str,
    force: bool = False,
    on_started: OnStarted | None = None,
) -> PgSwap:
    """Load ``dump`` into a scratch database, check it, then swap it in for the app's
    database (``url``'s). A failure before the swap drops the scratch database."""
    connection = parse_postgres_url(url)
    live = connection.params.get("dbname")
    if not live:  # libpq's default: ask the server (the database must then exist)
        session = connection.connect()
        try:
            (live,) = session.execute("SELECT current_database()").fetchone()
        finally:
            session.close()
    scratch, before = restore_names(str(live), generation)
    with maintenance(connection, live, scratch, before) as admin:
        if database_exists(admin, before):  # refused now, not after a long pg_restore
            raise SnapshotError(
                f"the database {before} exists (generation {generation} was swapped in "
                "before): drop or rename it first"
            )
        drop_database(admin, scratch)  # a previous attempt's, interrupted before its cleanup
    loaded = load_dump(connection, dump, scratch, like=str(live), on_started=on_started)
    try:
        kept, terminated = swap_in(connection, str(live), scratch, before, force)
    except BaseException:
        with maintenance(connection, live, scratch) as admin:
            drop_database(admin, scratch)
        raise
    return PgSwap(str(live), kept, scratch, loaded.tables, terminated)


def restore_copy(
    url: str, dump: Path, into: str, on_started: OnStarted | None = None
) -> LoadReport:
    """Restore ``dump`` into the new database ``into`` beside the app's (for inspection)."""
    connection = parse_postgres_url(url)
    return load_dump(
        connection, dump, into, like=connection.params.get("dbname"), on_started=on_started
    )
