"""``hakit backup drill``: a good backup passes every check; a missing object, a row whose
attachment differs and a damaged git object each fail it, naming what; the live home and
database are never touched and the scratch directory is removed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hakit.backup.drill import check_restored, record_path, run_drill
from hakit.cli import app
from hakit.snapshot.format import object_key
from hakit.snapshot.restore import DATABASE, HOME, restore_generation
from hakit.snapshot.scratch import PREFIX
from hakit.snapshot.store import open_local_store
from hakit.snapshot.trees import load_manifest
from tests.integration.backup.appsite import (
    RECORDS,
    AppSite,
    add_record,
    fsck,
    loose_objects,
    make_app_site,
)
from tests.support.waiting import wait_until

ENV = {"COLUMNS": "200"}


def run(site: AppSite, *args: str) -> Any:
    return CliRunner().invoke(app, ["backup", *args, "-c", str(site.config)], env=ENV)


def backed_up(tmp_path: Path) -> AppSite:
    site = make_app_site(tmp_path)
    result = run(site, "create")
    assert result.exit_code == 0, result.output
    return site


def lines(output: str) -> list[str]:
    return [" ".join(line.split()) for line in output.splitlines()]


def test_a_good_backup_passes_and_the_live_site_is_untouched(tmp_path: Path) -> None:
    site = backed_up(tmp_path)
    scratch = tmp_path / "scratch"
    before = site.fingerprint()

    result = run(site, "drill", "--scratch", str(scratch))
    assert result.exit_code == 0, result.output
    output = lines(result.output)
    assert any(line.startswith("PASS restore: ") for line in output), result.output
    assert "PASS database: SQLite app.db: integrity_check ok" in output
    assert "PASS git fsck repositories/project.git: ok" in output
    assert (
        f"PASS attachments: all {RECORDS} present with their SHA-256; 1 file no record "
        "names (written during the capture: harmless)" in output
    )
    assert any(line.startswith("recovery point: generation ") for line in output)
    assert output[-1] == "drill passed"
    assert site.fingerprint() == before
    assert list(scratch.iterdir()) == []  # the scratch directory removed

    record = json.loads(record_path(tmp_path / "state").read_text())
    assert record["ok"] is True and record["target"] == f"directory {site.repository}"
    result = run(site, "list")
    assert result.exit_code == 0, result.output
    assert f"generation {record['generation']}" in result.output
    assert "passed, 4 checks" in result.output

    result = run(site, "drill", "--scratch", str(scratch), "--keep")
    assert result.exit_code == 0, result.output
    (kept,) = scratch.iterdir()
    assert f"kept: {kept}" in result.output
    assert (kept / "restored" / HOME / "attachments" / "r003").read_bytes() == (
        site.home / "attachments" / "r003"
    ).read_bytes()
    assert run(site, "drill", "--scratch", str(scratch)).exit_code == 0
    assert list(scratch.iterdir()) == [kept]  # kept: no later drill removes it


def test_a_killed_drill_leaves_its_copy_only_until_the_next_drill(tmp_path: Path) -> None:
    site = backed_up(tmp_path)
    store = open_local_store(site.repository)
    (generation,) = store.list_manifests()
    (chunk,) = load_manifest(store, generation).files()["attachments/r005"].chunks
    stuck = site.repository / object_key(chunk)
    content = stuck.read_bytes()
    stuck.unlink()
    os.mkfifo(stuck)  # a read of it blocks: the drill is mid-restore for as long as needed
    scratch = tmp_path / "scratch"
    argv = [sys.executable, "-m", "hakit", "backup", "drill", "-c", str(site.config)]
    drill = subprocess.Popen(
        [*argv, "--scratch", str(scratch)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        wait_until(
            lambda: list(scratch.glob(f"{PREFIX}drill-*/.restored.partial-*")),
            60,
            "the drill to restore",
        )
    finally:
        drill.kill()
        drill.wait(timeout=30)
    (left,) = scratch.iterdir()
    assert left.name.startswith(f"{PREFIX}drill-{drill.pid}-")
    stuck.unlink()
    stuck.write_bytes(content)

    result = run(site, "drill", "--scratch", str(scratch))
    assert result.exit_code == 0, result.output
    assert list(scratch.iterdir()) == []


def test_a_missing_object_fails_the_restore_and_leaves_everything_as_it_was(
    tmp_path: Path,
) -> None:
    site = backed_up(tmp_path)
    store = open_local_store(site.repository)
    (generation,) = store.list_manifests()
    manifest = load_manifest(store, generation)
    (chunk,) = manifest.files()["attachments/r005"].chunks
    (site.repository / object_key(chunk)).unlink()
    scratch = tmp_path / "scratch"
    before = site.fingerprint()

    result = run(site, "drill", "--scratch", str(scratch))
    assert result.exit_code == 1, result.output
    output = lines(result.output)
    assert f"FAIL restore: object {object_key(chunk)} is missing from {site.repository}" in output
    assert output[-1] == "drill FAILED"
    assert site.fingerprint() == before
    assert list(scratch.iterdir()) == []
    assert json.loads(record_path(tmp_path / "state").read_text())["ok"] is False
    assert "FAILED, 1 checks" in run(site, "list").output
    assert run(site, "verify").exit_code == 1


def test_a_row_whose_attachment_differs_and_a_damaged_git_object_fail_their_checks(
    tmp_path: Path,
) -> None:
    site = backed_up(tmp_path)
    store = open_local_store(site.repository)
    restored = restore_generation(store, None, tmp_path / "restored").into
    manifest = load_manifest(store, store.list_manifests()[-1])
    assert not any(check.failed for check in check_restored(manifest, restored))

    with sqlite3.connect(restored / DATABASE / "app.db") as connection:
        connection.execute("UPDATE records SET sha256 = ? WHERE id = 'r004'", ("0" * 64,))
        connection.execute("DELETE FROM records WHERE id = 'r007'")
    connection.close()
    (restored / HOME / "attachments" / "r002").unlink()
    git_dir = restored / HOME / "repositories" / "project.git"
    damaged = loose_objects(git_dir)[0]
    os.chmod(damaged, 0o644)
    damaged.write_bytes(b"not a zlib stream")

    checks = {check.name: check for check in check_restored(manifest, restored)}
    assert checks["database"].status == "pass"
    assert checks["attachments"].status == "fail"
    assert checks["attachments"].detail == (
        f"2 of {RECORDS - 1}: record r002: attachments/r002 is absent; "
        "record r004: attachments/r004 has another SHA-256"
    )
    assert checks["git fsck repositories/project.git"].status == "fail"
    assert damaged.parent.name + damaged.name in checks["git fsck repositories/project.git"].detail


def test_damage_captured_from_the_live_site_fails_the_drill(tmp_path: Path) -> None:
    """A row naming a file that the home does not hold (an app that broke its write order)
    and a corrupt object in a live repository are found in the backup, before a restore."""
    site = make_app_site(tmp_path)
    add_record(site, 99, b"attachment")
    (site.home / "attachments" / "r099").unlink()
    damaged = loose_objects(site.git_dir)[-1]
    os.chmod(damaged, 0o644)
    damaged.write_bytes(b"\x00" * 10)
    assert fsck(site.git_dir).returncode != 0
    assert run(site, "create").exit_code == 0

    result = run(site, "drill")
    assert result.exit_code == 1
    output = lines(result.output)
    assert f"FAIL attachments: 1 of {RECORDS + 1}: record r099: attachments/r099 is absent" in (
        output
    )
    assert any(line.startswith("FAIL git fsck repositories/project.git: exit ") for line in output)


def test_an_empty_repository_and_a_scratch_directory_in_the_home_are_refused(
    tmp_path: Path,
) -> None:
    site = make_app_site(tmp_path)
    open_local_store(site.repository, create=True)
    result = run(site, "drill")
    assert result.exit_code == 1
    assert "FAIL repository: the repository holds no generation" in lines(result.output)

    assert run(site, "create").exit_code == 0
    before = site.fingerprint()
    store = open_local_store(site.repository)
    report = run_drill(store, live=[site.home], scratch=site.home / "tmp")
    assert not report.ok
    assert [check.name for check in report.checks] == ["scratch"]
    assert site.fingerprint() == before
    assert not (site.home / "tmp").exists()
