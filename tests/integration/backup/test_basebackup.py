"""PostgreSQL as a physical base backup (``postgres_method = "basebackup"``) against real
servers (tests/pgserver.py): a capture while the sample app writes, restored into a new
data directory and drilled on a scratch server; a corrupt blob; a role without REPLICATION
and a pg_hba.conf without a replication line, each refused with the fix; the CLI.

The worker's server (the ``postgres`` fixture) comes from ``initdb``, whose pg_hba.conf
admits replication connections from loopback, and its ``postgres`` role is a superuser:
what a base backup needs.
"""

from __future__ import annotations

import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hakit.backup.drill import run_drill
from hakit.backup.pgscratch import check_base_backup
from hakit.cli import app as hakit_cli
from hakit.snapshot.basebackup import BASEBACKUP
from hakit.snapshot.capture import CaptureOptions, create_snapshot, latest_manifest
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.store import open_local_store
from tests.integration.backup.test_drill_postgres import make_records
from tests.integration.demo.test_app import StartApp, start_app  # noqa: F401  (fixture)
from tests.integration.snapshot.conftest import LIMITS, make_home
from tests.integration.snapshot.test_cli import CONFIG
from tests.integration.snapshot.test_postgresql import Database, db  # noqa: F401  (fixture)
from tests.pgserver import start_postgres
from tests.support.app_writes import records_written


def _options(home: Path, url: str) -> CaptureOptions:
    return CaptureOptions(
        home=home, database_url=url, postgres_method="basebackup", node="n1", limits=LIMITS
    )


def _lsn(text: object) -> int:
    high, low = str(text).split("/")
    return (int(high, 16) << 32) + int(low, 16)


def test_a_capture_during_app_writes_restores_and_passes_the_drill(
    db: Database,  # noqa: F811
    tmp_path: Path,
    start_app: StartApp,  # noqa: F811
) -> None:
    home = tmp_path / "home"
    app = start_app(home=home, database_url=db.url())
    app.wait_state("FIRST_RUN", timeout=20)
    app.request("POST", "/setup").raise_for_status()
    for index in range(5):
        created = app.request("POST", "/records", json={"title": f"r{index}", "attachment": "a"})
        assert created.status_code == 201

    with records_written(app) as during:  # records keep coming while the capture runs
        acked_before = 5 + len(during)
        store = open_local_store(tmp_path / "repo", create=True)
        report = create_snapshot(store, _options(home, db.url()))
        written_during = len(during) + 5 - acked_before
    app.process.send_signal(signal.SIGTERM)
    assert app.wait_exit() == 0
    assert written_during > 0, "the app wrote during the capture"

    captured = report.manifest.database
    assert captured is not None and captured.kind == BASEBACKUP and captured.name == "pgdata"
    position = captured.position
    assert position["database"] == db.name and position["superuser"] == "postgres"
    assert 0 < _lsn(position["start_lsn"]) < _lsn(position["stop_lsn"])
    assert int(position["timeline"]) >= 1 and int(str(position["system_identifier"])) > 0
    assert (
        str(position["server_version"]).split(".")[0]
        == str(position["pg_basebackup"]).split(".")[0]
    )

    restored = restore_generation(store, None, tmp_path / "restored", [home])
    data = restored.database
    assert data is not None and data == tmp_path / "restored" / "database" / "pgdata"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "backup_label").is_file() and (data / "backup_manifest").is_file()
    assert any((data / "pg_wal").iterdir())  # the streamed WAL: self-contained

    drilled = run_drill(store, live=[home])
    assert drilled.ok, drilled.checks
    checks = {check.name: check for check in drilled.checks}
    assert list(checks) == ["restore", "database server", "database tables", "attachments"]
    assert f"consistent at {position['stop_lsn']}" in checks["database server"].detail
    assert checks["database tables"].detail.startswith(f"database {db.name}: ")
    present = int(checks["attachments"].detail.split()[1])  # "all N present ..."
    assert present >= acked_before


def _corrupt_a_blob(repo: Path, refs: Any) -> None:
    ref = next(chunk for chunk in refs if chunk.pack is None)
    blob = repo / "blobs" / ref.hash[:2] / ref.hash
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def test_a_corrupt_blob_fails_the_drill_and_the_restore(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    make_records(db, home, count=4)
    repo = tmp_path / "repo"
    store = open_local_store(repo, create=True)
    report = create_snapshot(store, _options(home, db.url()))
    assert run_drill(store, live=[home]).ok
    assert report.manifest.database is not None
    # Debian's layout: postgresql.conf in /etc, not in the data directory; the scratch
    # server gets one of its own.
    # (Restored under the system's temporary directory: as root the server runs as postgres,
    # who cannot pass pytest's 0700 tmp_path.)
    scratch = Path(tempfile.mkdtemp(prefix="hakit-test-debian-"))
    try:
        restored = restore_generation(store, None, scratch / "restored", [home])
        assert restored.database is not None
        (restored.database / "postgresql.conf").unlink()
        position = report.manifest.database.position
        checks, rows = check_base_backup(restored.database, restored.into, position)
        assert [check.status for check in checks] == ["pass", "pass"], checks
        assert rows is not None and len(rows) == 4
    finally:
        shutil.rmtree(scratch)

    _corrupt_a_blob(repo, report.manifest.database.chunks)

    drilled = run_drill(store, live=[home])
    assert not drilled.ok
    assert [check.name for check in drilled.checks] == ["restore"]
    assert drilled.checks[0].failed and "is corrupt" in drilled.checks[0].detail
    with pytest.raises(SnapshotError, match="is corrupt"):
        restore_generation(store, None, tmp_path / "restored", [home])
    assert not (tmp_path / "restored").exists()  # no partial data directory left


def test_a_role_without_replication_is_refused_with_the_fix(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    role = f"{db.name}_app"
    with db.connect() as session:
        session.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Hidden-Pw'")
    try:
        url = db.url().replace("postgres@", f"{role}:Hidden-Pw@")
        home = tmp_path / "home"
        make_home(home)
        store = open_local_store(tmp_path / "repo", create=True)
        with pytest.raises(SnapshotError) as refused:
            create_snapshot(store, _options(home, url))
        message = str(refused.value)
        assert f"the role {role} may not take a base backup" in message
        assert f'ALTER ROLE "{role}" REPLICATION' in message and "pg_hba.conf" in message
        assert "Hidden-Pw" not in message
        assert store.list_manifests() == []
    finally:
        with db.connect("postgres") as admin:
            admin.execute(f"DROP ROLE {role}")


def test_a_pg_hba_without_replication_is_refused_with_the_fix(tmp_path: Path) -> None:
    server = start_postgres()
    try:
        hba = server.datadir / "pg_hba.conf"
        kept = [line for line in hba.read_text().splitlines() if "replication" not in line]
        hba.write_text("\n".join(kept) + "\n")
        Database(server, "postgres").scalar("SELECT pg_reload_conf()")
        home = tmp_path / "home"
        make_home(home)
        store = open_local_store(tmp_path / "repo", create=True)
        with pytest.raises(SnapshotError) as refused:
            create_snapshot(store, _options(home, server.url))
        message = str(refused.value)
        assert "pg_basebackup of PostgreSQL 127.0.0.1" in message
        assert "no pg_hba.conf entry for replication connection" in message
        assert "a pg_hba.conf line admitting it to replication connections" in message
        assert store.list_manifests() == []
    finally:
        server.stop()


def test_cli_capture_by_config_restore_and_swap_refused(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    make_records(db, tmp_path / "home", count=2)
    password = "s3cret-Pw"  # the server trusts loopback: it goes unused, yet never shown
    config = tmp_path / "hakit.toml"
    config.write_text(
        CONFIG.replace("sqlite:///app.db", db.url(password=password))
        + '[snapshot]\npostgres_method = "basebackup"\n[backup]\ndirectory = "backups"\n'
    )
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    repo = str(tmp_path / "repo")

    def run(*args: str) -> Any:
        result = runner.invoke(hakit_cli, ["snapshot", *args], env=env)
        assert password not in result.output
        return result

    created = run("create", "--to", repo, "-c", str(config))
    assert created.exit_code == 0, created.output
    assert run("list", "--repo", repo).exit_code == 0
    manifest = latest_manifest(open_local_store(Path(repo)))
    assert manifest is not None and manifest.database is not None
    assert manifest.database.kind == BASEBACKUP  # the config's method, through the CLI
    restored = run("restore", "--repo", repo, "--into", str(tmp_path / "r1"), "-c", str(config))
    assert restored.exit_code == 0, restored.output
    data = tmp_path / "r1" / "database" / "pgdata"
    assert "is a restored, checked PostgreSQL data directory" in restored.output
    assert (data / "PG_VERSION").is_file()
    swapped = run(
        "restore", "--repo", repo, "--into", str(tmp_path / "r2"), "--swap", "-c", str(config)
    )
    assert swapped.exit_code == 1
    assert "holds a physical base backup: nothing was swapped" in swapped.output
    assert (tmp_path / "home" / "attachments" / "r1").is_file()  # the live home stays

    backed_up = runner.invoke(hakit_cli, ["backup", "create", "-c", str(config)], env=env)
    assert backed_up.exit_code == 0, backed_up.output
    drilled = runner.invoke(hakit_cli, ["backup", "drill", "-c", str(config)], env=env)
    assert drilled.exit_code == 0, drilled.output
    assert "PASS database server" in drilled.output and "PASS database tables" in drilled.output
    assert "all 2 present with their SHA-256" in drilled.output and password not in drilled.output
