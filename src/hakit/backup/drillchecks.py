"""The checks of a restore drill, run on a restored directory (``home/``, ``database/``).

Each check answers pass, fail or skip with one line of detail:

- the database: SQLite ``PRAGMA integrity_check`` on the restored file;
  PostgreSQL ``pg_restore --list`` of the dump (it is readable and lists its
  tables), and with a scratch server URL the dump restored into a new database
  there (``pg_restore --exit-on-error``, as many tables as listed), which is
  dropped afterwards;
- ``git fsck --full --no-dangling`` on every git repository in the restored home;
- for an app shaped like the sample app (a ``records`` table with ``attachment``
  and ``sha256`` columns): every attachment a row names is in the restored home
  with that SHA-256. Files no row names (in the attachments' directories) are
  counted, not failed: the home is captured after the database, so a file
  written during the capture has no row in it yet (hakit.demo.integrity).

``attachment_problems`` is the pure decision; the rest reads files and runs programs.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.scan import is_git_dir

PASS = "pass"
FAIL = "fail"
SKIP = "skip"
RECORDS = "records"  # the sample app's table (hakit.demo.database)
GIT_TIMEOUT = 3600.0  # seconds for one repository's fsck: bounded, generous
_PROBLEMS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass(frozen=True, slots=True)
class AttachmentRow:
    id: str
    attachment: str  # relative to the home
    sha256: str


# --- attachments (pure) -------------------------------------------------------------


def unsafe(relative: str) -> bool:
    parts = relative.split("/")
    return relative.startswith("/") or ".." in parts or "" in parts


def attachment_problems(rows: Sequence[AttachmentRow], hashes: Mapping[str, str]) -> list[str]:
    """One line per row whose file is absent (not in ``hashes``: relative path -> SHA-256
    of the files present) or differs."""
    problems: list[str] = []
    for row in rows:
        found = hashes.get(row.attachment)
        if unsafe(row.attachment):
            problems.append(f"record {row.id}: attachment path {row.attachment!r} leaves the home")
        elif found is None:
            problems.append(f"record {row.id}: {row.attachment} is absent")
        elif found != row.sha256.lower():
            problems.append(f"record {row.id}: {row.attachment} has another SHA-256")
    return problems


def orphans(rows: Iterable[AttachmentRow], present: Iterable[str]) -> list[str]:
    named = {row.attachment for row in rows}
    return sorted(path for path in present if path not in named)


def summary(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_PROBLEMS_SHOWN])
    more = len(problems) - _PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


# --- attachments (I/O) ---------------------------------------------------------------


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def check_attachments(home: Path, rows: Sequence[AttachmentRow]) -> Check:
    hashes: dict[str, str] = {}
    for row in rows:
        if not unsafe(row.attachment) and row.attachment not in hashes:
            digest = _sha256(home.joinpath(*row.attachment.split("/")))
            if digest is not None:
                hashes[row.attachment] = digest
    problems = attachment_problems(rows, hashes)
    # Orphans are looked for only in directories that hold attachments, never the
    # home's top, where the app keeps everything else.
    present: list[str] = []
    for directory in sorted({row.attachment.rpartition("/")[0] for row in rows} - {""}):
        folder = home.joinpath(*directory.split("/"))
        if not unsafe(directory) and folder.is_dir():
            present.extend(f"{directory}/{e.name}" for e in os.scandir(folder) if e.is_file())
    extra = orphans(rows, present)
    if problems:
        return Check("attachments", FAIL, f"{len(problems)} of {len(rows)}: {summary(problems)}")
    files = "1 file" if len(extra) == 1 else f"{len(extra)} files"
    note = f"; {files} no record names (written during the capture: harmless)"
    return Check(
        "attachments",
        PASS,
        f"all {len(rows)} present with their SHA-256" + (note if extra else ""),
    )


# --- the database -----------------------------------------------------------------


def _sqlite_rows(connection: sqlite3.Connection) -> list[AttachmentRow] | None:
    columns = {row[1] for row in connection.execute(f"PRAGMA table_info({RECORDS})")}
    if not {"attachment", "sha256"} <= columns:
        return None
    key = "id" if "id" in columns else "rowid"
    query = f"SELECT {key}, attachment, sha256 FROM {RECORDS} ORDER BY 1"
    return [AttachmentRow(str(a), str(b), str(c)) for a, b, c in connection.execute(query)]


def check_sqlite(path: Path) -> tuple[Check, list[AttachmentRow] | None]:
    """``PRAGMA integrity_check`` of the restored file, and its records if it has them."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            results = [str(row[0]) for row in connection.execute("PRAGMA integrity_check")]
            rows = _sqlite_rows(connection) if results == ["ok"] else None
        finally:
            connection.close()
    except sqlite3.Error as error:
        return Check("database", FAIL, f"SQLite {path.name}: {error}"), None
    if results != ["ok"]:
        return Check("database", FAIL, f"SQLite integrity_check: {summary(results)}"), None
    return Check("database", PASS, f"SQLite {path.name}: integrity_check ok"), rows


def postgres_rows(session: Any) -> list[AttachmentRow] | None:
    """The sample app's records in the session's database; None when it has no such table."""
    columns = {
        str(row[0])
        for row in session.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = %s AND table_schema = current_schema()",
            (RECORDS,),
        ).fetchall()
    }
    if not {"attachment", "sha256"} <= columns:
        return None
    key = "id" if "id" in columns else "ctid"
    rows = session.execute(
        f"SELECT {key}::text, attachment, sha256 FROM {RECORDS} ORDER BY 1"
    ).fetchall()
    return [AttachmentRow(str(a), str(b), str(c)) for a, b, c in rows]


def check_postgres(
    dump: Path, scratch_url: str | None, scratch_name: str, keep: bool
) -> tuple[list[Check], list[AttachmentRow] | None]:
    """The dump listed; with ``scratch_url``, restored into ``scratch_name`` on that server,
    its records read, and the database dropped unless ``keep``."""
    from hakit.snapshot.pgrestore import (
        drop_database,
        load_dump,
        maintenance,
        tables_in_listing,
    )
    from hakit.snapshot.postgres import parse_postgres_url, pg_program, run_client

    checks: list[Check] = []
    try:
        connection = parse_postgres_url(scratch_url or "postgresql:///postgres")
        listing = run_client(
            [pg_program("pg_restore"), "--list", str(dump)], connection, f"listing {dump.name}"
        )
        tables = tables_in_listing(listing.stdout)
        checks.append(Check("database dump", PASS, f"pg_restore --list: {tables} tables"))
    except SnapshotError as error:
        return [Check("database dump", FAIL, str(error))], None
    if scratch_url is None:
        checks.append(
            Check("database restore", SKIP, "no --scratch-database-url: the dump is only listed")
        )
        return checks, None
    rows: list[AttachmentRow] | None = None
    try:
        loaded = load_dump(connection, dump, scratch_name)
        checks.append(
            Check(
                "database restore",
                PASS,
                f"pg_restore into {connection.describe(scratch_name)}: {loaded.tables} tables",
            )
        )
        session = connection.connect(scratch_name)
        try:
            rows = postgres_rows(session)
        finally:
            session.close()
    except SnapshotError as error:
        checks.append(Check("database restore", FAIL, str(error)))
    finally:
        if not keep:
            with maintenance(connection, scratch_name) as admin:
                drop_database(admin, scratch_name)
    return checks, rows


# --- git ----------------------------------------------------------------------------


def git_directories(home: Path) -> list[Path]:
    """Every git directory under ``home`` (a ``.git`` or a bare repository), sorted."""
    found: list[Path] = []
    for directory, dirs, _files in os.walk(home):
        path = Path(directory)
        if is_git_dir(directory):
            found.append(path)
            dirs.clear()  # nothing to look for inside a repository
        else:
            dirs.sort()
    return sorted(found)


def _git_env(scratch: Path) -> dict[str, str]:
    # No system or user configuration: the restored repository's own decides alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return env | {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(scratch)}


def check_git(git_dir: Path, home: Path) -> Check:
    relative = git_dir.relative_to(home).as_posix()
    name = f"git fsck {relative}"
    command = ["git", f"--git-dir={git_dir}", "fsck", "--full", "--no-dangling", "--no-progress"]
    try:
        done = subprocess.run(
            command,
            env=_git_env(home.parent),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check(name, FAIL, f"git fsck could not run: {error}")
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return Check(name, FAIL, f"exit {done.returncode}: {summary(lines) or 'no output'}")
    return Check(name, PASS, "ok")
