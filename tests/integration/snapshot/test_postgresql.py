"""PostgreSQL snapshots against a real server (tests/pgserver.py): capture under writes,
restore into a new database, the swap, refusals, a killed pg_restore, a corrupt chunk,
the sample app on a restored database, and the CLI.

Each test works in a database of its own on the worker's server (the ``postgres``
fixture), dropped at the end with whatever the restores made beside it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from hakit.cli import app as hakit_cli
from hakit.demo.cluster import free_port
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgrestore import (
    generation_tag,
    restore_copy,
    restore_names,
    tables_in_listing,
)
from hakit.snapshot.postgres import _passfile_line
from hakit.snapshot.restore import restore_generation, swap_generation
from hakit.snapshot.store import open_local_store
from tests.integration.demo.test_app import StartApp, start_app  # noqa: F401  (fixture)
from tests.integration.snapshot.conftest import LIMITS, make_home, tree_of
from tests.integration.snapshot.test_cli import CONFIG
from tests.pgserver import PostgresServer, _bindir, _launch, _wait_ready
from tests.support.app_writes import records_written
from tests.support.waiting import wait_until

MAX_WRITES = 200_000  # the writer's bound, far above what a test lets it do


@dataclass
class Database:
    server: PostgresServer
    name: str

    def url(self, name: str | None = None, password: str = "") -> str:
        base = self.server.url.rsplit("/", 1)[0]
        if password:
            base = base.replace("postgres@", f"postgres:{password}@")
        return f"{base}/{name or self.name}"

    def connect(self, name: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(name), autocommit=True, **kwargs)

    def databases(self) -> set[str]:
        with self.connect("postgres") as admin:
            rows = admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (self.name + "%",)
            ).fetchall()
        return {row[0] for row in rows}

    def scalar(self, query: str, name: str | None = None) -> Any:
        with self.connect(name) as session:
            row = session.execute(query).fetchone()
        assert row is not None
        return row[0]


@pytest.fixture
def db(postgres: PostgresServer) -> Iterator[Database]:
    database = Database(postgres, f"app_{secrets.token_hex(3)}")
    with database.connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{database.name}"')
    try:
        yield database
    finally:
        with database.connect("postgres") as admin:
            for name in database.databases():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_schema(db: Database, filler_rows: int = 200) -> None:
    """Two accounts moved in one transaction per event, and random filler (~2 MB)
    so the dump spans many chunks."""
    with db.connect() as session:
        session.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, lsn_before PG_LSN NOT NULL)")
        session.execute("CREATE TABLE account_a (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        session.execute("CREATE TABLE account_b (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        session.execute("INSERT INTO account_a VALUES (1, 0)")
        session.execute("INSERT INTO account_b VALUES (1, 0)")
        session.execute("CREATE TABLE filler (id INT PRIMARY KEY, data BYTEA NOT NULL)")
        with session.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO filler VALUES (%s, %s)",
                [(index, os.urandom(10_000)) for index in range(filler_rows)],
            )


@dataclass
class Writer:
    """Transactions until stopped: an event (with the WAL insert position read inside
    it, before its commit record) and a transfer from account_a to account_b."""

    db: Database
    acked: int = 0  # events whose COMMIT returned
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.db.connect() as session:
                for number in range(1, MAX_WRITES):
                    if self.stop.is_set():
                        return
                    with session.transaction():
                        session.execute(
                            "INSERT INTO events VALUES (%s, pg_current_wal_insert_lsn())",
                            (number,),
                        )
                        session.execute("UPDATE account_a SET balance = balance - 1")
                        session.execute("UPDATE account_b SET balance = balance + 1")
                    self.acked = number
        except BaseException as error:  # reported by the test
            self.error = error


@pytest.fixture
def writer(db: Database) -> Iterator[Writer]:
    make_schema(db)
    running = Writer(db)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        thread.join(timeout=30)
    assert running.error is None, running.error


def _options(home: Path, url: str) -> CaptureOptions:
    return CaptureOptions(home=home, database_url=url, node="n1", epoch=1, limits=LIMITS)


def _capture(db: Database, tmp_path: Path) -> tuple[Path, Path, Any]:
    home = tmp_path / "home"
    if not home.exists():
        make_home(home)
    repo = tmp_path / "repo"
    report = create_snapshot(open_local_store(repo, create=True), _options(home, db.url()))
    return home, repo, report


def _events(db: Database, name: str | None = None) -> list[int]:
    with db.connect(name) as session:
        return [row[0] for row in session.execute("SELECT id FROM events ORDER BY id")]


# --- pure parts -------------------------------------------------------------------


def test_names_fit_postgresql_identifiers_and_keep_the_generation() -> None:
    generation = "20261206T113926.123456Z-abcdef01"
    assert generation_tag(generation) == "20261206t113926_abcdef01"
    assert restore_names("app", generation) == (
        "app_hakit_restore_20261206t113926_abcdef01",
        "app_hakit_before_20261206t113926_abcdef01",
    )
    scratch, before = restore_names("x" * 60, generation)
    assert len(scratch.encode()) <= 63 and scratch.endswith(
        "_hakit_restore_20261206t113926_abcdef01"
    )
    assert len(before.encode()) <= 63 and before.startswith("xxx")


def test_tables_counted_in_a_listing_and_passfile_escaped() -> None:
    listing = (
        ";\n; Archive created at 2026-12-06\n"
        "215; 1259 16390 TABLE public records postgres\n"
        "216; 1259 16391 TABLE public settings postgres\n"
        "3325; 0 16390 TABLE DATA public records postgres\n"
        "3160; 2606 16396 CONSTRAINT public records records_pkey postgres\n"
    )
    assert tables_in_listing(listing) == 2
    assert _passfile_line("a:b\\c") == "*:*:*:*:a\\:b\\\\c\n"


# --- capture ----------------------------------------------------------------------


def test_capture_under_writes_is_one_consistent_snapshot_at_its_lsn(
    db: Database, writer: Writer, tmp_path: Path
) -> None:
    wait_until(lambda: writer.acked >= 50, 30, "the writer's first 50 transactions")
    acked_before = writer.acked
    home, repo, report = _capture(db, tmp_path)
    acked_after = writer.acked
    writer.stop.set()

    captured = report.manifest.database
    assert captured is not None and captured.kind == "postgresql"
    position = captured.position
    assert position["database"] == db.name and captured.name == f"{db.name}.dump"
    assert position["lsn_kind"] == "insert" and str(position["lsn"]).count("/") == 1
    assert str(position["snapshot"]) and str(position["xid_snapshot"]).count(":") == 2
    assert int(position["server_version_num"]) >= 100000
    assert str(position["server_version"]).split(".")[0] == str(position["pg_dump"]).split(".")[0]
    assert len(captured.chunks) > 10  # ~2 MB in 64 KiB chunks, stored like any file

    restored = restore_generation(open_local_store(repo), None, tmp_path / "restored")
    assert restored.database is not None
    inspect = f"{db.name}_inspect"
    loaded = restore_copy(db.url(), restored.database, inspect)
    assert loaded.tables == 4

    ids = _events(db, inspect)
    # Every transaction acknowledged before the capture began is in it; the rest
    # is a prefix of the writer's (serial) transactions, none newer than the capture.
    assert ids == list(range(1, len(ids) + 1))
    assert acked_before <= len(ids) <= acked_after + 1
    # Both accounts of every transaction, never one without the other.
    balance_a = db.scalar("SELECT balance FROM account_a", inspect)
    balance_b = db.scalar("SELECT balance FROM account_b", inspect)
    assert balance_b == len(ids) and balance_a == -len(ids)
    # Every transaction in the dump began before the recorded LSN.
    lsn = position["lsn"]
    assert db.scalar(f"SELECT count(*) FROM events WHERE lsn_before >= '{lsn}'", inspect) == 0
    assert db.scalar("SELECT count(*) FROM filler", inspect) == 200
    assert tree_of(tmp_path / "restored" / "home") == tree_of(home)


def start_standby(primary: PostgresServer) -> PostgresServer:
    """A hot standby of ``primary``: pg_basebackup -R (streaming), started on its own port."""
    bindir = _bindir()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="hakit-pg-standby-"))
    kwargs: dict[str, Any] = {}
    if primary.owner:
        os.chown(base, *primary.owner)
        kwargs = {"user": primary.owner[0], "group": primary.owner[1]}
    datadir = base / "data"
    subprocess.run(
        [
            str(bindir / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            *("-D", str(datadir), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"),
        ],
        check=True,
        capture_output=True,
        **kwargs,
    )
    port = free_port()
    standby = PostgresServer(datadir, port, _launch(datadir, port, primary.owner), primary.owner)
    try:
        _wait_ready(standby, 30)
    except BaseException:
        standby.stop()
        raise
    return standby


def test_capture_from_a_standby_records_its_replay_lsn(
    db: Database, postgres: PostgresServer, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=5)
    standby = start_standby(postgres)
    try:
        with db.connect() as session:  # written on the primary after the base backup
            session.execute("INSERT INTO events SELECT g, '0/0' FROM generate_series(1, 25) g")
        on_standby = Database(standby, db.name)
        wait_until(lambda: on_standby.scalar("SELECT count(*) FROM events") == 25, 30, "the replay")
        assert on_standby.scalar("SELECT pg_is_in_recovery()") is True
        home = tmp_path / "home"
        make_home(home)
        store = open_local_store(tmp_path / "repo", create=True)
        report = create_snapshot(store, _options(home, on_standby.url()))
    finally:
        standby.stop()
    captured = report.manifest.database
    assert captured is not None and captured.position["lsn_kind"] == "replay"
    restored = restore_generation(store, None, tmp_path / "restored")
    assert restored.database is not None
    inspect = f"{db.name}_fromstandby"
    restore_copy(db.url(), restored.database, inspect)
    assert _events(db, inspect) == list(range(1, 26))


def test_a_pg_dump_failure_is_reported_with_its_error_and_no_password(
    db: Database, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=1)
    role = f"{db.name}_reader"
    with db.connect() as session:  # may connect, may not read the tables
        session.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = db.url().replace("postgres@", f"{role}:Hidden-Pw@")
        home = tmp_path / "home"
        make_home(home)
        store = open_local_store(tmp_path / "repo", create=True)
        with pytest.raises(SnapshotError) as failed:
            create_snapshot(store, _options(home, url))
        message = str(failed.value)
        assert "pg_dump of PostgreSQL 127.0.0.1" in message and "permission denied" in message
        assert "Hidden-Pw" not in message
        assert store.list_manifests() == []  # no generation
    finally:
        with db.connect("postgres") as admin:
            admin.execute(f"DROP ROLE {role}")  # it owns nothing


# --- restore and swap ---------------------------------------------------------------


def test_restore_swaps_the_database_in_and_keeps_the_previous_one(
    db: Database, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=20)
    with db.connect() as session:
        session.execute("INSERT INTO events SELECT g, '0/0' FROM generate_series(1, 30) g")
    home, repo, report = _capture(db, tmp_path)
    with db.connect() as session:  # the live database moves on after the capture
        session.execute("DELETE FROM events WHERE id > 10")
        session.execute("CREATE TABLE later (id INT)")
    (home / "after-capture").write_text("newer than the generation")

    restored = restore_generation(open_local_store(repo), None, tmp_path / "restored", [home])
    swapped = swap_generation(restored.into, home, database_target(db.url()))

    generation = report.manifest.generation
    scratch, before = restore_names(db.name, generation)
    assert scratch not in db.databases()
    assert swapped.kept_database == before
    assert _events(db) == list(range(1, 31))  # the generation's state, under the live name
    assert db.scalar("SELECT to_regclass('later') IS NULL")
    assert _events(db, before) == list(range(1, 11))  # the previous one, kept
    assert db.databases() == {db.name, before}  # the scratch name is gone
    assert not (home / "after-capture").exists()
    assert (home.with_name(f"home.before-{generation}") / "after-capture").exists()
    assert swapped.moved_aside == (home.with_name(f"home.before-{generation}"),)

    # The same generation again: refused before any pg_restore, nothing changes.
    again = restore_generation(open_local_store(repo), None, tmp_path / "again")
    with pytest.raises(SnapshotError, match=f"{before} exists"):
        swap_generation(again.into, home, database_target(db.url()))
    assert db.databases() == {db.name, before}


def test_a_lost_database_is_restored_under_its_name(db: Database, tmp_path: Path) -> None:
    make_schema(db, filler_rows=5)
    home, repo, _ = _capture(db, tmp_path)
    with db.connect("postgres") as admin:
        admin.execute(f'DROP DATABASE "{db.name}"')
    restored = restore_generation(open_local_store(repo), None, tmp_path / "restored", [home])
    swapped = swap_generation(restored.into, home, database_target(db.url()))
    assert swapped.kept_database is None
    assert db.databases() == {db.name}
    assert db.scalar("SELECT count(*) FROM filler") == 5


def test_swap_refuses_while_sessions_are_connected_unless_forced(
    db: Database, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=5)
    home, repo, _ = _capture(db, tmp_path)
    store = open_local_store(repo)
    app_session = db.connect(application_name="hakit-node1")
    pid = app_session.info.backend_pid
    try:
        restored = restore_generation(store, None, tmp_path / "restored", [home])
        with pytest.raises(SnapshotError) as refused:
            swap_generation(restored.into, home, database_target(db.url()))
        message = str(refused.value)
        assert f"pid {pid}" in message and "hakit-node1" in message and "--force" in message
        assert db.databases() == {db.name}  # the scratch database dropped, nothing renamed
        assert (home / "bin.dat").exists() and not list(tmp_path.glob("home.before-*"))
        assert app_session.execute("SELECT 1").fetchone() == (1,)  # left alone

        swapped = swap_generation(restored.into, home, database_target(db.url()), force=True)
        assert len(swapped.terminated) == 1 and f"pid {pid}" in swapped.terminated[0]
        with pytest.raises(psycopg.OperationalError):
            app_session.execute("SELECT 1")
        # Both databases accept connections again.
        assert db.scalar("SELECT count(*) FROM filler") == 5
        assert swapped.kept_database is not None
        assert db.scalar("SELECT count(*) FROM filler", swapped.kept_database) == 5
    finally:
        app_session.close()


def test_a_failed_home_swap_renames_the_databases_back(db: Database, tmp_path: Path) -> None:
    make_schema(db, filler_rows=5)
    home, repo, report = _capture(db, tmp_path)
    with db.connect() as session:
        session.execute("INSERT INTO events VALUES (99, '0/0')")
    generation = report.manifest.generation
    in_the_way = home.with_name(f"home.before-{generation}")
    in_the_way.mkdir()  # the home's swap will refuse: its previous name is taken
    restored = restore_generation(open_local_store(repo), None, tmp_path / "restored", [home])
    with pytest.raises(SnapshotError, match="move it away first"):
        swap_generation(restored.into, home, database_target(db.url()))
    assert _events(db) == [99]  # the live database, back under its name
    assert db.databases() == {db.name}
    assert (home / "bin.dat").exists()


def test_killed_pg_restore_leaves_the_live_database_untouched(db: Database, tmp_path: Path) -> None:
    make_schema(db, filler_rows=50)
    home, repo, _ = _capture(db, tmp_path)
    with db.connect() as session:
        session.execute("INSERT INTO events VALUES (7, '0/0')")  # the live state, after it
    before_tree = tree_of(home)
    restored = restore_generation(open_local_store(repo), None, tmp_path / "restored", [home])
    killed: list[int] = []

    def kill(pid: int) -> None:  # pg_restore, started by the restore: ours to kill
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with pytest.raises(SnapshotError, match="killed by signal 9"):
        swap_generation(restored.into, home, database_target(db.url()), on_restore_started=kill)
    assert killed
    assert _events(db) == [7]
    assert db.databases() == {db.name}
    assert tree_of(home) == before_tree


def test_corrupt_dump_chunk_fails_before_any_database_is_touched(
    db: Database, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=50)
    home, repo, report = _capture(db, tmp_path)
    captured = report.manifest.database
    assert captured is not None
    ref = next(chunk for chunk in captured.chunks if chunk.pack is None)
    blob = repo / "blobs" / ref.hash[:2] / ref.hash
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    with pytest.raises(SnapshotError, match="corrupt"):
        restore_generation(open_local_store(repo), None, tmp_path / "restored", [home])
    assert not (tmp_path / "restored").exists()
    assert db.databases() == {db.name}
    assert db.scalar("SELECT count(*) FROM filler") == 50


# --- the sample app -----------------------------------------------------------------


def test_the_demo_app_runs_on_the_restored_database_with_a_clean_integrity(
    db: Database,
    tmp_path: Path,
    start_app: StartApp,  # noqa: F811
) -> None:
    home = tmp_path / "home"
    app = start_app(home=home, database_url=db.url())
    app.wait_state("FIRST_RUN", timeout=20)
    app.request("POST", "/setup").raise_for_status()
    before = [
        app.request("POST", "/records", json={"title": f"r{i}", "attachment": f"data {i}"})
        for i in range(5)
    ]
    assert all(response.status_code == 201 for response in before)

    with records_written(app):  # records keep being created while the capture runs
        report = create_snapshot(
            open_local_store(tmp_path / "repo", create=True), _options(home, db.url())
        )
    after = app.request("POST", "/records", json={"title": "after", "attachment": "late"})
    assert after.status_code == 201
    app.process.send_signal(signal.SIGTERM)
    assert app.wait_exit() == 0

    restored = restore_generation(
        open_local_store(tmp_path / "repo"), None, tmp_path / "restored", [home]
    )
    swapped = swap_generation(restored.into, home, database_target(db.url()))
    assert swapped.kept_database is not None

    again = start_app(home=home, database_url=db.url())
    again.wait_state("RUNNING", timeout=20)
    integrity = again.request("GET", "/integrity").json()
    assert integrity["ok"] is True, integrity
    ids = {row["id"] for row in again.request("GET", "/records").json()["records"]}
    assert {response.json()["id"] for response in before} <= ids
    assert after.json()["id"] not in ids
    assert report.manifest.database is not None


# --- the CLI ------------------------------------------------------------------------


def test_cli_create_restore_inspect_and_swap_never_print_the_password(
    db: Database, tmp_path: Path
) -> None:
    make_schema(db, filler_rows=5)
    make_home(tmp_path / "home")
    password = "s3cret-Pw:x"
    config = tmp_path / "hakit.toml"
    config.write_text(
        CONFIG.replace("sqlite:///app.db", db.url(password=password.replace(":", "%3A")))
    )
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    repo = str(tmp_path / "repo")

    def run(*args: str) -> Any:
        result = runner.invoke(hakit_cli, ["snapshot", *args], env=env)
        assert password not in result.output and "s3cret" not in result.output
        return result

    created = run("create", "--to", repo, "-c", str(config))
    assert created.exit_code == 0, created.output
    listed = run("list", "--repo", repo)
    assert listed.exit_code == 0 and "postgresql" in listed.output

    inspect = f"{db.name}_look"
    result = run(
        "restore",
        "--repo",
        repo,
        "--into",
        str(tmp_path / "r1"),
        "--database",
        inspect,
        "-c",
        str(config),
    )
    assert result.exit_code == 0, result.output
    assert f"new database {inspect} (4 tables)" in result.output
    assert db.scalar("SELECT count(*) FROM filler", inspect) == 5

    result = run(
        "restore", "--repo", repo, "--into", str(tmp_path / "r2"), "--swap", "-c", str(config)
    )
    assert result.exit_code == 0, result.output
    assert "previous database is kept as" in result.output and "DROP DATABASE" in result.output

    broken = tmp_path / "broken.toml"
    broken.write_text(
        CONFIG.replace(
            "sqlite:///app.db", db.url("nosuchdb", password=password.replace(":", "%3A"))
        )
    )
    failed = run("create", "--to", repo, "-c", str(broken))
    assert failed.exit_code == 1 and "does not exist" in failed.output
