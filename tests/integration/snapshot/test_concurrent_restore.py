"""Restore and verify fetching many objects at once: the same tree, bounded bytes in flight,
and a corrupt, missing or interrupted object among many still replacing nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import (
    SnapshotError,
    TreeRef,
    decode_manifest,
    encode_manifest,
    tree_key,
)
from hakit.snapshot.reader import fetch_objects, plan_fetches
from hakit.snapshot.restore import restore_generation, swap_into_place
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation
from tests.integration.snapshot.conftest import LIMITS, rows_of, tree_of

Site = tuple[Path, Path, Path]


@pytest.fixture
def stored(site: Site) -> tuple[Path, Path, LocalStore]:
    """A generation of many objects: blobs of their own and packs."""
    home, database, repo = site
    for index in range(40):  # a blob each (above LIMITS.small_file, one chunk)
        (home / "attachments" / f"big{index:02d}").write_bytes(os.urandom(20_000 + index))
    for index in range(150):  # packs of small files
        (home / "config" / f"small{index:03d}").write_bytes(os.urandom(1000 + index * 7))
    (home / "config" / "copy-of-big00").write_bytes((home / "attachments" / "big00").read_bytes())
    store = open_local_store(repo, create=True)
    create_snapshot(store, CaptureOptions(home, f"sqlite:///{database}", limits=LIMITS))
    return home, database, store


def _leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def test_a_concurrent_restore_gives_the_same_tree(
    stored: tuple[Path, Path, LocalStore], tmp_path: Path
) -> None:
    home, database, store = stored
    threads: set[str] = set()
    calls = [0]
    meet = threading.Barrier(2)
    lock = threading.Lock()

    def fetching(key: str) -> None:
        with lock:
            threads.add(threading.current_thread().name)
            calls[0] += 1
            first_two = calls[0] <= 2
        if first_two:  # the first fetch waits for a second one under way at once
            meet.wait(timeout=30)  # (one at a time: the second never comes, this fails)

    report = restore_generation(
        store, None, tmp_path / "restored", [home, database], concurrency=4, on_fetch=fetching
    )
    assert len(threads) >= 2
    assert tree_of(tmp_path / "restored" / "home") == tree_of(home)
    assert rows_of(tmp_path / "restored" / "database" / "app.db") == rows_of(database)
    files = [path for path in home.rglob("*") if path.is_file() and not path.is_symlink()]
    assert report.files == len(files)
    # mtimes kept, of files and directories
    for path in ("attachments/big07", "config/small100", "attachments", "logs"):
        assert os.stat(home / path).st_mtime_ns == (
            os.stat(tmp_path / "restored" / "home" / path).st_mtime_ns
        )
    swap_into_place(tmp_path / "restored", home, database)
    assert tree_of(home)["config/copy-of-big00"] == tree_of(home)["attachments/big00"]


def test_bytes_in_flight_stay_within_the_budget(stored: tuple[Path, Path, LocalStore]) -> None:
    _, _, store = stored
    fetches = plan_fetches(read_manifest(store, None).chunk_refs())
    assert len(fetches) > 40
    budget = max(fetch.size for fetch in fetches) * 2
    delivered: list[int] = []
    stats = fetch_objects(
        store,
        fetches,
        lambda _ref, data: delivered.append(len(data)),
        concurrency=8,
        budget=budget,
    )
    assert 0 < stats.peak_in_flight <= budget
    assert stats.objects_read == len(fetches)
    assert len(delivered) == sum(len(fetch.chunks) for fetch in fetches)


def _corrupt_one_of_many(repo: Path) -> Path:
    blobs = sorted(path for path in (repo / "blobs").rglob("*") if path.is_file())
    assert len(blobs) > 20
    blob = blobs[len(blobs) // 2]
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    return blob


def test_a_corrupt_blob_among_many_fails_the_concurrent_restore(
    stored: tuple[Path, Path, LocalStore], site: Site, tmp_path: Path
) -> None:
    home, database, store = stored
    blob = _corrupt_one_of_many(site[2])
    before, rows = tree_of(home), rows_of(database)

    report = verify_generation(store, concurrency=8)
    assert len(report.problems) == 1 and blob.name in report.problems[0], report.problems
    assert "corrupt" in report.problems[0]
    assert report.objects == len(plan_fetches(read_manifest(store, None).chunk_refs()))

    into = tmp_path / "out" / "restored"
    with pytest.raises(SnapshotError, match=f"{blob.name} is corrupt"):
        restore_generation(store, None, into, [home, database], concurrency=8)
    assert not into.exists() and _leftovers(into.parent) == []
    assert tree_of(home) == before and rows_of(database) == rows


def test_a_missing_object_is_one_problem_and_fails_the_restore(
    stored: tuple[Path, Path, LocalStore], site: Site, tmp_path: Path
) -> None:
    home, database, store = stored
    pack = sorted(path for path in (site[2] / "packs").rglob("*") if path.is_file())[-1]
    pack.unlink()
    report = verify_generation(store, concurrency=8)
    assert len(report.problems) == 1 and "missing" in report.problems[0], report.problems
    into = tmp_path / "restored"
    with pytest.raises(SnapshotError, match="missing"):
        restore_generation(store, None, into, [home, database], concurrency=8)
    assert not into.exists() and _leftovers(tmp_path) == []


def test_an_interrupted_concurrent_restore_leaves_nothing(
    stored: tuple[Path, Path, LocalStore], tmp_path: Path
) -> None:
    home, _, store = stored
    before = tree_of(home)
    fetched: list[str] = []
    lock = threading.Lock()

    def interrupt(key: str) -> None:
        with lock:
            fetched.append(key)
            if len(fetched) == 12:
                raise KeyboardInterrupt  # as a signal would, mid-way, in a worker

    into = tmp_path / "restored"
    with pytest.raises(KeyboardInterrupt):
        restore_generation(store, None, into, [home], concurrency=4, on_fetch=interrupt)
    total = len(plan_fetches(read_manifest(store, None).chunk_refs()))
    assert len(fetched) < total  # the other workers stopped fetching
    assert not into.exists() and _leftovers(tmp_path) == []
    assert tree_of(home) == before
    # Nothing is left running that writes there: a new restore into the same place works.
    restore_generation(store, None, into, [home], concurrency=4)
    assert tree_of(into / "home") == before


def test_a_file_whose_chunks_do_not_add_up_is_refused(
    stored: tuple[Path, Path, LocalStore], site: Site, tmp_path: Path
) -> None:
    _, _, store = stored
    repo = site[2]
    generation = store.list_manifests()[-1]
    path = repo / "manifests" / f"{generation}.json"
    manifest = decode_manifest(path.read_bytes())

    def text_of(tree: TreeRef) -> str:
        pack = (repo / tree_key(tree.pack)).read_bytes()
        return pack[tree.offset : tree.offset + tree.size].decode()

    (tree,) = [  # the part of attachments' entries that holds big03
        tree
        for tree in manifest.trees
        if tree.path == "attachments" and '"path":"attachments/big03"' in text_of(tree)
    ]
    text = text_of(tree)
    lying = text.replace(
        '"path":"attachments/big03","size":20003', '"path":"attachments/big03","size":20004'
    )
    assert lying != text
    # A tree whose hash is its name (a well-formed repository) but whose entry lies.
    digest = hashlib.sha256(lying.encode()).hexdigest()
    (repo / tree_key(digest)).parent.mkdir(exist_ok=True)
    (repo / tree_key(digest)).write_text(lying)  # a pack of that one tree
    lie = replace(tree, hash=digest, pack=digest, offset=0, size=len(lying.encode()))
    trees = tuple(lie if t is tree else t for t in manifest.trees)
    os.chmod(path, 0o644)
    path.write_bytes(encode_manifest(replace(manifest, trees=trees)))
    with pytest.raises(SnapshotError, match="attachments/big03: its chunks hold 20003 bytes"):
        restore_generation(store, None, tmp_path / "restored")
    assert _leftovers(tmp_path) == []
