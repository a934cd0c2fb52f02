"""The drill of a PostgreSQL generation against a real server: the dump listed, restored into
a scratch database whose records are checked against the restored home, then dropped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hakit.backup.drill import run_drill
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.store import open_local_store
from tests.integration.snapshot.conftest import LIMITS
from tests.integration.snapshot.test_postgresql import Database, db  # noqa: F401  (fixture)


def make_records(db: Database, home: Path, count: int = 8) -> None:  # noqa: F811
    (home / "attachments").mkdir(parents=True)
    with db.connect() as session:
        session.execute(
            "CREATE TABLE records (id TEXT PRIMARY KEY, attachment TEXT NOT NULL,"
            " sha256 TEXT NOT NULL, size BIGINT NOT NULL)"
        )
        for index in range(count):
            data = os.urandom(500 + index)
            relative = f"attachments/r{index}"
            (home / relative).write_bytes(data)
            session.execute(
                "INSERT INTO records VALUES (%s, %s, %s, %s)",
                (f"r{index}", relative, hashlib.sha256(data).hexdigest(), len(data)),
            )


def drill_databases(db: Database) -> list[str]:  # noqa: F811
    with db.connect("postgres") as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'hakit_drill_%'"
        ).fetchall()
    return [row[0] for row in rows]


def test_a_postgresql_generation_is_restored_into_a_scratch_database_and_checked(
    db: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    make_records(db, home)
    store = open_local_store(tmp_path / "repo", create=True)
    options = CaptureOptions(home=home, database_url=db.url(), limits=LIMITS)
    create_snapshot(store, options)

    listed = run_drill(store, live=[home])
    assert listed.ok
    assert {check.name: check.status for check in listed.checks} == {
        "restore": "pass",
        "database dump": "pass",
        "database restore": "skip",
        "attachments": "skip",
    }
    assert "pg_restore --list: 1 tables" in listed.checks[1].detail

    restored = run_drill(store, live=[home], scratch_database_url=db.url("postgres"))
    assert restored.ok, restored.checks
    checks = {check.name: check for check in restored.checks}
    assert checks["database restore"].status == "pass"
    assert checks["attachments"].detail == "all 8 present with their SHA-256"
    assert drill_databases(db) == []  # dropped after the checks

    with db.connect() as session:
        session.execute("UPDATE records SET sha256 = %s WHERE id = 'r3'", ("0" * 64,))
    create_snapshot(store, options)
    damaged = run_drill(store, live=[home], scratch_database_url=db.url("postgres"))
    assert not damaged.ok
    checks = {check.name: check for check in damaged.checks}
    assert checks["attachments"].detail == ("1 of 8: record r3: attachments/r3 has another SHA-256")
    assert drill_databases(db) == []
