"""Capture, incremental capture, restore, verify, interruption: real files and a real SQLite."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.hashcache import RACY_NS
from hakit.snapshot.restore import restore_generation, swap_into_place
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import LIMITS, object_files, rows_of, tree_of

Site = tuple[Path, Path, Path]


def _options(home: Path, database: Path, **more: object) -> CaptureOptions:
    return CaptureOptions(
        home=home,
        database_url=f"sqlite:///{database}",
        node="n1",
        epoch=3,
        limits=LIMITS,
        **more,  # type: ignore[arg-type]
    )


def test_full_then_incremental_writes_only_what_changed(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    time.sleep(RACY_NS / 1e9 + 0.1)  # files older than the racy window: cacheable
    first = create_snapshot(store, _options(home, database))
    assert first.walked.files_read == 43 and first.walked.files_cached == 0
    assert first.manifest.database is not None
    database_chunks = len(first.manifest.database.chunks)
    # bin.dat's 5 chunks and the database's; the small files in one pack
    assert first.written.blobs_written == 5 + database_chunks
    assert first.written.packs_written == 1
    after_first = object_files(repo)

    # One attachment replaced, one chunk of the large file changed in place.
    (home / "attachments" / "a007").write_bytes(b"new content")
    with open(home / "bin.dat", "r+b") as handle:
        handle.seek(130 * 1024)
        handle.write(b"X" * 10)
    second = create_snapshot(store, _options(home, database))

    assert second.walked.files_read == 2 + 0  # the two changed files; the rest from the cache
    assert second.walked.files_cached == 41
    assert second.written.blobs_written == 1  # the changed chunk of bin.dat
    new_objects = object_files(repo) - after_first
    # The changed chunk, one pack with the new attachment, and the database's objects
    # (its copy is re-read: a new file every time, but only changed pages' chunks move).
    assert len([key for key in new_objects if key.startswith("blobs/")]) == 1
    assert len([key for key in new_objects if key.startswith("packs/")]) == 1
    assert second.diff.changed == ("attachments/a007", "bin.dat")
    assert second.diff.added == () and second.diff.removed == ()
    assert store.list_manifests() == sorted([first.manifest.generation, second.manifest.generation])
    assert second.manifest.epoch == 3 and second.manifest.node == "n1"
    assert second.manifest.database is not None
    assert second.manifest.database.position["page_count"] > 0


def test_restore_gives_the_same_tree_and_database(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    report = restore_generation(store, None, tmp_path / "restored", [home, database])
    assert tree_of(tmp_path / "restored" / "home") == tree_of(home)
    assert report.database == tmp_path / "restored" / "database" / "app.db"
    assert rows_of(report.database) == rows_of(database)
    bin_dat = tmp_path / "restored" / "home" / "bin.dat"
    assert bin_dat.stat().st_mtime_ns == (home / "bin.dat").stat().st_mtime_ns
    assert verify_generation(store).ok


def test_restore_never_targets_the_live_home_or_an_existing_directory(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    with pytest.raises(SnapshotError, match="exists"):
        restore_generation(store, None, home, [home])
    with pytest.raises(SnapshotError, match="live"):
        restore_generation(store, None, home / "inside", [home])


def test_swap_moves_the_live_ones_aside(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    generation = create_snapshot(store, _options(home, database)).manifest.generation
    before = tree_of(home)
    rows = rows_of(database)
    (home / "attachments" / "a001").write_bytes(b"written after the snapshot")
    with sqlite3.connect(database) as connection:
        connection.execute("DELETE FROM records")
    connection.close()
    restored = tmp_path / "site" / "restored"
    restore_generation(store, None, restored, [home, database])
    swapped = swap_into_place(restored, home, database)
    assert tree_of(home) == before
    assert rows_of(database) == rows
    assert home.with_name(f"home.before-{generation}") in swapped.moved_aside
    assert (home.with_name(f"home.before-{generation}") / "attachments" / "a001").read_bytes() == (
        b"written after the snapshot"
    )


def test_a_file_changed_during_its_read_is_read_again(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    target = home / "attachments" / "a003"

    def change_once(path: Path, attempt: int) -> None:
        if path == target and attempt == 0:
            target.write_bytes(b"changed while it was read")

    report = create_snapshot(store, _options(home, database, on_read=change_once))
    assert report.walked.rereads == 1
    restored = restore_generation(store, None, tmp_path / "restored")
    assert (restored.into / "home" / "attachments" / "a003").read_bytes() == (
        b"changed while it was read"
    )


def test_a_file_changing_forever_fails_naming_it(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    target = home / "bin.dat"

    def change_always(path: Path, attempt: int) -> None:
        if path == target:
            with open(target, "ab") as handle:
                handle.write(b"more")

    with pytest.raises(
        SnapshotError, match=r"bin\.dat kept changing while it was read \(3 attempts\)"
    ):
        create_snapshot(store, _options(home, database, on_read=change_always, retries=2))
    assert store.list_manifests() == []


def test_an_interrupted_capture_leaves_no_generation(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    first = create_snapshot(store, _options(home, database)).manifest.generation
    (home / "attachments" / "a010").write_bytes(os.urandom(5000))
    seen: list[Path] = []

    def crash(path: Path, attempt: int) -> None:
        seen.append(path)
        if len(seen) == 2:
            raise KeyboardInterrupt  # as a kill would, mid-way

    with pytest.raises(KeyboardInterrupt):
        create_snapshot(store, _options(home, database, on_read=crash))
    assert store.list_manifests() == [first]
    assert not (home / ".hakit-snapshot-pins").exists()


def test_a_corrupt_blob_is_found_and_fails_the_restore(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    blob = sorted((repo / "blobs").rglob("*"))[-1]
    assert blob.is_file()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    report = verify_generation(store)
    assert not report.ok
    assert any(blob.name in problem and "corrupt" in problem for problem in report.problems)

    before = tree_of(home)
    rows = rows_of(database)
    with pytest.raises(SnapshotError, match="corrupt"):
        restore_generation(store, None, tmp_path / "site" / "restored", [home, database])
    assert not (tmp_path / "site" / "restored").exists()
    assert [p.name for p in (tmp_path / "site").iterdir() if p.name.startswith(".")] == []
    assert tree_of(home) == before and rows_of(database) == rows


def test_a_missing_pack_is_reported_by_verify(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))
    pack = next(path for path in (repo / "packs").rglob("*") if path.is_file())
    pack.unlink()
    report = verify_generation(store)
    assert [problem for problem in report.problems if "missing" in problem]
