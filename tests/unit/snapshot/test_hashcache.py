"""The hash cache: a file is read again unless its stat is the one recorded, long enough ago."""

from __future__ import annotations

import os

from hakit.snapshot.format import FILE, ChunkRef, Entry, Manifest, SnapshotError, TreeRef
from hakit.snapshot.hashcache import RACY_NS, HashCache, StatKey
from hakit.snapshot.trees import RawEntry

CHUNKS = (ChunkRef("a" * 64, 3),)
STARTED = 100 * RACY_NS


def _previous(mtime_ns: int = 1000, ctime_ns: int = 1000) -> Manifest:
    entry = Entry(
        "f", FILE, 0o644, size=3, mtime_ns=mtime_ns, inode=7, ctime_ns=ctime_ns, chunks=CHUNKS
    )
    return Manifest("g", STARTED, STARTED, "n", None, "/h", None, (entry,))


def test_the_same_stat_reuses_the_chunks() -> None:
    assert HashCache(_previous()).lookup("f", StatKey(7, 3, 1000, 1000)) == CHUNKS


def test_any_difference_reads_again() -> None:
    cache = HashCache(_previous())
    for key in (
        StatKey(8, 3, 1000, 1000),  # another inode: replaced by a rename
        StatKey(7, 4, 1000, 1000),
        StatKey(7, 3, 1001, 1000),
        StatKey(7, 3, 1000, 1001),  # ctime: chmod, or a write that restored the mtime
    ):
        assert cache.lookup("f", key) is None
    assert cache.lookup("other", StatKey(7, 3, 1000, 1000)) is None


def test_ctime_can_be_left_out() -> None:
    assert HashCache(_previous()).lookup("f", StatKey(7, 3, 1000, None)) == CHUNKS


def test_a_racily_clean_file_is_read_again() -> None:
    recent = STARTED - RACY_NS // 2
    assert (
        HashCache(_previous(mtime_ns=recent, ctime_ns=recent)).lookup(
            "f", StatKey(7, 3, recent, recent)
        )
        is None
    )


def test_no_previous_generation_no_cache() -> None:
    assert HashCache(None).lookup("f", StatKey(7, 3, 1000, 1000)) is None


def test_the_walk_gets_the_previous_entry_in_its_json_form() -> None:
    previous = _previous()
    cache = HashCache(previous)
    st = os.stat_result((0o100644, 7, 0, 1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1000, 1000, 1000))
    assert cache.entry("f", st) == previous.entries[0].encode()
    moved = os.stat_result((0o100644, 7, 0, 1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1000, 1000, 2000))
    assert cache.entry("f", moved) is None  # ctime moved
    assert cache.entry("f", moved, trust_ctime=False) == previous.entries[0].encode()


def _tree_manifest(newest_ns: int) -> Manifest:
    tree = TreeRef("docs", "c" * 64, "e" * 64, 0, 10, "d" * 32, newest_ns, 1, 1, 3)
    return Manifest("g", STARTED, STARTED, "n", None, "/h", None, (), (tree,))


def test_a_directory_is_unchanged_only_with_the_same_digest_and_no_racy_file() -> None:
    old = STARTED - 2 * RACY_NS
    cache = HashCache(_tree_manifest(old))
    assert cache.unchanged("docs", "d" * 32) is not None
    assert cache.unchanged("docs", "e" * 32) is None  # a stat differs
    assert cache.unchanged("other", "d" * 32) is None  # no previous tree
    racy = STARTED - RACY_NS // 2
    assert HashCache(_tree_manifest(racy)).unchanged("docs", "d" * 32) is None


def test_a_directorys_tree_is_read_when_one_of_its_files_is_first_asked_for() -> None:
    entry = Entry(
        "docs/f", FILE, 0o644, size=3, mtime_ns=1000, inode=7, ctime_ns=1000, chunks=CHUNKS
    )
    asked: list[str] = []

    def read(tree: TreeRef) -> list[RawEntry]:
        asked.append(tree.path)
        return [entry.encode()]

    cache = HashCache(_tree_manifest(1000), read)
    assert cache.lookup("docs/f", StatKey(7, 3, 1000, 1000)) == CHUNKS
    assert cache.lookup("docs/g", StatKey(7, 3, 1000, 1000)) is None
    assert cache.lookup("other/f", StatKey(7, 3, 1000, 1000)) is None  # no tree there
    assert asked == ["docs"] and cache.trees_read == 1

    def unreadable(tree: TreeRef) -> list[RawEntry]:
        raise SnapshotError("write-only: no copy")

    # A tree that cannot be read: its files are read again (never trusted blindly).
    assert (
        HashCache(_tree_manifest(1000), unreadable).lookup("docs/f", StatKey(7, 3, 1000, 1000))
        is None
    )


def test_only_the_parts_of_a_directory_not_reused_are_read() -> None:
    first = Entry(
        "docs/a", FILE, 0o644, size=3, mtime_ns=1000, inode=7, ctime_ns=1000, chunks=CHUNKS
    )
    second = Entry(
        "docs/b", FILE, 0o644, size=3, mtime_ns=1000, inode=8, ctime_ns=1000, chunks=CHUNKS
    )
    parts = (
        TreeRef("docs", "1" * 64, "e" * 64, 0, 10, "d" * 32, 1000, 1, 1, 3),
        TreeRef("docs", "2" * 64, "e" * 64, 10, 10, "f" * 32, 1000, 1, 1, 3),
    )
    trees = {parts[0].hash: [first.encode()], parts[1].hash: [second.encode()]}
    asked: list[str] = []

    def read(tree: TreeRef) -> list[RawEntry]:
        asked.append(tree.hash)
        return trees[tree.hash]

    manifest = Manifest("g", STARTED, STARTED, "n", None, "/h", None, (), parts)
    cache = HashCache(manifest, read)
    assert cache.unchanged("docs", "d" * 32) == parts[0]  # docs/a's part: reused whole
    assert cache.unchanged("docs", "0" * 32) is None  # docs/b's part changed
    assert cache.lookup("docs/b", StatKey(8, 3, 1000, 1000)) == CHUNKS
    assert asked == [parts[1].hash]  # the part reused whole is never read
