"""PostgreSQL capture as a physical base backup (``[snapshot] postgres_method = "basebackup"``).

``pg_basebackup --format=plain --wal-method=stream --checkpoint=fast`` copies the
whole cluster (every database, its roles and settings) into the capture's
scratch directory, with the WAL written from the backup's start to its end
streamed beside it: the copy is self-contained and, once PostgreSQL has
replayed that WAL, consistent at the backup's end. ``pg_verifybackup`` checks it
there against the ``backup_manifest`` pg_basebackup wrote, then it is stored as
one archive (``hakit.snapshot.pgdatadir``) named ``pgdata``, restored as the
data directory ``database/pgdata``. The manifest's ``position`` records:

- ``database``: the app's database (the URL's; the drill reads its tables)
- ``start_lsn``, ``stop_lsn``, ``timeline``: the WAL range of the backup (from its
  ``backup_manifest``): the restored server is consistent once it replayed to
  ``stop_lsn``
- ``system_identifier``: the cluster's (from the copy's ``global/pg_control``)
- ``superuser``: the bootstrap superuser's name (the drill connects as it)
- ``server_version``, ``server_version_num``, ``pg_basebackup``: the tool's version

Before copying, a session on the app's database checks what pg_basebackup
needs, so a missing privilege is one clear sentence: PostgreSQL 13 or newer
(backup manifests), the URL's role has ``REPLICATION`` (or is a superuser), and
no tablespace besides ``pg_default`` and ``pg_global`` (a plain backup on the
same host would write a tablespace over the live one's path). pg_hba.conf must
also admit the role to ``replication`` connections; that is only known when
pg_basebackup connects, and its refusal gets the same hint. The password is
handled as ``pg_dump``'s is (``hakit.snapshot.postgres``): a private passfile,
never an argument or a message.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgdatadir import pack_data_directory, verify_data_directory
from hakit.snapshot.postgres import (
    PgConnection,
    parse_postgres_url,
    pg_program,
    program_version,
    run_client,
)

BASEBACKUP = "postgresql-basebackup"  # the database capture's kind in a manifest
DATA_DIRECTORY = "pgdata"  # its name in a generation: restored as database/pgdata/
MIN_SERVER = 130000  # backup manifests (pg_verifybackup, the WAL range)
PUT_IN_PLACE = (
    "{data_directory} is a restored, checked PostgreSQL data directory (the whole cluster); "
    "hakit does not manage the server: to use it, stop the server, move its data directory "
    "aside, put this one in its place (owned by the server's user, mode 0700) and start the "
    "server, which replays the WAL the backup holds (README: PostgreSQL base backups)"
)
SWAP_REFUSED = "the generation holds a physical base backup: nothing was swapped. " + PUT_IN_PLACE
_SCRATCH_COPY = "basebackup"  # pg_basebackup's target in the capture's scratch directory

_PREFLIGHT = (
    "SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
    " current_database(), current_user,"
    " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),"
    " (SELECT rolname FROM pg_roles WHERE oid = 10),"
    " (SELECT string_agg(spcname, ', ' ORDER BY spcname) FROM pg_tablespace"
    "   WHERE spcname NOT IN ('pg_default', 'pg_global'))"
)


def replication_hint(user: str) -> str:
    """How to let ``user`` take base backups (the README says the same)."""
    return (
        f'a base backup needs a role with REPLICATION: ALTER ROLE "{user}" REPLICATION (as a '
        f"superuser), and a pg_hba.conf line admitting it to replication connections, e.g. "
        f'"host replication {user} 10.0.0.5/32 scram-sha-256", then SELECT pg_reload_conf(); '
        'or capture with postgres_method = "dump"'
    )


def wal_range(manifest: Path) -> tuple[str, str, int]:
    """(start LSN, end LSN, timeline) of a base backup, from its ``backup_manifest``."""
    try:
        ranges = json.loads(manifest.read_text())["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return str(first["Start-LSN"]), str(last["End-LSN"]), int(last["Timeline"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise SnapshotError(
            f"the base backup's {manifest.name} cannot be read: {error!r}"
        ) from None


def system_identifier(data_directory: Path) -> str:
    """The cluster's system identifier: ``pg_control`` begins with it (a native uint64)."""
    with open(data_directory / "global" / "pg_control", "rb") as handle:
        return str(int.from_bytes(handle.read(8), sys.byteorder))


def _preflight(connection: PgConnection) -> tuple[Any, ...]:
    session = connection.connect()
    try:
        row = session.execute(_PREFLIGHT).fetchone()
    except Exception as error:  # psycopg.Error: the server went away
        raise SnapshotError(
            f"capturing {connection.describe()} failed: {connection.scrub(str(error))}"
        ) from None
    finally:
        session.close()
    version, _, _, user, may_replicate, _, tablespaces = row
    if int(version) < MIN_SERVER:
        raise SnapshotError(
            f"{connection.describe()} runs PostgreSQL {version}: a base backup needs 13 or "
            'newer (its backup manifest); use postgres_method = "dump"'
        )
    if not may_replicate:
        raise SnapshotError(
            f"{connection.describe()}: the role {user} may not take a base backup; "
            + replication_hint(str(user))
        )
    if tablespaces:
        raise SnapshotError(
            f"{connection.describe()} has tablespaces ({tablespaces}): a base backup of them "
            'is not supported yet; use postgres_method = "dump"'
        )
    return tuple(row)


def _run_basebackup(connection: PgConnection, target: Path, user: str) -> str:
    program = pg_program("pg_basebackup")
    command = [
        program,
        f"--pgdata={target}",
        "--format=plain",
        "--wal-method=stream",  # the WAL the backup needs, streamed beside it: self-contained
        "--checkpoint=fast",
        "--no-password",  # never prompt: the password comes from our passfile or nowhere
        "--no-sync",  # a scratch copy, archived and stored right after
        "--label=hakit",
        f"--dbname={connection.conninfo()}",
    ]
    what = f"pg_basebackup of {connection.describe()}"
    try:
        run_client(command, connection, what)
    except SnapshotError as error:
        message = str(error)
        refused = ("replication connection", "replication role", "max_wal_senders")
        if any(words in message for words in refused):
            raise SnapshotError(f"{message}; {replication_hint(user)}") from None
        raise
    return program


def capture_basebackup(url: str, scratch: Path) -> tuple[Path, dict[str, int | str]]:
    """A base backup of the cluster ``url`` is on, as an archive in ``scratch``; the archive
    and its position."""
    connection = parse_postgres_url(url)
    version, server_version, database, user, _, superuser, _ = _preflight(connection)
    copy = scratch / _SCRATCH_COPY
    program = _run_basebackup(connection, copy, str(user))
    start, stop, timeline = wal_range(copy / "backup_manifest")
    verify_data_directory(copy, int(version) // 10000, "the base backup")
    identifier = system_identifier(copy)
    archive = scratch / DATA_DIRECTORY
    pack_data_directory(copy, archive)
    shutil.rmtree(copy)
    return archive, {
        "database": str(database),
        "start_lsn": start,
        "stop_lsn": stop,
        "timeline": timeline,
        "system_identifier": identifier,
        "superuser": str(superuser),
        "server_version": str(server_version).split(" ")[0],
        "server_version_num": int(version),
        "pg_basebackup": program_version(program),
    }
