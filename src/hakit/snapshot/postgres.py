"""PostgreSQL capture: ``pg_dump`` of one exported snapshot, with the WAL position it stands for.

A connection opens ``BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY`` and in
its first statement exports its snapshot (``pg_export_snapshot()``) and reads
the WAL position: ``pg_current_wal_insert_lsn()`` on a primary (every
transaction the snapshot sees wrote its commit record before it; the insert
position, not the flushed one, so asynchronous commits are covered too),
``pg_last_wal_replay_lsn()`` on a standby (``pg_is_in_recovery()``; exporting a
snapshot there needs PostgreSQL 10). While that transaction stays open,
``pg_dump --format=custom --snapshot=<id> --no-owner`` dumps the database from
exactly that snapshot into the capture's scratch file, which is then stored
in chunks like any other file. The manifest's ``position`` records:

- ``database``: the database's name (``current_database()``)
- ``snapshot``: the exported snapshot's id; ``xid_snapshot``: its
  ``xmin:xmax:xip`` (``pg_current_snapshot()``, ``txid_current_snapshot()``
  before 13): what the dump sees
- ``lsn``: the WAL position; ``lsn_kind``: ``insert`` (primary) or ``replay``
  (standby)
- ``server_version`` (``15.13``), ``server_version_num`` (``150013``), and
  ``pg_dump``: the dump's tool version (``pg_restore`` must be as new)

The URL's password never reaches an argument vector or a message: the client
programs get the connection string without it and read it from a passfile of
our own (mode 0600, removed after use), named by ``PGPASSFILE``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.scratch import scratch_directory

POSTGRESQL = "postgresql"
MIN_SERVER = 100000  # snapshots exported on a standby, pg_*_wal_* function names
LOCK_WAIT_TIMEOUT = "60s"  # pg_dump's wait for a table's lock (an app's DDL holding it)
_STDERR_KEPT = 4000  # the end of a client program's error output, in messages


@dataclass(frozen=True, slots=True)
class PgConnection:
    """A libpq connection's parameters, its password kept apart from them."""

    params: Mapping[str, str]  # never holds "password"
    password: str | None

    def conninfo(self, dbname: str | None = None) -> str:
        """The connection string without its password (for argv), on ``dbname`` if given."""
        from psycopg.conninfo import make_conninfo

        params = dict(self.params)
        if dbname is not None:
            params["dbname"] = dbname
        return make_conninfo("", **params)

    def describe(self, dbname: str | None = None) -> str:
        host = self.params.get("host") or "localhost"
        port = self.params.get("port") or "5432"
        return f"PostgreSQL {host}:{port}/{dbname or self.params.get('dbname', '')}"

    def connect(self, dbname: str | None = None) -> Any:
        """An autocommit psycopg connection (transactions are opened explicitly)."""
        import psycopg

        extra: dict[str, Any] = {} if self.password is None else {"password": self.password}
        try:
            return psycopg.connect(
                self.conninfo(dbname), autocommit=True, connect_timeout=10, **extra
            )
        except psycopg.Error as error:
            raise SnapshotError(
                f"cannot connect to {self.describe(dbname)}: {self.scrub(str(error))}"
            ) from None

    def scrub(self, text: str) -> str:
        """``text`` with the password (should a server or a tool echo it) masked."""
        return text.replace(self.password, "***") if self.password else text


def parse_postgres_url(url: str) -> PgConnection:
    """``postgresql://`` or ``postgres://`` URL (or a ``key=value`` conninfo)."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except ProgrammingError:
        raise SnapshotError(
            "app.database_url is not a valid PostgreSQL URL "
            "(postgresql://user[:password]@host:port/dbname)"
        ) from None
    password = params.pop("password", None)
    return PgConnection(params, password)


def _passfile_line(password: str) -> str:
    # .pgpass: fields separated by ':', with '\' and ':' escaped by a backslash.
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextmanager
def client_environment(connection: PgConnection) -> Iterator[dict[str, str]]:
    """The environment for pg_dump / pg_restore: the password in a private passfile."""
    env = dict(os.environ)
    if connection.password is None:
        yield env
        return
    env.pop("PGPASSWORD", None)  # libpq would prefer it to the passfile
    # In a scratch directory (0700): a killed capture leaves no password behind for long
    # (the next scratch directory removes it; hakit.snapshot.scratch).
    with scratch_directory("pgpass") as scratch:
        name = scratch / "pgpass"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_passfile_line(connection.password))
        env["PGPASSFILE"] = str(name)
        yield env


def pg_program(name: str) -> str:
    """The newest installed ``name`` (pg_dump, pg_restore): it must be at least as new as
    the server. Debian keeps each major version's under /usr/lib/postgresql/<v>/bin."""

    def major(path: str) -> int:
        found = re.search(r"/postgresql/(\d+)/", path)
        return int(found.group(1)) if found else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major, reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if found is None:
        raise SnapshotError(f"{name} is not installed: install PostgreSQL's client programs")
    return found


def run_client(
    command: list[str], connection: PgConnection, what: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client program; a failure raises naming ``what`` with the program's stderr."""
    with client_environment(connection) as env:
        return run_program(command, env, what, timeout, connection.scrub)


def run_program(
    command: list[str],
    env: Mapping[str, str],
    what: str,
    timeout: float | None = None,
    scrub: Callable[[str], str] = str,
) -> subprocess.CompletedProcess[str]:
    """Run one of PostgreSQL's programs, no stdin, bounded by ``timeout``; one that cannot
    start, times out or exits non-zero raises naming ``what`` with the end of its error
    output (through ``scrub``: a password never reaches a message)."""
    try:
        done = subprocess.run(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SnapshotError(f"{what} failed: {error}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-_STDERR_KEPT:]
        raise SnapshotError(f"{what} failed (exit {done.returncode}): " + scrub(output))
    return done


def program_version(program: str) -> str:
    done = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"\(PostgreSQL\) (\S+)", done.stdout)  # pg_dump (PostgreSQL) 15.18 (Debian …)
    return found.group(1) if found else "unknown"


def _snapshot_query(server_version: int) -> str:
    xids = "pg_current_snapshot()" if server_version >= 130000 else "txid_current_snapshot()"
    # One statement: the snapshot (taken at its start) and the position read with it.
    # CASE evaluates only the branch taken: pg_current_wal_insert_lsn() errors on a standby.
    return (
        "SELECT pg_export_snapshot(), pg_is_in_recovery(),"
        " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
        " ELSE pg_current_wal_insert_lsn() END)::text,"
        f" {xids}::text, current_database(), current_setting('server_version')"
    )


def dump_file_name(database: str) -> str:
    """The dump's file name in a generation (``database/<name>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", database).lstrip(".") + ".dump"


def capture_postgres(url: str, scratch: Path) -> tuple[Path, dict[str, int | str]]:
    """Dump the database ``url`` names into a new file in ``scratch``; the file and position."""
    connection = parse_postgres_url(url)
    pg_dump = pg_program("pg_dump")
    session = connection.connect()
    try:
        version = int(session.info.server_version)
        if version < MIN_SERVER:
            raise SnapshotError(
                f"{connection.describe()} runs PostgreSQL {version}: snapshots need 10 or newer"
            )
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = session.execute(_snapshot_query(version)).fetchone()
        snapshot, standby, lsn, xids, database, server_version = row
        copy = scratch / dump_file_name(str(database))
        command = [
            pg_dump,
            "--format=custom",
            f"--snapshot={snapshot}",
            "--no-owner",
            "--no-password",  # never prompt: the password comes from our passfile or nowhere
            f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}",
            f"--file={copy}",
            f"--dbname={connection.conninfo()}",
        ]
        # The exporting transaction stays open until pg_dump is done: the snapshot
        # can be imported only while it is.
        run_client(command, connection, f"pg_dump of {connection.describe(str(database))}")
        session.execute("COMMIT")
    except SnapshotError:
        raise
    except Exception as error:  # psycopg.Error: the server went away, a permission
        raise SnapshotError(
            f"capturing {connection.describe()} failed: {connection.scrub(str(error))}"
        ) from None
    finally:
        session.close()
    return copy, {
        "database": str(database),
        "snapshot": str(snapshot),
        "xid_snapshot": str(xids),
        "lsn": str(lsn),
        "lsn_kind": "replay" if standby else "insert",
        "server_version": str(server_version).split(" ")[0],  # 15.18 (Debian 15.18-0+deb12u1)
        "server_version_num": version,
        "pg_dump": program_version(pg_dump),
    }
