"""The drill of a physical base backup: a scratch PostgreSQL server started on the restored
data directory, and checked.

hakit does not manage the app's PostgreSQL server; the drill starts one of its
own, of the backup's major version, on the data directory the restore made
(moved into ``<drill>/pgserver/data``), with a configuration that keeps it
apart from everything live: no TCP (``listen_addresses = ''``), a Unix socket
in a new private directory, its own ``pg_hba.conf`` (``local all all trust``:
only its owner and root reach that socket), ``archive_mode = off`` (never a WAL
segment into the live archive), no ``primary_conninfo``, no external pid file,
no SSL files, modest memory, ``fsync = off`` (a scratch copy). Settings given on
the command line outrank the data directory's ``postgresql.conf`` and
``postgresql.auto.conf``, which are otherwise read (``shared_preload_libraries``
the app's extensions may need). Run as root, the server runs as the ``postgres``
user (PostgreSQL refuses root), which then owns the scratch copy.

The checks: the server starts, replays the backup's WAL and accepts connections
out of recovery, at or past the backup's stop LSN, with the backup's system
identifier ("database server"); every table of the app's database is read in
full, TOAST included ("database tables"); its records, if it has the sample
app's, go to the attachments check. The server is then stopped (by the PID
started, SIGINT: a fast shutdown) and its socket directory removed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.backup.drillchecks import FAIL, PASS, AttachmentRow, Check, postgres_rows
from hakit.snapshot.pgdatadir import pg_program_of

START_TIMEOUT = 600.0  # seconds for the server to replay the backup's WAL and accept connections
STOP_TIMEOUT = 60.0  # seconds for a fast shutdown before an immediate one
SERVER_USER = "postgres"  # who runs the scratch server when the drill runs as root
PORT = 5432  # only names the socket file, in a directory of our own: no TCP
_LOG_KEPT = 1500
_TABLES = (
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'information_schema'"
    " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1"
)


def server_options(
    data: Path, config_file: Path, server_dir: Path, socket_dir: Path, major: int
) -> list[str]:
    """The scratch server's command-line settings (they outrank its configuration files)."""
    settings = {
        "data_directory": str(data),
        "config_file": str(config_file),
        "hba_file": str(server_dir / "pg_hba.conf"),
        "ident_file": str(server_dir / "pg_ident.conf"),
        "port": str(PORT),
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "archive_mode": "off",
        "primary_conninfo": "",
        "synchronous_standby_names": "",
        "external_pid_file": str(server_dir / "external.pid"),  # never the live one's
        "ssl": "off",
        "logging_collector": "off",
        "log_destination": "stderr",
        "lc_messages": "C",
        "shared_buffers": "128MB",
        "huge_pages": "off",
        "fsync": "off",
        "cluster_name": "hakit-drill",
    }
    if major < 15:  # Debian points it into /var/run/postgresql, the live server's
        settings["stats_temp_directory"] = "pg_stat_tmp"
    options: list[str] = []
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    return options


@dataclass
class ScratchServer:
    process: subprocess.Popen[bytes]
    socket_dir: Path
    log: Path

    def connect(self, user: str, database: str, timeout: float = 5.0) -> Any:
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=PORT,
            user=user,
            dbname=database,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        return " ".join(self.log_text()[-_LOG_KEPT:].split())

    def stop(self) -> None:
        """A fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL: each by the
        PID we started, each bounded."""
        for signum, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0)):
            if self.process.poll() is not None:
                return
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
        self.process.kill()
        self.process.wait(timeout=10)


def _owner() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise OSError(
            f"the drill runs as root, which PostgreSQL refuses, and there is no {SERVER_USER} "
            "user to run the scratch server: create one, or run the drill as another user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    os.chown(root, *owner)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)


def start_server(restored_data: Path, restored: Path, major: int) -> ScratchServer:
    """Move the data directory restored in ``restored`` into ``pgserver/data`` beside it and
    start a scratch server of PostgreSQL ``major`` on it. Raises OSError saying what is
    missing."""
    program = pg_program_of("postgres", major)
    if program is None:
        raise OSError(f"PostgreSQL {major}'s server is not installed (the backup's version)")
    owner = _owner()
    drill_dir = restored.parent
    server_dir = drill_dir / "pgserver"
    server_dir.mkdir(mode=0o700)
    data = server_dir / "data"
    os.rename(restored_data, data)
    for name in ("standby.signal", "recovery.signal"):  # recover and open, never follow
        (data / name).unlink(missing_ok=True)
    config_file = data / "postgresql.conf"
    if not config_file.exists():  # Debian keeps it in /etc: the live server's
        config_file = server_dir / "postgresql.conf"
        config_file.write_text("# the drill's scratch server: settings on its command line\n")
    (server_dir / "pg_hba.conf").write_text("local all all trust\n")
    (server_dir / "pg_ident.conf").write_text("")
    socket_dir = Path(tempfile.mkdtemp(prefix="hakit-drill-sock-"))  # short: a socket path
    log = server_dir / "postgres.log"
    log.touch()
    if owner is not None:
        os.chmod(drill_dir, 0o711)  # the server's user passes through to pgserver/ only
        os.chmod(restored, 0o700)  # the restored home stays root's
        _chown_tree(server_dir, owner)
        os.chown(socket_dir, *owner)
    user: dict[str, Any] = {"user": owner[0], "group": owner[1]} if owner else {}
    with open(log, "ab") as stderr:
        process = subprocess.Popen(
            [
                program,
                "-D",
                str(data),
                *server_options(data, config_file, server_dir, socket_dir, major),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # not in the terminal's process group: ^C is the drill's
            **user,
        )
    return ScratchServer(process, socket_dir, log)


def _wait_open(server: ScratchServer, user: str) -> Any:
    """A session once the server accepts connections (it has replayed the WAL to consistency),
    within START_TIMEOUT; raises OSError with the server's log otherwise."""
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            log = server.log_tail()
            hint = ""
            if "Permission denied" in log and os.geteuid() == 0:
                hint = (
                    f"; the scratch server runs as {SERVER_USER}, who must be able to reach "
                    "the scratch directory: choose a --scratch it can"
                )
            raise OSError(f"the scratch server exited ({server.process.returncode}): {log}{hint}")
        try:
            return server.connect(user, "template1")
        except psycopg.OperationalError:  # starting up, replaying
            if time.monotonic() > deadline:
                raise OSError(
                    f"the scratch server accepted no connection within {START_TIMEOUT:.0f} s: "
                    + server.log_tail()
                ) from None
            time.sleep(0.2)


def _server_check(session: Any, position: Mapping[str, int | str]) -> Check:
    row = session.execute(
        "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text,"
        " pg_current_wal_lsn() >= %s::pg_lsn, system_identifier::text,"
        " current_setting('server_version') FROM pg_control_system()",
        (str(position["stop_lsn"]),),
    ).fetchone()
    in_recovery, lsn, past_stop, identifier, version = row
    stop = position["stop_lsn"]
    if in_recovery:
        return Check("database server", FAIL, "the scratch server is still in recovery")
    if not past_stop:
        return Check(
            "database server",
            FAIL,
            f"the server's WAL ends at {lsn}, before the backup's end {stop}",
        )
    if str(identifier) != str(position.get("system_identifier", identifier)):
        return Check(
            "database server",
            FAIL,
            f"system identifier {identifier}, the backup recorded {position['system_identifier']}",
        )
    return Check(
        "database server",
        PASS,
        f"PostgreSQL {str(version).split(' ')[0]} on the restored data directory: replayed the "
        f"backup's WAL ({position['start_lsn']} to {stop}), consistent, open at {lsn}",
    )


def _consistent_at(log: str) -> str:
    found = re.findall(r"consistent recovery state reached at (\S+)", log)
    return f" (the server's log: consistent at {found[-1]})" if found else ""


def _tables_check(session: Any, database: str) -> tuple[Check, list[AttachmentRow] | None]:
    tables = [str(row[0]) for row in session.execute(_TABLES).fetchall()]
    rows = size = 0
    for table in tables:
        # A whole-row value is detoasted: every page of the table and of its TOAST is read.
        count, total = session.execute(
            f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) FROM {table} AS t"
        ).fetchone()
        rows += int(count)
        size += int(total)
    detail = f"database {database}: {len(tables)} tables read in full, {rows} rows, {size} bytes"
    return Check("database tables", PASS, detail), postgres_rows(session)


def check_base_backup(
    restored_data: Path, restored: Path, position: Mapping[str, int | str]
) -> tuple[list[Check], list[AttachmentRow] | None]:
    """Start a scratch server on the data directory restored in ``restored``, check it,
    stop it."""
    import psycopg

    major = int(position["server_version_num"]) // 10000
    superuser = str(position["superuser"])
    database = str(position["database"])
    try:
        server = start_server(restored_data, restored, major)
    except OSError as error:
        return [Check("database server", FAIL, str(error))], None
    checks: list[Check] = []
    rows: list[AttachmentRow] | None = None
    try:
        with _wait_open(server, superuser) as session:
            check = _server_check(session, position)
        if not check.failed:
            check = Check(check.name, PASS, check.detail + _consistent_at(server.log_text()))
        checks.append(check)
        if checks[-1].failed:
            return checks, None
        with server.connect(superuser, database) as session:
            check, rows = _tables_check(session, database)
            checks.append(check)
    except (OSError, psycopg.Error) as error:
        checks.append(
            Check("database server" if not checks else "database tables", FAIL, str(error).strip())
        )
        return checks, None
    finally:
        server.stop()
        shutil.rmtree(server.socket_dir, ignore_errors=True)
    return checks, rows
