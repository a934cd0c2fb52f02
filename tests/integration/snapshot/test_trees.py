"""Tree manifests on a real home: unchanged parts of directories reused by hash, changed ones read,
every change seen, older manifests still read, a damaged tree refused."""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import FORMAT, SnapshotError, decode_manifest, encode_manifest, tree_key
from hakit.snapshot.hashcache import RACY_NS
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.scan import PART_MASK
from hakit.snapshot.scanahead import helper_useful
from hakit.snapshot.store import open_local_store
from hakit.snapshot.trees import load_manifest
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import LIMITS, tree_of

Site = tuple[Path, Path, Path]


def _options(home: Path, database: Path) -> CaptureOptions:
    return CaptureOptions(home=home, database_url=f"sqlite:///{database}", limits=LIMITS)


def _settle() -> None:
    """Past the racy window of what was just written (hakit.snapshot.hashcache)."""
    time.sleep(RACY_NS / 1e9 + 0.1)


def _restored(
    store_root: Path, generation: str, into: Path
) -> dict[str, tuple[str, int, bytes | str]]:
    store = open_local_store(store_root)
    assert verify_generation(store, generation).ok
    return tree_of(restore_generation(store, generation, into).into / "home")


def test_only_the_changed_part_of_a_directory_is_read_and_written(
    site: Site, tmp_path: Path
) -> None:
    home, database, repo = site
    (home / "attachments" / "deep" / "deeper").mkdir(parents=True)
    (home / "attachments" / "deep" / "deeper" / "x").write_bytes(os.urandom(50))
    store = open_local_store(repo, create=True)
    _settle()
    first = create_snapshot(store, _options(home, database))
    directories = {tree.path for tree in first.header.trees}
    assert directories == {
        "",
        "attachments",
        "attachments/deep",
        "attachments/deep/deeper",
        "config",
    }
    # attachments' 41 entries are in several parts (hakit.snapshot.trees.part_ranges).
    assert [tree.path for tree in first.header.trees].count("attachments") > 1
    _settle()

    (home / "attachments" / "a007").write_bytes(b"new content")  # in place: same directory
    second = create_snapshot(store, _options(home, database))
    assert second.walked.trees_read == 1  # the tree of a007's part, for its unchanged files
    assert second.walked.trees_reused == len(first.header.trees) - 1
    assert second.walked.files_read == 1
    # Every directory listed by the scan helper, on the second core (hakit.snapshot.scanahead).
    listed = (second.walked.listed_ahead, second.walked.listed_here)
    count = 1 + sum(1 for path in home.rglob("*") if path.is_dir() and not path.is_symlink())
    assert listed == ((count, 0) if helper_useful() else (0, count))
    before = {tree.hash for tree in first.header.trees}
    (written,) = [tree for tree in second.header.trees if tree.hash not in before]
    assert written.path == "attachments"
    assert 1 < written.files < len(list((home / "attachments").iterdir()))
    assert second.diff.changed == ("attachments/a007",)
    assert second.files == first.files == second.manifest.totals()[0]
    assert _restored(repo, second.header.generation, tmp_path / "r") == tree_of(home)


def test_a_file_added_changes_only_the_part_it_falls_in(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    _settle()
    first = create_snapshot(store, _options(home, database))
    parts = [tree for tree in first.header.trees if tree.path == "attachments"]
    assert len(parts) > 2
    _settle()
    # A name that ends no part: the cuts (by names) stay where they were.
    name = next(
        f"a0{n}x" for n in range(100) if zlib.crc32(f"a0{n}x".encode()) & PART_MASK != PART_MASK
    )
    (home / "attachments" / name).write_bytes(b"added")
    second = create_snapshot(store, _options(home, database))
    assert second.walked.files_read == 1
    before = {tree.hash for tree in first.header.trees}
    written = [tree.path for tree in second.header.trees if tree.hash not in before]
    # One part of attachments; and the home's part holding attachments (its mtime moved).
    assert sorted(written) == ["", "attachments"]
    assert len([tree for tree in second.header.trees if tree.path == "attachments"]) == len(parts)
    assert second.diff.added == (f"attachments/{name}",)
    assert _restored(repo, second.header.generation, tmp_path / "r") == tree_of(home)


def test_a_change_that_keeps_size_and_mtime_is_still_seen(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    _settle()
    create_snapshot(store, _options(home, database))
    _settle()
    properties = home / "config" / "app.properties"
    st = properties.stat()
    os.chmod(properties, 0o640)  # ctime and mode only
    (home / "attachments" / "a001").rename(home / "attachments" / "moved")
    os.utime(properties, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = create_snapshot(store, _options(home, database))
    assert set(report.diff.changed) == {"config/app.properties"}
    assert report.diff.added == ("attachments/moved",)
    assert report.diff.removed == ("attachments/a001",)
    assert _restored(repo, report.header.generation, tmp_path / "r") == tree_of(home)


def test_files_written_within_the_racy_window_are_read_again(site: Site) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    create_snapshot(store, _options(home, database))  # the home was written just now
    again = create_snapshot(store, _options(home, database))
    # Every directory holding a file written within RACY_NS of the first capture's start
    # is walked file by file, its files read again: none is trusted by its stat.
    assert again.walked.trees_reused == 0 and again.walked.files_cached == 0


def test_a_manifest_of_the_first_format_is_read_and_built_on(site: Site, tmp_path: Path) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    _settle()
    first = create_snapshot(store, _options(home, database))
    # The same generation as a FORMAT manifest (entries inline), as hakit wrote it before.
    path = repo / "manifests" / f"{first.header.generation}.json"
    whole = load_manifest(store, first.header.generation)
    os.chmod(path, 0o644)
    path.write_bytes(encode_manifest(replace(whole, trees=())))
    assert decode_manifest(path.read_bytes()).trees == ()
    assert b'"format":"' + FORMAT.encode() in path.read_bytes()
    assert _restored(repo, first.header.generation, tmp_path / "old") == tree_of(home)

    _settle()
    (home / "attachments" / "a003").write_bytes(b"changed")
    second = create_snapshot(store, _options(home, database))
    assert second.walked.files_read == 1  # the old manifest's entries as the hash cache
    assert second.header.trees  # and the new generation in the tree format
    assert _restored(repo, second.header.generation, tmp_path / "new") == tree_of(home)


def test_a_damaged_or_missing_tree_is_refused_and_nothing_is_restored(
    site: Site, tmp_path: Path
) -> None:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    report = create_snapshot(store, _options(home, database))
    (tree,) = [tree for tree in report.header.trees if tree.path == "config"]
    object_path = repo / tree_key(tree.pack)
    good = object_path.read_bytes()
    os.chmod(object_path, 0o644)
    object_path.write_bytes(good.replace(b"app.properties", b"app.propertiez"))
    with pytest.raises(
        SnapshotError,
        match=f"tree [0-9a-f]{{64}} in {tree_key(tree.pack)} is corrupt",  # any in it
    ):
        restore_generation(store, None, tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    object_path.unlink()
    with pytest.raises(SnapshotError, match=f"object {tree_key(tree.pack)} is missing"):
        restore_generation(store, None, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
