"""Tree objects: rows and digests match what an entry records; a tree is checked when read."""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from pathlib import Path

import pytest

from hakit.snapshot.crypto import EncryptedStore, RepositoryKey
from hakit.snapshot.format import (
    DIRECTORY,
    FILE,
    SYMLINK,
    ChunkRef,
    Entry,
    SnapshotError,
    TreeRef,
    tree_key,
)
from hakit.snapshot.scan import PART_MASK, PART_MAX, part_ranges, stat_row, stats_digest
from hakit.snapshot.store import Store, open_local_store
from hakit.snapshot.trees import (
    PACKS_KEPT,
    RawEntry,
    decode_tree,
    encode_tree,
    entry_row,
    newest_ns,
    tree_reader,
)

CHUNK = ChunkRef("a" * 64, 3, "b" * 64, 0)


def _ref(data: bytes, path: str = "docs", count: int = 2) -> TreeRef:
    digest = hashlib.sha256(data).hexdigest()
    return TreeRef(path, digest, "f" * 64, 0, len(data), "", 0, count, 1, 3)


def test_the_row_of_a_stat_is_the_row_of_the_entry_made_from_it(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    for name, kind in (("f", FILE), ("d", DIRECTORY), ("l", SYMLINK)):
        st = os.lstat(tmp_path / name)
        entry = Entry(
            name,
            kind,
            st.st_mode & 0o7777,
            st.st_size if kind == FILE else 0,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            (CHUNK,) if kind == FILE else (),
            "f" if kind == SYMLINK else "",
        )
        assert stat_row(name, kind, st, entry.target) == entry_row(entry)


def test_any_recorded_stat_changes_the_digest() -> None:
    row = ("docs/a", FILE, 0o644, 3, 10, 7, 11, "")
    base = stats_digest([row])
    assert stats_digest([row]) == base  # stable
    for index in range(len(row)):
        changed = list(row)
        changed[index] = "x" if isinstance(row[index], str) else int(row[index]) + 1  # type: ignore[call-overload]
        assert stats_digest([tuple(changed)]) != base, index  # type: ignore[list-item]
    assert stats_digest([row, row]) != base and stats_digest([]) != base


def test_a_tree_round_trips_and_names_its_newest_file() -> None:
    entries = (
        Entry("docs/a", FILE, 0o644, 3, 10, 7, 11, (CHUNK,)),
        Entry("docs/sub", DIRECTORY, 0o755, mtime_ns=99),
    )
    data = encode_tree([entry.encode() for entry in entries])
    assert decode_tree(_ref(data), data) == entries
    assert (
        newest_ns([entry.encode() for entry in entries]) == 11
    )  # files only: the directory's 99 is not a file's


def test_a_tree_that_is_not_what_its_name_says_is_refused() -> None:
    entries = (Entry("docs/a", FILE, 0o644, 3, 10, 7, 11, (CHUNK,)),)
    data = encode_tree([entry.encode() for entry in entries])
    with pytest.raises(SnapshotError, match="corrupt"):
        decode_tree(_ref(data, count=1), data.replace(b"docs/a", b"docs/b"))
    with pytest.raises(SnapshotError, match="holds 1 entries, the manifest 2"):
        decode_tree(_ref(data, count=2), data)
    # A tree may only hold its own directory's children: no path elsewhere, no grandchild.
    for path in ("other/a", "docs/x/y", "docs/"):
        foreign = encode_tree([Entry(path, FILE, 0o644).encode()])
        with pytest.raises(SnapshotError, match="holds"):
            decode_tree(_ref(foreign, count=1), foreign)
    garbage = b"[{]"
    with pytest.raises(SnapshotError, match="cannot be read"):
        decode_tree(_ref(garbage, count=1), garbage)


def _names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return sorted({f"{rng.randrange(10**9):09d}" for _ in range(count)})


def test_parts_cover_every_name_in_order_none_empty() -> None:
    assert part_ranges([]) == []
    for count in (1, 5, 300):
        names = _names(count, count)
        ranges = part_ranges(names)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(names)
        assert all(a < b <= PART_MAX + a for a, b in ranges)
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    # 8 names to a part on average, by the names' CRC-32.
    assert 300 / 16 < len(part_ranges(_names(300, 1))) < 300 / 4


def test_a_name_added_or_removed_moves_only_the_cut_of_its_own_part() -> None:
    names = _names(400, 7)
    parts = [tuple(names[a:b]) for a, b in part_ranges(names)]
    for index in (0, 150, 399):
        fewer = names[:index] + names[index + 1 :]
        after = [tuple(fewer[a:b]) for a, b in part_ranges(fewer)]
        changed = set(parts) - set(after)
        assert len(changed) <= 2  # its own part (and the next one, when it ended a part)
        assert names[index] in {name for part in changed for name in part}


def test_names_that_end_no_part_are_cut_at_the_most() -> None:
    quiet = [
        n
        for n in (f"n{i:05d}" for i in range(2000))
        if zlib.crc32(n.encode()) & PART_MASK != PART_MASK
    ]
    assert [b - a for a, b in part_ranges(quiet[:150])] == [PART_MAX, PART_MAX, 150 - 2 * PART_MAX]


def _packs_of_trees(store: Store, count: int) -> list[tuple[TreeRef, list[RawEntry]]]:
    """``count`` tree packs of two trees each, put in ``store``: each tree's ref and entries."""
    made: list[tuple[TreeRef, list[RawEntry]]] = []
    for pack_number in range(count):
        trees: list[list[RawEntry]] = [
            [Entry(f"d{pack_number}-{tree}/f", FILE, 0o644, 3, 1, 2, 3, (CHUNK,)).encode()]
            for tree in range(2)
        ]
        encoded = [encode_tree(entries) for entries in trees]
        pack = b"".join(encoded)
        pack_id = hashlib.sha256(pack).hexdigest()
        store.put_if_absent(tree_key(pack_id), pack)
        offset = 0
        for tree, (entries, data) in enumerate(zip(trees, encoded, strict=True)):
            digest = hashlib.sha256(data).hexdigest()
            ref = TreeRef(
                f"d{pack_number}-{tree}", digest, pack_id, offset, len(data), "", 0, 1, 1, 3
            )
            made.append((ref, entries))
            offset += len(data)
    return made


def test_trees_are_read_by_range_from_a_local_repository(tmp_path: Path) -> None:
    store = open_local_store(tmp_path / "repo", create=True)
    made = _packs_of_trees(store, 3)
    read = tree_reader(store)
    for ref, entries in [*made, *reversed(made)]:  # across the packs, back and forth
        assert read(ref) == entries
    ref = made[1][0]
    assert (
        store.get_range(tree_key(ref.pack), ref.offset, ref.size)
        == store.get(tree_key(ref.pack))[ref.offset : ref.offset + ref.size]
    )
    with pytest.raises(SnapshotError, match="missing"):
        store.get_range(tree_key("0" * 64), 0, 10)


def test_trees_of_more_packs_than_kept_are_read_from_another_store(tmp_path: Path) -> None:
    """An encrypted repository is read whole object by whole object (no ranges); the
    reader keeps PACKS_KEPT packs and fetches again what it dropped."""
    inner = open_local_store(tmp_path / "repo", create=True)
    store = EncryptedStore(inner, RepositoryKey.derive(bytes(range(32))), "test repository")
    made = _packs_of_trees(store, PACKS_KEPT + 2)
    read = tree_reader(store)
    for ref, entries in [*made, *reversed(made), *made]:
        assert read(ref) == entries
