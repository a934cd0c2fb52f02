"""``[snapshot] postgres_method``: "dump" or "basebackup", the latter for PostgreSQL only;
mistakes named by file, line and key."""

from __future__ import annotations

from pathlib import Path

from hakit.agent.snapshot_job import Job
from hakit.config import load_config
from tests.unit.config.test_config import BASE, changed, problems_of

POSTGRES = changed('"sqlite:///app.db"', '"postgresql://app:secret@db.example/app"')


def test_the_default_is_a_dump_and_basebackup_is_accepted_for_postgresql(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    assert load_config(path).snapshot.postgres_method == "dump"
    path.write_text(POSTGRES + '\n[snapshot]\npostgres_method = "basebackup"\n')
    assert load_config(path).snapshot.postgres_method == "basebackup"


def test_an_unknown_method_is_named_with_its_line(tmp_path: Path) -> None:
    text = POSTGRES + '\n[snapshot]\npostgres_method = "physical"\n'
    assert problems_of(tmp_path, text) == [
        'FILE:18: snapshot.postgres_method: "physical" is not a capture method; expected '
        '"dump" or "basebackup"'
    ]


def test_a_base_backup_of_sqlite_is_refused_at_its_key(tmp_path: Path) -> None:
    text = BASE + '\n[snapshot]\npostgres_method = "basebackup"\n'
    assert problems_of(tmp_path, text) == [
        'FILE:18: snapshot.postgres_method: "basebackup" captures a PostgreSQL server, but '
        'app.database_url is sqlite:///app.db; expected "dump" (the default), or a '
        "postgresql:// database_url"
    ]


def test_the_scheduled_capture_carries_the_method() -> None:
    job = Job("home", "postgresql://db/app", "repo", "node1", 3, postgres_method="basebackup")
    assert Job.decode(job.encode()).postgres_method == "basebackup"
    assert (
        Job.decode(
            b'{"home": "h", "database_url": "", "directory": "d", "node": "n", "epoch": 1}'
        ).postgres_method
        == "dump"
    )
